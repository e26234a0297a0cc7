"""The memory equations, one pure differentiable function each, under the papers' names.

Shapes use B batch, N memory slots, W word size, H heads, R read heads, Hw write heads,
S allowed shifts. Every function is batched, has no state and works in any float dtype.

Sources: NTM, Graves et al. 2014 section 3; DNC, Graves et al. 2016 Methods (the
reference code is deepmind/dnc); the DNC's three improvements, Csordás & Schmidhuber 2019
("Improving Differentiable Neural Computers Through Memory Masking, De-allocation, and Link
Distribution Sharpness Control"). docs/math.md lists every equation with its function.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Keeps |u||v| + ε and the allocation product away from zero (an all-zero memory is no NaN).
EPSILON = 1e-6


def oneplus(x: torch.Tensor) -> torch.Tensor:
    """``1 + softplus(x)``: maps R to [1, ∞); the DNC's key strengths β and NTM's γ."""
    return 1.0 + F.softplus(x)


# ---------------------------------------------------------------------------------------
# Content addressing (NTM 3.3.1, DNC "content-based addressing")
# ---------------------------------------------------------------------------------------
def cosine_similarity(memory: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``D(k, M[i]) = k·M[i] / (|k| |M[i]| + ε)``.

    memory (B,N,W), keys (B,H,W) -> (B,H,N).
    """
    dot = torch.bmm(keys, memory.transpose(1, 2))
    key_norms = torch.linalg.vector_norm(keys, dim=-1)
    memory_norms = torch.linalg.vector_norm(memory, dim=-1)
    return dot / (key_norms.unsqueeze(-1) * memory_norms.unsqueeze(-2) + EPSILON)


def content_weights(
    memory: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor
) -> torch.Tensor:
    """Content weighting ``C(M, k, β)[i] = softmax_i(β D(k, M[i]))``.

    memory (B,N,W), keys (B,H,W), strengths β (B,H) -> (B,H,N), each row sums to 1.
    """
    similarity = cosine_similarity(memory, keys)
    return torch.softmax(similarity * strengths.unsqueeze(-1), dim=-1)


def masked_content_weights(
    memory: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """Masked content weighting (Csordás & Schmidhuber 2019, 3.1):
    ``C(M, k, β, m)[i] = softmax_i(β D(k ∘ m, M[i] ∘ m))``: the mask m ∈ [0,1]^W picks the
    part of the word a lookup compares, so a key can match on an address field alone.

    memory (B,N,W), keys (B,H,W), strengths β (B,H), masks m (B,H,W) -> (B,H,N).
    """
    masked_keys = keys * masks
    masked_memory = memory.unsqueeze(1) * masks.unsqueeze(2)  # (B,H,N,W): one per head
    dot = (masked_memory * masked_keys.unsqueeze(2)).sum(-1)
    key_norms = torch.linalg.vector_norm(masked_keys, dim=-1)
    memory_norms = torch.linalg.vector_norm(masked_memory, dim=-1)
    similarity = dot / (key_norms.unsqueeze(-1) * memory_norms + EPSILON)
    return torch.softmax(similarity * strengths.unsqueeze(-1), dim=-1)


# ---------------------------------------------------------------------------------------
# NTM location addressing (NTM 3.3.2)
# ---------------------------------------------------------------------------------------
def interpolate(
    content: torch.Tensor, previous: torch.Tensor, gate: torch.Tensor
) -> torch.Tensor:
    """Interpolation gate ``w^g = g w^c + (1 - g) w_{t-1}``.

    content w^c (B,H,N), previous w_{t-1} (B,H,N), gate g (B,H) -> (B,H,N).
    """
    gate = gate.unsqueeze(-1)
    return gate * content + (1.0 - gate) * previous


@functools.lru_cache(maxsize=64)
def _shift_source_index(slots: int, shifts: int, device: torch.device) -> torch.Tensor:
    # source[i, k]: the slot whose weight lands on slot i under offset k - S//2.
    slot = torch.arange(slots, device=device).unsqueeze(1)
    offset = torch.arange(shifts, device=device).unsqueeze(0) - shifts // 2
    return (slot - offset).remainder(slots)


def shift(weights: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circular convolution ``w̃[i] = Σ_j w[j] s[(i - j) mod N]`` over the allowed offsets.

    weights (B,H,N), shifts s (B,H,S) with S odd: ``shifts[..., k]`` is the probability of
    moving the weighting by ``k - S//2`` slots towards higher indices, wrapping around.
    Returns (B,H,N). All items and heads are shifted in one gather.
    """
    slots, offsets = weights.shape[-1], shifts.shape[-1]
    if offsets % 2 != 1:
        raise ValueError(f"shift: the number of shifts S must be odd, got {offsets}")
    source = _shift_source_index(slots, offsets, weights.device)  # (N,S)
    shifted = weights[..., source]  # (B,H,N,S): weight arriving at i from each offset
    return torch.einsum("bhns,bhs->bhn", shifted, shifts)


def sharpen(weights: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Sharpening ``w[i] = w̃[i]^γ / Σ_j w̃[j]^γ``, γ >= 1.

    weights w̃ (B,H,N), gamma γ (B,H) -> (B,H,N). Computed as softmax(γ log w̃) so a zero
    weight or an all-zero row never divides by zero nor produces NaN gradients.
    """
    tiny = torch.finfo(weights.dtype).tiny
    log_weights = torch.log(weights.clamp_min(tiny))
    return torch.softmax(gamma.unsqueeze(-1) * log_weights, dim=-1)


# ---------------------------------------------------------------------------------------
# Reading and writing (NTM 3.1, 3.2; DNC "reading and writing to memory")
# ---------------------------------------------------------------------------------------
def read(memory: torch.Tensor, read_weights: torch.Tensor) -> torch.Tensor:
    """Read vectors ``r = Σ_i w[i] M[i]``: memory (B,N,W), weights (B,R,N) -> (B,R,W)."""
    return torch.bmm(read_weights, memory)


def erase_and_write(
    memory: torch.Tensor,
    write_weights: torch.Tensor,
    erase: torch.Tensor,
    add: torch.Tensor,
) -> torch.Tensor:
    """``M_t = M_{t-1} ∘ Π_h (1 - w_h e_hᵀ) + Σ_h w_h a_hᵀ``.

    memory (B,N,W), write_weights (B,Hw,N), erase e ∈ [0,1] (B,Hw,W), add a (B,Hw,W)
    -> (B,N,W). Erasure multiplies over write heads and additions sum, as in deepmind/dnc.
    """
    if write_weights.shape[1] == 1:
        # One head: skip the product over heads (the common case, and the hot path).
        keep = 1.0 - write_weights.transpose(1, 2) * erase
    else:
        keep = (1.0 - write_weights.unsqueeze(-1) * erase.unsqueeze(-2)).prod(dim=1)
    return torch.baddbmm(memory * keep, write_weights.transpose(1, 2), add)


# ---------------------------------------------------------------------------------------
# DNC dynamic memory allocation (Methods, "dynamic memory allocation")
# ---------------------------------------------------------------------------------------
def retention(prev_read_weights: torch.Tensor, free_gates: torch.Tensor) -> torch.Tensor:
    """Memory retention ``ψ = Π_r (1 - f^r w^r_{t-1})``.

    prev_read_weights (B,R,N), free_gates f (B,R) -> (B,N).
    """
    return (1.0 - free_gates.unsqueeze(-1) * prev_read_weights).prod(dim=1)


def usage(
    prev_usage: torch.Tensor,
    prev_write_weights: torch.Tensor,
    prev_read_weights: torch.Tensor,
    free_gates: torch.Tensor,
) -> torch.Tensor:
    """Usage ``u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} ∘ w^w_{t-1}) ∘ ψ_t``.

    prev_usage (B,N), prev_write_weights (B,N), prev_read_weights (B,R,N), free_gates (B,R)
    -> (B,N) in [0,1].
    """
    written = prev_usage + prev_write_weights - prev_usage * prev_write_weights
    return written * retention(prev_read_weights, free_gates)


def allocation(usage: torch.Tensor) -> torch.Tensor:
    """Allocation weighting ``a[φ_j] = (1 - u[φ_j]) Π_{m<j} u[φ_m]``, φ sorting usage ascending.

    usage (B,N) -> (B,N), summing to at most 1. As in deepmind/dnc, usage is first mapped to
    ``ε + (1 - ε) u`` so the product never collapses to exactly zero, and no gradient flows
    through the sort order (only through the sorted values). Ties go to the lower slot.
    """
    usage = EPSILON + (1.0 - EPSILON) * usage
    # Stable: equal usages (every slot, at the start) are allocated lowest slot first.
    sorted_usage, free_list = torch.sort(usage, dim=-1, stable=True)
    ones = torch.ones_like(sorted_usage[..., :1])
    # Exclusive cumulative product: Π_{m<j} u[φ_m].
    used_before = torch.cumprod(torch.cat([ones, sorted_usage[..., :-1]], dim=-1), dim=-1)
    sorted_allocation = (1.0 - sorted_usage) * used_before
    return torch.zeros_like(usage).scatter(-1, free_list, sorted_allocation)


def deallocate(memory: torch.Tensor, retention_vector: torch.Tensor) -> torch.Tensor:
    """De-allocation (Csordás & Schmidhuber 2019, 3.2): ``M ∘ ψ 1ᵀ``. Freeing a slot also
    wipes what it held, in proportion to how much it was freed, so a later content lookup
    cannot find stale data there.

    memory (B,N,W), retention ψ (B,N) -> (B,N,W).
    """
    return memory * retention_vector.unsqueeze(-1)


def write_weighting(
    allocation_weights: torch.Tensor,
    write_content_weights: torch.Tensor,
    allocation_gate: torch.Tensor,
    write_gate: torch.Tensor,
) -> torch.Tensor:
    """Write weighting ``w^w = g^w [g^a a + (1 - g^a) c^w]``.

    allocation a (B,N), write content c^w (B,N), gates g^a, g^w (B,) -> (B,N).
    """
    allocation_gate = allocation_gate.unsqueeze(-1)
    mixed = allocation_gate * allocation_weights + (1.0 - allocation_gate) * write_content_weights
    return write_gate.unsqueeze(-1) * mixed


# ---------------------------------------------------------------------------------------
# DNC temporal memory linkage (Methods, "temporal memory linkage")
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _off_diagonal(slots: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return 1.0 - torch.eye(slots, device=device, dtype=dtype)


def temporal_link(
    prev_link: torch.Tensor, prev_precedence: torch.Tensor, write_weights: torch.Tensor
) -> torch.Tensor:
    """Link ``L_t[i,j] = (1 - w[i] - w[j]) L_{t-1}[i,j] + w[i] p_{t-1}[j]``, ``L_t[i,i] = 0``.

    prev_link (B,N,N), prev_precedence p_{t-1} (B,N), write_weights w^w_t (B,N) -> (B,N,N).
    ``L[i, j]`` is the degree to which slot i was written after slot j.
    """
    write_row = write_weights.unsqueeze(-1)  # w[i]
    write_column = write_weights.unsqueeze(-2)  # w[j]
    decayed = (1.0 - write_row - write_column) * prev_link
    link = torch.baddbmm(decayed, write_row, prev_precedence.unsqueeze(-2))
    return link * _off_diagonal(link.shape[-1], link.device, link.dtype)


def precedence(prev_precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    """Precedence ``p_t = (1 - Σ_i w[i]) p_{t-1} + w``: prev (B,N), write (B,N) -> (B,N)."""
    written = write_weights.sum(dim=-1, keepdim=True)
    return (1.0 - written) * prev_precedence + write_weights


def directional_weights(
    link: torch.Tensor, prev_read_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``f^r = L w^r_{t-1}`` and backward ``b^r = Lᵀ w^r_{t-1}`` weightings.

    link (B,N,N), prev_read_weights (B,R,N) -> (forward (B,R,N), backward (B,R,N)).
    Forward moves each read head to the slots written after the ones it read.
    """
    forward = torch.bmm(prev_read_weights, link.transpose(1, 2))
    backward = torch.bmm(prev_read_weights, link)
    return forward, backward


def sharpen_links(weights: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """Link distribution sharpness control (Csordás & Schmidhuber 2019, 3.3):
    ``S(d, s)[i] = d[i]^s / Σ_j d[j]^s`` for a forward or backward weighting d and s >= 1:
    a blurred link (after several writes overlapped) is sharpened back onto one slot.

    weights d (B,R,N) >= 0, exponents s (B,R) -> (B,R,N); an all-zero d stays zero.
    """
    # d^s as exp(s log d), and exactly 0 where d is: pow's gradient with respect to s is
    # d^s log d, NaN at d = 0.
    positive = weights > 0
    safe = torch.where(positive, weights, torch.ones_like(weights))
    powered = torch.where(positive, torch.exp(exponents.unsqueeze(-1) * torch.log(safe)), 0.0)
    return powered / (powered.sum(-1, keepdim=True) + EPSILON)


def read_weighting(
    backward: torch.Tensor,
    content: torch.Tensor,
    forward: torch.Tensor,
    read_modes: torch.Tensor,
) -> torch.Tensor:
    """Read weighting ``w^r = π[0] b + π[1] c + π[2] f``.

    backward, content, forward (B,R,N), read_modes π (B,R,3) ordered backward, content,
    forward -> (B,R,N).
    """
    directions = torch.stack([backward, content, forward], dim=-2)  # (B,R,3,N)
    return torch.matmul(read_modes.unsqueeze(-2), directions).squeeze(-2)


# ---------------------------------------------------------------------------------------
# Sparse access (Rae et al. 2016)
# ---------------------------------------------------------------------------------------
# SAM and SDNC keep every weighting sparse. A sparse weighting over N slots is a pair of
# tensors ``positions (..., P)`` (int64 slot indices) and ``values (..., P)``: the weighting is
# ``Σ_p values[p] 1_{positions[p]}``. A position may repeat (its values add up). An empty
# entry has position N (one past the last slot) and value 0, so fixed-size tensors can hold
# a varying number of entries. Every function here costs O(P), never O(N), except
# ``to_dense`` and ``sparse_erase_and_write`` (references for tests and traces).

# δ: a slot counts as used at a step when its read or write weight there exceeds δ.
USAGE_THRESHOLD = 0.005


def to_dense(positions: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """The dense weighting (..., N) of a sparse one (..., P); repeated positions add up."""
    dense = values.new_zeros(*values.shape[:-1], size + 1)  # column N takes the empty entries
    return dense.scatter_add(-1, positions, values)[..., :size]


def merge_sparse(
    positions: torch.Tensor, values: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add up the values of repeated positions: (..., P) -> (..., P), same weighting.

    The result is sorted by position, each slot at most once; the entries freed by merging
    are empty (position N = ``size``, value 0) and come last. Differentiable in ``values``.
    """
    merged_positions, order, group = merge_groups(positions, size)
    return merged_positions, merge_values(values, order, group)


def merge_values(values: torch.Tensor, order: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """The merged values (..., P) of entries merged as ``merge_groups`` says."""
    sorted_values = values.gather(-1, order)
    return torch.zeros_like(sorted_values).scatter_add(-1, group, sorted_values)


def merge_groups(
    positions: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How ``merge_sparse`` merges positions (..., P): the merged positions (..., P), the
    sorting ``order`` (..., P) and, for each sorted entry, the merged entry it adds to."""
    sorted_positions, order = positions.sort(dim=-1, stable=True)  # repeats add up in order
    starts = torch.ones_like(sorted_positions, dtype=torch.bool)
    starts[..., 1:] = sorted_positions[..., 1:] != sorted_positions[..., :-1]
    group = starts.long().cumsum(-1) - 1  # which merged entry each sorted entry adds to
    merged_positions = torch.full_like(sorted_positions, size).scatter(-1, group, sorted_positions)
    return merged_positions, order, group


def top_k_sparse(
    positions: torch.Tensor, values: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of a merged sparse weighting: (..., P) -> (..., k), largest first."""
    top_values, order = values.topk(k, dim=-1)
    return positions.gather(-1, order), top_values


def sparse_lookup(
    positions: torch.Tensor, values: torch.Tensor, queries: torch.Tensor
) -> torch.Tensor:
    """A merged sparse weighting (B,P) read at slots ``queries`` (B,Q) -> (B,Q), 0 where absent.

    ``positions`` must be sorted along the last axis (as ``merge_sparse`` returns them).
    """
    index, found = sparse_lookup_index(positions, queries)
    return torch.where(found, values.gather(-1, index), torch.zeros_like(values[..., :1]))


def sparse_lookup_index(
    positions: torch.Tensor, queries: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each query (B,Q) sits in sorted ``positions`` (B,P), and whether it is there."""
    index = torch.searchsorted(positions, queries.contiguous()).clamp_max(positions.shape[-1] - 1)
    return index, positions.gather(-1, index) == queries


def sparse_content_weights(
    rows: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor
) -> torch.Tensor:
    """Content weighting over each head's K nearest slots: softmax_k(β D(k, M[i_k])).

    rows M[i_k] (B,H,K,W) gathered at the K slots a k-NN index found for each key,
    keys (B,H,W), strengths β (B,H) -> (B,H,K), each head's weights summing to 1. Every other
    slot has weight exactly 0 (Rae et al. 2016, sparse read). With K = N it is
    ``content_weights``.
    """
    batch, heads, k, width = rows.shape
    similarity = cosine_similarity(
        rows.reshape(batch * heads, k, width), keys.reshape(batch * heads, 1, width)
    ).view(batch, heads, k)
    return torch.softmax(similarity * strengths.unsqueeze(-1), dim=-1)


def sparse_read(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Read vectors ``r = Σ_k w[k] M[i_k]``: rows (B,H,K,W), weights (B,H,K) -> (B,H,W)."""
    return torch.matmul(weights.unsqueeze(-2), rows).squeeze(-2)


def sparse_write_weighting(
    prev_read_positions: torch.Tensor,
    prev_read_weights: torch.Tensor,
    least_used: torch.Tensor,
    write_gate: torch.Tensor,
    interpolation_gate: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM write weighting ``w^w_t = α (γ w^r_{t-1} + (1 - γ) 1_U)``.

    prev_read_positions (B,R,K) and prev_read_weights w^r_{t-1} (B,R,K), the slots the read
    heads read last step; least_used U (B,) the least recently used slot; write_gate α and
    interpolation_gate γ (B,) in [0,1]. With R read heads w^r_{t-1} is their mean, so the
    weights sum to at most 1. Returns the sparse weighting ``(positions (B,RK+1),
    weights (B,RK+1))``: the previously read slots, then U; positions may repeat.
    """
    batch, heads, k = prev_read_positions.shape
    read_gate = (write_gate * interpolation_gate / heads).unsqueeze(-1)
    unused_gate = (write_gate * (1.0 - interpolation_gate)).unsqueeze(-1)
    positions = torch.cat([prev_read_positions.reshape(batch, heads * k), least_used[:, None]], -1)
    weights = torch.cat([read_gate * prev_read_weights.reshape(batch, heads * k), unused_gate], -1)
    return positions, weights


def sparse_erase_and_write(
    memory: torch.Tensor,
    write_positions: torch.Tensor,
    write_weights: torch.Tensor,
    least_used: torch.Tensor,
    add: torch.Tensor,
) -> torch.Tensor:
    """SAM write ``M_t = (1 - 1_U 1ᵀ) ∘ M_{t-1} + w^w aᵀ``: the least used row is zeroed first.

    memory (B,N,W), write weighting (positions, weights) (B,P), least_used U (B,), add a (B,W)
    -> (B,N,W). Dense and out of place: the reference the in-place sparse write is tested
    against (the memories change only the P+1 touched rows).
    """
    slots = memory.shape[1]
    keep = torch.ones_like(memory[..., 0]).scatter(-1, least_used[:, None], 0.0)
    dense_weights = to_dense(write_positions, write_weights, slots)
    return memory * keep.unsqueeze(-1) + dense_weights.unsqueeze(-1) * add.unsqueeze(-2)


def sparse_precedence(
    prev_positions: torch.Tensor,
    prev_values: torch.Tensor,
    write_positions: torch.Tensor,
    write_weights: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDNC precedence ``p_t = (1 - Σ_i w[i]) p_{t-1} + w``, kept K_L-sparse.

    prev p_{t-1} (positions, values) (B,K_L), write weighting w^w_t (positions, weights)
    (B,P), size N -> p_t (positions, values) (B,K_L): the K_L largest entries.
    """
    # A running sum, not .sum(): its order (left to right, in double) does not depend on
    # vector lanes, so slots whose entries are equal keep equal values here and in the
    # kernels (mann.fused.sparse_step), and a tie between them is broken the same way.
    written = write_weights.cumsum(-1)[..., -1:]
    positions = torch.cat([prev_positions, write_positions], -1)
    values = torch.cat([(1.0 - written) * prev_values, write_weights], -1)
    positions, values = merge_sparse(positions, values, size)
    return top_k_sparse(positions, values, prev_positions.shape[-1])


def _keep_largest(values: torch.Tensor, capacity: int) -> torch.Tensor:
    # (…, E) -> bool (…, E): the ``capacity`` largest positive entries of each row.
    top = values.topk(capacity, dim=-1).indices
    return torch.zeros_like(values, dtype=torch.bool).scatter(-1, top, True) & (values > 0)


def _compact(
    positions: torch.Tensor, values: torch.Tensor, capacity: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # (…, E) entries -> (…, capacity): the largest, empty ones as (N, 0).
    values, order = values.topk(capacity, dim=-1)
    positions = positions.gather(-1, order)
    return torch.where(values > 0, positions, size), values


def sparse_temporal_link(
    written_rows: tuple[torch.Tensor, torch.Tensor],
    preceding_columns: tuple[torch.Tensor, torch.Tensor],
    write_positions: torch.Tensor,
    write_weights: torch.Tensor,
    precedence_positions: torch.Tensor,
    precedence_values: torch.Tensor,
    size: int,
    capacity: int,
    write_lookups: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """SDNC link ``L_t[i,j] = (1 - w[i] - w[j]) L_{t-1}[i,j] + w[i] p_{t-1}[j]``, K_L-sparse.

    Only rows of written slots and columns of preceding slots can gain entries, so the
    equation and the truncation to ``capacity`` (K_L) entries per row and column happen on
    them: written_rows (columns j, values L_{t-1}[i,j]) (B,P,K_L) are the rows of L_{t-1} at
    the written slots i, preceding_columns (rows i, values L_{t-1}[i,j]) (B,Q,K_L) its columns
    at the slots j of p_{t-1}. write weighting w^w_t (positions, weights) (B,P) and
    precedence p_{t-1} (positions, values) (B,Q) each hold a slot at most once, write
    positions sorted (as ``merge_sparse`` returns them); empty entries are (N, 0).

    Each written row keeps its K_L largest entries, then each preceding column its K_L
    largest among the rows' survivors (Rae et al. 2016 keep K_L per row and column). The
    diagonal is 0. Returns the new rows of L_t at the written slots (columns, values)
    (B,P,K_L) and its new columns at the preceding slots (rows, values) (B,Q,K_L).
    Entries elsewhere change only by decay, ``(1 - w[i] - w[j]) L[i,j]`` (``mann.access.sdnc``
    applies it to the rows and columns that hold them). ``write_lookups`` may hold, computed
    elsewhere, the three look-ups of the write weighting this needs: w^w_t at the preceding
    slots (B,Q), w^w_t at the written rows' columns (B,P,K_L), and whether each preceding
    column's row was written (B,Q,K_L) bool.
    """
    row_columns, row_values = written_rows
    column_rows, column_values = preceding_columns
    if write_lookups is None:
        write_lookups = (
            sparse_lookup(write_positions, write_weights, precedence_positions),
            sparse_lookup(write_positions, write_weights, row_columns.flatten(1)).view_as(
                row_values
            ),
            sparse_lookup_index(write_positions, column_rows.flatten(1))[1].view_as(column_rows),
        )
    write_at_preceding, write_at_columns, written = write_lookups
    batch, writes, _ = row_columns.shape
    preceding = precedence_positions.shape[-1]
    write_row = write_weights.unsqueeze(-1)  # w[i] (B,P,1)

    # The block of written rows × preceding columns: old entries there, plus w[i] p[j].
    match = row_columns.unsqueeze(-1) == precedence_positions[:, None, None, :]  # (B,P,K_L,Q)
    old_block = (match * row_values.unsqueeze(-1)).sum(-2)  # (B,P,Q)
    decay = 1.0 - write_row - write_at_preceding.unsqueeze(1)
    block = decay * old_block + write_row * precedence_values.unsqueeze(1)
    rows_i, columns_j = write_positions.unsqueeze(-1), precedence_positions.unsqueeze(1)
    on_block = (rows_i != columns_j) & (rows_i < size) & (columns_j < size)
    block = torch.where(on_block, block, torch.zeros_like(block)).clamp_min(0.0)
    # The written rows' other entries, and the preceding columns' entries in unwritten rows.
    elsewhere = match.any(-1) | (row_columns >= size)
    rest_of_rows = (1.0 - write_row - write_at_columns) * row_values
    rest_of_rows = torch.where(elsewhere, torch.zeros_like(row_values), rest_of_rows)
    rest_of_rows = rest_of_rows.clamp_min(0.0)
    written = written | (column_rows >= size)
    rest_of_columns = (1.0 - write_at_preceding.unsqueeze(-1)) * column_values
    rest_of_columns = torch.where(written, torch.zeros_like(column_values), rest_of_columns)
    rest_of_columns = rest_of_columns.clamp_min(0.0)

    # Rows first, then columns, keep their K_L largest.
    keep = _keep_largest(torch.cat([block, rest_of_rows], -1), capacity)
    block = block * keep[..., :preceding]
    rest_of_rows = rest_of_rows * keep[..., preceding:]
    keep = _keep_largest(torch.cat([block.transpose(1, 2), rest_of_columns], -1), capacity)
    block = block * keep[..., :writes].transpose(1, 2)
    rest_of_columns = rest_of_columns * keep[..., writes:]

    new_rows = _compact(
        torch.cat([columns_j.expand(batch, writes, preceding), row_columns], -1),
        torch.cat([block, rest_of_rows], -1), capacity, size,
    )
    new_columns = _compact(
        torch.cat([rows_i.transpose(1, 2).expand(batch, preceding, writes), column_rows], -1),
        torch.cat([block.transpose(1, 2), rest_of_columns], -1), capacity, size,
    )
    return new_rows, new_columns


def sparse_directional_weights(
    successor_positions: torch.Tensor,
    successor_values: torch.Tensor,
    predecessor_positions: torch.Tensor,
    predecessor_values: torch.Tensor,
    prev_read_weights: torch.Tensor,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """SDNC forward ``f = L w^r_{t-1}`` and backward ``b = Lᵀ w^r_{t-1}``, sparse.

    For each head's previously read slot j (B,R,K): successor_* (B,R,K,K_L) are column j of
    L_t (the slots i written right after j, L_t[i,j]), predecessor_* row j of L_t (the slots
    written right before it, L_t[j,i]); prev_read_weights w^r_{t-1} (B,R,K).
    Returns ``((forward positions, values), (backward positions, values))``, each
    (B,R,K K_L), positions repeating where several read slots lead to the same slot.
    """
    weights = prev_read_weights.unsqueeze(-1)
    forward = (successor_positions.flatten(-2), (successor_values * weights).flatten(-2))
    backward = (predecessor_positions.flatten(-2), (predecessor_values * weights).flatten(-2))
    return forward, backward


def sparse_read_weighting(
    backward: tuple[torch.Tensor, torch.Tensor],
    content: tuple[torch.Tensor, torch.Tensor],
    forward: tuple[torch.Tensor, torch.Tensor],
    read_modes: torch.Tensor,
    k: int,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """SDNC read weighting ``w^r = π[0] b + π[1] c + π[2] f``, kept to its K largest entries.

    backward, content, forward: sparse weightings (positions, values) (B,R,·); read_modes π
    (B,R,3) ordered backward, content, forward. Returns the read positions (B,R,K), their
    weights (B,R,K) (the mixture's K largest; they sum to at most 1) and the whole merged
    mixture (positions, values) before truncation.
    """
    read_positions, read_weights, mixture, _ = sparse_read_weighting_selection(
        backward, content, forward, read_modes, k, size
    )
    return read_positions, read_weights, mixture


def sparse_read_weighting_selection(backward, content, forward, read_modes, k: int, size: int):
    """``sparse_read_weighting``, also returning where each mixed entry went: ``(order,
    group, kept)``, the merge's sorting order and merged entry per sorted entry
    (``merge_groups``) and which merged entries (B,R,K) were kept. A hand-written backward
    (``mann.access.sdnc``) routes dL/dw^r back to the entries with them."""
    modes = read_modes.unsqueeze(-1)
    positions = torch.cat([backward[0], content[0], forward[0]], -1)
    values = torch.cat(
        [modes[..., 0, :] * backward[1], modes[..., 1, :] * content[1],
         modes[..., 2, :] * forward[1]], -1,
    )  # fmt: skip
    merged_positions, order, group = merge_groups(positions, size)
    merged_values = merge_values(values, order, group)
    read_weights, kept = merged_values.topk(k, dim=-1)
    read_positions = merged_positions.gather(-1, kept)
    return read_positions, read_weights, (merged_positions, merged_values), (order, group, kept)
