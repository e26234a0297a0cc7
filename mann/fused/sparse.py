"""Fused kernels for the sparse memories' reads (SAM, SDNC; ``mann.access.sam``).

A sparse content read gathers the K rows a k-NN index found for each key, scores them by
cosine similarity, takes the softmax of the scores times β and (SAM) reads the weighted sum
of the rows. Composed from torch operations (``addressing.sparse_content_weights`` and
``sparse_read``) that is about twenty operations a step and as many autograd nodes, on
arrays of a few thousand numbers; here it is one kernel forward and one backward, which
also adds the rows' gradients into the memory's gradient buffer in place. The content
weights and their gradient are ``mann.fused.content``'s, on the gathered rows (K,W).
"""

from __future__ import annotations

import numpy as np
import torch

from mann import addressing
from mann.access.slots import lazy_zeros, memory_gradient_placeholder
from mann.fused.runtime import HAVE_NUMBA, njit, usable

if HAVE_NUMBA:
    from mann.fused.content import content_rows, content_rows_backward, norms_of_rows

    # No division here can be by zero (ε in the cosine's denominator, zero norms skipped), so
    # numpy's error model: python's checks before every division, and with it the content
    # read's backward took 9.5 µs a call against 7.0 (B=8, 4 heads, K=4, W=32; one-off).
    KERNEL = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")

    @njit(**KERNEL)
    def content_read_forward(
        memory, positions, keys, strengths, rows, similarity, key_norms, row_norms, weights, reads,
    ):  # fmt: skip
        """memory (B,N,W), positions (B,H,K), keys (B,H,W), strengths β (B,H) -> fills
        rows (B,H,K,W) (a copy, for the backward), similarity D (B,H,K), the norms |k| (B,H)
        and |M[i_k]| (B,H,K), weights softmax_k(β D) (B,H,K) and reads Σ_k w_k M[i_k]
        (B,H,W)."""
        batch, heads, k = positions.shape
        width = memory.shape[2]
        for b in range(batch):
            for h in range(heads):
                for j in range(k):
                    slot = positions[b, h, j]
                    for c in range(width):
                        rows[b, h, j, c] = memory[b, slot, c]
                norms_of_rows(rows[b, h], row_norms[b, h])
                key_norms[b, h] = content_rows(rows[b, h], row_norms[b, h], keys[b, h],
                                               strengths[b, h], weights[b, h],
                                               similarity[b, h])  # fmt: skip
                for c in range(width):
                    reads[b, h, c] = 0.0
                for j in range(k):
                    for c in range(width):
                        reads[b, h, c] += weights[b, h, j] * rows[b, h, j, c]

    @njit(**KERNEL)
    def content_read_backward(
        grad_weights, grad_reads, positions, keys, strengths, rows, similarity, key_norms,
        row_norms, weights, grad_memory, grad_keys, grad_strengths,
    ):  # fmt: skip
        """The gradients of ``content_read_forward``: from dL/dw (B,H,K) and dL/dr (B,H,W)
        to dL/dk (B,H,W) and dL/dβ (B,H), filled; dL/dM at the read rows is added into
        grad_memory (B,N,W) in place."""
        batch, heads, k = positions.shape
        width = keys.shape[2]
        grad_w = np.empty(k, dtype=weights.dtype)
        grad_rows, scratch = np.empty((k, width)), np.empty((2, k))  # float64, like the sums
        for b in range(batch):
            for h in range(heads):
                # r = Σ_k w_k M[i_k]: onto w and the rows.
                for j in range(k):
                    value = grad_weights[b, h, j]
                    for c in range(width):
                        value += grad_reads[b, h, c] * rows[b, h, j, c]
                        grad_rows[j, c] = weights[b, h, j] * grad_reads[b, h, c]
                    grad_w[j] = value
                for c in range(width):
                    grad_keys[b, h, c] = 0.0
                grad_strengths[b, h] = content_rows_backward(
                    rows[b, h], row_norms[b, h], keys[b, h], key_norms[b, h], strengths[b, h],
                    weights[b, h], similarity[b, h], grad_w, grad_rows, grad_keys[b, h],
                    scratch,
                )  # fmt: skip
                for j in range(k):
                    slot = positions[b, h, j]
                    for c in range(width):
                        grad_memory[b, slot, c] += grad_rows[j, c]

    @njit(**KERNEL)
    def rows_read_forward(memory, positions, weights, rows, reads):
        """``r = Σ_k w_k M[i_k]``: memory (B,N,W), positions and weights (B,H,K) -> fills
        rows (B,H,K,W) (a copy, for the backward) and reads (B,H,W)."""
        batch, heads, k = positions.shape
        width = memory.shape[2]
        for b in range(batch):
            for h in range(heads):
                for c in range(width):
                    reads[b, h, c] = 0.0
                for j in range(k):
                    slot = positions[b, h, j]
                    weight = weights[b, h, j]
                    for c in range(width):
                        value = memory[b, slot, c]
                        rows[b, h, j, c] = value
                        reads[b, h, c] += weight * value

    @njit(**KERNEL)
    def rows_read_backward(grad_reads, positions, weights, rows, grad_memory, grad_weights):
        """The gradients of ``rows_read_forward``: dL/dw (B,H,K) filled, w_k dL/dr added
        into grad_memory (B,N,W) at the read rows, in place."""
        batch, heads, k = positions.shape
        width = rows.shape[3]
        for b in range(batch):
            for h in range(heads):
                for j in range(k):
                    slot = positions[b, h, j]
                    weight = weights[b, h, j]
                    total = 0.0
                    for c in range(width):
                        total += grad_reads[b, h, c] * rows[b, h, j, c]
                        grad_memory[b, slot, c] += weight * grad_reads[b, h, c]
                    grad_weights[b, h, j] = total


# ---------------------------------------------------------------------------------------
# The kernels as autograd Functions, with the signatures of mann.access.sam's reads
# ---------------------------------------------------------------------------------------
def _numpy_or_zeros(gradient: torch.Tensor | None, like: torch.Tensor):
    return (gradient if gradient is not None else torch.zeros_like(like)).contiguous().numpy()


class _ContentRead(torch.autograd.Function):
    """Gather + ``sparse_content_weights`` (+ ``sparse_read``) in one kernel each way.

    Returns (weights (B,H,K), reads (B,H,W), next path); the reads' gradient flows only when
    the caller uses them (SAM does, SDNC mixes the weights first and reads later).
    """

    @staticmethod
    def forward(ctx, path, keys, strengths, tables, positions):
        ctx.set_materialize_grads(False)
        memory = tables["memory"]
        batch, heads, k = positions.shape
        width = memory.shape[2]
        keys, strengths = keys.detach().contiguous(), strengths.detach().contiguous()
        rows = keys.new_empty((batch, heads, k, width))
        similarity, row_norms, weights = (keys.new_empty((batch, heads, k)) for _ in range(3))
        key_norms = keys.new_empty((batch, heads))
        reads = keys.new_empty((batch, heads, width))
        content_read_forward(
            memory.numpy(), positions.numpy(), keys.numpy(), strengths.numpy(), rows.numpy(),
            similarity.numpy(), key_norms.numpy(), row_norms.numpy(), weights.numpy(),
            reads.numpy(),
        )  # fmt: skip
        ctx.save_for_backward(
            positions, keys, strengths, rows, similarity, key_norms, row_norms, weights
        )
        ctx.memory_shape = path.shape
        return weights, reads, memory_gradient_placeholder(path)

    @staticmethod
    def backward(ctx, grad_weights, grad_reads, grad_memory):
        positions, keys, strengths, rows, similarity, key_norms, row_norms, weights = (
            ctx.saved_tensors
        )
        if grad_weights is None and grad_reads is None:
            return grad_memory, None, None, None, None
        if grad_memory is None:  # the last read of the sequence: start the buffer
            grad_memory = lazy_zeros(ctx.memory_shape, keys.dtype)
        grad_keys, grad_strengths = torch.empty_like(keys), torch.empty_like(strengths)
        content_read_backward(
            _numpy_or_zeros(grad_weights, weights), _numpy_or_zeros(grad_reads, keys),
            positions.numpy(), keys.numpy(), strengths.numpy(), rows.numpy(), similarity.numpy(),
            key_norms.numpy(), row_norms.numpy(), weights.numpy(), grad_memory.numpy(),
            grad_keys.numpy(), grad_strengths.numpy(),
        )  # fmt: skip
        return grad_memory, grad_keys, grad_strengths, None, None


class _ReadRows(torch.autograd.Function):
    """Gather + ``sparse_read`` in one kernel each way: (reads (B,H,W), next path)."""

    @staticmethod
    def forward(ctx, path, weights, tables, positions):
        ctx.set_materialize_grads(False)
        memory = tables["memory"]
        batch, heads, k = positions.shape
        weights = weights.detach().contiguous()
        rows = weights.new_empty((batch, heads, k, memory.shape[2]))
        reads = weights.new_empty((batch, heads, memory.shape[2]))
        rows_read_forward(
            memory.numpy(), positions.numpy(), weights.numpy(), rows.numpy(), reads.numpy()
        )
        ctx.save_for_backward(positions, weights, rows)
        ctx.memory_shape = path.shape
        return reads, memory_gradient_placeholder(path)

    @staticmethod
    def backward(ctx, grad_reads, grad_memory):
        if grad_reads is None:
            return grad_memory, None, None, None
        positions, weights, rows = ctx.saved_tensors
        if grad_memory is None:
            grad_memory = lazy_zeros(ctx.memory_shape, weights.dtype)
        grad_weights = torch.empty_like(weights)
        rows_read_backward(
            grad_reads.contiguous().numpy(), positions.numpy(), weights.numpy(), rows.numpy(),
            grad_memory.numpy(), grad_weights.numpy(),
        )  # fmt: skip
        return grad_memory, grad_weights, None, None


def content_read(path, tables, positions, keys, strengths, read: bool = True):
    """``mann.access.sparse_autograd.content_read`` by the kernels (CPU float tensors, numba)."""
    if not usable(tables["memory"], keys, strengths):
        raise ValueError("the sparse read kernels take CPU float32 or float64 tensors")
    weights, reads, path = _ContentRead.apply(path, keys, strengths, tables, positions)
    return weights, (reads if read else None), path


def read_rows(path, tables, positions, weights):
    """``mann.access.sparse_autograd.read_rows`` by the kernels (CPU float tensors, numba)."""
    if not usable(tables["memory"], weights):
        raise ValueError("the sparse read kernels take CPU float32 or float64 tensors")
    return _ReadRows.apply(path, weights, tables, positions)


class _ReadWeighting(torch.autograd.Function):
    """Steps 5–6, the directional weightings and the read weighting, as one autograd node.

    The forward is ``addressing.sparse_directional_weights`` and
    ``sparse_read_weighting_selection``; the backward routes dL/dw^r through the entries
    the mixture kept: the top-k picks merged entries, each merged entry is the sum of its
    group, each entry is a mode times a backward, content or forward value, and those are
    link weights times w^r_{t-1} (the links carry no gradient). Composed, the same is about
    twenty autograd nodes a step.
    """

    @staticmethod
    def forward(ctx, prev_weights, content_weights, read_modes, links, content_positions, k, size):
        successors, successor_weights, predecessors, predecessor_weights = links
        forward, backward = addressing.sparse_directional_weights(
            successors, successor_weights, predecessors, predecessor_weights, prev_weights
        )
        read_positions, read_weights, _, (order, group, kept) = (
            addressing.sparse_read_weighting_selection(
                backward, (content_positions, content_weights), forward, read_modes, k, size
            )
        )
        ctx.save_for_backward(
            successor_weights, predecessor_weights, backward[1], content_weights, forward[1],
            read_modes, order, group, kept,
        )  # fmt: skip
        outputs = (read_positions, *forward, *backward)
        ctx.mark_non_differentiable(*outputs)
        return read_weights, *outputs

    @staticmethod
    def backward(ctx, grad_read_weights, *_):
        (successor_weights, predecessor_weights, backward_values, content_weights,
         forward_values, read_modes, order, group, kept) = ctx.saved_tensors  # fmt: skip
        entries = order.shape[-1]
        grad_merged = grad_read_weights.new_zeros(*order.shape[:-1], entries)
        grad_merged.scatter_(-1, kept, grad_read_weights)
        grad_sorted = grad_merged.gather(-1, group)  # each sorted entry: its merged entry's
        grad_values = torch.zeros_like(grad_merged).scatter_(-1, order, grad_sorted)
        sizes = (backward_values.shape[-1], content_weights.shape[-1], forward_values.shape[-1])
        grad_backward, grad_content, grad_forward = grad_values.split(sizes, -1)
        grad_modes = torch.stack(
            [(grad_backward * backward_values).sum(-1), (grad_content * content_weights).sum(-1),
             (grad_forward * forward_values).sum(-1)], -1,
        )  # fmt: skip
        modes = read_modes.unsqueeze(-1)
        shape = successor_weights.shape  # (B,R,K,K_L)
        grad_prev = (
            (modes[..., 0, :] * grad_backward).view(shape) * predecessor_weights
            + (modes[..., 2, :] * grad_forward).view(shape) * successor_weights
        ).sum(-1)
        return grad_prev, modes[..., 1, :] * grad_content, grad_modes, None, None, None, None


def read_weighting(prev_weights, content_weights, read_modes, links, content_positions, k, size):
    """SDNC's steps 5–6 as one autograd node (``_ReadWeighting``): the same numbers as
    ``addressing.sparse_directional_weights`` and ``sparse_read_weighting`` ->
    (read positions, read weights, forward, backward)."""
    read_weights, read_positions, *directions = _ReadWeighting.apply(
        prev_weights, content_weights, read_modes, links, content_positions, k, size
    )
    return read_positions, read_weights, tuple(directions[:2]), tuple(directions[2:])
