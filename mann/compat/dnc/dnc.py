"""``DNC`` with the ``dnc`` 1.1.0 package's constructor, call and return values (its
``dnc.dnc``), on this library's DNC memory (``mann.access.dnc``).

The network is stacked as 1.1.0 stacks it. ``num_layers`` controller layers each hold a torch
RNN, GRU or LSTM of ``num_hidden_layers`` layers of ``hidden_size`` units; at every time step
each layer reads the layer below's output and read vectors (the first layer: the input and
the read vectors of the step before), its output h goes through the memory, and it passes on
``[h ; r]``. With ``share_memory`` the layers step one memory in turn, each layer once per
time step; without, each layer has its own. The output layer maps the top layer's ``[h ; r]``
to ``input_size``. The step in between is this library's: interface ``ξ = W h + b`` clipped
to ±clip, ``r, state = memory.step(ξ, state)`` (``DNCAccess.step``), logits clipped to ±clip.

Where 1.1.0 and this module differ on purpose, docs/coming-from-dnc.md lists it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from mann.access.base import require_positive
from mann.compat.dnc.adapters import DNCMemory, MemoryAdapter

RNN_TYPES = ("lstm", "gru", "rnn")


class DNC(nn.Module):
    """A Differentiable Neural Computer with the ``dnc`` 1.1.0 package's interface.

    ``forward(input, hx=(None, None, None), reset_experience=False,
    pass_through_memory=True)`` returns ``(output, (controller_hidden, memory_hidden,
    last_read))``, and the debug dict as a third element when ``debug=True``.
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        rnn_type="lstm",
        num_layers=1,
        num_hidden_layers=2,
        bias=True,
        batch_first=True,
        dropout=0,
        bidirectional=False,
        nr_cells=5,
        read_heads=2,
        cell_size=10,
        nonlinearity="tanh",
        gpu_id=-1,
        independent_linears=False,
        share_memory=True,
        debug=False,
        clip=20,
    ):
        super().__init__()
        self._configure(locals())
        self._build()

    # ---- construction ------------------------------------------------------------------
    # 1.1.0's default of every constructor argument, for the repr.
    _defaults = dict(
        rnn_type="lstm", num_layers=1, num_hidden_layers=2, bias=True, batch_first=True,
        dropout=0, bidirectional=False, nr_cells=5, read_heads=2, cell_size=10,
        nonlinearity="tanh", gpu_id=-1, independent_linears=False, share_memory=True,
        debug=False, clip=20,
    )  # fmt: skip

    def _configure(self, arguments: dict) -> None:
        """Check the constructor's arguments and keep them as 1.1.0's attributes."""
        arguments = {k: v for k, v in arguments.items() if k not in ("self", "__class__")}
        self._arguments = arguments
        for name in ("input_size", "hidden_size", "num_layers", "num_hidden_layers",
                     "nr_cells", "read_heads", "cell_size"):  # fmt: skip
            require_positive(name, arguments[name])
        for name in ("sparse_reads", "temporal_reads"):
            if name in arguments:
                require_positive(name, arguments[name])
        rnn_type = arguments["rnn_type"]
        if not isinstance(rnn_type, str) or rnn_type.lower() not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {list(RNN_TYPES)}, got {rnn_type!r}")
        gpu_id = arguments["gpu_id"]
        if isinstance(gpu_id, bool) or not isinstance(gpu_id, int):
            raise ValueError(f"gpu_id must be an integer (-1 for the CPU), got {gpu_id!r}")
        if gpu_id >= 0 and not torch.cuda.is_available():
            raise ValueError(f"gpu_id={gpu_id} asks for CUDA device {gpu_id}, but CUDA is not "
                             "available here; use gpu_id=-1 for the CPU")  # fmt: skip
        if gpu_id >= 0 and gpu_id >= torch.cuda.device_count():
            raise ValueError(f"gpu_id={gpu_id}, but there are {torch.cuda.device_count()} CUDA "
                             "devices")  # fmt: skip
        clip = arguments["clip"]
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0:
            raise ValueError(f"clip must be a number >= 0 (0: no clipping), got {clip!r}")
        if arguments["bidirectional"]:
            warnings.warn(
                "bidirectional=True is ignored: the controller runs forward in time only (dnc "
                "1.1.0 ignored it too, without saying so)",
                UserWarning,
                stacklevel=3,
            )
        for name, value in arguments.items():
            setattr(self, name, value)
        self.read_vectors_size = self.read_heads * self.cell_size
        self.output_size = self.hidden_size  # the controller's output, as 1.1.0 names it
        self.nn_input_size = self.input_size + self.read_vectors_size
        self.nn_output_size = self.output_size + self.read_vectors_size

    def _build(self) -> None:
        """The controller layers, the memories and the output layer, named as in 1.1.0."""
        kind = self.rnn_type.lower()
        self.rnns: list[nn.RNNBase] = []
        self.memories: list[MemoryAdapter] = []
        for layer in range(self.num_layers):
            rnn = self._controller_layer(kind, layer)
            self.rnns.append(rnn)
            setattr(self, f"{kind}_layer_{layer}", rnn)
            if not self.share_memory:
                self.memories.append(self._new_memory())
                setattr(self, f"rnn_layer_memory_{layer}", self.memories[layer])
        if self.share_memory:
            self.memories.append(self._new_memory())
            self.rnn_layer_memory_shared = self.memories[0]
        self.output = nn.Linear(self.nn_output_size, self.input_size)
        nn.init.orthogonal_(self.output.weight)
        if self.gpu_id >= 0:
            self.cuda(self.gpu_id)

    def _controller_layer(self, kind: str, layer: int) -> nn.RNNBase:
        settings = dict(
            input_size=self.nn_input_size if layer == 0 else self.nn_output_size,
            hidden_size=self.output_size,
            num_layers=self.num_hidden_layers,
            bias=self.bias,
            batch_first=True,
            dropout=self.dropout,
        )
        if kind == "rnn":
            return nn.RNN(nonlinearity=self.nonlinearity, **settings)
        return (nn.GRU if kind == "gru" else nn.LSTM)(**settings)

    def _new_memory(self) -> MemoryAdapter:
        return DNCMemory(self.output_size, self.nr_cells, self.cell_size, self.read_heads,
                         self.independent_linears, self.clip)  # fmt: skip

    def extra_repr(self) -> str:
        changed = [
            f"{name}={self._arguments[name]!r}"
            for name, default in self._defaults.items()
            if name in self._arguments and self._arguments[name] != default
        ]
        return ", ".join([str(self.input_size), str(self.hidden_size), *changed])

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """``nn.Module.load_state_dict``. A 1.1.0 state_dict loads where 1.1.0's parameters
        are laid out as these (a DNC's all; a SAM's or SDNC's but its memory interface);
        otherwise a RuntimeError names every key that does not fit, and why."""
        own = self.state_dict()
        mismatched = [
            key for key, value in state_dict.items()
            if key in own and tuple(value.shape) != tuple(own[key].shape)
        ]  # fmt: skip
        missing = [key for key in own if key not in state_dict] if strict else []
        unexpected = [key for key in state_dict if key not in own] if strict else []
        if mismatched or missing or unexpected:
            raise RuntimeError(self._load_error(state_dict, own, mismatched, missing, unexpected))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_error(self, state_dict, own, mismatched, missing, unexpected) -> str:
        lines = [f"cannot load this state_dict into {type(self).__name__}:"]
        lines += [
            f"  {key}: shape {tuple(state_dict[key].shape)} in the state_dict, "
            f"{tuple(own[key].shape)} here" for key in mismatched
        ]  # fmt: skip
        lines += [f"  {key}: missing from the state_dict" for key in missing]
        lines += [f"  {key}: in the state_dict, not in this model" for key in unexpected]
        keys = mismatched + missing + unexpected
        if any("_memory_" in key for key in keys):
            lines.append(
                "This library's SAM and SDNC take other interface fields than dnc 1.1.0's "
                "(read strengths and one interpolation gate; the SDNC also read modes; see "
                "docs/coming-from-dnc.md), so 1.1.0's memory interface weights do not carry "
                "over. To load the controller and output layer alone: model.load_state_dict("
                "{k: v for k, v in state_dict.items() if '_memory_' not in k}, strict=False)"
            )
        if any("_memory_" not in key for key in keys):
            lines.append("Other keys: build the model with the sizes and options the state_dict "
                         "was saved with (hidden_size, rnn_type, num_layers, ...).")  # fmt: skip
        return "\n".join(lines)

    # ---- state ---------------------------------------------------------------------------
    def _controller_state(self, state, batch_size: int, device, dtype) -> list:
        """A layer's torch RNN state (None: zeros) as a list per hidden layer: (h, c) pairs
        for an LSTM, h otherwise; checked against (num_hidden_layers, B, hidden_size)."""
        lstm = self.rnn_type.lower() == "lstm"
        shape = (self.num_hidden_layers, batch_size, self.output_size)
        if state is None:
            zeros = torch.zeros(shape, device=device, dtype=dtype)
            state = (zeros, zeros) if lstm else zeros
        parts = state if lstm else (state,)
        if lstm and (not isinstance(state, Sequence) or len(state) != 2):
            raise ValueError("an LSTM layer's state must be a pair (h, c)")
        for part in parts:
            if not isinstance(part, torch.Tensor) or tuple(part.shape) != shape:
                got = tuple(part.shape) if isinstance(part, torch.Tensor) else type(part).__name__
                raise ValueError(f"controller states must have shape {shape} "
                                 f"(num_hidden_layers, batch, hidden_size), got {got}")  # fmt: skip
        if lstm:
            return list(zip(state[0].unbind(0), state[1].unbind(0), strict=True))
        return list(state.unbind(0))

    def _torch_state(self, hidden_layers: list):
        """A layer's state as torch's RNN modules return it."""
        if self.rnn_type.lower() == "lstm":
            h, c = zip(*hidden_layers, strict=True)
            return torch.stack(h), torch.stack(c)
        return torch.stack(hidden_layers)

    def _cell(self):
        """torch's cell function for this rnn_type: a step at a time it is quicker than the
        module's call, on the module's own parameters."""
        kind = self.rnn_type.lower()
        if kind == "lstm":
            return torch.lstm_cell
        if kind == "gru":
            return torch.gru_cell
        return torch.rnn_relu_cell if self.nonlinearity == "relu" else torch.rnn_tanh_cell

    def _controller_step(self, cell, weights, layer_input, hidden_layers: list):
        """One time step of a controller layer: its hidden layers in turn (dropout between
        them while training, as torch's RNN modules) -> (h of the top one, new states)."""
        new_states = []
        below = layer_input
        for depth, (state, layer_weights) in enumerate(zip(hidden_layers, weights, strict=True)):
            if depth and self.dropout and self.training:
                below = F.dropout(below, self.dropout, training=True)
            state = cell(below, state, *layer_weights)
            new_states.append(state)
            below = state[0] if isinstance(state, tuple) else state
        return below, new_states

    def _initial_hidden(self, hx, batch_size: int, device, dtype, reset_experience: bool):
        """(controller states per layer, memory carries per memory, r_{t-1} (B,R·W)), new
        lists: what the caller passed is never changed."""
        if hx is None:
            hx = (None, None, None)
        if not isinstance(hx, Sequence) or len(hx) != 3:
            raise ValueError("hx must be None or (controller_hidden, memory_hidden, last_read)")
        controller_hidden, memory_hidden, last_read = hx

        if controller_hidden is None:
            controller_hidden = [None] * self.num_layers
        if not isinstance(controller_hidden, Sequence) or len(controller_hidden) != self.num_layers:
            raise ValueError(f"controller_hidden must be a list of {self.num_layers} layer "
                             "states (or None)")  # fmt: skip
        controllers = [
            self._controller_state(state, batch_size, device, dtype) for state in controller_hidden
        ]

        if memory_hidden is None or reset_experience:
            memory_hidden = None if self.share_memory else [None] * self.num_layers
        if self.share_memory:
            memory_hidden = [memory_hidden]
        elif not isinstance(memory_hidden, Sequence) or len(memory_hidden) != self.num_layers:
            raise ValueError(f"without share_memory, memory_hidden must be a list of "
                             f"{self.num_layers} dicts (or None)")  # fmt: skip
        carries = [
            memory.initial_carry(batch_size, device, dtype)
            if hidden is None
            else memory.import_carry(hidden, batch_size, device, dtype)
            for memory, hidden in zip(self.memories, memory_hidden, strict=True)
        ]

        if last_read is None:
            last_read = torch.zeros(batch_size, self.read_vectors_size, device=device, dtype=dtype)
        elif tuple(last_read.shape) != (batch_size, self.read_vectors_size):
            expected = (batch_size, self.read_vectors_size)
            raise ValueError(f"last_read must have shape {expected}, got "
                             f"{tuple(last_read.shape)}")  # fmt: skip
        return controllers, carries, last_read

    def _exported(self, carries: list) -> dict | list[dict]:
        hidden = [memory.export(carry) for memory, carry in zip(self.memories, carries,
                                                                strict=True)]  # fmt: skip
        return hidden[0] if self.share_memory else hidden

    # ---- the call ------------------------------------------------------------------------
    def forward(self, input, hx=(None, None, None), reset_experience=False,
                pass_through_memory=True):  # fmt: skip
        """Run over ``input`` (B,T,input_size) with ``batch_first``, else (T,B,input_size), or
        a PackedSequence.

        Returns ``(output, (controller_hidden, memory_hidden, last_read))`` and, with
        ``debug``, the debug dict: ``output`` laid out as ``input``; ``controller_hidden`` a
        list per layer of torch RNN states; ``memory_hidden`` a dict (a list of dicts per
        layer without ``share_memory``); ``last_read`` the top layer's read vectors
        (B, read_heads·cell_size), None with ``pass_through_memory=False``. Any part of ``hx``
        may be None; the returned state fed back continues the sequence.
        """
        lengths = None
        if isinstance(input, PackedSequence):
            input, lengths = pad_packed_sequence(input, batch_first=self.batch_first)
        if not isinstance(input, torch.Tensor) or input.dim() != 3:
            got = tuple(input.shape) if isinstance(input, torch.Tensor) else type(input).__name__
            layout = "(batch, time, input_size)"
            if not self.batch_first:
                layout = "(time, batch, input_size)"
            raise ValueError(f"input must be a tensor of shape {layout}, got {got}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input has width {input.shape[-1]}, but input_size={self.input_size}")
        inputs = input if self.batch_first else input.transpose(0, 1)  # (B,T,X)
        batch_size, steps = inputs.shape[:2]
        dtype = self.output.weight.dtype
        controllers, carries, last_read = self._initial_hidden(
            hx, batch_size, inputs.device, dtype, reset_experience
        )

        kind = self.rnn_type.lower()
        # |h| < 1 for LSTM, GRU and tanh: then clipping at >= 1 changes nothing.
        unbounded = kind == "rnn" and self.nonlinearity != "tanh"
        clip_hidden = self.clip and (self.clip < 1 or unbounded)
        projections = [memory.interface_projection() for memory in self.memories]
        cell = self._cell()
        weights = [[tuple(w) for w in rnn.all_weights] for rnn in self.rnns]
        debug_steps: list[dict] = []
        reads = last_read  # r_{t-1}: the top layer's reads of the step before
        top_outputs = []
        for step in range(steps):
            layer_input = torch.cat([inputs[:, step], reads], 1)
            for layer in range(self.num_layers):
                hidden, controllers[layer] = self._controller_step(
                    cell, weights[layer], layer_input, controllers[layer]
                )
                if clip_hidden:
                    hidden = hidden.clamp(-self.clip, self.clip)
                which = 0 if self.share_memory else layer
                memory = self.memories[which]
                if pass_through_memory:
                    interface = memory.interface(hidden, projections[which])
                    read_vectors, carries[which] = memory.step(interface, carries[which])
                    layer_reads = read_vectors.flatten(1)
                else:
                    layer_reads = last_read
                if self.debug:
                    debug_steps.append(memory.debug_entry(carries[which]))
                layer_input = torch.cat([hidden, layer_reads], 1)
            if pass_through_memory:
                reads = layer_reads
            top_outputs.append(layer_input)

        output = self.output(torch.stack(top_outputs, 1))
        if self.clip:
            output = output.clamp(-self.clip, self.clip)
        if not self.batch_first:
            output = output.transpose(0, 1)
        if lengths is not None:
            output = pack_padded_sequence(output, lengths, batch_first=self.batch_first,
                                          enforce_sorted=False)  # fmt: skip
        controller_hidden = [self._torch_state(layers) for layers in controllers]
        last_read = reads if pass_through_memory else None
        hidden_out = (controller_hidden, self._exported(carries), last_read)
        if not self.debug:
            return output, hidden_out
        return output, hidden_out, _stack_debug(debug_steps)


def _stack_debug(entries: list[dict]) -> dict[str, np.ndarray]:
    """1.1.0's debug dict: per key, one row per (time step, layer), time-major."""
    return {key: np.stack([entry[key] for entry in entries]) for key in entries[0]}
