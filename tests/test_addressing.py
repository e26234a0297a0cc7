"""Tests for mann.addressing, in the spirit of deepmind/dnc's addressing_test.py.

Every function is compared with an independent recomputation: plain Python/numpy loops
written from the equations of shared/MATH.md and the papers, never calling mann. Then the
invariants the papers rely on (weightings in [0,1] summing to at most 1, usage in [0,1], link
diagonal zero, link rows and columns summing to at most 1), a planted write order followed
forward and backward, no NaN with an all-zero memory, and float64 gradchecks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mann import addressing
from mann.access.dnc import DNCAccess, DNCState
from mann.access.ntm import NTMAccess, NTMState

# The ε of D(u, v) = u·v / (|u||v| + ε) and of the allocation's usage map ε + (1 - ε) u.
EPS = 1e-6


def t64(array: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float64, requires_grad=requires_grad)


def sub_stochastic(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random non-negative weightings over the last axis, each summing to less than 1."""
    values = rng.random(shape)
    return values / (values.sum(-1, keepdims=True) + rng.random(shape[:-1] + (1,)) + 0.05)


def stochastic(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random positive weightings over the last axis, each summing to exactly 1."""
    values = rng.random(shape) + 0.05
    return values / values.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Independent references: loops over the paper's indices.
# ---------------------------------------------------------------------------------------
def ref_softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def ref_cosine(memory: np.ndarray, keys: np.ndarray) -> np.ndarray:
    batch, slots, _ = memory.shape
    heads = keys.shape[1]
    out = np.zeros((batch, heads, slots))
    for b in range(batch):
        for h in range(heads):
            key = keys[b, h]
            for i in range(slots):
                row = memory[b, i]
                dot = sum(float(x) * float(y) for x, y in zip(key, row, strict=True))
                norms = math.sqrt(sum(x * x for x in key)) * math.sqrt(sum(y * y for y in row))
                out[b, h, i] = dot / (norms + EPS)
    return out


def ref_content(memory: np.ndarray, keys: np.ndarray, strengths: np.ndarray) -> np.ndarray:
    similarity = ref_cosine(memory, keys)
    out = np.zeros_like(similarity)
    for b in range(similarity.shape[0]):
        for h in range(similarity.shape[1]):
            out[b, h] = ref_softmax([strengths[b, h] * s for s in similarity[b, h]])
    return out


def ref_shift(weights: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """w̃[i] = Σ_j w[j] s[(i - j) mod N], s placing probability shifts[k] on offset k - S//2."""
    batch, heads, slots = weights.shape
    offsets = shifts.shape[-1]
    out = np.zeros_like(weights)
    for b in range(batch):
        for h in range(heads):
            circular = [0.0] * slots  # the shift distribution as a length-N circular kernel
            for k in range(offsets):
                circular[(k - offsets // 2) % slots] += shifts[b, h, k]
            for i in range(slots):
                out[b, h, i] = sum(
                    weights[b, h, j] * circular[(i - j) % slots] for j in range(slots)
                )
    return out


def ref_sharpen(weights: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    out = np.zeros_like(weights)
    for b in range(weights.shape[0]):
        for h in range(weights.shape[1]):
            powered = [w ** gamma[b, h] for w in weights[b, h]]
            out[b, h] = [p / sum(powered) for p in powered]
    return out


def ref_read(memory: np.ndarray, read_weights: np.ndarray) -> np.ndarray:
    batch, slots, width = memory.shape
    heads = read_weights.shape[1]
    out = np.zeros((batch, heads, width))
    for b in range(batch):
        for r in range(heads):
            for i in range(slots):
                out[b, r] += read_weights[b, r, i] * memory[b, i]
    return out


def ref_erase_and_write(memory, write_weights, erase, add) -> np.ndarray:
    batch, slots, width = memory.shape
    heads = write_weights.shape[1]
    out = np.zeros_like(memory)
    for b in range(batch):
        for i in range(slots):
            for w in range(width):
                keep, added = 1.0, 0.0
                for h in range(heads):
                    keep *= 1.0 - write_weights[b, h, i] * erase[b, h, w]
                    added += write_weights[b, h, i] * add[b, h, w]
                out[b, i, w] = memory[b, i, w] * keep + added
    return out


def ref_retention(prev_read_weights: np.ndarray, free_gates: np.ndarray) -> np.ndarray:
    batch, heads, slots = prev_read_weights.shape
    out = np.ones((batch, slots))
    for b in range(batch):
        for i in range(slots):
            for r in range(heads):
                out[b, i] *= 1.0 - free_gates[b, r] * prev_read_weights[b, r, i]
    return out


def ref_usage(prev_usage, prev_write_weights, prev_read_weights, free_gates) -> np.ndarray:
    psi = ref_retention(prev_read_weights, free_gates)
    out = np.zeros_like(prev_usage)
    for b in range(prev_usage.shape[0]):
        for i in range(prev_usage.shape[1]):
            u, w = prev_usage[b, i], prev_write_weights[b, i]
            out[b, i] = (u + w - u * w) * psi[b, i]
    return out


def ref_allocation(usage: np.ndarray) -> np.ndarray:
    """a[φ_j] = (1 - u[φ_j]) Π_{m<j} u[φ_m] on the ε-mapped usage u' = ε + (1 - ε) u."""
    out = np.zeros_like(usage)
    for b in range(usage.shape[0]):
        mapped = [EPS + (1.0 - EPS) * u for u in usage[b]]
        free_list = sorted(range(len(mapped)), key=lambda i: mapped[i])
        used_before = 1.0
        for slot in free_list:
            out[b, slot] = (1.0 - mapped[slot]) * used_before
            used_before *= mapped[slot]
    return out


def ref_write_weighting(allocation, content, allocation_gate, write_gate) -> np.ndarray:
    out = np.zeros_like(allocation)
    for b in range(allocation.shape[0]):
        for i in range(allocation.shape[1]):
            ga, gw = allocation_gate[b], write_gate[b]
            out[b, i] = gw * (ga * allocation[b, i] + (1.0 - ga) * content[b, i])
    return out


def ref_temporal_link(prev_link, prev_precedence, write_weights) -> np.ndarray:
    batch, slots = write_weights.shape
    out = np.zeros_like(prev_link)
    for b in range(batch):
        w, p = write_weights[b], prev_precedence[b]
        for i in range(slots):
            for j in range(slots):
                if i != j:
                    out[b, i, j] = (1.0 - w[i] - w[j]) * prev_link[b, i, j] + w[i] * p[j]
    return out


def ref_precedence(prev_precedence, write_weights) -> np.ndarray:
    out = np.zeros_like(prev_precedence)
    for b in range(prev_precedence.shape[0]):
        written = sum(write_weights[b])
        for i in range(prev_precedence.shape[1]):
            out[b, i] = (1.0 - written) * prev_precedence[b, i] + write_weights[b, i]
    return out


def ref_directional(link, prev_read_weights) -> tuple[np.ndarray, np.ndarray]:
    batch, heads, slots = prev_read_weights.shape
    forward = np.zeros_like(prev_read_weights)
    backward = np.zeros_like(prev_read_weights)
    for b in range(batch):
        for r in range(heads):
            for i in range(slots):
                for j in range(slots):
                    forward[b, r, i] += link[b, i, j] * prev_read_weights[b, r, j]
                    backward[b, r, i] += link[b, j, i] * prev_read_weights[b, r, j]
    return forward, backward


def ref_read_weighting(backward, content, forward, modes) -> np.ndarray:
    out = np.zeros_like(content)
    for b in range(content.shape[0]):
        for r in range(content.shape[1]):
            pb, pc, pf = modes[b, r]
            out[b, r] = pb * backward[b, r] + pc * content[b, r] + pf * forward[b, r]
    return out


def one_hot(slots: int, index: int) -> np.ndarray:
    vector = np.zeros(slots)
    vector[index] = 1.0
    return vector


# ---------------------------------------------------------------------------------------
# Content addressing
# ---------------------------------------------------------------------------------------
def test_oneplus_is_one_plus_softplus():
    x = np.linspace(-30.0, 30.0, 41)
    got = addressing.oneplus(t64(x)).numpy()
    expected = [1.0 + math.log1p(math.exp(-abs(v))) + max(v, 0.0) for v in x]
    # torch's softplus is linear past x = 20 (relative error below 1e-10 there).
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert (got >= 1.0).all()


def test_cosine_similarity_matches_loops(rng):
    memory = rng.normal(size=(3, 7, 4))
    keys = rng.normal(size=(3, 2, 4))
    keys[0, 0] = memory[0, 5] * 3.0  # same direction as slot 5
    keys[0, 1] = -memory[0, 2]  # opposite to slot 2
    got = addressing.cosine_similarity(t64(memory), t64(keys))
    assert got.shape == (3, 2, 7)
    np.testing.assert_allclose(got.numpy(), ref_cosine(memory, keys), rtol=1e-10, atol=1e-12)
    assert got[0, 0, 5].item() == pytest.approx(1.0, abs=1e-5)
    assert got[0, 1, 2].item() == pytest.approx(-1.0, abs=1e-5)


def test_content_weights_match_loops_and_find_a_planted_key(rng):
    memory = rng.normal(size=(4, 9, 3))
    keys = rng.normal(size=(4, 3, 3))
    strengths = rng.random((4, 3)) * 5.0
    keys[1, 2] = memory[1, 6]
    strengths[1, 2] = 200.0
    got = addressing.content_weights(t64(memory), t64(keys), t64(strengths)).numpy()
    np.testing.assert_allclose(got, ref_content(memory, keys, strengths), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-12)
    assert np.argmax(got[1, 2]) == 6
    assert got[1, 2, 6] > 0.99


def test_content_weights_all_zero_memory_and_zero_key_have_no_nan(rng):
    memory = torch.zeros(2, 6, 4, requires_grad=True)
    keys = torch.tensor(rng.normal(size=(2, 3, 4)), dtype=torch.float32, requires_grad=True)
    strengths = torch.tensor(rng.random((2, 3)) * 3, dtype=torch.float32, requires_grad=True)
    weights = addressing.content_weights(memory, keys, strengths)
    # Nothing to tell the slots apart: a uniform weighting, not NaN.
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 6))
    (weights * torch.randn_like(weights)).sum().backward()
    for tensor in (memory, keys, strengths):
        assert torch.isfinite(tensor.grad).all()

    # One non-zero row (deepmind/dnc's case) and an all-zero key.
    memory = torch.zeros(2, 6, 4)
    memory[:, 0] = 1.0
    memory.requires_grad_(True)
    zero_keys = torch.zeros(2, 3, 4, requires_grad=True)
    for key in (keys, zero_keys):
        weights = addressing.content_weights(memory, key, strengths)
        assert torch.isfinite(weights).all()
        grads = torch.autograd.grad((weights * torch.randn_like(weights)).sum(),
                                    [memory, key, strengths])
        assert all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------
# NTM location addressing
# ---------------------------------------------------------------------------------------
def test_interpolate_matches_formula(rng):
    content = stochastic(rng, 3, 2, 5)
    previous = stochastic(rng, 3, 2, 5)
    gate = rng.random((3, 2))
    gate[0, 0], gate[0, 1] = 0.0, 1.0
    got = addressing.interpolate(t64(content), t64(previous), t64(gate)).numpy()
    for b in range(3):
        for h in range(2):
            expected = gate[b, h] * content[b, h] + (1 - gate[b, h]) * previous[b, h]
            np.testing.assert_allclose(got[b, h], expected, rtol=1e-12)
    np.testing.assert_array_equal(got[0, 0], previous[0, 0])  # g = 0 keeps w_{t-1}
    np.testing.assert_array_equal(got[0, 1], content[0, 1])  # g = 1 takes w^c


@pytest.mark.parametrize(("slots", "offsets"), [(6, 1), (6, 3), (7, 5), (3, 5)])
def test_shift_matches_circular_convolution(rng, slots, offsets):
    weights = stochastic(rng, 3, 2, slots)
    shifts = stochastic(rng, 3, 2, offsets)
    got = addressing.shift(t64(weights), t64(shifts)).numpy()
    assert got.shape == (3, 2, slots)
    np.testing.assert_allclose(got, ref_shift(weights, shifts), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("offsets", [1, 3, 5])
def test_shift_moves_towards_higher_indices_and_wraps(offsets):
    slots = 7
    for start in (0, 3, slots - 1):
        for k in range(offsets):
            weights = t64(one_hot(slots, start)).view(1, 1, slots)
            shifts = t64(one_hot(offsets, k)).view(1, 1, offsets)
            got = addressing.shift(weights, shifts)[0, 0].numpy()
            destination = (start + k - offsets // 2) % slots
            np.testing.assert_array_equal(got, one_hot(slots, destination))
    # The last slot moved by +1 lands on slot 0; slot 0 moved by -1 lands on the last slot.
    last = t64(one_hot(slots, slots - 1)).view(1, 1, slots)
    first = t64(one_hot(slots, 0)).view(1, 1, slots)
    if offsets > 1:
        plus_one = t64(one_hot(offsets, offsets // 2 + 1)).view(1, 1, offsets)
        minus_one = t64(one_hot(offsets, offsets // 2 - 1)).view(1, 1, offsets)
        assert addressing.shift(last, plus_one)[0, 0, 0] == 1.0
        assert addressing.shift(first, minus_one)[0, 0, slots - 1] == 1.0


def test_shift_with_one_offset_scales_by_its_probability(rng):
    weights = stochastic(rng, 2, 3, 5)
    shifts = rng.random((2, 3, 1))
    got = addressing.shift(t64(weights), t64(shifts)).numpy()
    np.testing.assert_allclose(got, weights * shifts, rtol=1e-12)


def test_shift_rejects_an_even_number_of_offsets():
    with pytest.raises(ValueError, match=r"odd.*4"):
        addressing.shift(torch.ones(1, 1, 5) / 5, torch.ones(1, 1, 4) / 4)


def test_sharpen_matches_formula(rng):
    weights = stochastic(rng, 3, 2, 6)
    gamma = 1.0 + rng.random((3, 2)) * 4.0
    gamma[0, 0] = 1.0
    got = addressing.sharpen(t64(weights), t64(gamma)).numpy()
    np.testing.assert_allclose(got, ref_sharpen(weights, gamma), rtol=1e-10)
    np.testing.assert_allclose(got[0, 0], weights[0, 0], rtol=1e-10)  # γ = 1 changes nothing
    # A large γ concentrates on the largest weight.
    peaked = addressing.sharpen(t64(weights), t64(np.full((3, 2), 300.0))).numpy()
    np.testing.assert_array_equal(np.argmax(peaked, -1), np.argmax(weights, -1))
    assert (peaked.max(-1) > 0.99).all()


def test_sharpen_keeps_zero_weights_zero_without_nan():
    weights = torch.tensor([[[0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]]], requires_grad=True)
    gamma = torch.tensor([[2.0, 3.0]], requires_grad=True)
    got = addressing.sharpen(weights, gamma)
    torch.testing.assert_close(got.detach(), torch.tensor([[[0, 0.5, 0, 0.5], [0, 0, 1.0, 0]]]))
    (got * torch.randn_like(got)).sum().backward()
    assert torch.isfinite(weights.grad).all() and torch.isfinite(gamma.grad).all()


# ---------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------
def test_read_matches_weighted_sum_of_rows(rng):
    memory = rng.normal(size=(2, 6, 4))
    read_weights = sub_stochastic(rng, 2, 3, 6)
    read_weights[1, 0] = one_hot(6, 4)
    got = addressing.read(t64(memory), t64(read_weights)).numpy()
    np.testing.assert_allclose(got, ref_read(memory, read_weights), rtol=1e-12)
    np.testing.assert_array_equal(got[1, 0], memory[1, 4])


@pytest.mark.parametrize("write_heads", [1, 2])
def test_erase_and_write_matches_loops(rng, write_heads):
    memory = rng.normal(size=(3, 5, 4))
    write_weights = sub_stochastic(rng, 3, write_heads, 5)
    erase = rng.random((3, write_heads, 4))
    add = rng.normal(size=(3, write_heads, 4))
    got = addressing.erase_and_write(t64(memory), t64(write_weights), t64(erase), t64(add))
    np.testing.assert_allclose(
        got.numpy(), ref_erase_and_write(memory, write_weights, erase, add), rtol=1e-12
    )


def test_erase_and_write_full_erase_replaces_a_row_and_zero_weights_change_nothing(rng):
    memory = rng.normal(size=(1, 5, 3))
    add = rng.normal(size=(1, 2, 3))
    erase = np.ones((1, 2, 3))
    # Head 0 fully on slot 1; head 1 writes nowhere.
    write_weights = np.stack([one_hot(5, 1), np.zeros(5)])[None]
    got = addressing.erase_and_write(t64(memory), t64(write_weights), t64(erase), t64(add))
    np.testing.assert_allclose(got[0, 1].numpy(), add[0, 0], rtol=1e-12)
    others = [0, 2, 3, 4]
    np.testing.assert_array_equal(got[0, others].numpy(), memory[0, others])

    # Two heads fully on the same slot: the erase multiplies (row gone), the adds sum.
    write_weights = np.stack([one_hot(5, 3), one_hot(5, 3)])[None]
    got = addressing.erase_and_write(t64(memory), t64(write_weights), t64(erase), t64(add))
    np.testing.assert_allclose(got[0, 3].numpy(), add[0, 0] + add[0, 1], rtol=1e-12)


# ---------------------------------------------------------------------------------------
# DNC dynamic memory allocation
# ---------------------------------------------------------------------------------------
def test_retention_is_product_over_read_heads(rng):
    prev_read_weights = sub_stochastic(rng, 3, 4, 6)
    free_gates = rng.random((3, 4))
    got = addressing.retention(t64(prev_read_weights), t64(free_gates)).numpy()
    np.testing.assert_allclose(got, ref_retention(prev_read_weights, free_gates), rtol=1e-12)
    assert ((got >= 0) & (got <= 1)).all()


def test_usage_matches_loops_and_special_cases(rng):
    batch, reads, slots = 4, 3, 8
    prev_usage = rng.random((batch, slots))
    prev_write = sub_stochastic(rng, batch, slots)
    prev_read = stochastic(rng, batch, reads, slots)
    free_gates = rng.random((batch, reads))
    prev_read[1, :, 3] = 0.0  # nothing read at item 1, slot 3 ...
    prev_write[1, 3] = 1.0  # ... which is fully written: fully used
    prev_read[2, 0] = one_hot(slots, 4)  # item 2 head 0 read slot 4 only ...
    free_gates[2, 0] = 1.0  # ... and frees it: fully free
    got = addressing.usage(t64(prev_usage), t64(prev_write), t64(prev_read), t64(free_gates))
    got = got.numpy()
    np.testing.assert_allclose(
        got, ref_usage(prev_usage, prev_write, prev_read, free_gates), rtol=1e-12
    )
    assert ((got >= 0) & (got <= 1)).all()
    assert got[1, 3] == 1.0
    assert got[2, 4] == 0.0


def test_usage_stays_in_unit_interval_over_many_steps(rng):
    batch, reads, slots = 3, 2, 10
    usage = np.zeros((batch, slots))
    for _ in range(60):
        usage = addressing.usage(
            t64(usage), t64(sub_stochastic(rng, batch, slots)),
            t64(sub_stochastic(rng, batch, reads, slots)), t64(rng.random((batch, reads)) ** 3),
        ).numpy()
        assert ((usage >= 0) & (usage <= 1)).all()
    assert usage.max() > 0.5  # the walk really filled memory, the bound was exercised


def test_allocation_matches_loops_with_the_epsilon_mapping(rng):
    usage = rng.random((5, 11))  # continuous draws: no ties
    got = addressing.allocation(t64(usage)).numpy()
    np.testing.assert_allclose(got, ref_allocation(usage), rtol=1e-10, atol=1e-15)
    # Most allocation to the least used slot, least to the most used.
    np.testing.assert_array_equal(np.argmax(got, -1), np.argmin(usage, -1))
    np.testing.assert_array_equal(np.argmin(got, -1), np.argmax(usage, -1))
    # Telescoping: Σ_j a[φ_j] = 1 - Π_j u'[j].
    mapped = EPS + (1 - EPS) * usage
    np.testing.assert_allclose(got.sum(-1), 1 - mapped.prod(-1), rtol=1e-12)
    assert ((got >= 0) & (got <= 1)).all()


def test_allocation_epsilon_keeps_the_product_from_collapsing():
    # Two free slots: without ε the second would get (1 - 0) * 0 = 0; with u' = ε + (1-ε)u it
    # gets (1 - ε) ε. A fully used memory gets no allocation at all.
    usage = torch.tensor([[0.0, 0.7, 0.0, 0.9], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    got = addressing.allocation(usage).numpy()
    free_pair = sorted(got[0, [0, 2]])
    np.testing.assert_allclose(free_pair, [(1 - EPS) * EPS, 1 - EPS], rtol=1e-9)
    np.testing.assert_allclose(got[0, 1], (1 - (EPS + (1 - EPS) * 0.7)) * EPS * EPS, rtol=1e-6)
    np.testing.assert_array_equal(got[1], 0.0)


def test_write_weighting_matches_formula(rng):
    allocation = sub_stochastic(rng, 4, 6)
    content = stochastic(rng, 4, 6)
    allocation_gate = rng.random(4)
    write_gate = rng.random(4)
    allocation_gate[0], write_gate[0] = 1.0, 1.0
    write_gate[1] = 0.0
    got = addressing.write_weighting(
        t64(allocation), t64(content), t64(allocation_gate), t64(write_gate)
    ).numpy()
    np.testing.assert_allclose(
        got, ref_write_weighting(allocation, content, allocation_gate, write_gate), rtol=1e-12
    )
    np.testing.assert_array_equal(got[0], allocation[0])
    np.testing.assert_array_equal(got[1], 0.0)
    assert (got.sum(-1) <= write_gate + 1e-12).all()


# ---------------------------------------------------------------------------------------
# DNC temporal memory linkage
# ---------------------------------------------------------------------------------------
def test_temporal_link_matches_loops(rng):
    slots = 6
    prev_link = rng.random((3, slots, slots)) / slots
    prev_precedence = sub_stochastic(rng, 3, slots)
    write_weights = sub_stochastic(rng, 3, slots)
    got = addressing.temporal_link(t64(prev_link), t64(prev_precedence), t64(write_weights))
    np.testing.assert_allclose(
        got.numpy(), ref_temporal_link(prev_link, prev_precedence, write_weights), rtol=1e-12
    )
    assert (np.diagonal(got.numpy(), axis1=1, axis2=2) == 0).all()


def test_precedence_matches_loops_and_special_cases(rng):
    prev_precedence = sub_stochastic(rng, 3, 5)
    write_weights = sub_stochastic(rng, 3, 5)
    write_weights[0] = 0.0  # no write: precedence unchanged
    write_weights[1] /= write_weights[1].sum()  # a full write: precedence is that write
    got = addressing.precedence(t64(prev_precedence), t64(write_weights)).numpy()
    np.testing.assert_allclose(got, ref_precedence(prev_precedence, write_weights), rtol=1e-12)
    np.testing.assert_array_equal(got[0], prev_precedence[0])
    np.testing.assert_allclose(got[1], write_weights[1], rtol=1e-12)
    assert ((got >= 0) & (got <= 1)).all() and (got.sum(-1) <= 1 + 1e-12).all()


def test_directional_weights_match_loops(rng):
    slots = 5
    link = rng.random((2, slots, slots)) / slots
    prev_read_weights = sub_stochastic(rng, 2, 3, slots)
    forward, backward = addressing.directional_weights(t64(link), t64(prev_read_weights))
    expected_forward, expected_backward = ref_directional(link, prev_read_weights)
    np.testing.assert_allclose(forward.numpy(), expected_forward, rtol=1e-12)
    np.testing.assert_allclose(backward.numpy(), expected_backward, rtol=1e-12)


def test_read_weighting_matches_formula(rng):
    backward, content, forward = (stochastic(rng, 2, 3, 6) for _ in range(3))
    modes = stochastic(rng, 2, 3, 3)
    modes[0, 0], modes[0, 1], modes[0, 2] = one_hot(3, 0), one_hot(3, 1), one_hot(3, 2)
    got = addressing.read_weighting(t64(backward), t64(content), t64(forward), t64(modes))
    got = got.numpy()
    np.testing.assert_allclose(
        got, ref_read_weighting(backward, content, forward, modes), rtol=1e-12
    )
    np.testing.assert_array_equal(got[0, 0], backward[0, 0])  # mode order: backward,
    np.testing.assert_array_equal(got[0, 1], content[0, 1])  # content,
    np.testing.assert_array_equal(got[0, 2], forward[0, 2])  # forward


def test_link_and_precedence_invariants_over_a_random_write_sequence(rng):
    batch, slots, reads = 3, 7, 2
    link = torch.zeros(batch, slots, slots, dtype=torch.float64)
    prec = torch.zeros(batch, slots, dtype=torch.float64)
    for step in range(80):
        writes = sub_stochastic(rng, batch, slots)
        if step % 7 == 3:
            writes[0] = one_hot(slots, rng.integers(slots))  # some sharp, full writes
        if step % 5 == 1:
            writes[1] = 0.0  # and steps without a write
        write_weights = t64(writes)
        link = addressing.temporal_link(link, prec, write_weights)
        prec = addressing.precedence(prec, write_weights)
        values = link.numpy()
        assert values.min() >= 0 and values.max() <= 1
        assert (np.diagonal(values, axis1=1, axis2=2) == 0).all()
        assert values.sum(-1).max() <= 1 + 1e-12  # rows: i written after at most one whole
        assert values.sum(-2).max() <= 1 + 1e-12  # columns
        assert prec.min() >= 0 and prec.sum(-1).max() <= 1 + 1e-12
        forward, backward = addressing.directional_weights(
            link, t64(stochastic(rng, batch, reads, slots))
        )
        for weights in (forward, backward):
            assert weights.min() >= 0 and weights.sum(-1).max() <= 1 + 1e-12
    assert link.sum(-1).max() > 0.5  # the bound was approached, not trivially met


def test_planted_write_order_is_followed_forward_and_backward():
    slots = 6
    order = [3, 0, 5, 1, 4, 2]  # slot order[k] written at step k
    link = torch.zeros(1, slots, slots, dtype=torch.float64)
    prec = torch.zeros(1, slots, dtype=torch.float64)
    for slot in order:
        write_weights = t64(one_hot(slots, slot))[None]
        link = addressing.temporal_link(link, prec, write_weights)
        prec = addressing.precedence(prec, write_weights)

    expected_link = np.zeros((slots, slots))
    for before, after in zip(order, order[1:], strict=False):
        expected_link[after, before] = 1.0  # L[i, j]: i written right after j
    np.testing.assert_array_equal(link[0].numpy(), expected_link)
    np.testing.assert_array_equal(prec[0].numpy(), one_hot(slots, order[-1]))

    # Walk the chain both ways from each end with one-hot reads (two heads at once).
    position = t64(np.stack([one_hot(slots, order[0]), one_hot(slots, order[-1])]))[None]
    for k in range(1, slots):
        forward, backward = addressing.directional_weights(link, position)
        np.testing.assert_array_equal(forward[0, 0].numpy(), one_hot(slots, order[k]))
        np.testing.assert_array_equal(backward[0, 1].numpy(), one_hot(slots, order[-1 - k]))
        position = torch.stack([forward[0, 0], backward[0, 1]])[None]
    # Past either end there is nowhere to go.
    forward, backward = addressing.directional_weights(link, position)
    assert forward[0, 0].sum() == 0 and backward[0, 1].sum() == 0


# ---------------------------------------------------------------------------------------
# Gradients in float64
# ---------------------------------------------------------------------------------------
def gradcheck(function, *inputs: torch.Tensor) -> None:
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_content_weights(rng):
    gradcheck(
        addressing.content_weights, t64(rng.normal(size=(2, 5, 3)), True),
        t64(rng.normal(size=(2, 2, 3)), True), t64(rng.random((2, 2)) * 3 + 0.5, True),
    )


@pytest.mark.parametrize("offsets", [1, 3, 5])
def test_gradcheck_shift(rng, offsets):
    gradcheck(addressing.shift, t64(stochastic(rng, 2, 2, 6), True),
              t64(stochastic(rng, 2, 2, offsets), True))


def test_gradcheck_sharpen(rng):
    gradcheck(addressing.sharpen, t64(stochastic(rng, 2, 2, 5), True),
              t64(1 + rng.random((2, 2)) * 3, True))


def test_gradcheck_allocation(rng):
    # Well-separated usages: no ties, so the sort order is fixed under the perturbation.
    usage = np.stack([rng.permutation(np.linspace(0.05, 0.95, 7)) for _ in range(2)])
    gradcheck(addressing.allocation, t64(usage, True))


def test_gradcheck_usage(rng):
    gradcheck(addressing.usage, t64(rng.random((2, 5)), True), t64(sub_stochastic(rng, 2, 5), True),
              t64(sub_stochastic(rng, 2, 3, 5), True), t64(rng.random((2, 3)), True))


def test_gradcheck_temporal_link_and_precedence(rng):
    link = t64(rng.random((2, 5, 5)) / 5, True)
    prev = t64(sub_stochastic(rng, 2, 5), True)
    writes = t64(sub_stochastic(rng, 2, 5), True)
    gradcheck(addressing.temporal_link, link, prev, writes)
    gradcheck(addressing.precedence, prev, writes)


def test_gradcheck_directional_weights(rng):
    gradcheck(addressing.directional_weights, t64(rng.random((2, 5, 5)) / 5, True),
              t64(sub_stochastic(rng, 2, 3, 5), True))


@pytest.mark.parametrize("write_heads", [1, 2])
def test_gradcheck_erase_and_write(rng, write_heads):
    gradcheck(
        addressing.erase_and_write, t64(rng.normal(size=(2, 4, 3)), True),
        t64(sub_stochastic(rng, 2, write_heads, 4), True),
        t64(rng.random((2, write_heads, 3)), True), t64(rng.normal(size=(2, write_heads, 3)), True),
    )


# ---------------------------------------------------------------------------------------
# Whole access steps: gradcheck, and no NaN from an all-zero memory
# ---------------------------------------------------------------------------------------
def random_dnc_state(rng, batch: int, slots: int, width: int, reads: int) -> DNCState:
    """A plausible mid-sequence DNC state with tie-free usage (away from the sort's kinks)."""
    link = torch.zeros(batch, slots, slots, dtype=torch.float64)
    prec = torch.zeros(batch, slots, dtype=torch.float64)
    for _ in range(4):
        writes = t64(sub_stochastic(rng, batch, slots))
        link = addressing.temporal_link(link, prec, writes)
        prec = addressing.precedence(prec, writes)
    usage = np.stack([rng.permutation(np.linspace(0.1, 0.9, slots)) for _ in range(batch)])
    return DNCState(
        memory=t64(rng.normal(size=(batch, slots, width))),
        usage=t64(usage),
        link=link,
        precedence=prec,
        read_weights=t64(sub_stochastic(rng, batch, reads, slots)),
        write_weights=t64(sub_stochastic(rng, batch, 1, slots)),
    )


def random_ntm_state(rng, batch: int, access: NTMAccess) -> NTMState:
    slots = access.memory_size
    return NTMState(
        memory=t64(rng.normal(size=(batch, slots, access.word_size))),
        read_weights=t64(stochastic(rng, batch, access.read_heads, slots)),
        write_weights=t64(stochastic(rng, batch, access.write_heads, slots)),
    )


def test_gradcheck_whole_ntm_step(rng):
    access = NTMAccess(memory_size=5, word_size=3, read_heads=2, write_heads=2, shift_range=3)
    access = access.double()
    state = random_ntm_state(rng, 2, access)

    def step(interface, *values):
        read_vectors, new_state, _ = access.step(interface, NTMState(*values))
        return (read_vectors, *new_state)

    interface = t64(rng.normal(size=(2, access.interface_size)) * 0.5, True)
    gradcheck(step, interface, *(value.requires_grad_(True) for value in state))


def test_gradcheck_whole_dnc_step(rng):
    access = DNCAccess(memory_size=4, word_size=2, read_heads=2)
    state = random_dnc_state(rng, 2, 4, 2, 2)

    def step(interface, *values):
        read_vectors, new_state, _ = access.step(interface, DNCState(*values))
        return (read_vectors, *new_state)

    # Every field of the state is an input: each path, including through the link kernel.
    interface = t64(rng.normal(size=(2, access.interface_size)) * 0.5, True)
    gradcheck(step, interface, *(value.requires_grad_(True) for value in state))


@pytest.mark.parametrize("arch", ["ntm", "dnc", "dnc-improved"])
def test_access_step_on_all_zero_memory_has_no_nan(rng, arch):
    batch = 3
    if arch == "ntm":
        access = NTMAccess(memory_size=6, word_size=4, read_heads=2, write_heads=2)
    else:  # with Csordás & Schmidhuber's improvements too: masked, de-allocated, sharpened
        improved = arch == "dnc-improved"
        access = DNCAccess(memory_size=6, word_size=4, read_heads=2, masked_content=improved,
                           deallocation=improved, link_sharpness=improved)  # fmt: skip
    state = access.initial_state(batch)
    memory = torch.zeros_like(state.memory, requires_grad=True)
    state = state._replace(memory=memory)
    interface = torch.tensor(
        rng.normal(size=(batch, access.interface_size)), dtype=torch.float32, requires_grad=True
    )
    read_vectors, new_state, record = access.step(interface, state)
    # A second step reads what the first wrote, through the same zero-initialised history.
    read_vectors_2, new_state_2, _ = access.step(interface * 0.5, new_state)
    outputs = [read_vectors, read_vectors_2, *new_state_2, *(r for r in record if r is not None)]
    for value in outputs:
        assert torch.isfinite(value).all()
    loss = sum((value * torch.randn_like(value)).sum() for value in outputs if value.requires_grad)
    interface_grad, memory_grad = torch.autograd.grad(loss, [interface, memory])
    assert torch.isfinite(interface_grad).all() and torch.isfinite(memory_grad).all()
    assert interface_grad.abs().sum() > 0
