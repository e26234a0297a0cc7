"""Fused kernels for the DNC step around the link: the write, then the reads.

The equations are those of ``mann.addressing`` in the order of ``DNCAccess.step`` (DNC
Methods; shared/MATH.md); this module only computes them in fewer operations. Composed from
torch operations, one step is about 1,200 small operations forward and backward, each paying
a dispatch that costs more than its arithmetic at the sizes a DNC trains at. Here a step is
two autograd Functions around the fused link (``mann.fused.link``):

- ``dnc_write``: the interface fields of the write, usage u_t from retention ψ, allocation
  a, write content c^w on M_{t-1}, write weighting w^w_t, and erase-and-write M_t;
- ``dnc_read``: precedence p_t, read content c^r on M_t, read modes π, read weightings w^r_t
  and read vectors r_t.

Each has a numba forward and a hand-written numba backward; content addressing (c^w, c^r)
and its gradient are ``mann.fused.content``'s, on one item's memory transposed to (W,N) in
float64 so that its loops run over slots. The backward recomputes the cheap intermediates
(gates, usage, allocation, write and read weightings) from the saved inputs; only the
content weights and similarities are kept from the forward, as recomputing them costs N
exponentials per head and item, the largest single cost here. The interface vector is read
in place, by the layout of ``DNCAccess.layout``; both Functions return a gradient for the
whole vector, zero outside the fields they use, and autograd adds the two. The kernels are
serial; they may reassociate sums (to vectorise them) but keep IEEE infinities, NaNs and
functions, and pass ``torch.autograd.gradcheck`` in float64. From
``runtime.PARALLEL_MIN_BATCH_WORK`` (B N W) each runs split across threads, one slice of the
batch per thread (``*_split``): a DNC 256 (B=16) training step went from 158-161 to 129-131 ms
(``bench/ab_speed.py``, both on numba's OpenMP layer).

Allocation sorts usage stably (numba's merge sort), as ``addressing.allocation`` does with
``torch.sort(stable=True)``: a stable sort's order is unique, so at the start, when every
usage is equal, both take equal slots lowest first.

Callers check ``runtime.usable`` first (``DNCAccess.step`` does); without numba they take
the torch composition in ``addressing``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mann.addressing import EPSILON
from mann.fused.runtime import HAVE_NUMBA, KERNEL_LOCK, batch_kernel, njit, prange

# torch's softplus returns x itself above this threshold (and its slope is then 1).
SOFTPLUS_THRESHOLD = 20.0
# Reassociation lets LLVM vectorise the sums over slots and word; no flag that assumes away
# infinities or NaNs, nor approximate functions, so results stay IEEE and gradcheck-exact.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

if HAVE_NUMBA:
    from mann.fused.content import (
        columns_and_norms,
        content_columns,
        content_columns_backward,
        vector_norm,
    )

    KERNEL = dict(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")

    @njit(**KERNEL)
    def _layout(heads, width):
        # Where each field starts in the interface vector (mann.access.dnc.dnc_layout, which
        # tests hold these offsets to): read keys R·W, write key W, write vector W | read
        # strengths R, write strength 1 | erase W, free gates R, allocation gate 1, write
        # gate 1 | read modes 3R.
        write_key = heads * width
        write_vector = write_key + width
        read_strengths = write_vector + width
        write_strength = read_strengths + heads
        erase = write_strength + 1
        free_gates = erase + width
        allocation_gate = free_gates + heads
        write_gate = allocation_gate + 1
        read_modes = write_gate + 1
        return (write_key, write_vector, read_strengths, write_strength, erase, free_gates,
                allocation_gate, write_gate, read_modes)  # fmt: skip

    @njit(**KERNEL)
    def _sigmoid(x):
        return 1.0 / (1.0 + math.exp(-x))

    @njit(**KERNEL)
    def _oneplus(x):
        return 1.0 + (x if x > SOFTPLUS_THRESHOLD else math.log1p(math.exp(x)))

    @njit(**KERNEL)
    def _oneplus_slope(x):
        # d oneplus(x)/dx = σ(x), computed as torch's softplus backward does.
        if x > SOFTPLUS_THRESHOLD:
            return 1.0
        z = math.exp(x)
        return z / (z + 1.0)

    @njit(**KERNEL)
    def _softmax3(logits, probabilities):
        largest = max(logits[0], max(logits[1], logits[2]))
        total = 0.0
        for k in range(3):
            probabilities[k] = math.exp(logits[k] - largest)
            total += probabilities[k]
        for k in range(3):
            probabilities[k] /= total

    # -----------------------------------------------------------------------------------
    # Write: usage, allocation, write weighting, erase-and-write
    # -----------------------------------------------------------------------------------
    @njit(cache=True, nogil=True, error_model="numpy")
    def _usage_forward(interface, prev_usage, prev_write_weights, prev_read_weights, width,
                       usage, sorted_usage, free_list):  # fmt: skip
        # u_t = (u + w^w - u ∘ w^w) ∘ ψ, ψ = Π_r (1 - f^r w^r); then ε + (1 - ε) u_t sorted
        # ascending, stably (equal usages lowest slot first, as torch.sort(stable=True)
        # orders them: a stable sort's order is unique), and the free list φ.
        # Compiled without fastmath: rounded op by op like the torch composition, so slots
        # of equal usage there are equal here too.
        batch, slots = prev_usage.shape
        heads = prev_read_weights.shape[1]
        free_gates_at = _layout(heads, width)[5]
        free_gates = np.empty(heads)
        for b in range(batch):
            for r in range(heads):
                free_gates[r] = _sigmoid(interface[b, free_gates_at + r])
            for i in range(slots):
                retention = 1.0
                for r in range(heads):
                    retention *= 1.0 - free_gates[r] * prev_read_weights[b, r, i]
                used, written = prev_usage[b, i], prev_write_weights[b, i]
                usage[b, i] = (used + written - used * written) * retention
                sorted_usage[b, i] = EPSILON + (1.0 - EPSILON) * usage[b, i]
            order = np.argsort(sorted_usage[b], kind="mergesort")
            mapped = sorted_usage[b].copy()
            for j in range(slots):
                free_list[b, j] = order[j]
                sorted_usage[b, j] = mapped[order[j]]

    @njit(**KERNEL)
    def _write_weighting(x, content, sorted_usage, free_list, heads, width, allocation,
                         used_before, weights):  # fmt: skip
        """One item's allocation a (and Π_{m<j} u[φ_m] by sorted position j) and write
        weighting w^w from its write content c^w, into the (N,) arrays given."""
        slots = content.shape[0]
        fields = _layout(heads, width)
        allocation_gate = _sigmoid(x[fields[6]])
        write_gate = _sigmoid(x[fields[7]])
        # a[φ_j] = (1 - u[φ_j]) Π_{m<j} u[φ_m]: the exclusive cumprod of the sorted usage.
        product = 1.0
        for j in range(slots):
            used_before[j] = product
            allocation[free_list[j]] = (1.0 - sorted_usage[j]) * product
            product *= sorted_usage[j]
        for i in range(slots):
            mixed = allocation_gate * allocation[i] + (1.0 - allocation_gate) * content[i]
            weights[i] = write_gate * mixed

    @njit(**KERNEL)
    def _write_forward(interface, prev_memory, sorted_usage, free_list, heads,
                       memory, write_weights, content, similarity):  # fmt: skip
        # Also keeps the write content c^w and similarity D(k^w, M_{t-1}[i]) (B,N), which
        # the backward would otherwise recompute at the price of N exponentials an item.
        batch, slots, width = prev_memory.shape
        (write_key, write_vector, _, write_strength, erase_at,
         _, _, _, _) = _layout(heads, width)  # fmt: skip
        memory_t = np.empty((width, slots))
        norms = np.empty(slots)
        allocation, used_before, weights = np.empty(slots), np.empty(slots), np.empty(slots)
        erase, vector = np.empty(width), np.empty(width)
        for b in range(batch):
            x = interface[b]
            columns_and_norms(prev_memory[b], memory_t, norms)
            key, strength = x[write_key : write_key + width], _oneplus(x[write_strength])
            content_columns(memory_t, norms, key, strength, content[b], similarity[b])
            _write_weighting(x, content[b], sorted_usage[b], free_list[b], heads, width,
                             allocation, used_before, weights)  # fmt: skip
            for w in range(width):
                erase[w] = _sigmoid(x[erase_at + w])
                vector[w] = x[write_vector + w]
            # M_t = M_{t-1} ∘ (1 - w^w eᵀ) + w^w vᵀ
            for i in range(slots):
                weight = weights[i]
                write_weights[b, i] = weight
                for w in range(width):
                    memory[b, i, w] = (
                        prev_memory[b, i, w] * (1.0 - weight * erase[w]) + weight * vector[w]
                    )

    @njit(**KERNEL)
    def _write_backward(interface, prev_memory, prev_usage, prev_write_weights,
                        prev_read_weights, sorted_usage, free_list, saved_content,
                        saved_similarity, grad_memory, grad_usage, grad_write_weights,
                        grad_interface, grad_prev_memory, grad_prev_usage,
                        grad_prev_write_weights, grad_prev_read_weights):  # fmt: skip
        batch, slots, width = prev_memory.shape
        heads = prev_read_weights.shape[1]
        (write_key, write_vector, _, write_strength, erase_at, free_gates_at,
         allocation_gate_at, write_gate_at, _) = _layout(heads, width)  # fmt: skip
        memory_t, grad_memory_t = np.empty((width, slots)), np.empty((width, slots))
        norms = np.empty(slots)
        allocation, used_before, weights = np.empty(slots), np.empty(slots), np.empty(slots)
        grad_weights, grad_content = np.empty(slots), np.empty(slots)
        grad_new_usage, scratch = np.empty(slots), np.empty((2, slots))
        erase, vector = np.empty(width), np.empty(width)
        grad_erase, grad_vector, grad_key = np.empty(width), np.empty(width), np.empty(width)
        free_gates, grad_free_gates = np.empty(heads), np.empty(heads)
        kept = np.empty(heads)  # 1 - f^r w^r[i]
        for b in range(batch):
            x = interface[b]
            # Recompute this item's forward pass.
            content, similarity = saved_content[b], saved_similarity[b]
            columns_and_norms(prev_memory[b], memory_t, norms)
            _write_weighting(x, content, sorted_usage[b], free_list[b], heads, width,
                             allocation, used_before, weights)  # fmt: skip
            allocation_gate = _sigmoid(x[allocation_gate_at])
            write_gate = _sigmoid(x[write_gate_at])
            for w in range(width):
                erase[w] = _sigmoid(x[erase_at + w])
                vector[w] = x[write_vector + w]

            # M_t = M_{t-1} ∘ (1 - w^w eᵀ) + w^w vᵀ: onto w^w, e and v.
            grad_erase[:] = 0.0
            grad_vector[:] = 0.0
            for i in range(slots):
                weight = weights[i]
                total = 0.0
                for w in range(width):
                    grad = grad_memory[b, i, w]
                    value = prev_memory[b, i, w]
                    total += grad * (vector[w] - value * erase[w])
                    grad_erase[w] -= grad * value * weight
                    grad_vector[w] += grad * weight
                grad_weights[i] = grad_write_weights[b, i] + total

            # w^w = g^w [g^a a + (1 - g^a) c^w]
            grad_write_gate = 0.0
            grad_allocation_gate = 0.0
            for i in range(slots):
                mixed = allocation_gate * allocation[i] + (1.0 - allocation_gate) * content[i]
                grad_write_gate += grad_weights[i] * mixed
                grad_allocation_gate += grad_weights[i] * (allocation[i] - content[i])
                grad_content[i] = grad_weights[i] * write_gate * (1.0 - allocation_gate)
            grad_allocation_gate *= write_gate

            grad_memory_t[:] = 0.0
            grad_key[:] = 0.0
            strength_logit = x[write_strength]
            key = x[write_key : write_key + width]
            grad_strength = content_columns_backward(
                memory_t, norms, key, vector_norm(key), _oneplus(strength_logit), content,
                similarity, grad_content, grad_memory_t, grad_key, scratch,
            )  # fmt: skip
            for i in range(slots):
                weight = weights[i]
                for w in range(width):
                    grad_prev_memory[b, i, w] = (
                        grad_memory[b, i, w] * (1.0 - weight * erase[w]) + grad_memory_t[w, i]
                    )

            # Allocation, as torch differentiates it: through the sorted values and the
            # exclusive cumprod (dL/dx_m = Σ_{k>=m} y_k dL/dy_k / x_m), not the sort order.
            later = 0.0  # Σ_{k>j} Π_{m<k} u[φ_m] dL/d(Π_{m<k} u[φ_m])
            for j in range(slots - 1, -1, -1):
                slot = free_list[b, j]
                sorted_value = sorted_usage[b, j]
                grad_allocation = grad_weights[slot] * write_gate * allocation_gate
                grad_sorted = -grad_allocation * used_before[j] + later / sorted_value
                later += used_before[j] * grad_allocation * (1.0 - sorted_value)
                grad_new_usage[slot] = grad_usage[b, slot] + (1.0 - EPSILON) * grad_sorted

            # u_t = (u + w^w - u ∘ w^w) ∘ Π_r (1 - f^r w^r)
            for r in range(heads):
                free_gates[r] = _sigmoid(x[free_gates_at + r])
                grad_free_gates[r] = 0.0
            for i in range(slots):
                retention = 1.0
                for r in range(heads):
                    kept[r] = 1.0 - free_gates[r] * prev_read_weights[b, r, i]
                    retention *= kept[r]
                used, written = prev_usage[b, i], prev_write_weights[b, i]
                grad_written = grad_new_usage[i] * retention
                grad_prev_usage[b, i] = grad_written * (1.0 - written)
                grad_prev_write_weights[b, i] = grad_written * (1.0 - used)
                grad_retention = grad_new_usage[i] * (used + written - used * written)
                for r in range(heads):
                    # The product of the other heads' factors: exact even where one is 0.
                    others = 1.0
                    for other in range(heads):
                        if other != r:
                            others *= kept[other]
                    grad_kept = grad_retention * others
                    grad_prev_read_weights[b, r, i] = -grad_kept * free_gates[r]
                    grad_free_gates[r] -= grad_kept * prev_read_weights[b, r, i]

            # Through the squashing functions onto the raw interface; zero elsewhere.
            grad_x = grad_interface[b]
            grad_x[:] = 0.0
            for w in range(width):
                grad_x[write_key + w] = grad_key[w]
                grad_x[write_vector + w] = grad_vector[w]
                grad_x[erase_at + w] = grad_erase[w] * erase[w] * (1.0 - erase[w])
            grad_x[write_strength] = grad_strength * _oneplus_slope(strength_logit)
            for r in range(heads):
                grad_x[free_gates_at + r] = (
                    grad_free_gates[r] * free_gates[r] * (1.0 - free_gates[r])
                )
            grad_x[allocation_gate_at] = (
                grad_allocation_gate * allocation_gate * (1.0 - allocation_gate)
            )
            grad_x[write_gate_at] = grad_write_gate * write_gate * (1.0 - write_gate)

    # -----------------------------------------------------------------------------------
    # Read: precedence, read content, read modes, read weightings and vectors
    # -----------------------------------------------------------------------------------
    @njit(**KERNEL)
    def _read_weighting(x, content, forward, backward, head, width, modes, weights):
        """Head r's modes π^r (3,) and read weighting w^r = π[0] b + π[1] c^r + π[2] f
        (N,) from its read content c^r (N,), into the arrays given."""
        heads, slots = forward.shape
        modes_at = _layout(heads, width)[8] + 3 * head
        _softmax3(x[modes_at : modes_at + 3], modes)
        for i in range(slots):
            weights[i] = (
                modes[0] * backward[head, i] + modes[1] * content[i] + modes[2] * forward[head, i]
            )

    @njit(**KERNEL)
    def _read_forward(interface, memory, prev_precedence, write_weights, forward, backward,
                      read_weights, read_vectors, precedence, content, similarity):  # fmt: skip
        # Also keeps the read content c^r and similarity D(k^r, M_t[i]) (B,R,N) for the
        # backward, as the write does.
        batch, slots, width = memory.shape
        heads = forward.shape[1]
        read_strengths = _layout(heads, width)[2]
        memory_t = np.empty((width, slots))
        norms, weights, modes = np.empty(slots), np.empty(slots), np.empty(3)
        for b in range(batch):
            # p_t = (1 - Σ_i w^w[i]) p_{t-1} + w^w
            written = 0.0
            for i in range(slots):
                written += write_weights[b, i]
            for i in range(slots):
                precedence[b, i] = (1.0 - written) * prev_precedence[b, i] + write_weights[b, i]
            columns_and_norms(memory[b], memory_t, norms)
            x = interface[b]
            for r in range(heads):
                key, strength = x[r * width : (r + 1) * width], _oneplus(x[read_strengths + r])
                content_columns(memory_t, norms, key, strength, content[b, r],
                                similarity[b, r])  # fmt: skip
                _read_weighting(x, content[b, r], forward[b], backward[b], r, width, modes,
                                weights)  # fmt: skip
                for i in range(slots):
                    read_weights[b, r, i] = weights[i]
                # r = Σ_i w^r[i] M_t[i]
                for w in range(width):
                    total = 0.0
                    for i in range(slots):
                        total += weights[i] * memory_t[w, i]
                    read_vectors[b, r, w] = total

    @njit(**KERNEL)
    def _read_backward(interface, memory, prev_precedence, write_weights, forward, backward,
                       saved_content, saved_similarity,
                       grad_read_weights, grad_read_vectors, grad_precedence,
                       grad_interface, grad_memory, grad_prev_precedence, grad_write_weights,
                       grad_forward, grad_backward):  # fmt: skip
        batch, slots, width = memory.shape
        heads = forward.shape[1]
        fields = _layout(heads, width)
        read_strengths, read_modes = fields[2], fields[8]
        memory_t, grad_memory_t = np.empty((width, slots)), np.empty((width, slots))
        norms = np.empty(slots)
        weights, grad_weights, grad_content = np.empty(slots), np.empty(slots), np.empty(slots)
        scratch, grad_key = np.empty((2, slots)), np.empty(width)
        modes, grad_modes = np.empty(3), np.empty(3)
        for b in range(batch):
            x = interface[b]
            grad_x = grad_interface[b]
            grad_x[:] = 0.0
            # p_t = (1 - Σ_i w^w[i]) p_{t-1} + w^w
            written = 0.0
            carried = 0.0  # Σ_j dL/dp_t[j] p_{t-1}[j]
            for i in range(slots):
                written += write_weights[b, i]
                carried += grad_precedence[b, i] * prev_precedence[b, i]
            for i in range(slots):
                grad_prev_precedence[b, i] = grad_precedence[b, i] * (1.0 - written)
                grad_write_weights[b, i] = grad_precedence[b, i] - carried
            columns_and_norms(memory[b], memory_t, norms)
            grad_memory_t[:] = 0.0
            for r in range(heads):
                content, similarity = saved_content[b, r], saved_similarity[b, r]
                _read_weighting(x, content, forward[b], backward[b], r, width, modes, weights)
                # r = Σ_i w^r[i] M_t[i]: onto w^r and M_t.
                for i in range(slots):
                    grad_weights[i] = grad_read_weights[b, r, i]
                for w in range(width):
                    grad_vector = grad_read_vectors[b, r, w]
                    for i in range(slots):
                        grad_weights[i] += grad_vector * memory_t[w, i]
                        grad_memory_t[w, i] += weights[i] * grad_vector
                # w^r = π[0] b + π[1] c^r + π[2] f
                grad_modes[:] = 0.0
                for i in range(slots):
                    grad_backward[b, r, i] = modes[0] * grad_weights[i]
                    grad_content[i] = modes[1] * grad_weights[i]
                    grad_forward[b, r, i] = modes[2] * grad_weights[i]
                    grad_modes[0] += grad_weights[i] * backward[b, r, i]
                    grad_modes[1] += grad_weights[i] * content[i]
                    grad_modes[2] += grad_weights[i] * forward[b, r, i]
                expected = modes[0] * grad_modes[0] + modes[1] * grad_modes[1]
                expected += modes[2] * grad_modes[2]
                for k in range(3):
                    grad_x[read_modes + 3 * r + k] = modes[k] * (grad_modes[k] - expected)
                grad_key[:] = 0.0
                strength_logit = x[read_strengths + r]
                key = x[r * width : (r + 1) * width]
                grad_strength = content_columns_backward(
                    memory_t, norms, key, vector_norm(key), _oneplus(strength_logit), content,
                    similarity, grad_content, grad_memory_t, grad_key, scratch,
                )  # fmt: skip
                for w in range(width):
                    grad_x[r * width + w] = grad_key[w]
                grad_x[read_strengths + r] = grad_strength * _oneplus_slope(strength_logit)
            for i in range(slots):
                for w in range(width):
                    grad_memory[b, i, w] = grad_memory_t[w, i]

    # -----------------------------------------------------------------------------------
    # The kernels above split across threads: one part of the batch per thread, each part
    # the serial kernel on a slice (items are independent, so each item's arithmetic is the
    # serial kernel's, bit for bit). On numba's OpenMP layer a launch costs about 2 µs
    # (``runtime``); ``runtime.batch_kernel`` picks between a kernel and its split.
    # -----------------------------------------------------------------------------------
    SPLIT = dict(parallel=True, cache=True, nogil=True)

    @njit(**SPLIT)
    def _usage_forward_split(interface, prev_usage, prev_write_weights, prev_read_weights,
                             width, usage, sorted_usage, free_list, parts):  # fmt: skip
        batch = interface.shape[0]
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            _usage_forward(interface[lo:hi], prev_usage[lo:hi], prev_write_weights[lo:hi],
                           prev_read_weights[lo:hi], width, usage[lo:hi], sorted_usage[lo:hi],
                           free_list[lo:hi])  # fmt: skip

    @njit(**SPLIT)
    def _write_forward_split(interface, prev_memory, sorted_usage, free_list, heads,
                             memory, write_weights, content, similarity, parts):  # fmt: skip
        batch = interface.shape[0]
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            _write_forward(interface[lo:hi], prev_memory[lo:hi], sorted_usage[lo:hi],
                           free_list[lo:hi], heads, memory[lo:hi], write_weights[lo:hi],
                           content[lo:hi], similarity[lo:hi])  # fmt: skip

    @njit(**SPLIT)
    def _write_backward_split(interface, prev_memory, prev_usage, prev_write_weights,
                              prev_read_weights, sorted_usage, free_list, saved_content,
                              saved_similarity, grad_memory, grad_usage, grad_write_weights,
                              grad_interface, grad_prev_memory, grad_prev_usage,
                              grad_prev_write_weights, grad_prev_read_weights,
                              parts):  # fmt: skip
        batch = interface.shape[0]
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            _write_backward(interface[lo:hi], prev_memory[lo:hi], prev_usage[lo:hi],
                            prev_write_weights[lo:hi], prev_read_weights[lo:hi],
                            sorted_usage[lo:hi], free_list[lo:hi], saved_content[lo:hi],
                            saved_similarity[lo:hi], grad_memory[lo:hi], grad_usage[lo:hi],
                            grad_write_weights[lo:hi], grad_interface[lo:hi],
                            grad_prev_memory[lo:hi], grad_prev_usage[lo:hi],
                            grad_prev_write_weights[lo:hi],
                            grad_prev_read_weights[lo:hi])  # fmt: skip

    @njit(**SPLIT)
    def _read_forward_split(interface, memory, prev_precedence, write_weights, forward,
                            backward, read_weights, read_vectors, precedence, content,
                            similarity, parts):  # fmt: skip
        batch = interface.shape[0]
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            _read_forward(interface[lo:hi], memory[lo:hi], prev_precedence[lo:hi],
                          write_weights[lo:hi], forward[lo:hi], backward[lo:hi],
                          read_weights[lo:hi], read_vectors[lo:hi], precedence[lo:hi],
                          content[lo:hi], similarity[lo:hi])  # fmt: skip

    @njit(**SPLIT)
    def _read_backward_split(interface, memory, prev_precedence, write_weights, forward,
                             backward, saved_content, saved_similarity, grad_read_weights,
                             grad_read_vectors, grad_precedence, grad_interface,
                             grad_memory, grad_prev_precedence, grad_write_weights,
                             grad_forward, grad_backward, parts):  # fmt: skip
        batch = interface.shape[0]
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            _read_backward(interface[lo:hi], memory[lo:hi], prev_precedence[lo:hi],
                           write_weights[lo:hi], forward[lo:hi], backward[lo:hi],
                           saved_content[lo:hi], saved_similarity[lo:hi],
                           grad_read_weights[lo:hi], grad_read_vectors[lo:hi],
                           grad_precedence[lo:hi], grad_interface[lo:hi], grad_memory[lo:hi],
                           grad_prev_precedence[lo:hi], grad_write_weights[lo:hi],
                           grad_forward[lo:hi], grad_backward[lo:hi])  # fmt: skip


def _numpy(*tensors: torch.Tensor) -> list[np.ndarray]:
    # Inside an autograd.Function grad mode is off, so .numpy() needs no detach; contiguous()
    # is free (no operation) when the tensor already is.
    return [tensor.contiguous().numpy() for tensor in tensors]


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
    # A numpy buffer wrapped as a tensor: one operation fewer than torch.empty then .numpy().
    array = np.empty(shape, dtype=np.float32 if dtype == torch.float32 else np.float64)
    return torch.from_numpy(array), array


def _empty_like(array: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """A buffer of ``array``'s shape and dtype, as a tensor and as the array."""
    buffer = np.empty_like(array)
    return torch.from_numpy(buffer), buffer


def write_forward(interface, prev_memory, prev_usage, prev_write_weights, prev_read_weights):
    """The write half without autograd: interface (B,I), M_{t-1} (B,N,W), u_{t-1} (B,N),
    w^w_{t-1} (B,N), w^r_{t-1} (B,R,N), contiguous -> ((M_t, u_t, w^w_t (B,N)), saved),
    ``saved`` being the arrays ``write_backward`` needs."""
    batch, slots, width = prev_memory.shape
    heads = prev_read_weights.shape[1]
    dtype = prev_memory.dtype
    usage, usage_array = _empty((batch, slots), dtype)
    sorted_usage, sorted_array = _empty((batch, slots), dtype)
    free_list = np.empty((batch, slots), dtype=np.int64)
    memory, memory_array = _empty((batch, slots, width), dtype)
    write_weights, write_array = _empty((batch, slots), dtype)
    inputs = _numpy(interface, prev_memory, prev_usage, prev_write_weights, prev_read_weights)
    content_and_similarity = np.empty((batch, slots)), np.empty((batch, slots))
    shape = prev_memory.shape
    with KERNEL_LOCK:
        usage_kernel = batch_kernel(_usage_forward, _usage_forward_split, shape)
        usage_kernel(inputs[0], *inputs[2:], width, usage_array, sorted_array, free_list)
        batch_kernel(_write_forward, _write_forward_split, shape)(
            inputs[0], inputs[1], sorted_array, free_list, heads, memory_array, write_array,
            *content_and_similarity,
        )  # fmt: skip
    # The inputs as arrays (not converted again), the sort and the write content.
    return (memory, usage, write_weights), (*inputs, sorted_array, free_list,
                                            *content_and_similarity)  # fmt: skip


def write_backward(saved, grad_memory, grad_usage, grad_write_weights):
    """Gradients of (interface, M_{t-1}, u_{t-1}, w^w_{t-1} (B,N), w^r_{t-1}) from
    ``write_forward``'s ``saved`` and the gradients of M_t, u_t, w^w_t (B,N)."""
    # Gradients of the saved inputs, shaped and typed like them.
    grads, grad_arrays = zip(*(_empty_like(array) for array in saved[:5]), strict=True)
    with KERNEL_LOCK:
        batch_kernel(_write_backward, _write_backward_split, saved[1].shape)(
            *saved, *_numpy(grad_memory, grad_usage, grad_write_weights), *grad_arrays
        )
    return grads


class _Write(torch.autograd.Function):
    @staticmethod
    def forward(ctx, interface, prev_memory, prev_usage, prev_write_weights, prev_read_weights):
        # prev_write_weights arrive as the state holds them, (B,1,N); the new ones leave both
        # as (B,N) and, copied, as (B,1,N) for the next state: a squeeze and an unsqueeze
        # outside would be two more autograd nodes per step.
        batch, slots, _ = prev_memory.shape
        (memory, usage, write_weights), ctx.arrays = write_forward(
            interface, prev_memory, prev_usage, prev_write_weights.view(batch, slots),
            prev_read_weights,
        )  # fmt: skip
        # For the check that no input was modified in place since.
        ctx.save_for_backward(
            interface, prev_memory, prev_usage, prev_write_weights, prev_read_weights
        )
        return memory, usage, write_weights, write_weights.clone().unsqueeze(1)

    @staticmethod
    def backward(ctx, grad_memory, grad_usage, grad_write_weights, grad_state_write_weights):
        prev_write_weights = ctx.saved_tensors[3]
        grad_write_weights = grad_write_weights + grad_state_write_weights.squeeze(1)
        grads = write_backward(ctx.arrays, grad_memory, grad_usage, grad_write_weights)
        return (*grads[:3], grads[3].view(prev_write_weights.shape), grads[4])


def read_forward(interface, memory, prev_precedence, write_weights, forward, backward):
    """The read half without autograd: interface (B,I), M_t (B,N,W), p_{t-1} (B,N), w^w_t
    (B,N), f and b (B,R,N), contiguous -> ((w^r_t, r_t, p_t), saved), ``saved`` being the
    arrays ``read_backward`` needs."""
    batch, slots, width = memory.shape
    heads = forward.shape[1]
    dtype = memory.dtype
    read_weights, read_weights_array = _empty((batch, heads, slots), dtype)
    read_vectors, read_vectors_array = _empty((batch, heads, width), dtype)
    precedence, precedence_array = _empty((batch, slots), dtype)
    arrays = _numpy(interface, memory, prev_precedence, write_weights, forward, backward)
    content_and_similarity = np.empty((batch, heads, slots)), np.empty((batch, heads, slots))
    with KERNEL_LOCK:
        batch_kernel(_read_forward, _read_forward_split, memory.shape)(
            *arrays, read_weights_array, read_vectors_array, precedence_array,
            *content_and_similarity,
        )  # fmt: skip
    return (read_weights, read_vectors, precedence), (*arrays, *content_and_similarity)


def read_backward(saved, grad_read_weights, grad_read_vectors, grad_precedence):
    """Gradients of (interface, M_t, p_{t-1}, w^w_t, f, b) from ``read_forward``'s ``saved``
    and the gradients of w^r_t, r_t, p_t."""
    # Gradients of the saved inputs, shaped and typed like them.
    grads, grad_arrays = zip(*(_empty_like(array) for array in saved[:6]), strict=True)
    with KERNEL_LOCK:
        batch_kernel(_read_backward, _read_backward_split, saved[1].shape)(
            *saved, *_numpy(grad_read_weights, grad_read_vectors, grad_precedence), *grad_arrays
        )
    return grads


class _Read(torch.autograd.Function):
    @staticmethod
    def forward(ctx, interface, memory, prev_precedence, write_weights, forward, backward):
        inputs = (interface, memory, prev_precedence, write_weights, forward, backward)
        outputs, ctx.arrays = read_forward(*inputs)
        ctx.save_for_backward(*inputs)
        return outputs

    @staticmethod
    def backward(ctx, grad_read_weights, grad_read_vectors, grad_precedence):
        _ = ctx.saved_tensors  # checks that no input was modified in place since
        return read_backward(ctx.arrays, grad_read_weights, grad_read_vectors, grad_precedence)


def dnc_write(
    interface: torch.Tensor,
    prev_memory: torch.Tensor,
    prev_usage: torch.Tensor,
    prev_write_weights: torch.Tensor,
    prev_read_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The write half of a DNC step, fused: usage, allocation, write weighting, write.

    interface ξ_t (B,I) laid out as ``DNCAccess.layout``, memory M_{t-1} (B,N,W),
    usage u_{t-1} (B,N), write weights w^w_{t-1} (B,1,N), read weights w^r_{t-1} (B,R,N)
    -> (memory M_t (B,N,W), usage u_t (B,N), write weights w^w_t (B,N) and, a copy, (B,1,N)).
    Equals ``addressing.usage``, ``allocation``, ``content_weights``, ``write_weighting`` and
    ``erase_and_write`` as ``DNCAccess.step`` composes them. CPU float tensors of one dtype.
    """
    return _Write.apply(interface, prev_memory, prev_usage, prev_write_weights, prev_read_weights)


def dnc_read(
    interface: torch.Tensor,
    memory: torch.Tensor,
    prev_precedence: torch.Tensor,
    write_weights: torch.Tensor,
    forward: torch.Tensor,
    backward: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The read half of a DNC step, fused: precedence, read content, modes, reads.

    interface ξ_t (B,I), memory M_t (B,N,W), precedence p_{t-1} (B,N), write weights w^w_t
    (B,N), forward f^r and backward b^r weightings (B,R,N) from the link
    -> (read weights w^r_t (B,R,N), read vectors r_t (B,R,W), precedence p_t (B,N)).
    Equals ``addressing.precedence``, ``content_weights``, ``read_weighting`` and ``read``.
    """
    return _Read.apply(interface, memory, prev_precedence, write_weights, forward, backward)


def access_step(access, interface: torch.Tensor, state):
    """``DNCAccess.step`` without a record, by the fused kernels, in the reference's order:
    the write (usage, allocation, write weighting, erase-and-write), the link and the reads
    through it, then precedence and the reads -> (r_t, state_t, None)."""
    from mann.access.dnc import DNCState
    from mann.fused.link import link_and_directions

    memory, usage, write_weights, state_write_weights = dnc_write(
        interface, state.memory, state.usage, state.write_weights, state.read_weights
    )
    link, forward, backward = link_and_directions(
        state.link, state.precedence, write_weights, state.read_weights
    )
    read_weights, read_vectors, precedence = dnc_read(
        interface, memory, state.precedence, write_weights, forward, backward
    )
    new_state = DNCState(memory, usage, link, precedence, read_weights, state_write_weights)
    return read_vectors, new_state, None
