"""Controllers: the network that reads ``[x_t; r_{t-1}]`` and emits the hidden output h_t.

Each controller advances one time step at a time (the model owns the time loop, because
the next input depends on what memory returns). State is a tuple of tensors, passed in
and out explicitly; a feed-forward controller has the empty tuple.
"""

from __future__ import annotations

import torch
from torch import nn

from mann.access.base import require_positive

ControllerState = tuple[torch.Tensor, ...]


class LSTMController(nn.Module):
    """A stack of LSTM cells; state is (h_1, c_1, h_2, c_2, ...)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.cells = nn.ModuleList(nn.LSTMCell(size, hidden_size) for size in sizes)
        self.hidden_size = hidden_size
        self.output_size = hidden_size

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        zeros = torch.zeros(batch_size, self.hidden_size, device=device)
        return tuple(zeros for _ in range(2 * len(self.cells)))

    def forward(self, x: torch.Tensor, state: ControllerState):
        new_state = []
        for layer, cell in enumerate(self.cells):
            hidden, cell_state = cell(x, (state[2 * layer], state[2 * layer + 1]))
            new_state += [hidden, cell_state]
            x = hidden
        return x, tuple(new_state)


class GRUController(nn.Module):
    """A stack of GRU cells; state is (h_1, h_2, ...)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.cells = nn.ModuleList(nn.GRUCell(size, hidden_size) for size in sizes)
        self.hidden_size = hidden_size
        self.output_size = hidden_size

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        zeros = torch.zeros(batch_size, self.hidden_size, device=device)
        return tuple(zeros for _ in self.cells)

    def forward(self, x: torch.Tensor, state: ControllerState):
        new_state = []
        for layer, cell in enumerate(self.cells):
            x = cell(x, state[layer])
            new_state.append(x)
        return x, tuple(new_state)


class FeedForwardController(nn.Module):
    """Layers of Linear + tanh with no recurrent state: memory is its only memory."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(size, hidden_size) for size in sizes)
        self.hidden_size = hidden_size
        self.output_size = hidden_size

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        return ()

    def forward(self, x: torch.Tensor, state: ControllerState):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x, ()


CONTROLLERS = {"lstm": LSTMController, "gru": GRUController, "feedforward": FeedForwardController}


def build_controller(kind: str, input_size: int, hidden_size: int, num_layers: int) -> nn.Module:
    if kind not in CONTROLLERS:
        raise ValueError(f"controller must be one of {sorted(CONTROLLERS)}, got {kind!r}")
    require_positive("hidden_size", hidden_size)
    require_positive("num_layers", num_layers)
    return CONTROLLERS[kind](input_size, hidden_size, num_layers)
