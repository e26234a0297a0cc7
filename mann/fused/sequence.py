"""A whole LSTM-controlled NTM or DNC sequence as one autograd node: training without the engine.

``MemoryAugmentedNetwork.forward`` steps an LSTM and a memory through time; with the fused
kernels a time step is still about ten (NTM) or thirteen (DNC) autograd nodes, and at the
sizes they train at (NTM 128×20, DNC 64×20) the engine's bookkeeping for them and the Python
around each Function cost about as much as the kernels. Here the same computation is one
``torch.autograd.Function`` over the sequence: its forward runs the same loop with gradients
off, keeping what each step's backward needs (the LSTM activations, the kernels' saved
arrays); its backward runs the time loop in reverse by hand, carrying dL/d(state) from step
to step, and forms every weight's gradient at the end with one matrix product over all
steps (dW = Σ_t δ_tᵀ x_t) instead of one per step.

Nothing here is a new equation: each step calls the kernels the memory uses when not
recording (``NTMAccess``: ``mann.fused.ntm``; ``DNCAccess``: ``mann.fused.dnc`` write and
read, ``mann.fused.link``) and ``mann.fused.lstm``'s cell, in the order of
``MemoryAugmentedNetwork.forward``; tests hold the two paths equal in values and in every
gradient, including gradients that arrive through the returned state. The memory's part of a
step is an object with ``forward(interface, state) -> (r_t, state_t, saved)`` and
``backward(saved, dL/dr_t, dL/dstate_t) -> (dL/dinterface, dL/dstate_{t-1})`` (``_NTMSteps``,
``_DNCSteps``).

Taken when not recording, for an LSTM controller with an NTM or DNC memory, CPU float tensors
of one dtype, numba present and ``clip_value >= 1`` (a smaller clip also clips h_t);
otherwise the model runs step by step.
"""

from __future__ import annotations

import torch

from mann.fused import dnc as fused_dnc
from mann.fused import link as fused_link
from mann.fused import ntm as fused_ntm
from mann.fused.lstm import cell_backward, cell_forward
from mann.fused.runtime import usable as kernels_usable

# False: always step by step (tests compare the two paths).
ENABLED = True


def usable(model, inputs: torch.Tensor, state) -> bool:
    """Whether ``run`` can take this model, input and state."""
    from mann.controller import LSTMController

    return (
        ENABLED
        and _steps_for(model.access) is not None
        and isinstance(model.controller, LSTMController)
        and model.config.clip_value >= 1.0
        and kernels_usable(inputs, *model.parameters(), *_state_tensors(state))
    )


def _state_tensors(state) -> tuple[torch.Tensor, ...]:
    controller_state, access_state, read_vectors = state
    return (*controller_state, *access_state, read_vectors)


class _NTMSteps:
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


class _DNCSteps:
    """The DNC's write, link and read kernels; state as ``DNCState`` (w^w as (B,1,N))."""

    def __init__(self, access) -> None:
        pass

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


def _steps_for(access):
    from mann.access.dnc import DNCAccess
    from mann.access.ntm import NTMAccess

    if isinstance(access, DNCAccess):
        return _DNCSteps(access)
    if isinstance(access, NTMAccess):
        return _NTMSteps(access)
    return None


def run(model, inputs: torch.Tensor, state):
    """The model over ``inputs`` (B,T,X) from ``state`` (a ``ModelState``) as one autograd
    node -> (logits (B,T,Y), controller state, access state fields, read vectors)."""
    controller = model.controller
    layers = controller.num_layers
    parameters = (
        controller.input_weight,
        controller.read_weight,
        *controller.bias,
        *controller.hidden_weight,
        *controller.layer_weight,
        model.interface.weight,
        model.interface.bias,
        model.output.weight,
        model.output.bias,
    )
    plan = (layers, model.config.clip_value, len(parameters), _steps_for(model.access))
    outputs = _Sequence.apply(plan, inputs, *parameters, *_state_tensors(state))
    logits, final = outputs[0], outputs[1:]
    controller_state, access_state = final[: 2 * layers], final[2 * layers : -1]
    return logits, tuple(controller_state), access_state, final[-1]


class _Sequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, inputs, *tensors):
        layers, clip, parameter_count, memory_steps = plan
        parameters, state = tensors[:parameter_count], tensors[parameter_count:]
        input_weight, read_weight = parameters[:2]
        biases = parameters[2 : 2 + layers]
        hidden_weights = parameters[2 + layers : 2 + 2 * layers]
        layer_weights = parameters[2 + 2 * layers : 1 + 3 * layers]
        interface_weight, interface_bias, output_weight, output_bias = parameters[-4:]
        hidden, cell = list(state[0 : 2 * layers : 2]), list(state[1 : 2 * layers : 2])
        access_state = tuple(t.contiguous() for t in state[2 * layers : -1])
        batch, steps, _ = inputs.shape
        reads = state[-1].reshape(batch, -1)

        # Time-major, so each step's slice is contiguous.
        time_major = inputs.transpose(0, 1).reshape(steps * batch, -1)
        projected = torch.addmm(biases[0], time_major, input_weight.t()).view(steps, batch, -1)
        read_weight_t = read_weight.t()
        hidden_weights_t = [weight.t() for weight in hidden_weights]
        layer_weights_t = [weight.t() for weight in layer_weights]
        interface_weight_t = interface_weight.t()

        # Per layer and step: the layer's input from below (r_{t-1} for the first), h_{t-1},
        # the cell's activations. Per step: the interface's clamp mask, the kernels' saved.
        layer_inputs = [[] for _ in range(layers)]
        prev_hiddens = [[] for _ in range(layers)]
        cells = [[] for _ in range(layers)]
        interface_masks, access_saved, top_hiddens, read_outputs = [], [], [], []
        for t in range(steps):
            below = reads
            for layer in range(layers):
                if layer == 0:
                    gates = torch.addmm(projected[t], reads, read_weight_t)
                else:
                    gates = torch.addmm(biases[layer], below, layer_weights_t[layer - 1])
                gates.addmm_(hidden[layer], hidden_weights_t[layer])
                layer_inputs[layer].append(below)
                prev_hiddens[layer].append(hidden[layer])
                new_hidden, new_cell, activations = cell_forward(gates, cell[layer])
                cells[layer].append((*activations, cell[layer]))
                hidden[layer], cell[layer] = new_hidden, new_cell
                below = new_hidden
            top_hiddens.append(below)
            raw = torch.addmm(interface_bias, below, interface_weight_t)
            interface_masks.append(raw.abs() <= clip)  # where clamp passes the gradient
            interface = raw.clamp(-clip, clip)
            read_vectors, access_state, saved = memory_steps.forward(interface, access_state)
            access_saved.append(saved)
            reads = read_vectors.reshape(batch, -1)
            read_outputs.append(reads)

        output_inputs = torch.cat([torch.stack(top_hiddens), torch.stack(read_outputs)], -1)
        raw_logits = torch.addmm(output_bias, output_inputs.flatten(0, 1), output_weight.t())
        logits = raw_logits.clamp(-clip, clip).view(steps, batch, -1).transpose(0, 1)

        ctx.plan = plan
        ctx.shapes = (batch, steps, state[-1].shape)
        ctx.parameters = parameters
        ctx.time_major = time_major
        ctx.layer_inputs, ctx.prev_hiddens, ctx.cells = layer_inputs, prev_hiddens, cells
        ctx.interface_masks, ctx.access_saved = interface_masks, access_saved
        ctx.output_inputs = output_inputs
        ctx.logit_mask = (raw_logits.abs() <= clip).view(steps, batch, -1)
        final = [value for pair in zip(hidden, cell, strict=True) for value in pair]
        final += [*access_state, read_vectors]
        ctx.final_shapes = [(t.shape, t.dtype) for t in final]
        # Copies: ctx keeps the last step's tensors (the link's saved L_T, arrays viewing
        # M_T), and an output that ctx holds is a cycle through autograd's C++ graph that
        # Python's collector cannot see; every sequence's graph leaked until they were copies.
        return logits.contiguous(), *(t.clone() for t in final)

    @staticmethod
    def backward(ctx, grad_logits, *grad_state):
        layers, _, _, memory_steps = ctx.plan
        batch, steps, read_shape = ctx.shapes
        parameters = ctx.parameters
        input_weight, read_weight = parameters[:2]
        hidden_weights = parameters[2 + layers : 2 + 2 * layers]
        layer_weights = parameters[2 + 2 * layers : 1 + 3 * layers]
        interface_weight, output_weight = parameters[-4], parameters[-2]
        hidden_size = hidden_weights[0].shape[1]

        # Through the output projection for all steps at once.
        if grad_logits is None:
            grad_logits = torch.zeros_like(ctx.logit_mask, dtype=output_weight.dtype)
        else:
            grad_logits = grad_logits.transpose(0, 1) * ctx.logit_mask  # time-major
        flat_grad_logits = grad_logits.reshape(steps * batch, -1)
        grad_output_inputs = (flat_grad_logits @ output_weight).view(steps, batch, -1)
        grad_output_weight = flat_grad_logits.t() @ ctx.output_inputs.flatten(0, 1)
        grad_output_bias = flat_grad_logits.sum(0)

        # dL/d(state) carried back through time, starting from what reached the final state.
        carried = [
            torch.zeros(shape, dtype=dtype) if grad is None else grad.contiguous()
            for grad, (shape, dtype) in zip(grad_state, ctx.final_shapes, strict=True)
        ]
        grad_hidden, grad_cell = carried[0 : 2 * layers : 2], carried[1 : 2 * layers : 2]
        grad_access = tuple(carried[2 * layers : -1])
        grad_reads = carried[-1].view(batch, -1)

        grad_gates = [[None] * steps for _ in range(layers)]
        grad_interfaces = [None] * steps
        for t in reversed(range(steps)):
            grad_reads = grad_reads + grad_output_inputs[t, :, hidden_size:]
            grad_interface, grad_access = memory_steps.backward(
                ctx.access_saved[t], grad_reads.view(read_shape), grad_access
            )
            grad_interface = grad_interface * ctx.interface_masks[t]
            grad_interfaces[t] = grad_interface

            # The controller, top layer down: h_t feeds the layer above (or the interface
            # and the output) and its own next step.
            grad_from_above = torch.addmm(
                grad_output_inputs[t, :, :hidden_size], grad_interface, interface_weight
            )
            for layer in reversed(range(layers)):
                grad_gates_t, grad_cell[layer] = cell_backward(
                    ctx.cells[layer][t], grad_from_above + grad_hidden[layer], grad_cell[layer]
                )
                grad_gates[layer][t] = grad_gates_t
                grad_hidden[layer] = grad_gates_t @ hidden_weights[layer]
                if layer > 0:
                    grad_from_above = grad_gates_t @ layer_weights[layer - 1]
                else:
                    grad_reads = grad_gates_t @ read_weight

        # Every weight's gradient as one product over all steps: dW = Σ_t δ_tᵀ x_t.
        def over_time(deltas, values):
            return torch.stack(deltas).flatten(0, 1).t() @ torch.stack(values).flatten(0, 1)

        first = torch.stack(grad_gates[0]).flatten(0, 1)
        grad_input_weight = first.t() @ ctx.time_major
        grad_read_weight = over_time(grad_gates[0], ctx.layer_inputs[0])
        grad_biases = [torch.stack(grad_gates[layer]).sum((0, 1)) for layer in range(layers)]
        grad_hidden_weights = [
            over_time(grad_gates[layer], ctx.prev_hiddens[layer]) for layer in range(layers)
        ]
        grad_layer_weights = [
            over_time(grad_gates[layer], ctx.layer_inputs[layer]) for layer in range(1, layers)
        ]
        top_hiddens = ctx.output_inputs[..., :hidden_size].unbind(0)
        grad_interface_weight = over_time(grad_interfaces, top_hiddens)
        grad_interface_bias = torch.stack(grad_interfaces).sum((0, 1))
        grad_inputs = None
        if ctx.needs_input_grad[1]:
            grad_inputs = (first @ input_weight).view(steps, batch, -1).transpose(0, 1)

        initial = [value for pair in zip(grad_hidden, grad_cell, strict=True) for value in pair]
        initial += [*grad_access, grad_reads.view(read_shape)]
        return (
            None,
            grad_inputs,
            grad_input_weight,
            grad_read_weight,
            *grad_biases,
            *grad_hidden_weights,
            *grad_layer_weights,
            grad_interface_weight,
            grad_interface_bias,
            grad_output_weight,
            grad_output_bias,
            *initial,
        )
