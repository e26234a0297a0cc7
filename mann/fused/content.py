"""Content addressing for the kernels of the NTM, the DNC and the sparse reads, with its gradient.

``C(M, k, β)[i] = softmax_i(β D(k, M[i]))``, ``D(k, M[i]) = k·M[i] / (|k| |M[i]| + ε)``: the
equation of ``addressing.content_weights`` (and, on K gathered rows, of
``addressing.sparse_content_weights``), which stays its definition; tests hold these kernels
to it (tests/test_fused_content.py). Its hand-derived backward, with ``s_i = |k| |M[i]| + ε``
and ``z = β D``:

- softmax: ``∂z_i = w_i (∂w_i - Σ_j w_j ∂w_j)``; ``∂β = Σ_i ∂z_i D_i``, ``∂D_i = β ∂z_i``;
- quotient: ``∂(k·M[i]) = ∂D_i / s_i``, ``∂s_i = -∂D_i D_i / s_i``, which reaches
  ``|k|`` as ``∂s_i |M[i]|`` and ``|M[i]|`` as ``∂s_i |k|``;
- dot and norms: ``∂k = Σ_i ∂(k·M[i]) M[i] + ∂|k| k / |k|`` and
  ``∂M[i] = ∂(k·M[i]) k + ∂|M[i]| M[i] / |M[i]|``, a zero vector's norm passing no gradient
  (as torch's ``vector_norm`` backward).

The first two are written once (``_cosine_softmax``, ``_cosine_softmax_backward``); the
third, where memory's layout matters, twice:

- ``content_rows``: memory as rows (N,W), as the NTM and the sparse reads hold it;
- ``content_columns``: memory transposed to columns (W,N) (``columns_and_norms``), so the
  long loops run over slots, contiguous and vectorised when W is small; the DNC's layout.

Every function is inlined into its caller (numba ``inline="always"``) and so compiled with
the caller's flags: the DNC's and NTM's kernels reassociate sums (their ``FASTMATH``), the
sparse reads round every operation in order. Arrays may be float32 or float64; scalar sums
run in float64. An edit here recompiles its callers: their disk cache is stamped by every
kernel file (``runtime.KernelSourcesLocator``), not by their own file alone as numba's is.
"""

from __future__ import annotations

import math

from mann.addressing import EPSILON
from mann.fused.runtime import HAVE_NUMBA, njit

if HAVE_NUMBA:
    INLINE = dict(inline="always", cache=True, nogil=True)

    @njit(**INLINE)
    def vector_norm(vector):
        """|v| of a (W,) vector."""
        total = 0.0
        for w in range(vector.shape[0]):
            total += vector[w] * vector[w]
        return math.sqrt(total)

    @njit(**INLINE)
    def _cosine_softmax(similarity, norms, key_norm, strength, weights):
        """similarity (N,): k·M[i] on entry, D(k, M[i]) on return; norms |M[i]| (N,), |k|,
        β -> weights softmax_i(β D) (N,)."""
        slots = similarity.shape[0]
        largest = -math.inf
        for i in range(slots):
            similarity[i] /= key_norm * norms[i] + EPSILON
            weights[i] = strength * similarity[i]
            largest = max(largest, weights[i])
        total = 0.0
        for i in range(slots):
            weights[i] = math.exp(weights[i] - largest)
            total += weights[i]
        for i in range(slots):
            weights[i] /= total

    @njit(**INLINE)
    def _cosine_softmax_backward(similarity, norms, key_norm, strength, weights, grad_weights,
                                 grad_dots, norm_scales):  # fmt: skip
        """From dL/dw (N,) to (dL/dβ, dL/d|k| / |k|); fills grad_dots (N,) with dL/d(k·M[i])
        and norm_scales (N,) with dL/d|M[i]| / |M[i]|. A zero norm passes no gradient."""
        slots = similarity.shape[0]
        expected = 0.0  # Σ_i w_i ∂w_i, the softmax's shared term
        for i in range(slots):
            expected += weights[i] * grad_weights[i]
        grad_strength = 0.0
        grad_key_norm = 0.0
        for i in range(slots):
            grad_logit = weights[i] * (grad_weights[i] - expected)
            grad_strength += grad_logit * similarity[i]
            grad_similarity = grad_logit * strength
            denominator = key_norm * norms[i] + EPSILON
            grad_dots[i] = grad_similarity / denominator
            grad_denominator = -grad_similarity * similarity[i] / denominator
            grad_key_norm += grad_denominator * norms[i]
            norm_scales[i] = grad_denominator * key_norm / norms[i] if norms[i] > 0.0 else 0.0
        key_scale = grad_key_norm / key_norm if key_norm > 0.0 else 0.0
        return grad_strength, key_scale

    # -----------------------------------------------------------------------------------
    # Memory as rows (N,W): the NTM's, and the K rows a sparse read gathers
    # -----------------------------------------------------------------------------------
    @njit(**INLINE)
    def norms_of_rows(rows, norms):
        """|M[i]| (N,) of rows (N,W)."""
        for i in range(rows.shape[0]):
            norms[i] = vector_norm(rows[i])

    @njit(**INLINE)
    def content_rows(rows, norms, key, strength, weights, similarity):
        """C(M, k, β) for one key: rows M (N,W), their norms (N,), key k (W,), strength β
        -> weights (N,) and similarity D(k, M[i]) (N,), kept for the backward; returns |k|."""
        slots, width = rows.shape
        key_norm = vector_norm(key)
        for i in range(slots):
            dot = 0.0
            for w in range(width):
                dot += key[w] * rows[i, w]
            similarity[i] = dot
        _cosine_softmax(similarity, norms, key_norm, strength, weights)
        return key_norm

    @njit(**INLINE)
    def content_rows_backward(rows, norms, key, key_norm, strength, weights, similarity,
                              grad_weights, grad_rows, grad_key, scratch):  # fmt: skip
        """Backward of ``content_rows``: adds dL/dM into grad_rows (N,W) and dL/dk into
        grad_key (W,), returns dL/dβ. scratch (2,N)."""
        slots, width = rows.shape
        grad_dots, norm_scales = scratch[0], scratch[1]
        grad_strength, key_scale = _cosine_softmax_backward(
            similarity, norms, key_norm, strength, weights, grad_weights, grad_dots, norm_scales
        )
        for i in range(slots):
            grad_dot, norm_scale = grad_dots[i], norm_scales[i]
            for w in range(width):
                value = rows[i, w]
                grad_key[w] += grad_dot * value
                grad_rows[i, w] += grad_dot * key[w] + norm_scale * value
        for w in range(width):
            grad_key[w] += key_scale * key[w]
        return grad_strength

    # -----------------------------------------------------------------------------------
    # Memory as columns (W,N): the DNC's
    # -----------------------------------------------------------------------------------
    @njit(**INLINE)
    def columns_and_norms(memory, columns, norms):
        """memory (N,W) -> columns, its transpose (W,N), and row norms |M[i]| (N,)."""
        slots, width = memory.shape
        if slots < 512:
            for i in range(slots):
                for w in range(width):
                    columns[w, i] = memory[i, w]
        else:
            # Slot by slot, the writes go to W rows N·8 bytes apart: from N=512 a multiple of
            # 4 KB, so every row maps to the same L1 sets and they evict each other. In blocks
            # of 16 slots each row's writes fill whole cache lines (one-off timing at N=1024,
            # W=32: 131 -> 36 µs an item; at N=256 blocks were slower, 5.0 -> 5.8).
            for start in range(0, slots, 16):
                stop = min(start + 16, slots)
                for w in range(width):
                    row = columns[w]
                    for i in range(start, stop):
                        row[i] = memory[i, w]
        norms[:] = 0.0
        for w in range(width):
            for i in range(slots):
                norms[i] += columns[w, i] * columns[w, i]
        for i in range(slots):
            norms[i] = math.sqrt(norms[i])

    @njit(**INLINE)
    def content_columns(columns, norms, key, strength, weights, similarity):
        """C(M, k, β) for one key: columns Mᵀ (W,N), |M[i]| (N,), key k (W,), strength β
        -> weights (N,) and similarity D(k, M[i]) (N,), kept for the backward; returns |k|."""
        width, slots = columns.shape
        key_norm = vector_norm(key)
        similarity[:] = 0.0
        for w in range(width):
            key_w = key[w]
            for i in range(slots):
                similarity[i] += key_w * columns[w, i]
        _cosine_softmax(similarity, norms, key_norm, strength, weights)
        return key_norm

    @njit(**INLINE)
    def content_columns_backward(columns, norms, key, key_norm, strength, weights, similarity,
                                 grad_weights, grad_columns, grad_key, scratch):  # fmt: skip
        """Backward of ``content_columns``: adds dL/dMᵀ into grad_columns (W,N) and dL/dk
        into grad_key (W,), returns dL/dβ. scratch (2,N)."""
        width, slots = columns.shape
        grad_dots, norm_scales = scratch[0], scratch[1]
        grad_strength, key_scale = _cosine_softmax_backward(
            similarity, norms, key_norm, strength, weights, grad_weights, grad_dots, norm_scales
        )
        for w in range(width):
            key_w = key[w]
            total = 0.0
            for i in range(slots):
                value = columns[w, i]
                total += grad_dots[i] * value
                grad_columns[w, i] += grad_dots[i] * key_w + norm_scales[i] * value
            grad_key[w] += total + key_scale * key_w
        return grad_strength
