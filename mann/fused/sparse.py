"""Fused kernels for the sparse memories' reads (SAM, SDNC; ``mann.access.sam``).

A sparse content read gathers the K rows a k-NN index found for each key, scores them by
cosine similarity, takes the softmax of the scores times β and (SAM) reads the weighted sum
of the rows. Composed from torch operations (``addressing.sparse_content_weights`` and
``sparse_read``) that is about twenty operations a step and as many autograd nodes, on
arrays of a few thousand numbers; here it is one kernel forward and one backward, which
also adds the rows' gradients into the memory's gradient buffer in place.

The backward of ``D = k·m / (|k| |m| + ε)`` with ``s = |k| |m| + ε``:
``∂D/∂k = m / s - D |m| k / (|k| s)`` and symmetrically for m; a zero vector's norm has
gradient 0 there (as torch's ``vector_norm``). The softmax's: ``∂z_j = w_j (∂w_j - Σ_i w_i ∂w_i)``.
"""

from __future__ import annotations

import numpy as np

from mann.fused.runtime import HAVE_NUMBA, njit

if HAVE_NUMBA:
    KERNEL = dict(cache=True, nogil=True, fastmath=False)

    @njit(**KERNEL)
    def content_read_forward(
        memory, positions, keys, strengths, epsilon,
        rows, similarity, key_norms, row_norms, weights, reads,
    ):  # fmt: skip
        """memory (B,N,W), positions (B,H,K), keys (B,H,W), strengths β (B,H) -> fills
        rows (B,H,K,W) (a copy, for the backward), similarity D (B,H,K), the norms |k| (B,H)
        and |M[i_k]| (B,H,K), weights softmax_k(β D) (B,H,K) and reads Σ_k w_k M[i_k]
        (B,H,W)."""
        batch, heads, k = positions.shape
        width = memory.shape[2]
        for b in range(batch):
            for h in range(heads):
                key_norm = 0.0
                for c in range(width):
                    key_norm += keys[b, h, c] * keys[b, h, c]
                key_norm = np.sqrt(key_norm)
                key_norms[b, h] = key_norm
                largest = -np.inf
                for j in range(k):
                    slot = positions[b, h, j]
                    dot = 0.0
                    norm = 0.0
                    for c in range(width):
                        value = memory[b, slot, c]
                        rows[b, h, j, c] = value
                        dot += keys[b, h, c] * value
                        norm += value * value
                    norm = np.sqrt(norm)
                    row_norms[b, h, j] = norm
                    similarity[b, h, j] = dot / (key_norm * norm + epsilon)
                    score = strengths[b, h] * similarity[b, h, j]
                    weights[b, h, j] = score
                    largest = max(largest, score)
                total = 0.0
                for j in range(k):
                    weights[b, h, j] = np.exp(weights[b, h, j] - largest)
                    total += weights[b, h, j]
                for c in range(width):
                    reads[b, h, c] = 0.0
                for j in range(k):
                    weights[b, h, j] /= total
                    for c in range(width):
                        reads[b, h, c] += weights[b, h, j] * rows[b, h, j, c]

    @njit(**KERNEL)
    def content_read_backward(
        grad_weights, grad_reads, positions, keys, strengths, epsilon,
        rows, similarity, key_norms, row_norms, weights,
        grad_memory, grad_keys, grad_strengths,
    ):  # fmt: skip
        """The gradients of ``content_read_forward``: from dL/dw (B,H,K) and dL/dr (B,H,W)
        to dL/dk (B,H,W) and dL/dβ (B,H), filled; dL/dM at the read rows is added into
        grad_memory (B,N,W) in place."""
        batch, heads, k = positions.shape
        width = keys.shape[2]
        grad_w = np.empty(k, dtype=weights.dtype)
        for b in range(batch):
            for h in range(heads):
                mean = 0.0  # Σ_i w_i ∂w_i
                for j in range(k):
                    value = grad_weights[b, h, j]
                    for c in range(width):
                        value += grad_reads[b, h, c] * rows[b, h, j, c]
                    grad_w[j] = value
                    mean += weights[b, h, j] * value
                grad_strength = 0.0
                for c in range(width):
                    grad_keys[b, h, c] = 0.0
                key_norm = key_norms[b, h]
                for j in range(k):
                    slot = positions[b, h, j]
                    grad_score = weights[b, h, j] * (grad_w[j] - mean)
                    grad_strength += grad_score * similarity[b, h, j]
                    grad_similarity = grad_score * strengths[b, h]
                    norm = row_norms[b, h, j]
                    scale = key_norm * norm + epsilon
                    grad_dot = grad_similarity / scale
                    # ∂D/∂s = -D / s, and s = |k| |m| + ε.
                    grad_scale = -grad_similarity * similarity[b, h, j] / scale
                    key_factor = grad_scale * norm / key_norm if key_norm > 0 else 0.0
                    row_factor = grad_scale * key_norm / norm if norm > 0 else 0.0
                    for c in range(width):
                        row = rows[b, h, j, c]
                        key = keys[b, h, c]
                        grad_keys[b, h, c] += grad_dot * row + key_factor * key
                        from_read = weights[b, h, j] * grad_reads[b, h, c]
                        grad_memory[b, slot, c] += grad_dot * key + row_factor * row + from_read
                grad_strengths[b, h] = grad_strength

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
