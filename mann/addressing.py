"""The memory equations, one pure differentiable function each, under the papers' names.

Shapes use B batch, N memory slots, W word size, H heads, R read heads, Hw write heads,
S allowed shifts. Every function is batched, has no state and works in any float dtype.

Sources: NTM, Graves et al. 2014 section 3; DNC, Graves et al. 2016 Methods (the
reference code is deepmind/dnc). shared/MATH.md lists the same equations.
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
    through the sort order (only through the sorted values).
    """
    usage = EPSILON + (1.0 - EPSILON) * usage
    sorted_usage, free_list = torch.sort(usage, dim=-1)
    ones = torch.ones_like(sorted_usage[..., :1])
    # Exclusive cumulative product: Π_{m<j} u[φ_m].
    used_before = torch.cumprod(torch.cat([ones, sorted_usage[..., :-1]], dim=-1), dim=-1)
    sorted_allocation = (1.0 - sorted_usage) * used_before
    return torch.zeros_like(usage).scatter(-1, free_list, sorted_allocation)


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
