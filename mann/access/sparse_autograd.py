"""The autograd functions that touch a sparse memory (SAM, SDNC): the write and the reads.

The memory itself is never part of autograd. The autograd functions that touch it are
``_Write`` (the write weighting and the write, steps 2–3) and the reads (``_ContentRead``,
``_ReadRows``, or ``_GatherRows`` in the reference composition), each of which copies the
rows it uses. Each takes and returns ``memory_gradient``, a placeholder of the memory's
shape with no storage, that orders them in time; the gradient that autograd passes along
that path is dL/dM_t, one dense buffer for the whole sequence, allocated when the backward
pass reaches the last read and then updated in place, step by step, going back in time:
- a read adds its rows' gradients into the buffer at its K positions;
- a write, linear in M, needs no memory values: dL/dw^w = (dL/dM_t[i])·a at its K+1 rows,
  dL/da = Σ w^w[i] dL/dM_t[i], and dL/dM_{t-1} is dL/dM_t with the wiped row U zeroed.
What autograd keeps per step is the K gathered rows, the K+1 positions and weights and the
write vector: O(K W), never a copy of memory. (The paper keeps the touched rows' old values and
rolls memory back; here no step's backward needs memory at all, since reads keep their rows.)
No gradient flows through the index or the usage: they yield integer positions.
"""

from __future__ import annotations

import torch

from mann import addressing
from mann.access.slots import flat_index, lazy_zeros, memory_gradient_placeholder, rows_at


class _Write(torch.autograd.Function):
    """Steps 2–3, the write weighting and the write (in place), as one autograd node with an
    O(K) backward; see the module docstring. Returns (next path, write positions (B,P),
    write weights (B,P)); the weights are for the record and the usage, their gradient
    flows through the write itself."""

    @staticmethod
    def forward(ctx, path, prev_read_weights, write_gate, interpolation_gate, add,
                store, tables, prev_read_positions, least_used):  # fmt: skip
        ctx.set_materialize_grads(False)
        positions, weights = addressing.sparse_write_weighting(
            prev_read_positions, prev_read_weights, least_used, write_gate, interpolation_gate
        )
        store.write(tables, positions, weights, add, least_used)
        ctx.save_for_backward(
            weights, add, positions, least_used, prev_read_weights, write_gate, interpolation_gate
        )
        ctx.mark_non_differentiable(positions, weights)
        return memory_gradient_placeholder(path), positions, weights

    @staticmethod
    def backward(ctx, grad_memory, _grad_positions, _grad_weights):
        if grad_memory is None:  # nothing later read this memory
            return (None,) * 9
        weights, add, positions, least_used, prev_read_weights, write_gate, gamma = (
            ctx.saved_tensors
        )
        grad_rows = rows_at(grad_memory, positions)  # dL/dM_t at the written rows (B,P,W)
        grad_weights = (grad_rows * add.unsqueeze(1)).sum(-1)
        grad_add = torch.bmm(weights.unsqueeze(1), grad_rows).squeeze(1)
        # M_t[U] does not depend on M_{t-1}[U].
        unused = flat_index(least_used.unsqueeze(-1), grad_memory.shape[1])
        grad_memory.flatten(0, 1).index_fill_(0, unused, 0.0)
        # w^w = [α γ / R · w^r_{t-1}, α (1 - γ)] (addressing.sparse_write_weighting).
        batch, heads, k = prev_read_weights.shape
        grad_read_part, grad_unused = grad_weights[:, :-1], grad_weights[:, -1]
        along_reads = (grad_read_part * prev_read_weights.reshape(batch, heads * k)).sum(-1)
        grad_prev = (write_gate * gamma / heads).unsqueeze(-1) * grad_read_part
        grad_write_gate = gamma / heads * along_reads + (1.0 - gamma) * grad_unused
        grad_gamma = write_gate / heads * along_reads - write_gate * grad_unused
        return (grad_memory, grad_prev.view(batch, heads, k), grad_write_gate, grad_gamma,
                grad_add, None, None, None, None)  # fmt: skip


class _GatherRows(torch.autograd.Function):
    """A copy of the memory rows at ``positions`` (B,Q) -> (B,Q,W), with its O(K) backward."""

    @staticmethod
    def forward(ctx, path, tables, positions):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(positions)
        ctx.memory_shape = path.shape
        return rows_at(tables["memory"], positions), memory_gradient_placeholder(path)

    @staticmethod
    def backward(ctx, grad_rows, grad_memory):
        if grad_rows is None:
            return grad_memory, None, None
        (positions,) = ctx.saved_tensors
        if grad_memory is None:  # the last read of the sequence: start the buffer
            grad_memory = lazy_zeros(ctx.memory_shape, grad_rows.dtype, grad_rows.device)
        index = flat_index(positions, grad_memory.shape[1])
        grad_memory.flatten(0, 1).index_add_(0, index, grad_rows.flatten(0, 1))
        return grad_memory, None, None


def content_read(path, tables, positions, keys, strengths, read: bool = True):
    """Weights softmax_k(β D(k, M[i_k])) (B,H,K) over the rows at ``positions`` (B,H,K), and
    with ``read`` the read vectors Σ_k w_k M[i_k] (B,H,W) (else None), and the next path."""
    memory = tables["memory"]
    batch, heads, k = positions.shape
    rows, path = gather_rows(path, tables, positions.flatten(1))
    rows = rows.view(batch, heads, k, memory.shape[2])
    weights = addressing.sparse_content_weights(rows, keys, strengths)
    return weights, (addressing.sparse_read(rows, weights) if read else None), path


def read_rows(path, tables, positions, weights):
    """Read vectors Σ_k w_k M[i_k] (B,H,W) at ``positions`` (B,H,K), and the next path."""
    memory = tables["memory"]
    rows, path = gather_rows(path, tables, positions.flatten(1))
    rows = rows.view(*positions.shape, memory.shape[2])
    return addressing.sparse_read(rows, weights), path


def write(path, store, tables, prev_read_positions, prev_read_weights, least_used, io):
    """The write weighting and the write, in place: (next path, write positions, weights)."""
    return _Write.apply(
        path, prev_read_weights, io.write_gate, io.interpolation_gate, io.write_vector,
        store, tables, prev_read_positions, least_used,
    )  # fmt: skip


def gather_rows(path, tables, positions) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows at ``positions`` (B,Q) -> ((B,Q,W), next ``memory_gradient`` placeholder)."""
    return _GatherRows.apply(path, tables, positions)
