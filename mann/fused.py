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

Kernels are compiled by numba on first use (cached on disk). Without numba the torch
composition in ``addressing`` is used, with identical results up to rounding.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch

from mann import addressing

try:
    import numba
    from numba import njit, prange

    # numba's own thread pool: its OpenMP layer would load a second libgomp beside torch's
    # and reset torch's thread count. The pool is not safe for concurrent launches (the app
    # runs models in several threads), so launches are serialised by _KERNEL_LOCK.
    numba.config.THREADING_LAYER = "workqueue"
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is absent
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def _link_forward(prev_link, prev_precedence, write_weights, prev_read_weights,
                      link, forward, backward):  # fmt: skip
        batch, slots, _ = prev_link.shape
        heads = prev_read_weights.shape[1]
        for b in prange(batch):
            w = write_weights[b]
            p = prev_precedence[b]
            read = prev_read_weights[b]
            for r in range(heads):
                for j in range(slots):
                    backward[b, r, j] = 0.0
            for i in range(slots):
                wi = w[i]
                keep_row = 1.0 - wi
                row_old = prev_link[b, i]
                row = link[b, i]
                for j in range(slots):
                    row[j] = (keep_row - w[j]) * row_old[j] + wi * p[j]
                row[i] = 0.0
                for r in range(heads):
                    total = 0.0
                    read_r = read[r]
                    for j in range(slots):
                        total += row[j] * read_r[j]
                    forward[b, r, i] = total
                    read_ri = read[r, i]
                    backward_r = backward[b, r]
                    for j in range(slots):
                        backward_r[j] += row[j] * read_ri

    @njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def _link_backward(prev_link, prev_precedence, write_weights, prev_read_weights,
                       grad_link, grad_forward, grad_backward,
                       grad_prev_link, grad_precedence, grad_write, grad_read):  # fmt: skip
        batch, slots, _ = prev_link.shape
        heads = prev_read_weights.shape[1]
        for b in prange(batch):
            w = write_weights[b]
            p = prev_precedence[b]
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
                keep_row = 1.0 - wi
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
                    total = 0.0
                    for j in range(slots):
                        g_row[j] += gf * read_r[j] + read_ri * g_backward_r[j]
                        g_read_r[j] += gf * new_row[j]
                        total += g_backward_r[j] * new_row[j]
                    g_read[r, i] += total
                g_row[i] = 0.0  # the diagonal is forced to zero: no gradient flows there
                g_wi = 0.0
                g_prev_row = grad_prev_link[b, i]
                for j in range(slots):
                    g = g_row[j]
                    g_prev_row[j] = g * (keep_row - w[j])
                    g_wi += g * (p[j] - row_old[j])
                    g_w[j] -= g * row_old[j]
                    g_p[j] += g * wi
                g_w[i] += g_wi


class _BufferPool:
    """Reuses large (B,N,N) buffers between steps and training iterations.

    A fresh 32 MB tensor costs as much in page faults as the kernel that fills it (glibc
    serves allocations that large with a new mmap each time). Buffers are numpy arrays
    handed out as tensors via ``torch.from_numpy``; every tensor or view using one holds a
    reference to the array, so an array whose only reference is the pool's is free.
    """

    def __init__(self, max_free: int = 4) -> None:
        self.buffers: list[np.ndarray] = []
        self.max_free = max_free
        self.lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numpy_dtype = np.dtype(str(dtype).removeprefix("torch."))
        with self.lock:
            free = [b for b in self.buffers if sys.getrefcount(b) <= 3]  # list, b, argument
            for buffer in free:
                if buffer.shape == shape and buffer.dtype == numpy_dtype:
                    return torch.from_numpy(buffer)
            # Keep the pool bounded: forget free buffers of other shapes beyond max_free.
            if len(free) >= self.max_free:
                forgotten = {id(buffer) for buffer in free}
                self.buffers = [b for b in self.buffers if id(b) not in forgotten]
            buffer = np.empty(shape, dtype=numpy_dtype)
            self.buffers.append(buffer)
            return torch.from_numpy(buffer)


_POOL = _BufferPool()
_KERNEL_LOCK = threading.Lock()


class _FusedLink(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prev_link, prev_precedence, write_weights, prev_read_weights):
        link = _POOL.empty(tuple(prev_link.shape), prev_link.dtype)
        forward = prev_read_weights.new_empty(prev_read_weights.shape)
        backward = prev_read_weights.new_empty(prev_read_weights.shape)
        with _KERNEL_LOCK:
            _set_threads(prev_link.numel())
            _link_forward(
                *_arrays(prev_link, prev_precedence, write_weights, prev_read_weights),
                link.numpy(),
                forward.numpy(),
                backward.numpy(),
            )
        ctx.save_for_backward(prev_link, prev_precedence, write_weights, prev_read_weights)
        return link, forward, backward

    @staticmethod
    def backward(ctx, grad_link, grad_forward, grad_backward):
        prev_link, prev_precedence, write_weights, prev_read_weights = ctx.saved_tensors
        if grad_link is None:
            grad_link = torch.zeros_like(prev_link)
        if grad_forward is None:
            grad_forward = torch.zeros_like(prev_read_weights)
        if grad_backward is None:
            grad_backward = torch.zeros_like(prev_read_weights)
        grad_prev_link = _POOL.empty(tuple(prev_link.shape), prev_link.dtype)
        grad_precedence = torch.empty_like(prev_precedence)
        grad_write = torch.empty_like(write_weights)
        grad_read = torch.empty_like(prev_read_weights)
        with _KERNEL_LOCK:
            _set_threads(prev_link.numel())
            _link_backward(
                *_arrays(prev_link, prev_precedence, write_weights, prev_read_weights),
                *_arrays(grad_link, grad_forward, grad_backward),
                grad_prev_link.numpy(),
                grad_precedence.numpy(),
                grad_write.numpy(),
                grad_read.numpy(),
            )
        return grad_prev_link, grad_precedence, grad_write, grad_read


def _arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    return [tensor.detach().contiguous().numpy() for tensor in tensors]


# Below this many link entries a parallel launch costs more than it saves.
PARALLEL_MIN_ENTRIES = 1 << 18


def _set_threads(entries: int) -> None:
    threads = 1 if entries < PARALLEL_MIN_ENTRIES else torch.get_num_threads()
    threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)


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
    usable = (
        HAVE_NUMBA
        and all(
            t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors
        )
        and len({t.dtype for t in tensors}) == 1
    )
    if not usable:
        link = addressing.temporal_link(prev_link, prev_precedence, write_weights)
        forward, backward = addressing.directional_weights(link, prev_read_weights)
        return link, forward, backward
    return _FusedLink.apply(*(t.contiguous() for t in tensors))
