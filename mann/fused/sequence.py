"""A whole sequence as one autograd node, for every architecture: training without the
autograd engine.

``MemoryAugmentedNetwork.forward`` steps a controller and a memory through time; with the
fused kernels a time step is still about ten (NTM) or thirteen (DNC) autograd nodes, and at
the sizes they train at (NTM 128×20, DNC 64×20) the engine's bookkeeping for them and the
Python around each Function cost about as much as the kernels. Here the same computation is
one ``torch.autograd.Function`` over the sequence: its forward runs the same loop with
gradients off, keeping what each step's backward needs (the controller's activations, the
kernels' saved arrays); its backward runs the time loop in reverse by hand, carrying
dL/d(state) from step to step, and forms every weight's gradient at the end with one matrix
product over all steps (dW = Σ_t δ_tᵀ x_t) instead of one per step.

Nothing here is a new equation: each step calls the kernels the memory uses when not
recording (``NTMAccess``: ``mann.fused.ntm``; ``DNCAccess``: ``mann.fused.dnc`` write and
read, ``mann.fused.link``; SAM and SDNC: ``mann.fused.sparse_step`` on the ``SlotStore``'s
tables) and the controller's cell as ``mann.controller`` computes it, in
the order of ``MemoryAugmentedNetwork.forward``; tests hold the two paths equal in values and
in every gradient, including gradients that arrive through the returned state. The two parts
of a step are small objects: the memory's (``_NTMSteps``, ``_DNCSteps``, ``_SparseSteps``) with
``forward(interface, state) -> (r_t, state_t, saved)`` and ``backward(saved, dL/dr_t,
dL/dstate_t) -> (dL/dinterface, dL/dstate_{t-1})``, and the controller's per layer
(``_LSTMLayers``, ``_GRULayers``, ``_FeedForwardLayers``).

Registered (``mann.backends``) for exactly ``NTMAccess``, ``DNCAccess``, ``SAMAccess`` and
``SDNCAccess`` with the LSTM, GRU and feed-forward controllers; it takes CPU float tensors of
one dtype, needs numba and ``clip_value >= 1`` (a smaller clip also clips h_t). Where it
cannot run a call, the "auto" backend runs the reference step loop and "fused" raises.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from mann import addressing
from mann.controller import StepWeights, gru_cell, layer_input, make_step_weights
from mann.fused import dnc as fused_dnc
from mann.fused import knn as fused_knn
from mann.fused import link as fused_link
from mann.fused import ntm as fused_ntm
from mann.fused import sdnc as fused_sdnc
from mann.fused import sparse_step
from mann.fused.lstm import cell_backward, cell_forward
from mann.fused.runtime import HAVE_NUMBA, KERNEL_LOCK, set_threads
from mann.fused.runtime import usable as kernels_usable


def missing(model, inputs: torch.Tensor | None, state) -> str | None:
    """Why ``run`` cannot take this model, input and state (None when it can)."""
    if not HAVE_NUMBA:
        return "numba is not installed"
    if _steps_for(model.access) is None:
        return f"no sequence kernel for {type(model.access).__name__}"
    reference_only = getattr(model.access, "reference_only", None)
    if reference_only:
        return reference_only
    if _layers_for(model.controller) is None:
        return f"no sequence kernel for the controller {type(model.controller).__name__}"
    if model.config.clip_value < 1.0:
        return f"clip_value={model.config.clip_value} < 1 (the kernels do not clip h_t)"
    tensors = list(model.parameters())
    if inputs is not None:
        tensors.append(inputs)
    if state is not None:
        tensors += _state_tensors(model, state)
    if not kernels_usable(*tensors):
        return "the kernels take CPU float32 or float64 tensors of one dtype"
    return None


def _state_tensors(model, state, steps=None) -> tuple[torch.Tensor, ...]:
    """The state's tensors that enter the node (a sparse memory keeps its tables outside)."""
    controller_state, access_state, read_vectors = state
    steps = steps or _steps_for(model.access)
    return (*controller_state, *steps.node_inputs(access_state), read_vectors)


# ---------------------------------------------------------------------------------------
# The controller, one layer at a time. Each layer's input term (``controller.layer_input``)
# is formed by the caller; a layer class adds its recurrence and nonlinearity as the
# controller does, given the step's ``StepWeights``. backward returns δ for the input term,
# δ for the recurrent product's output (None without one), and dL/d(its state at t-1).
# ---------------------------------------------------------------------------------------
class _LSTMLayers:
    """``LSTMController``: state (h, c) per layer, gates i, f, o, g."""

    state_per_layer = 2

    def __init__(self, controller) -> None:
        self.hidden_weights = tuple(controller.hidden_weight)
        self.hidden_biases = ()

    def forward(self, layer, from_below, state, weights: StepWeights):
        hidden, cell = state
        gates = torch.addmm(from_below, hidden, weights.hidden[layer])
        new_hidden, new_cell, activations = cell_forward(gates, cell)
        return new_hidden, (new_hidden, new_cell), (*activations, cell)

    def backward(self, layer, saved, grad_output, grad_state):
        grad_hidden, grad_cell = grad_state
        gates_delta, grad_prev_cell = cell_backward(saved, grad_output + grad_hidden, grad_cell)
        grad_prev_hidden = gates_delta @ self.hidden_weights[layer]
        return gates_delta, gates_delta, (grad_prev_hidden, grad_prev_cell)


class _GRULayers:
    """``GRUController``: state (h,) per layer, gates r, z, n;
    h_t = (1 - z) n + z h_{t-1}, n = tanh(a_n + r ∘ (b_hn + W_hn h_{t-1}))."""

    state_per_layer = 1

    def __init__(self, controller) -> None:
        self.hidden_weights = tuple(controller.hidden_weight)
        self.hidden_biases = tuple(controller.hidden_bias)

    def forward(self, layer, from_below, state, weights: StepWeights):
        (hidden,) = state
        from_hidden = torch.addmm(weights.hidden_bias[layer], hidden, weights.hidden[layer])
        new_hidden, (reset, update, candidate) = gru_cell(from_below, from_hidden, hidden)
        return new_hidden, (new_hidden,), (reset, update, candidate, from_hidden, hidden)

    def backward(self, layer, saved, grad_output, grad_state):
        reset, update, candidate, from_hidden, hidden = saved
        size = hidden.shape[1]
        grad = grad_output + grad_state[0]
        grad_candidate = grad * (1.0 - update) * (1.0 - candidate * candidate)
        grad_reset = grad_candidate * from_hidden[:, 2 * size :] * reset * (1.0 - reset)
        grad_update = grad * (hidden - candidate) * update * (1.0 - update)
        below_delta = torch.cat([grad_reset, grad_update, grad_candidate], 1)
        hidden_delta = torch.cat([grad_reset, grad_update, grad_candidate * reset], 1)
        grad_prev_hidden = torch.addmm(grad * update, hidden_delta, self.hidden_weights[layer])
        return below_delta, hidden_delta, (grad_prev_hidden,)


class _FeedForwardLayers:
    """``FeedForwardController``: h = tanh(from below), no state."""

    state_per_layer = 0

    def __init__(self, controller) -> None:
        self.hidden_weights = ()
        self.hidden_biases = ()

    def forward(self, layer, from_below, state, weights: StepWeights):
        hidden = torch.tanh(from_below)
        return hidden, (), hidden

    def backward(self, layer, saved, grad_output, grad_state):
        return grad_output * (1.0 - saved * saved), None, ()


def _layers_for(controller):
    from mann.controller import FeedForwardController, GRUController, LSTMController

    kinds = {LSTMController: _LSTMLayers, GRUController: _GRULayers,
             FeedForwardController: _FeedForwardLayers}  # fmt: skip  # exactly these classes
    kind = kinds.get(type(controller))
    return kind(controller) if kind else None


# ---------------------------------------------------------------------------------------
# The memory, one step at a time.
# ---------------------------------------------------------------------------------------
def _zeros_for_missing(grads, shapes) -> tuple[torch.Tensor, ...]:
    # dL/d(an output): autograd passes None for an output nothing used.
    return tuple(
        torch.zeros(shape, dtype=dtype) if grad is None else grad.contiguous()
        for grad, (shape, dtype) in zip(grads, shapes, strict=True)
    )


class _DenseSteps:
    """What a dense memory (NTM, DNC) does around its steps: its whole state is tensors, all
    of which pass through the node (inputs at the start, outputs at the end, each with its
    gradient). A sparse memory (``_SparseSteps``) keeps its tables outside."""

    def begin(self, access_state) -> None:
        pass

    def node_inputs(self, access_state) -> tuple[torch.Tensor, ...]:
        return tuple(access_state)

    def start(self, tensors) -> tuple[torch.Tensor, ...]:
        return tuple(t.contiguous() for t in tensors)

    def finish(self, state, keep: bool) -> list[torch.Tensor]:
        # Copies when ctx keeps the last step's tensors (``_Sequence.forward``).
        return [t.clone() if keep else t for t in state]

    def state_fields(self, outputs) -> tuple[torch.Tensor, ...]:
        return tuple(outputs)

    def grads_from(self, grads, shapes) -> tuple[torch.Tensor, ...]:
        return _zeros_for_missing(grads, shapes)

    def grads_to(self, grads) -> tuple[torch.Tensor, ...]:
        return tuple(grads)


class _NTMSteps(_DenseSteps):
    """The NTM's memory step (``mann.fused.ntm``); state (M, w^r (B,R,N), w^w (B,Hw,N))."""

    def __init__(self, access) -> None:
        self.read_heads = access.read_heads

    def forward(self, interface, state):
        memory, read_weights, write_weights = state
        previous = torch.cat([read_weights, write_weights], dim=1)
        read_vectors, memory, weights = fused_ntm.step_forward(
            interface, memory, previous, self.read_heads
        )
        heads = (self.read_heads, weights.shape[1] - self.read_heads)
        new_state = (memory, *weights.split(heads, 1))
        return read_vectors, new_state, (interface, state[0], previous)

    def backward(self, saved, grad_reads, grad_state):
        grad_memory, grad_read_weights, grad_write_weights = grad_state
        grad_weights = torch.cat([grad_read_weights, grad_write_weights], dim=1)
        grad_interface, grad_memory, grad_weights = fused_ntm.step_backward(
            *saved, grad_reads, grad_memory, grad_weights
        )
        heads = (self.read_heads, grad_weights.shape[1] - self.read_heads)
        return grad_interface, (grad_memory, *grad_weights.split(heads, 1))


class _DNCSteps(_DenseSteps):
    """The DNC's write, link and read kernels; state as ``DNCState`` (w^w as (B,1,N))."""

    def forward(self, interface, state):
        memory, usage, link, precedence, read_weights, write_weights = state
        batch, slots = usage.shape
        (memory, usage, new_write_weights), write_saved = fused_dnc.write_forward(
            interface, memory, usage, write_weights.view(batch, slots), read_weights
        )
        (link, forward, backward), link_saved = fused_link.forward_pass(
            link, precedence, new_write_weights, read_weights
        )
        (read_weights, read_vectors, precedence), read_saved = fused_dnc.read_forward(
            interface, memory, precedence, new_write_weights, forward, backward
        )
        new_state = (memory, usage, link, precedence, read_weights, new_write_weights.unsqueeze(1))
        return read_vectors, new_state, (write_saved, link_saved, read_saved)

    def backward(self, saved, grad_reads, grad_state):
        write_saved, link_saved, read_saved = saved
        grad_memory, grad_usage, grad_link, grad_precedence, grad_read_weights, grad_write = (
            grad_state
        )
        grad_write = grad_write.squeeze(1)
        (grad_interface, grad_memory_read, grad_prev_precedence, grad_write_read,
         grad_forward, grad_backward) = fused_dnc.read_backward(
            read_saved, grad_read_weights, grad_reads, grad_precedence
        )  # fmt: skip
        grad_link, grad_precedence_link, grad_write_link, grad_read_weights = (
            fused_link.backward_pass(link_saved, grad_link, grad_forward, grad_backward)
        )
        (grad_interface_write, grad_memory, grad_usage, grad_write,
         grad_read_weights_usage) = fused_dnc.write_backward(
            write_saved, grad_memory + grad_memory_read, grad_usage,
            grad_write + grad_write_read + grad_write_link,
        )  # fmt: skip
        grad_state = (
            grad_memory, grad_usage, grad_link, grad_prev_precedence + grad_precedence_link,
            grad_read_weights + grad_read_weights_usage, grad_write.unsqueeze(1),
        )  # fmt: skip
        return grad_interface + grad_interface_write, grad_state


class _SparseSteps:
    """SAM's or SDNC's step (``mann.fused.sparse_step``) on the in-place tables of a
    ``SlotStore``, as ``SAMAccess.step`` / ``SDNCAccess.step`` make it without recording.

    Only w^r (B,R,K) and the memory's gradient path (``memory_gradient``) pass through the
    node; the tables, the store, the read positions and the precedence stay here and form the
    returned state. Going back, dL/dM is one buffer (B,N,W) that each step's backward
    changes at its rows (``mann.access.sam``); it is the gradient of the initial path.
    """

    def __init__(self, access) -> None:
        from mann.access.sdnc import SDNCAccess

        self.access = access
        self.links = isinstance(access, SDNCAccess)
        self.state_type = None

    def begin(self, access_state) -> None:
        self.state_type = type(access_state)
        self.store, self.tables = self.access._checkout(access_state)
        self.store.use_kernels(fused_knn)  # the index ranks by numba too
        self.read_positions = access_state.read_positions
        if self.links:
            self.precedence = (access_state.precedence_positions, access_state.precedence_weights)
        # An item's links and reads cost about 30 and 20 µs (K = 4, K_L = 8): the batch splits
        # from 2 items. (numba's thread count is per thread: it holds for the sequence.)
        self.parts = set_threads(access_state.memory.shape[0], minimum=2)

    def node_inputs(self, access_state) -> tuple[torch.Tensor, ...]:
        return (access_state.read_weights, access_state.memory_gradient)

    def start(self, tensors) -> tuple[torch.Tensor, ...]:
        read_weights, path = tensors
        self.path_shape = path.shape
        return (read_weights.detach().contiguous(),)

    def finish(self, state, keep: bool) -> list[torch.Tensor]:
        (read_weights,) = state
        path = self.tables["memory"].new_zeros(()).expand(self.path_shape)
        return [read_weights.clone() if keep else read_weights, path]

    def state_fields(self, outputs) -> tuple[torch.Tensor, ...]:
        read_weights, path = outputs
        fields = dict(
            self.tables,
            read_positions=self.read_positions,
            read_weights=read_weights,
            steps=torch.tensor(self.store.version),
            memory_gradient=path,
        )
        if self.links:
            fields.update(precedence_positions=self.precedence[0],
                          precedence_weights=self.precedence[1])  # fmt: skip
        return tuple(self.state_type(**fields))

    def grads_from(self, grads, shapes) -> tuple:
        (grad_read_weights, grad_path), ((weights_shape, dtype), _) = grads, shapes
        if grad_read_weights is None:
            grad_read_weights = torch.zeros(weights_shape, dtype=dtype)
        if grad_path is None:  # no later read: start the buffer (lazily mapped zeros)
            from mann.access.slots import lazy_zeros

            grad_path = lazy_zeros(self.path_shape, dtype)
        self.grad_memory = grad_path.numpy()
        return (grad_read_weights.contiguous(),)

    def grads_to(self, grads) -> tuple[torch.Tensor, ...]:
        return (*grads, torch.from_numpy(self.grad_memory))

    def forward(self, interface, state):
        store, tables = self.store, self.tables
        (prev_weights,) = state
        prev_positions = self.read_positions
        version = store.begin_step()
        try:
            read_vectors, read_weights, saved = self._step(
                interface.contiguous(), prev_positions, prev_weights, version
            )
        except BaseException:
            store.rollback(tables, version - 1)
            raise
        return read_vectors, (read_weights,), saved

    def _step(self, interface, prev_positions, prev_weights, version):
        store, tables, access = self.store, self.tables, self.access
        batch, heads, k = prev_positions.shape
        width, slots = access.word_size, access.memory_size
        numpy_interface = interface.numpy()
        dtype = numpy_interface.dtype
        memory = tables["memory"]
        last_access = tables["last_access"]
        minima = store.minima(last_access).numpy()
        block_size = store.block_size(slots)
        writes = heads * k + 1

        def floats(*shape):
            return np.empty(shape, dtype=dtype)

        def integers(*shape):
            return np.empty(shape, dtype=np.int64)

        gates, add, least = floats(batch, 2), floats(batch, width), integers(batch)
        write_positions, write_weights = integers(batch, writes), floats(batch, writes)
        touched, old_rows, new_rows = (
            integers(batch, writes + 1), floats(batch, writes + 1, width),
            floats(batch, writes + 1, width),
        )  # fmt: skip
        prev_numpy = prev_positions.numpy(), prev_weights.numpy()
        with KERNEL_LOCK:
            sparse_step.write_step(
                numpy_interface, heads, width, *prev_numpy, last_access.numpy(), minima,
                block_size, memory.numpy(), gates, add, write_positions, write_weights, least,
                touched, old_rows, new_rows,
            )  # fmt: skip
        store.changed(tables, "memory", touched, old_rows, new_rows)
        store.rows_written(memory, torch.from_numpy(touched), torch.from_numpy(new_rows))
        if self.links:
            self._links(write_positions, write_weights)
        keys = torch.from_numpy(numpy_interface[:, : heads * width].reshape(batch, heads, width))
        positions = store.search(tables, keys, k).contiguous()
        content = dict(
            keys=floats(batch, heads, width), strengths=floats(batch, heads),
            rows=floats(batch, heads, k, width), similarity=floats(batch, heads, k),
            key_norms=floats(batch, heads), row_norms=floats(batch, heads, k),
            content_weights=floats(batch, heads, k),
        )  # fmt: skip
        capacity = access.temporal_reads if self.links else 0
        mixture = dict(
            modes=floats(batch, heads, 3),
            successor_values=floats(batch, heads, k, capacity),
            predecessor_values=floats(batch, heads, k, capacity),
            kept_by=integers(batch, heads, k * (2 * capacity + 1)),
        )
        read_positions, read_weights = integers(batch, heads, k), floats(batch, heads, k)
        read_rows = floats(batch, heads, k, width) if self.links else content["rows"]
        reads = floats(batch, heads, width)
        touch_positions = integers(batch, writes + heads * k)
        touch_old, touch_new = integers(*touch_positions.shape), integers(*touch_positions.shape)
        if self.links:
            link_tables = [tables[name].numpy() for name in _LINK_TABLES]
        else:  # SAM has no links: empty stand-ins the kernel never reads
            link_tables = [np.zeros((1, 1, 0), kind) for kind in (np.int64, dtype) * 2]
        with KERNEL_LOCK:
            sparse_step.read_step(
                numpy_interface, heads, width, positions.numpy(), memory.numpy(), self.links,
                *link_tables, *prev_numpy, last_access.numpy(), minima, block_size,
                write_positions, write_weights,
                dtype.type(addressing.USAGE_THRESHOLD), version, *content.values(),
                *mixture.values(), read_positions, read_weights, read_rows, reads,
                touch_positions, touch_old, touch_new, self.parts,
            )  # fmt: skip
        store.changed(tables, "last_access", touch_positions, touch_old, touch_new)
        self.read_positions = torch.from_numpy(read_positions)
        # In the order of sparse_step.step_backward's arguments.
        saved = (
            numpy_interface, gates, add, prev_numpy[1], write_positions, write_weights, least,
            positions.numpy(), *content.values(), *mixture.values(), read_positions,
            read_weights, read_rows,
        )  # fmt: skip
        return torch.from_numpy(reads), torch.from_numpy(read_weights), saved

    def _links(self, write_positions, write_weights):
        """The SDNC's link tables and precedence by ``sparse_step.link_step``, else (a tie
        or NaN ``mann.fused.sdnc`` leaves to torch) by the torch composition."""
        store, tables = self.store, self.tables
        prev_positions, prev_values = (t.contiguous().numpy() for t in self.precedence)
        batch, writes = write_positions.shape
        capacity, dtype = prev_positions.shape[1], write_weights.dtype
        precedence = np.empty(prev_positions.shape, dtype=np.int64)
        precedence_values = np.empty(prev_values.shape, dtype=dtype)
        row_count = writes + (capacity + writes) * capacity  # as mann.fused.sdnc makes them
        column_count = capacity + writes * (capacity + 1)
        changed, journals = [], []
        for count in (row_count, column_count):
            changed.append(np.empty((batch, count), dtype=np.int64))
            changed.append(np.empty((batch, count, capacity), dtype=np.int64))
            changed.append(np.empty((batch, count, capacity), dtype=dtype))
            journals.append(np.empty(batch * count, dtype=np.int64))
            journals += [np.empty((batch * count, capacity), dtype=np.int64) for _ in range(2)]
            journals += [np.empty((batch * count, capacity), dtype=dtype) for _ in range(2)]
        maps = sparse_step.scratch_maps(self.parts, tables["link_predecessors"].shape[1])
        with KERNEL_LOCK:
            status, *journaled = sparse_step.link_step(
                *(tables[name].numpy() for name in _LINK_TABLES), write_positions,
                write_weights, prev_positions, prev_values, np.ones(1, dtype=dtype), *maps,
                precedence, precedence_values, *changed, *journals, self.parts,
            )  # fmt: skip
            if status != fused_sdnc.DONE:
                for where in maps:  # a rare path: the kernel stopped with some slots marked
                    where.fill(-1)
        prev_precedence = self.precedence
        self.precedence = (torch.from_numpy(precedence), torch.from_numpy(precedence_values))
        if status != fused_sdnc.DONE:
            positions, weights = torch.from_numpy(write_positions), torch.from_numpy(write_weights)
            self.access._update_links(store, tables, positions, weights, prev_precedence)
            return
        for kind, count, (index, old_slots, new_slots, old_weights, new_weights) in zip(
            ("predecessor", "successor"), journaled, (journals[:5], journals[5:]), strict=True
        ):
            store.journal_rows(f"link_{kind}s", index[:count], old_slots[:count],
                               new_slots[:count])  # fmt: skip
            store.journal_rows(f"link_{kind}_weights", index[:count], old_weights[:count],
                               new_weights[:count])  # fmt: skip

    def backward(self, saved, grad_reads, grad_state):
        (grad_read_weights,) = grad_state
        interface, read_positions = saved[0], saved[-3]
        batch, heads, k = read_positions.shape
        grad_interface = np.empty(interface.shape, dtype=interface.dtype)
        grad_prev = np.empty((batch, heads, k), dtype=interface.dtype)
        with KERNEL_LOCK:
            sparse_step.step_backward(
                np.ascontiguousarray(grad_reads.numpy()), grad_read_weights.numpy(),
                self.grad_memory, self.links, heads, self.access.word_size, *saved,
                grad_interface, grad_prev,
            )  # fmt: skip
        return torch.from_numpy(grad_interface), (torch.from_numpy(grad_prev),)


_LINK_TABLES = ("link_predecessors", "link_predecessor_weights", "link_successors",
                "link_successor_weights")  # fmt: skip


def _steps_for(access):
    """The memory's part of a step, for exactly the access classes the kernels implement (a
    subclass may change the equations: it runs the reference unless it registers its own)."""
    from mann.access.dnc import DNCAccess
    from mann.access.ntm import NTMAccess
    from mann.access.sam import SAMAccess
    from mann.access.sdnc import SDNCAccess

    kind = type(access)
    if kind in (SAMAccess, SDNCAccess):
        return _SparseSteps(access) if sparse_step.USABLE else None
    if kind is DNCAccess:
        return _DNCSteps()
    if kind is NTMAccess:
        return _NTMSteps(access)
    return None


def run(model, inputs: torch.Tensor, state):
    """The model over ``inputs`` (B,T,X) from ``state`` (a ``ModelState``) as one autograd
    node -> (logits (B,T,Y), controller state, access state fields, read vectors)."""
    controller = model.controller
    cells = _layers_for(controller)
    parameters = (
        controller.input_weight,
        controller.read_weight,
        *controller.bias,
        *controller.layer_weight,
        *cells.hidden_weights,
        *cells.hidden_biases,
        model.interface.weight,
        model.interface.bias,
        model.output.weight,
        model.output.bias,
    )
    steps = _steps_for(model.access)
    steps.begin(state.access)
    tensors = (inputs, *parameters, *_state_tensors(model, state, steps))
    # Without a backward to come (evaluation, no_grad), keep nothing per step: kept, every
    # step's link stayed alive to the end (a DNC 256 at batch 64 over 161 steps: 3.6 GB).
    backward_follows = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    plan = _Plan(controller.num_layers, model.config.clip_value, len(parameters), cells,
                 steps, backward_follows)  # fmt: skip
    outputs = _Sequence.apply(plan, *tensors)
    logits, final = outputs[0], outputs[1:]
    controller_size = cells.state_per_layer * controller.num_layers
    access_fields = steps.state_fields(final[controller_size:-1])
    return logits, tuple(final[:controller_size]), access_fields, final[-1]


class _Plan:
    """What the node needs besides tensors: sizes, the clip, and the two parts of a step."""

    def __init__(self, layers, clip, parameter_count, cells, memory_steps, keep) -> None:
        self.layers, self.clip, self.parameter_count = layers, clip, parameter_count
        self.cells, self.memory_steps = cells, memory_steps
        self.keep = keep  # whether a backward follows, so each step's saved must be kept

    def split(self, parameters):
        """The parameters by role, in ``run``'s order."""
        layers = self.layers
        recurrent = len(self.cells.hidden_weights)
        return dict(
            input_weight=parameters[0],
            read_weight=parameters[1],
            biases=parameters[2 : 2 + layers],
            layer_weights=parameters[2 + layers : 1 + 2 * layers],
            hidden_weights=parameters[1 + 2 * layers : 1 + 2 * layers + recurrent],
            hidden_biases=parameters[1 + 2 * layers + recurrent : -4],
            interface_weight=parameters[-4],
            interface_bias=parameters[-3],
            output_weight=parameters[-2],
            output_bias=parameters[-1],
        )


class _Sequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, inputs, *tensors):
        layers, clip, cells = plan.layers, plan.clip, plan.cells
        parameters, state = tensors[: plan.parameter_count], tensors[plan.parameter_count :]
        weights = plan.split(parameters)
        per_layer = cells.state_per_layer
        controller_state = [
            tuple(state[layer * per_layer : (layer + 1) * per_layer]) for layer in range(layers)
        ]
        access_state = plan.memory_steps.start(state[layers * per_layer : -1])
        batch, steps, _ = inputs.shape
        reads = state[-1].reshape(batch, -1)

        # Time-major, so each step's slice is contiguous.
        time_major = inputs.transpose(0, 1).reshape(steps * batch, -1)
        projected = torch.addmm(
            weights["biases"][0], time_major, weights["input_weight"].t()
        ).view(steps, batch, -1)
        step_weights = make_step_weights(
            weights["read_weight"], weights["hidden_weights"], weights["layer_weights"],
            weights["biases"], weights["hidden_biases"],
        )  # fmt: skip
        interface_weight_t = weights["interface_weight"].t()
        interface_bias = weights["interface_bias"]

        # Per layer and step: the layer's input from below (r_{t-1} for the first), its state
        # at t-1, what its backward needs. Per step: the interface's clamp mask, the memory's.
        below_inputs = [[] for _ in range(layers)]
        prev_states = [[] for _ in range(layers)]
        cell_saved = [[] for _ in range(layers)]
        raw_interfaces, access_saved, top_hiddens, read_outputs = [], [], [], []
        keep = plan.keep
        for t in range(steps):
            below = reads
            for layer in range(layers):
                from_below = layer_input(layer, projected[t], below, step_weights)
                if keep:
                    below_inputs[layer].append(below)
                    prev_states[layer].append(controller_state[layer])
                below, controller_state[layer], saved = cells.forward(
                    layer, from_below, controller_state[layer], step_weights
                )
                if keep:
                    cell_saved[layer].append(saved)
            top_hiddens.append(below)
            raw = torch.addmm(interface_bias, below, interface_weight_t)
            interface = raw.clamp(-clip, clip)
            read_vectors, access_state, saved = plan.memory_steps.forward(interface, access_state)
            if keep:
                raw_interfaces.append(raw)
                access_saved.append(saved)
            reads = read_vectors.reshape(batch, -1)
            read_outputs.append(reads)

        output_inputs = torch.cat([torch.stack(top_hiddens), torch.stack(read_outputs)], -1)
        raw_logits = torch.addmm(
            weights["output_bias"], output_inputs.flatten(0, 1), weights["output_weight"].t()
        )
        logits = raw_logits.clamp(-clip, clip).view(steps, batch, -1).transpose(0, 1)

        # Unused outputs' gradients stay None: materialised, the sparse memories' (B,N,W)
        # gradient path would be written in full, and its pages are what a sparse step spares.
        ctx.set_materialize_grads(False)
        ctx.plan = plan
        ctx.shapes = (batch, steps, state[-1].shape)
        ctx.parameters = parameters
        ctx.time_major = time_major
        ctx.below_inputs, ctx.prev_states, ctx.cell_saved = below_inputs, prev_states, cell_saved
        ctx.raw_interfaces, ctx.access_saved = raw_interfaces, access_saved
        ctx.output_inputs = output_inputs
        ctx.logit_mask = (raw_logits.abs() <= clip).view(steps, batch, -1)
        # Copies when ctx keeps the last step's tensors (the link's saved L_T, arrays viewing
        # M_T): an output that ctx holds is a cycle through autograd's C++ graph that only a
        # full garbage collection frees, and every sequence's graph outlived its step.
        final = [value.clone() if keep else value
                 for layer_state in controller_state for value in layer_state]  # fmt: skip
        final += [*plan.memory_steps.finish(access_state, keep), read_vectors.clone()]
        ctx.final_shapes = [(t.shape, t.dtype) for t in final]
        return logits.contiguous(), *final

    @staticmethod
    @once_differentiable  # the backward is hand-written: no second derivative through it
    def backward(ctx, grad_logits, *grad_state):
        plan = ctx.plan
        layers, cells = plan.layers, plan.cells
        batch, steps, read_shape = ctx.shapes
        weights = plan.split(ctx.parameters)
        hidden_size = ctx.output_inputs.shape[-1] - read_shape[-2] * read_shape[-1]

        # Through the output projection for all steps at once.
        if grad_logits is None:
            grad_logits = torch.zeros_like(ctx.logit_mask, dtype=ctx.time_major.dtype)
        else:
            grad_logits = grad_logits.transpose(0, 1) * ctx.logit_mask  # time-major
        flat_grad_logits = grad_logits.reshape(steps * batch, -1)
        grad_output_inputs = (flat_grad_logits @ weights["output_weight"]).view(steps, batch, -1)
        grad_output_weight = flat_grad_logits.t() @ ctx.output_inputs.flatten(0, 1)
        grad_output_bias = flat_grad_logits.sum(0)

        # dL/d(state) carried back through time, starting from what reached the final state.
        per_layer = cells.state_per_layer
        controller_size = layers * per_layer
        shapes = ctx.final_shapes
        carried = _zeros_for_missing(grad_state[:controller_size], shapes[:controller_size])
        grad_controller = [
            tuple(carried[layer * per_layer : (layer + 1) * per_layer]) for layer in range(layers)
        ]
        grad_access = plan.memory_steps.grads_from(
            grad_state[controller_size:-1], shapes[controller_size:-1]
        )
        grad_reads = _zeros_for_missing(grad_state[-1:], shapes[-1:])[0].view(batch, -1)

        # Where the interface's clamp passes the gradient, for all steps at once.
        interface_masks = (torch.stack(ctx.raw_interfaces).abs() <= plan.clip).unbind(0)
        below_deltas = [[None] * steps for _ in range(layers)]
        hidden_deltas = [[None] * steps for _ in range(layers)]
        grad_interfaces = [None] * steps
        for t in reversed(range(steps)):
            grad_reads = grad_reads + grad_output_inputs[t, :, hidden_size:]
            grad_interface, grad_access = plan.memory_steps.backward(
                ctx.access_saved[t], grad_reads.view(read_shape), grad_access
            )
            grad_interface = grad_interface * interface_masks[t]
            grad_interfaces[t] = grad_interface

            # The controller, top layer down: h_t feeds the layer above (or the interface
            # and the output) and, through the layer's state, its own next step.
            grad_from_above = torch.addmm(
                grad_output_inputs[t, :, :hidden_size], grad_interface, weights["interface_weight"]
            )
            for layer in reversed(range(layers)):
                below_delta, hidden_delta, grad_controller[layer] = cells.backward(
                    layer, ctx.cell_saved[layer][t], grad_from_above, grad_controller[layer]
                )
                below_deltas[layer][t], hidden_deltas[layer][t] = below_delta, hidden_delta
                if layer > 0:
                    grad_from_above = below_delta @ weights["layer_weights"][layer - 1]
                else:
                    grad_reads = below_delta @ weights["read_weight"]

        # Every weight's gradient as one product over all steps: dW = Σ_t δ_tᵀ x_t.
        def over_time(deltas, values):
            return torch.stack(deltas).flatten(0, 1).t() @ torch.stack(values).flatten(0, 1)

        first = torch.stack(below_deltas[0]).flatten(0, 1)
        grad_inputs = None
        if ctx.needs_input_grad[1]:
            grad_inputs = (first @ weights["input_weight"]).view(steps, batch, -1).transpose(0, 1)
        grad_biases = [torch.stack(below_deltas[layer]).sum((0, 1)) for layer in range(layers)]
        grad_layer_weights = [
            over_time(below_deltas[layer], ctx.below_inputs[layer]) for layer in range(1, layers)
        ]
        grad_hidden_weights = [
            over_time(hidden_deltas[layer], [state[0] for state in ctx.prev_states[layer]])
            for layer in range(len(weights["hidden_weights"]))
        ]
        grad_hidden_biases = [
            torch.stack(hidden_deltas[layer]).sum((0, 1))
            for layer in range(len(weights["hidden_biases"]))
        ]
        top_hiddens = ctx.output_inputs[..., :hidden_size].unbind(0)
        initial = [value for layer_grads in grad_controller for value in layer_grads]
        initial += [*plan.memory_steps.grads_to(grad_access), grad_reads.view(read_shape)]
        return (
            None,
            grad_inputs,
            first.t() @ ctx.time_major,
            over_time(below_deltas[0], ctx.below_inputs[0]),
            *grad_biases,
            *grad_layer_weights,
            *grad_hidden_weights,
            *grad_hidden_biases,
            over_time(grad_interfaces, top_hiddens),
            torch.stack(grad_interfaces).sum((0, 1)),
            grad_output_weight,
            grad_output_bias,
            *initial,
        )
