"""A fused kernel for one whole NTM memory step: parse the interface, address, read, write.

The equations are those of ``mann.access.ntm.NTMAccess.step`` built from ``mann.addressing``
(NTM, Graves et al. 2014, section 3); this module only computes them faster. Composed from
torch operations a step is about three hundred small operations forward and backward, and at
the NTM's sizes (N=128, W=20) dispatching them is the whole cost. Here the forward is one
kernel call and the backward another. Nothing is saved for backward but the step's inputs
(the interface, M_{t-1}, already alive as the previous step's output, and w_{t-1}); the
backward recomputes the addressing, which costs O(H N S + N W) per batch item.

Shapes use B batch, N memory slots, W word size, R read heads, Hw write heads, H = R + Hw,
S allowed shifts. Heads are ordered read heads first, then write heads. Per head the
interface holds k (W), β, g, s (S), γ; then each write head holds e (W) and a (W).

Content addressing and its gradient are ``mann.fused.content``'s, on memory's rows. Kernels
compute in float64 whatever the tensors' dtype and store in it. The caller checks
``mann.fused.runtime.usable`` first; without numba the torch composition is used.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from mann.fused.runtime import HAVE_NUMBA, KERNEL_LOCK, arrays, batch_kernel, njit, prange

# torch.nn.functional.softplus returns x itself above this (and passes the gradient as is).
SOFTPLUS_THRESHOLD = 20.0

# The clamp of addressing.sharpen: log(max(w̃, tiny)) with tiny of the tensors' dtype.
_TINY = {dtype: torch.finfo(dtype).tiny for dtype in (torch.float32, torch.float64)}
_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}

# Reassociation lets LLVM vectorise the sums; inf and NaN keep their IEEE meaning (sigmoid
# and softplus rely on exp overflowing to inf), so not the whole of fastmath.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

if HAVE_NUMBA:
    from mann.fused.content import content_rows, content_rows_backward, norms_of_rows

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _softplus(x):
        return x if x > SOFTPLUS_THRESHOLD else np.log1p(np.exp(x))

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _softplus_slope(x):
        return 1.0 if x > SOFTPLUS_THRESHOLD else 1.0 / (1.0 + np.exp(-x))

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _wrap(slot, slots):
        # slot mod N for slot in (-N, 2N): S <= N keeps every shifted index there.
        if slot < 0:
            return slot + slots
        if slot >= slots:
            return slot - slots
        return slot

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _softmax_into(logits, out):
        largest = logits[0]
        for i in range(1, logits.shape[0]):
            largest = max(largest, logits[i])
        total = 0.0
        for i in range(logits.shape[0]):
            out[i] = np.exp(logits[i] - largest)
            total += out[i]
        for i in range(logits.shape[0]):
            out[i] /= total

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _address(interface, memory, prev_weights, tiny, shifts,
                 memory_norms, similarity, content, gated, shifted, weights,
                 scalars, shift_probs):  # fmt: skip
        """Every head's w_t from one item's interface (I,), M_{t-1} (N,W), w_{t-1} (H,N).

        Fills, per head (H,N): similarity D(k, M[i]), content w^c, gated w^g, shifted w̃ and
        weights w; scalars (H,4) β, g, γ, |k|; shift_probs (H,S) s. memory_norms (N,) |M[i]|.
        """
        slots, width = memory.shape
        heads = prev_weights.shape[0]
        block = width + 3 + shifts  # k, β, g, s, γ
        half = shifts // 2
        norms_of_rows(memory, memory_norms)
        logits = np.empty(max(slots, shifts))
        for h in range(heads):
            start = h * block
            strength = _softplus(interface[start + width])  # β
            gate = _sigmoid(interface[start + width + 1])  # g
            gamma = 1.0 + _softplus(interface[start + width + 2 + shifts])  # γ = oneplus
            scalars[h, 0] = strength
            scalars[h, 1] = gate
            scalars[h, 2] = gamma
            for k in range(shifts):
                logits[k] = interface[start + width + 2 + k]
            _softmax_into(logits[:shifts], shift_probs[h])

            # Content: softmax_i(β k·M[i] / (|k||M[i]| + ε)); keeps |k| for the backward.
            scalars[h, 3] = content_rows(memory, memory_norms, interface[start : start + width],
                                         strength, content[h], similarity[h])  # fmt: skip
            # Interpolation: w^g = g w^c + (1 - g) w_{t-1}.
            for i in range(slots):
                gated[h, i] = gate * content[h, i] + (1.0 - gate) * prev_weights[h, i]
            # Circular shift: w̃[i] = Σ_k w^g[(i - (k - S//2)) mod N] s[k].
            for i in range(slots):
                total = 0.0
                for k in range(shifts):
                    total += gated[h, _wrap(i - k + half, slots)] * shift_probs[h, k]
                shifted[h, i] = total
            # Sharpening: softmax(γ log max(w̃, tiny)).
            for i in range(slots):
                logits[i] = gamma * np.log(max(shifted[h, i], tiny))
            _softmax_into(logits[:slots], weights[h])

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _write_parts(interface, heads, reads, width, shifts, erase, add):
        """Each write head's erase e = σ(ê) and add a (Hw,W) from one item's interface."""
        start = heads * (width + 3 + shifts)
        for w in range(heads - reads):
            for j in range(width):
                erase[w, j] = _sigmoid(interface[start + 2 * w * width + j])
                add[w, j] = interface[start + (2 * w + 1) * width + j]

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _keep_row(weights, reads, i, erase, skipped, keep):
        """keep[j] = Π_w (1 - w_w[i] e_w[j]) over write heads w other than ``skipped``."""
        keep[:] = 1.0
        for w in range(erase.shape[0]):
            if w != skipped:
                write_weight = weights[reads + w, i]
                for j in range(erase.shape[1]):
                    keep[j] *= 1.0 - write_weight * erase[w, j]

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _shift_count(interface, heads, writes, width):
        return (interface.shape[1] - writes * 2 * width) // heads - width - 3

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _ntm_forward(interface, memory, prev_weights, tiny, read_vectors, new_memory, weights):
        batch, slots, width = memory.shape
        heads = prev_weights.shape[1]
        reads = read_vectors.shape[1]
        writes = heads - reads
        shifts = _shift_count(interface, heads, writes, width)
        memory_norms = np.empty(slots)
        similarity = np.empty((heads, slots))
        content = np.empty((heads, slots))
        gated = np.empty((heads, slots))
        shifted = np.empty((heads, slots))
        sharpened = np.empty((heads, slots))
        scalars = np.empty((heads, 4))
        shift_probs = np.empty((heads, shifts))
        erase = np.empty((writes, width))
        add = np.empty((writes, width))
        read_sums = np.empty((reads, width))
        keep = np.empty(width)
        added = np.empty(width)
        for b in range(batch):
            _address(interface[b], memory[b], prev_weights[b], tiny, shifts,
                     memory_norms, similarity, content, gated, shifted, sharpened,
                     scalars, shift_probs)  # fmt: skip
            _write_parts(interface[b], heads, reads, width, shifts, erase, add)
            for h in range(heads):
                for i in range(slots):
                    weights[b, h, i] = sharpened[h, i]
            # Reads see M_{t-1}: r = Σ_i w[i] M[i].
            read_sums[:] = 0.0
            for i in range(slots):
                for r in range(reads):
                    read_weight = sharpened[r, i]
                    for j in range(width):
                        read_sums[r, j] += read_weight * memory[b, i, j]
            for r in range(reads):
                for j in range(width):
                    read_vectors[b, r, j] = read_sums[r, j]
            # M_t = M_{t-1} ∘ Π_w (1 - w_w e_wᵀ) + Σ_w w_w a_wᵀ, a row at a time.
            for i in range(slots):
                _keep_row(sharpened, reads, i, erase, -1, keep)
                added[:] = 0.0
                for w in range(writes):
                    write_weight = sharpened[reads + w, i]
                    for j in range(width):
                        added[j] += write_weight * add[w, j]
                for j in range(width):
                    new_memory[b, i, j] = memory[b, i, j] * keep[j] + added[j]

    @njit(fastmath=_FASTMATH, cache=True, nogil=True)
    def _ntm_backward(interface, memory, prev_weights, tiny,
                      grad_reads, grad_new_memory, grad_weights,
                      grad_interface, grad_memory, grad_prev_weights):  # fmt: skip
        batch, slots, width = memory.shape
        heads = prev_weights.shape[1]
        reads = grad_reads.shape[1]
        writes = heads - reads
        shifts = _shift_count(interface, heads, writes, width)
        block = width + 3 + shifts
        half = shifts // 2
        memory_norms = np.empty(slots)
        similarity = np.empty((heads, slots))
        content = np.empty((heads, slots))
        gated = np.empty((heads, slots))
        shifted = np.empty((heads, slots))
        sharpened = np.empty((heads, slots))
        scalars = np.empty((heads, 4))
        shift_probs = np.empty((heads, shifts))
        erase = np.empty((writes, width))
        add = np.empty((writes, width))
        grad_sharpened = np.empty((heads, slots))  # dL/dw, all paths
        grad_erase = np.empty((writes, width))
        grad_add = np.empty((writes, width))
        grad_shifted = np.empty(slots)
        grad_gated = np.empty(slots)
        grad_content = np.empty(slots)
        grad_shift = np.empty(shifts)
        grad_key = np.empty(width)
        scratch = np.empty((2, slots))
        keep = np.empty(width)
        others = np.empty(width)
        for b in range(batch):
            item = interface[b]
            old = memory[b]
            _address(item, old, prev_weights[b], tiny, shifts,
                     memory_norms, similarity, content, gated, shifted, sharpened,
                     scalars, shift_probs)  # fmt: skip
            _write_parts(item, heads, reads, width, shifts, erase, add)
            g_item = grad_interface[b]
            g_old = grad_memory[b]
            g_new = grad_new_memory[b]
            g_read = grad_reads[b]

            # Through the write and the reads, to M_{t-1}, w, e and a, a row at a time.
            for h in range(heads):
                for i in range(slots):
                    grad_sharpened[h, i] = grad_weights[b, h, i]
            grad_erase[:] = 0.0
            grad_add[:] = 0.0
            for i in range(slots):
                g = g_new[i]
                m = old[i]
                _keep_row(sharpened, reads, i, erase, -1, keep)
                for j in range(width):
                    g_old[i, j] = g[j] * keep[j]
                for r in range(reads):
                    read_weight = sharpened[r, i]
                    total = 0.0
                    for j in range(width):
                        g_old[i, j] += read_weight * g_read[r, j]
                        total += g_read[r, j] * m[j]
                    grad_sharpened[r, i] += total
                for w in range(writes):
                    write_weight = sharpened[reads + w, i]
                    # The other heads' keep factors, multiplied out (no division: one may be 0).
                    _keep_row(sharpened, reads, i, erase, w, others)
                    total = 0.0
                    for j in range(width):
                        erased = g[j] * m[j] * others[j]
                        total += g[j] * add[w, j] - erased * erase[w, j]
                        grad_erase[w, j] -= erased * write_weight
                        grad_add[w, j] += g[j] * write_weight
                    grad_sharpened[reads + w, i] += total
            start = heads * block
            for w in range(writes):
                for j in range(width):
                    e = erase[w, j]
                    g_item[start + 2 * w * width + j] = grad_erase[w, j] * e * (1.0 - e)
                    g_item[start + (2 * w + 1) * width + j] = grad_add[w, j]

            # Back through each head's addressing, last equation first.
            for h in range(heads):
                strength = scalars[h, 0]
                gate = scalars[h, 1]
                gamma = scalars[h, 2]
                key_norm = scalars[h, 3]
                start = h * block
                # Sharpening: w = softmax(u), u = γ log max(w̃, tiny).
                weighted = 0.0
                for i in range(slots):
                    weighted += sharpened[h, i] * grad_sharpened[h, i]
                grad_gamma = 0.0
                for i in range(slots):
                    grad_u = sharpened[h, i] * (grad_sharpened[h, i] - weighted)
                    value = shifted[h, i]
                    if value >= tiny:
                        grad_gamma += grad_u * np.log(value)
                        grad_shifted[i] = gamma * grad_u / value
                    else:  # the clamp passes no gradient below tiny
                        grad_gamma += grad_u * np.log(tiny)
                        grad_shifted[i] = 0.0
                # Circular shift.
                grad_gated[:] = 0.0
                grad_shift[:] = 0.0
                for i in range(slots):
                    g = grad_shifted[i]
                    for k in range(shifts):
                        source = _wrap(i - k + half, slots)
                        grad_gated[source] += g * shift_probs[h, k]
                        grad_shift[k] += g * gated[h, source]
                # Interpolation.
                grad_gate = 0.0
                for i in range(slots):
                    g = grad_gated[i]
                    grad_gate += g * (content[h, i] - prev_weights[b, h, i])
                    grad_prev_weights[b, h, i] = (1.0 - gate) * g
                    grad_content[i] = gate * g
                # Content: softmax of z = β D, D = k·M[i] / (|k||M[i]| + ε).
                grad_key[:] = 0.0
                grad_strength = content_rows_backward(
                    old, memory_norms, item[start : start + width], key_norm, strength,
                    content[h], similarity[h], grad_content, g_old, grad_key, scratch,
                )  # fmt: skip
                for j in range(width):
                    g_item[start + j] = grad_key[j]
                # The interface's pre-activations: softplus, sigmoid, softmax, oneplus.
                g_item[start + width] = grad_strength * _softplus_slope(item[start + width])
                g_item[start + width + 1] = grad_gate * gate * (1.0 - gate)
                weighted = 0.0
                for k in range(shifts):
                    weighted += shift_probs[h, k] * grad_shift[k]
                for k in range(shifts):
                    g_item[start + width + 2 + k] = shift_probs[h, k] * (grad_shift[k] - weighted)
                gamma_logit = item[start + width + 2 + shifts]
                g_item[start + width + 2 + shifts] = grad_gamma * _softplus_slope(gamma_logit)

    # The two kernels split across threads, one slice of the batch each (as the DNC's,
    # mann.fused.dnc; each item's arithmetic is the serial kernel's).
    @njit(parallel=True, cache=True, nogil=True)
    def _ntm_forward_split(interface, memory, prev_weights, tiny, read_vectors, new_memory,
                           weights, parts):  # fmt: skip
        batch = interface.shape[0]
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            _ntm_forward(interface[lo:hi], memory[lo:hi], prev_weights[lo:hi], tiny,
                         read_vectors[lo:hi], new_memory[lo:hi], weights[lo:hi])  # fmt: skip

    @njit(parallel=True, cache=True, nogil=True)
    def _ntm_backward_split(interface, memory, prev_weights, tiny, grad_reads,
                            grad_new_memory, grad_weights, grad_interface, grad_memory,
                            grad_prev_weights, parts):  # fmt: skip
        batch = interface.shape[0]
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            _ntm_backward(interface[lo:hi], memory[lo:hi], prev_weights[lo:hi], tiny,
                          grad_reads[lo:hi], grad_new_memory[lo:hi], grad_weights[lo:hi],
                          grad_interface[lo:hi], grad_memory[lo:hi],
                          grad_prev_weights[lo:hi])  # fmt: skip


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    # A numpy allocation seen as a tensor: unlike torch.empty(...).numpy(), no aten calls.
    array = np.empty(shape, dtype=_NUMPY_DTYPE[dtype])
    return torch.from_numpy(array), array


def step_forward(interface, memory, prev_weights, read_heads: int):
    """The step without autograd: interface (B,I), M_{t-1} (B,N,W), w_{t-1} (B,H,N)
    -> (r_t (B,R,W), M_t, w_t). Its inputs are all its backward needs (``step_backward``)."""
    batch, _, width = memory.shape
    read_vectors, read_array = _empty((batch, read_heads, width), memory.dtype)
    new_memory, memory_array = _empty(tuple(memory.shape), memory.dtype)
    weights, weights_array = _empty(tuple(prev_weights.shape), memory.dtype)
    with KERNEL_LOCK:
        batch_kernel(_ntm_forward, _ntm_forward_split, memory.shape)(
            *arrays(interface, memory, prev_weights),
            _TINY[memory.dtype],
            read_array,
            memory_array,
            weights_array,
        )
    return read_vectors, new_memory, weights


def step_backward(interface, memory, prev_weights, grad_reads, grad_memory, grad_weights):
    """Gradients of (interface, M_{t-1}, w_{t-1}) from the step's inputs and the gradients
    of its outputs (tensors, not None)."""
    grad_interface, interface_array = _empty(tuple(interface.shape), memory.dtype)
    grad_prev_memory, memory_array = _empty(tuple(memory.shape), memory.dtype)
    grad_prev_weights, weights_array = _empty(tuple(prev_weights.shape), memory.dtype)
    with KERNEL_LOCK:
        batch_kernel(_ntm_backward, _ntm_backward_split, memory.shape)(
            *arrays(interface, memory, prev_weights),
            _TINY[memory.dtype],
            *arrays(grad_reads, grad_memory, grad_weights),
            interface_array,
            memory_array,
            weights_array,
        )
    return grad_interface, grad_prev_memory, grad_prev_weights


class _NTMStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, interface, memory, prev_weights, read_heads):
        ctx.save_for_backward(interface, memory, prev_weights)
        return step_forward(interface, memory, prev_weights, read_heads)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_reads, grad_memory, grad_weights):
        # Outputs without a gradient arrive as zeros (autograd materialises them).
        return (*step_backward(*ctx.saved_tensors, grad_reads, grad_memory, grad_weights), None)


def ntm_step(
    interface: torch.Tensor,
    memory: torch.Tensor,
    prev_weights: torch.Tensor,
    *,
    read_heads: int,
    write_heads: int,
    word_size: int,
    shift_range: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One NTM memory step (``NTMAccess.step`` without its record), fused forward and backward.

    interface (B, H(W+3+S) + 2 Hw W) raw controller output, M_{t-1} memory (B,N,W),
    prev_weights w_{t-1} (B,H,N), reads then writes -> (read vectors r_t (B,R,W) read from
    M_{t-1}, M_t (B,N,W), w_t (B,H,N)). All tensors on the CPU in one float dtype
    (``mann.fused.runtime.usable``); differentiable in all three inputs.
    """
    batch, slots, width = memory.shape
    heads = read_heads + write_heads
    interface_size = heads * (word_size + 3 + shift_range) + write_heads * 2 * word_size
    if (
        width != word_size
        or tuple(interface.shape) != (batch, interface_size)
        or tuple(prev_weights.shape) != (batch, heads, slots)
        or shift_range % 2 != 1
        or shift_range > slots
    ):
        raise ValueError(
            f"ntm_step: interface {tuple(interface.shape)}, memory {tuple(memory.shape)} and "
            f"prev_weights {tuple(prev_weights.shape)} do not fit read_heads={read_heads}, "
            f"write_heads={write_heads}, word_size={word_size}, shift_range={shift_range}"
        )
    return _NTMStep.apply(interface, memory, prev_weights, read_heads)


def access_step(access, interface: torch.Tensor, state):
    """``NTMAccess.step`` without a record, by the fused kernel: (r_t, state_t, None)."""
    from mann.access.ntm import NTMState

    previous = torch.cat([state.read_weights, state.write_weights], dim=1)
    read_vectors, memory, weights = ntm_step(
        interface, state.memory, previous, read_heads=access.read_heads,
        write_heads=access.write_heads, word_size=access.word_size,
        shift_range=access.shift_range,
    )  # fmt: skip
    read_weights, write_weights = weights.split([access.read_heads, access.write_heads], dim=1)
    return read_vectors, NTMState(memory, read_weights, write_weights), None
