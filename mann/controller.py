"""Controllers: the network that reads ``[x_t; r_{t-1}]`` and emits the hidden output h_t.

The model owns the time loop, because each step's input includes what memory returned the
step before. The part of the first layer that sees only x_t does not depend on memory, so
it is computed for all steps in one matrix product (``project_inputs``) before the loop;
each step then adds the contribution of r_{t-1} and the recurrent state. The cells are
written out (rather than ``nn.LSTMCell``) to keep each step to a few operations: on a CPU,
dispatch per operation and autograd's work per node, not arithmetic, are what a small
controller costs. (``mann.fused.sequence`` runs these cells with a hand-written backward.)

State is a tuple of tensors, passed in and out explicitly; a feed-forward controller has
the empty tuple. The transposed weights every step multiplies by are made once per sequence
(``step_weights``), not per step: each ``.t()`` of a parameter inside the time loop is one
more autograd node per step, and indexing a ParameterList is Python work per step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from mann.access.base import require_positive

ControllerState = tuple[torch.Tensor, ...]


class StepWeights(NamedTuple):
    """A controller's per-step matrices, transposed once per sequence (``step_weights``)."""

    read: torch.Tensor  # W_rᵀ, first layer (R·W, gates·H)
    hidden: tuple[torch.Tensor, ...]  # W_hᵀ per layer (H, gates·H); empty for feed-forward
    layer: tuple[torch.Tensor, ...]  # W_lᵀ from the layer below, layers 2.. (H, gates·H)
    bias: tuple[torch.Tensor, ...]  # b per layer (the first layer's is in ``project_inputs``)
    hidden_bias: tuple[torch.Tensor, ...]  # GRU's b_h per layer; empty otherwise


def _uniform(*shape: int, bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


def make_step_weights(read_weight, hidden_weights, layer_weights, biases, hidden_biases):
    """``StepWeights`` from a controller's parameters (W_r, W_h per layer, W_l per layer
    above the first, b per layer, GRU's b_h per layer), the matrices transposed."""
    return StepWeights(
        read=read_weight.t(),
        hidden=tuple(weight.t() for weight in hidden_weights),
        layer=tuple(weight.t() for weight in layer_weights),
        bias=tuple(biases),
        hidden_bias=tuple(hidden_biases),
    )


def layer_input(layer: int, projected, below, weights: StepWeights) -> torch.Tensor:
    """A layer's input term: W_x x_t + b + W_r r_{t-1} for the first (``projected`` holds
    W_x x_t + b, ``below`` is r_{t-1}), W_l h^{l-1}_t + b above it."""
    if layer == 0:
        return torch.addmm(projected, below, weights.read)
    return torch.addmm(weights.bias[layer], below, weights.layer[layer - 1])


def lstm_cell(gates: torch.Tensor, prev_cell: torch.Tensor):
    """``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)`` from the pre-activation gates (B,4H)
    ordered i, f, o, g, and c_{t-1} (B,H) -> (h_t, c_t, the activations (σ(i, f, o), g,
    tanh c_t) a hand-written backward needs)."""
    size = prev_cell.shape[1]
    sigmoids = torch.sigmoid(gates[:, : 3 * size])
    candidate = torch.tanh(gates[:, 3 * size :])
    input_gate, forget_gate, output_gate = sigmoids.chunk(3, 1)
    cell = torch.addcmul(forget_gate * prev_cell, input_gate, candidate)
    cell_tanh = torch.tanh(cell)
    return output_gate * cell_tanh, cell, (sigmoids, candidate, cell_tanh)


def gru_cell(from_input: torch.Tensor, from_hidden: torch.Tensor, hidden: torch.Tensor):
    """h_t = (1 - z) n + z h_{t-1}, n = tanh(a_n + r ∘ (W_hn h_{t-1} + b_hn)), from the
    layer's input term ``from_input`` (B,3H) and ``from_hidden`` = W_h h_{t-1} + b_h (B,3H),
    gates ordered r, z, n -> (h_t, (r, z, n))."""
    size = hidden.shape[1]
    reset, update = torch.sigmoid(
        from_input[:, : 2 * size] + from_hidden[:, : 2 * size]
    ).chunk(2, 1)
    candidate = torch.tanh(
        torch.addcmul(from_input[:, 2 * size :], reset, from_hidden[:, 2 * size :])
    )
    return torch.addcmul(candidate, update, hidden - candidate), (reset, update, candidate)


class _Controller(nn.Module):
    """Shared plumbing: the first layer's input projection W_x x_t + b for all steps."""

    gates: int  # gate blocks per layer: 4 for LSTM, 3 for GRU, 1 for feed-forward

    def __init__(self, input_size: int, read_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        require_positive("hidden_size", hidden_size)
        require_positive("num_layers", num_layers)
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.num_layers = num_layers
        bound = 1.0 / math.sqrt(hidden_size)
        width = self.gates * hidden_size
        self.input_weight = _uniform(width, input_size, bound=bound)  # W_x, first layer
        self.read_weight = _uniform(width, read_size, bound=bound)  # W_r, first layer
        self.bias = nn.ParameterList(_uniform(width, bound=bound) for _ in range(num_layers))

    def step_weights(self) -> StepWeights:
        """The matrices ``forward`` uses, transposed: make once per sequence."""
        return make_step_weights(
            self.read_weight,
            getattr(self, "hidden_weight", ()),
            self.layer_weight,
            self.bias,
            getattr(self, "hidden_bias", ()),
        )

    def project_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """``W_x x_t + b`` for every step: inputs (B,T,X) -> (B,T,gates·hidden)."""
        return torch.addmm(self.bias[0], inputs.flatten(0, 1), self.input_weight.t()).view(
            inputs.shape[0], inputs.shape[1], -1
        )


class LSTMController(_Controller):
    """Stacked LSTM; state is (h_1, c_1, h_2, c_2, ...). Gates ordered i, f, o, g."""

    gates = 4

    def __init__(self, input_size: int, read_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__(input_size, read_size, hidden_size, num_layers)
        bound = 1.0 / math.sqrt(hidden_size)
        H = hidden_size
        self.hidden_weight = nn.ParameterList(
            _uniform(4 * H, H, bound=bound) for _ in range(num_layers)
        )
        self.layer_weight = nn.ParameterList(
            _uniform(4 * H, H, bound=bound) for _ in range(num_layers - 1)
        )
        with torch.no_grad():
            for bias in self.bias:  # forget gates start open: a common, helpful default
                bias[H : 2 * H].fill_(1.0)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=self.bias[0].dtype)
        return tuple(zeros for _ in range(2 * self.num_layers))

    def forward(
        self,
        projected: torch.Tensor,
        reads: torch.Tensor,
        state: ControllerState,
        weights: StepWeights | None = None,
    ):
        """projected (B,4H) from ``project_inputs``, reads r_{t-1} (B,R·W) -> (h_t, state);
        ``weights`` from ``step_weights`` (made here when not given)."""
        weights = weights or self.step_weights()
        new_state: list[torch.Tensor] = []
        below = reads  # the output of the layer below (unused by the first layer)
        for layer in range(self.num_layers):
            hidden, cell = state[2 * layer], state[2 * layer + 1]
            gates = layer_input(layer, projected, below, weights)
            gates = torch.addmm(gates, hidden, weights.hidden[layer])
            below, cell, _ = lstm_cell(gates, cell)  # c = f c + i g, h = o tanh(c)
            new_state += [below, cell]
        return below, tuple(new_state)


class GRUController(_Controller):
    """Stacked GRU; state is (h_1, h_2, ...). Gates ordered r, z, n."""

    gates = 3

    def __init__(self, input_size: int, read_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__(input_size, read_size, hidden_size, num_layers)
        bound = 1.0 / math.sqrt(hidden_size)
        H = hidden_size
        self.hidden_weight = nn.ParameterList(
            _uniform(3 * H, H, bound=bound) for _ in range(num_layers)
        )
        self.hidden_bias = nn.ParameterList(_uniform(3 * H, bound=bound) for _ in range(num_layers))
        self.layer_weight = nn.ParameterList(
            _uniform(3 * H, H, bound=bound) for _ in range(num_layers - 1)
        )

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=self.bias[0].dtype)
        return tuple(zeros for _ in range(self.num_layers))

    def forward(
        self,
        projected: torch.Tensor,
        reads: torch.Tensor,
        state: ControllerState,
        weights: StepWeights | None = None,
    ):
        """projected (B,3H) from ``project_inputs``, reads r_{t-1} (B,R·W) -> (h_t, state);
        ``weights`` from ``step_weights`` (made here when not given)."""
        weights = weights or self.step_weights()
        new_state: list[torch.Tensor] = []
        below = reads  # the output of the layer below (unused by the first layer)
        for layer in range(self.num_layers):
            hidden = state[layer]
            from_input = layer_input(layer, projected, below, weights)
            from_hidden = torch.addmm(weights.hidden_bias[layer], hidden, weights.hidden[layer])
            below, _ = gru_cell(from_input, from_hidden, hidden)
            new_state.append(below)
        return below, tuple(new_state)


class FeedForwardController(_Controller):
    """Layers of affine + tanh with no recurrent state: memory is its only memory."""

    gates = 1

    def __init__(self, input_size: int, read_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__(input_size, read_size, hidden_size, num_layers)
        bound = 1.0 / math.sqrt(hidden_size)
        self.layer_weight = nn.ParameterList(
            _uniform(hidden_size, hidden_size, bound=bound) for _ in range(num_layers - 1)
        )

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        return ()

    def forward(
        self,
        projected: torch.Tensor,
        reads: torch.Tensor,
        state: ControllerState,
        weights: StepWeights | None = None,
    ):
        """projected (B,H) from ``project_inputs``, reads r_{t-1} (B,R·W) -> (h_t, ());
        ``weights`` from ``step_weights`` (made here when not given)."""
        weights = weights or self.step_weights()
        hidden = reads
        for layer in range(self.num_layers):
            hidden = torch.tanh(layer_input(layer, projected, hidden, weights))
        return hidden, ()


CONTROLLERS = {"lstm": LSTMController, "gru": GRUController, "feedforward": FeedForwardController}


def build_controller(
    kind: str, input_size: int, read_size: int, hidden_size: int, num_layers: int
) -> _Controller:
    if kind not in CONTROLLERS:
        raise ValueError(f"controller must be one of {sorted(CONTROLLERS)}, got {kind!r}")
    return CONTROLLERS[kind](input_size, read_size, hidden_size, num_layers)
