"""Fused kernels for the DNC's N×N work: the temporal link update and the reads through it.

The equations are those of ``addressing.temporal_link`` and ``addressing.directional_weights``
(DNC Methods, "temporal memory linkage"); this module only computes them faster. Composed
from torch operations, one step of the link takes about ten passes over the (B,N,N) link
matrix forward and twenty backward, and at N=1024 those passes are the whole cost of a DNC
(shared/PERFORMANCE.md). Here the forward is one pass that reads L_{t-1} and writes L_t,
accumulating the forward and backward weightings while each row is still in cache; the
backward is one pass that reads L_{t-1} and the incoming gradient and writes the gradient of
L_{t-1}, recomputing L_t on the fly instead of storing it. Nothing but L_{t-1} (already alive
as the previous step's output) is saved for backward.

From ``runtime.LARGE_LINK_ENTRIES`` entries (B N², e.g. N=64 at batch 16) the per-head loops
of that single pass dominate, and the link takes another path: a parallel streaming pass for
L_t alone, the forward and backward weightings as two ``torch.bmm`` (BLAS), and in backward
one streaming pass that folds the reads' rank-2R gradient into the link's.

Constants in the kernels take the data's dtype (``w.dtype.type(1.0)``): numba types a float
literal float64, and float32 arithmetic that meets one runs in float64, converted both ways at
half the vector width (the backward kernel ran 1.2-1.6x faster without it at 16x256 in a
one-off timing).

Kernels are compiled by numba on first use (cached on disk), each parallel over the batch and
serial (``runtime.parallel_and_serial``). Without numba the torch composition in
``addressing`` is used, with identical results up to rounding.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from mann import addressing
from mann.fused import runtime
from mann.fused.runtime import (
    HAVE_NUMBA,
    KERNEL_LOCK,
    POOL,
    arrays,
    njit,
    parallel_and_serial,
    prange,
    set_threads,
    usable,
)

if HAVE_NUMBA:

    @njit(fastmath=True, cache=True, nogil=True, inline="always")
    def _through_link_equation(g_row, row_old, w, p, i, g_prev_row, g_w, g_p):
        """Row i of backward through L_t = (1 - w_i - w_j) L_{t-1} + w_i p_j, given
        G[i, :] = dLoss/dL_t[i, :] in g_row: writes dL_{t-1}[i, :], adds to dw and dp."""
        wi = w[i]
        keep_row = w.dtype.type(1.0) - wi
        g_wi = w.dtype.type(0.0)
        for j in range(g_row.shape[0]):
            g = g_row[j]
            g_prev_row[j] = g * (keep_row - w[j])
            g_wi += g * (p[j] - row_old[j])
            g_w[j] -= g * row_old[j]
            g_p[j] += g * wi
        g_w[i] += g_wi

    def _link_forward(prev_link, prev_precedence, write_weights, prev_read_weights,
                      link, forward, backward):  # fmt: skip
        batch, slots, _ = prev_link.shape
        heads = prev_read_weights.shape[1]
        for b in prange(batch):
            w = write_weights[b]
            p = prev_precedence[b]
            zero = w.dtype.type(0.0)
            one = w.dtype.type(1.0)
            read = prev_read_weights[b]
            for r in range(heads):
                for j in range(slots):
                    backward[b, r, j] = 0.0
            for i in range(slots):
                wi = w[i]
                keep_row = one - wi
                row_old = prev_link[b, i]
                row = link[b, i]
                for j in range(slots):
                    row[j] = (keep_row - w[j]) * row_old[j] + wi * p[j]
                row[i] = 0.0
                for r in range(heads):
                    total = zero
                    read_r = read[r]
                    for j in range(slots):
                        total += row[j] * read_r[j]
                    forward[b, r, i] = total
                    read_ri = read[r, i]
                    backward_r = backward[b, r]
                    for j in range(slots):
                        backward_r[j] += row[j] * read_ri

    def _link_backward(prev_link, prev_precedence, write_weights, prev_read_weights,
                       grad_link, grad_forward, grad_backward,
                       grad_prev_link, grad_precedence, grad_write, grad_read):  # fmt: skip
        batch, slots, _ = prev_link.shape
        heads = prev_read_weights.shape[1]
        for b in prange(batch):
            w = write_weights[b]
            p = prev_precedence[b]
            zero = w.dtype.type(0.0)
            one = w.dtype.type(1.0)
            read = prev_read_weights[b]
            g_forward = grad_forward[b]
            g_backward = grad_backward[b]
            g_w = grad_write[b]
            g_p = grad_precedence[b]
            g_read = grad_read[b]
            for j in range(slots):
                g_w[j] = 0.0
                g_p[j] = 0.0
                for r in range(heads):
                    g_read[r, j] = 0.0
            g_row = np.empty_like(p)  # scratch rows: G[i, :] and L_t[i, :]
            new_row = np.empty_like(p)
            for i in range(slots):
                wi = w[i]
                keep_row = one - wi
                row_old = prev_link[b, i]
                # G[i, :] = dLoss/dL_t[i, :], gathering the link's own gradient and the
                # gradients of forward (f_r[i] = Σ_j L[i,j] w_r[j]) and backward
                # (b_r[j] = Σ_i L[i,j] w_r[i]) reads.
                for j in range(slots):
                    g_row[j] = grad_link[b, i, j]
                    new_row[j] = (keep_row - w[j]) * row_old[j] + wi * p[j]
                new_row[i] = 0.0
                for r in range(heads):
                    gf = g_forward[r, i]
                    read_ri = read[r, i]
                    read_r = read[r]
                    g_backward_r = g_backward[r]
                    g_read_r = g_read[r]
                    total = zero
                    for j in range(slots):
                        g_row[j] += gf * read_r[j] + read_ri * g_backward_r[j]
                        g_read_r[j] += gf * new_row[j]
                        total += g_backward_r[j] * new_row[j]
                    g_read[r, i] += total
                g_row[i] = 0.0  # the diagonal is forced to zero: no gradient flows there
                _through_link_equation(g_row, row_old, w, p, i, grad_prev_link[b, i], g_w, g_p)


    # Each kernel is compiled parallel and serial. Below PARALLEL_MIN_ENTRIES the serial one
    # runs on the calling thread: a parallel launch, even on one thread, hands the work to a
    # pool thread, which costs a wake-up (35-150 µs here) and runs without torch's
    # flush-to-zero of subnormal floats.
    _link_forward, _link_forward_serial = parallel_and_serial(_link_forward)
    _link_backward, _link_backward_serial = parallel_and_serial(_link_backward)


    # Large links: one streaming pass per direction, with the read heads' products left to
    # BLAS (torch.bmm). It reads L_t twice more than the single pass, yet in training (DNC
    # 1024x32, B=8) steps took 1.45-1.49 s this way against 1.56-1.68 s with the single pass
    # (bench/ab_speed.py): BLAS's register-blocked products beat the per-head row loops.
    def _link_update(prev_link, prev_precedence, write_weights, link):
        batch, slots, _ = prev_link.shape
        for index in prange(batch * slots):
            b = index // slots
            i = index - b * slots
            w = write_weights[b]
            p = prev_precedence[b]
            one = w.dtype.type(1.0)
            wi = w[i]
            keep_row = one - wi
            row_old = prev_link[b, i]
            row = link[b, i]
            for j in range(slots):
                row[j] = (keep_row - w[j]) * row_old[j] + wi * p[j]
            row[i] = 0.0

    _link_update, _link_update_serial = parallel_and_serial(_link_update)


@functools.cache
def _update_backward_kernels(rank: int):
    """The large path's backward pass, compiled for one rank 2R (parallel, serial).

    With the rank a compile-time constant the loop over it unrolls inside the loop over a
    row: G[i, j] is formed in registers, never stored, and the row is read once (about 1.4x
    faster at N=1024 than a loop over the rank per row). The row loop compiles to scalar code
    (why LLVM leaves it so was not established); a version split into short loops that do
    vectorise ran slower, 16.1 against 14.7 ms at 8x1024 serial: the pass is memory-bound.
    """
    def update_backward(prev_link, prev_precedence, write_weights, left, right, grad_link,
                        grad_prev_link, grad_precedence, grad_write):  # fmt: skip
        # G = dLoss/dL_t = grad_link + leftᵀ right (the reads' rank-2R part), zero diagonal;
        # then the gradients of L_{t-1}, w and p through the link equation
        # L_t = (1 - w_i - w_j) L_{t-1} + w_i p_j.
        batch, slots, _ = prev_link.shape
        for b in prange(batch):
            w = write_weights[b]
            p = prev_precedence[b]
            zero = w.dtype.type(0.0)
            one = w.dtype.type(1.0)
            g_w = grad_write[b]
            g_p = grad_precedence[b]
            for j in range(slots):
                g_w[j] = 0.0
                g_p[j] = 0.0
            right_b = right[b]
            weights = np.empty(rank, dtype=prev_link.dtype)
            for i in range(slots):
                for k in range(rank):
                    weights[k] = left[b, k, i]
                incoming = grad_link[b, i]
                row_old = prev_link[b, i]
                g_prev_row = grad_prev_link[b, i]
                wi = w[i]
                keep_row = one - wi
                g_wi = zero
                for j in range(slots):
                    g = incoming[j]
                    for k in range(rank):
                        g += weights[k] * right_b[k, j]
                    g_prev_row[j] = g * (keep_row - w[j])
                    g_wi += g * (p[j] - row_old[j])
                    g_w[j] -= g * row_old[j]
                    g_p[j] += g * wi
                # The diagonal is forced to zero, so no gradient flows through it: take back
                # what the loop above let through there.
                g_ii = incoming[i]
                for k in range(rank):
                    g_ii += weights[k] * right_b[k, i]
                g_prev_row[i] = 0.0
                g_wi -= g_ii * (p[i] - row_old[i])
                g_w[i] += g_ii * row_old[i]
                g_p[i] -= g_ii * wi
                g_w[i] += g_wi

    return parallel_and_serial(update_backward)


def _kernel(parallel, serial, entries: int):
    """The parallel kernel with its threads set, or the serial one for small work."""
    if set_threads(entries) > 1:
        return parallel
    return serial


def _small_forward(prev_link, prev_precedence, write_weights, prev_read_weights):
    """One pass: L_t with f = L_t w^r and b = L_tᵀ w^r accumulated row by row."""
    link = POOL.empty(tuple(prev_link.shape), prev_link.dtype)
    forward = prev_read_weights.new_empty(prev_read_weights.shape)
    backward = prev_read_weights.new_empty(prev_read_weights.shape)
    with KERNEL_LOCK:
        kernel = _kernel(_link_forward, _link_forward_serial, prev_link.numel())
        kernel(
            *arrays(prev_link, prev_precedence, write_weights, prev_read_weights),
            link.numpy(),
            forward.numpy(),
            backward.numpy(),
        )
    return link, forward, backward


def _small_backward(prev_link, prev_precedence, write_weights, prev_read_weights,
                    grad_link, grad_forward, grad_backward):  # fmt: skip
    grad_prev_link = POOL.empty(tuple(prev_link.shape), prev_link.dtype)
    grad_precedence = torch.empty_like(prev_precedence)
    grad_write = torch.empty_like(write_weights)
    grad_read = torch.empty_like(prev_read_weights)
    with KERNEL_LOCK:
        kernel = _kernel(_link_backward, _link_backward_serial, prev_link.numel())
        kernel(
            *arrays(prev_link, prev_precedence, write_weights, prev_read_weights),
            *arrays(grad_link, grad_forward, grad_backward),
            grad_prev_link.numpy(),
            grad_precedence.numpy(),
            grad_write.numpy(),
            grad_read.numpy(),
        )
    return grad_prev_link, grad_precedence, grad_write, grad_read


def _large_forward(prev_link, prev_precedence, write_weights, prev_read_weights):
    """A streaming pass for L_t, then f = L_t w^r and b = L_tᵀ w^r by BLAS."""
    link = POOL.empty(tuple(prev_link.shape), prev_link.dtype)
    with KERNEL_LOCK:
        kernel = _kernel(_link_update, _link_update_serial, prev_link.numel())
        kernel(*arrays(prev_link, prev_precedence, write_weights), link.numpy())
    forward = torch.bmm(prev_read_weights, link.transpose(1, 2))  # f = L w^r
    backward = torch.bmm(prev_read_weights, link)  # b = Lᵀ w^r
    return link, forward, backward


def _large_backward(prev_link, prev_precedence, write_weights, prev_read_weights, link,
                    grad_link, grad_forward, grad_backward):  # fmt: skip
    grad_read = torch.bmm(grad_forward, link)
    grad_read.add_(torch.bmm(grad_backward, link.transpose(1, 2)))
    # dLoss/dL_t[i,j] gains Σ_r gf[r,i] w^r[j] + w^r[i] gb[r,j]: leftᵀ right, rank 2R.
    left = torch.cat([grad_forward, prev_read_weights], dim=1).contiguous()
    right = torch.cat([prev_read_weights, grad_backward], dim=1).contiguous()
    grad_prev_link = POOL.empty(tuple(prev_link.shape), prev_link.dtype)
    grad_precedence = torch.empty_like(prev_precedence)
    grad_write = torch.empty_like(write_weights)
    with KERNEL_LOCK:
        kernel = _kernel(*_update_backward_kernels(left.shape[1]), prev_link.numel())
        kernel(
            *arrays(prev_link, prev_precedence, write_weights, left, right, grad_link),
            grad_prev_link.numpy(),
            grad_precedence.numpy(),
            grad_write.numpy(),
        )
    return grad_prev_link, grad_precedence, grad_write, grad_read


def forward_pass(prev_link, prev_precedence, write_weights, prev_read_weights):
    """The link step without autograd, by the path its size takes: contiguous CPU tensors
    -> ((link, forward, backward), saved), ``saved`` being what ``backward_pass`` needs.
    For callers that do their own backward (``mann.fused.sequence``)."""
    inputs = (prev_link, prev_precedence, write_weights, prev_read_weights)
    if prev_link.numel() >= runtime.LARGE_LINK_ENTRIES:
        outputs = _large_forward(*inputs)
        return outputs, (_large_backward, (*inputs, outputs[0]))
    return _small_forward(*inputs), (_small_backward, inputs)


def backward_pass(saved, grad_link, grad_forward, grad_backward):
    """Gradients of (prev_link, prev_precedence, write_weights, prev_read_weights) from
    ``forward_pass``'s ``saved`` (its path's backward and what that needs) and the gradients
    of its outputs (tensors, not None)."""
    backward, tensors = saved
    return backward(*tensors, grad_link, grad_forward, grad_backward)


class _FusedLink(torch.autograd.Function):
    """Small links: one serial pass each way, nothing saved but the inputs."""

    @staticmethod
    def forward(ctx, prev_link, prev_precedence, write_weights, prev_read_weights):
        ctx.save_for_backward(prev_link, prev_precedence, write_weights, prev_read_weights)
        return _small_forward(prev_link, prev_precedence, write_weights, prev_read_weights)

    @staticmethod
    def backward(ctx, grad_link, grad_forward, grad_backward):
        prev_link, _, _, prev_read_weights = ctx.saved_tensors
        grads = _zeros_for_none(
            (grad_link, grad_forward, grad_backward), (prev_link, prev_read_weights)
        )
        return _small_backward(*ctx.saved_tensors, *grads)


class _FusedLargeLink(torch.autograd.Function):
    """Large links: a parallel streaming pass for L_t, the reads through it by BLAS.

    Saves L_t as well as the inputs; it is the next step's L_{t-1}, alive anyway, so only the
    last step's costs memory.
    """

    @staticmethod
    def forward(ctx, prev_link, prev_precedence, write_weights, prev_read_weights):
        inputs = (prev_link, prev_precedence, write_weights, prev_read_weights)
        link, forward, backward = _large_forward(*inputs)
        ctx.save_for_backward(*inputs, link)
        return link, forward, backward

    @staticmethod
    def backward(ctx, grad_link, grad_forward, grad_backward):
        prev_link, _, _, prev_read_weights, _ = ctx.saved_tensors
        grads = _zeros_for_none(
            (grad_link, grad_forward, grad_backward), (prev_link, prev_read_weights)
        )
        return _large_backward(*ctx.saved_tensors, *grads)


def _zeros_for_none(gradients, like):
    """Zeros in place of the gradients autograd passes as None (outputs that were unused)."""
    link_like, reads_like = like
    grad_link, grad_forward, grad_backward = gradients
    return (
        torch.zeros_like(link_like) if grad_link is None else grad_link,
        torch.zeros_like(reads_like) if grad_forward is None else grad_forward,
        torch.zeros_like(reads_like) if grad_backward is None else grad_backward,
    )


def link_and_directions(
    prev_link: torch.Tensor,
    prev_precedence: torch.Tensor,
    write_weights: torch.Tensor,
    prev_read_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``temporal_link`` followed by ``directional_weights``, fused.

    prev_link (B,N,N), prev_precedence (B,N), write_weights (B,N), prev_read_weights (B,R,N)
    -> (link (B,N,N), forward (B,R,N), backward (B,R,N)).
    """
    tensors = (prev_link, prev_precedence, write_weights, prev_read_weights)
    if not usable(*tensors):
        link = addressing.temporal_link(prev_link, prev_precedence, write_weights)
        forward, backward = addressing.directional_weights(link, prev_read_weights)
        return link, forward, backward
    tensors = tuple(t.contiguous() for t in tensors)
    if prev_link.numel() >= runtime.LARGE_LINK_ENTRIES:
        return _FusedLargeLink.apply(*tensors)
    return _FusedLink.apply(*tensors)
