"""Tests for the fused NTM step (mann/fused/ntm.py) against the reference in NTMAccess.step.

The same ``NTMAccess`` runs each sequence twice: ``record=True`` takes the torch composition of
``mann.addressing`` (the reference), ``record=False`` the fused kernel. Values and autograd
gradients (interface, memory, previous weightings, the module's parameters) must agree over
several steps; gradcheck checks the hand-written backward on its own; the edge cases are
those where a careless kernel returns NaN or a wrong gradient (all-zero memory, saturated
sharpening, exact zeros reaching the sharpening's clamp); and a whole model trains the same.
"""

from __future__ import annotations

import pytest
import torch

from mann import fused
from mann.access.ntm import NTMAccess, NTMState
from mann.fused.runtime import HAVE_NUMBA

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="the fused kernels need numba")

SLOTS, WIDTH = 9, 4
BIG = 800.0  # a logit that saturates sigmoid and softmax to exactly 0 and 1 in float64


def fused_was_taken(read_vectors: torch.Tensor) -> bool:
    return "NTMStep" in type(read_vectors.grad_fn).__name__


def run_steps(access, interfaces, state, record: bool, projections):
    """Steps through ``interfaces``; returns the outputs of every step and a scalar loss.

    The loss is a fixed random projection of every output (reads, memory, both weightings),
    so each one carries a gradient back into the step that made it.
    """
    outputs, loss = [], 0.0
    for interface, projection in zip(interfaces, projections, strict=True):
        if record:  # the reference
            read_vectors, state, step_record = access.step(interface, state, record=True)
        else:
            read_vectors, state, step_record = fused.ntm.access_step(access, interface, state)
        assert fused_was_taken(read_vectors) == (not record)
        assert (step_record is None) == (not record)
        step_outputs = (read_vectors, state.memory, state.read_weights, state.write_weights)
        outputs.append(step_outputs)
        loss = loss + sum((o * p).sum() for o, p in zip(step_outputs, projection, strict=True))
    return outputs, loss


def compare_paths(read_heads, write_heads, shift_range, batch, dtype, steps=4, scale=1.0):
    generator = torch.Generator().manual_seed(read_heads * 100 + write_heads * 10 + shift_range)
    access = NTMAccess(SLOTS, WIDTH, read_heads, write_heads, shift_range).to(dtype)
    with torch.no_grad():  # a non-trivial learned start
        access.initial_weight_logits.normal_(generator=generator)
    size = (batch, access.interface_size)
    interfaces = [
        (scale * torch.randn(size, generator=generator, dtype=dtype)).requires_grad_()
        for _ in range(steps)
    ]
    memory = 0.3 * torch.randn(batch, SLOTS, WIDTH, generator=generator, dtype=dtype)
    memory.requires_grad_()
    shapes = [
        (batch, read_heads, WIDTH),
        (batch, SLOTS, WIDTH),
        (batch, read_heads, SLOTS),
        (batch, write_heads, SLOTS),
    ]
    projections = [
        [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
        for _ in range(steps)
    ]
    leaves = [*interfaces, memory, access.initial_weight_logits]
    results = {}
    for record in (True, False):
        # The learned initial weightings (so their parameters get gradients), random memory.
        state = access.initial_state(batch)._replace(memory=memory)
        outputs, loss = run_steps(access, interfaces, state, record, projections)
        gradients = torch.autograd.grad(loss, leaves)
        results[record] = ([o.detach() for step in outputs for o in step], gradients)
    return results[True], results[False]


def assert_close(actual, expected, dtype, what):
    # float32: the kernel computes in float64, the reference in float32; relative to the
    # largest entry so a near-zero entry does not demand more than float32 can hold.
    tolerance = 1e-11 if dtype == torch.float64 else 1e-5
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert torch.isfinite(a).all(), f"{what} {index}: not finite"
        scale = e.abs().max().clamp_min(1.0)
        error = (a - e).abs().max() / scale
        assert error <= tolerance, f"{what} {index}: relative error {error:.3g}"


# ---------------------------------------------------------------------------------------
# Fused against the reference, values and gradients, over several steps
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "read_heads, write_heads, shift_range, batch",
    [(1, 1, 3, 1), (2, 1, 3, 3), (1, 2, 5, 3), (1, 1, 1, 3), (2, 2, 5, 1), (1, 1, 9, 2)],
)
def test_fused_steps_match_the_reference(read_heads, write_heads, shift_range, batch, dtype):
    (expected, expected_grads), (actual, actual_grads) = compare_paths(
        read_heads, write_heads, shift_range, batch, dtype
    )
    assert_close(actual, expected, dtype, "output")
    assert_close(actual_grads, expected_grads, dtype, "gradient")
    # The gradients reach every leaf (a kernel that dropped one would still "match" zero).
    assert all(g.abs().max() > 0 for g in expected_grads)


def test_fused_matches_with_saturating_interface_values():
    # Logits near the model's clip value (±20) saturate the gates, shifts and sharpening.
    (expected, expected_grads), (actual, actual_grads) = compare_paths(
        2, 2, 3, 2, torch.float64, scale=12.0
    )
    assert_close(actual, expected, torch.float64, "output")
    assert_close(actual_grads, expected_grads, torch.float64, "gradient")


# ---------------------------------------------------------------------------------------
# The hand-written backward on its own
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "read_heads, write_heads, shift_range, slots", [(1, 1, 3, 5), (1, 2, 3, 6), (2, 1, 5, 5)]
)
def test_ntm_step_passes_gradcheck(read_heads, write_heads, shift_range, slots):
    generator = torch.Generator().manual_seed(7)
    heads, width, batch = read_heads + write_heads, 3, 2
    interface_size = heads * (width + 3 + shift_range) + write_heads * 2 * width
    interface = torch.randn(batch, interface_size, generator=generator, dtype=torch.float64)
    memory = torch.randn(batch, slots, width, generator=generator, dtype=torch.float64)
    logits = torch.randn(batch, heads, slots, generator=generator, dtype=torch.float64)
    prev_weights = torch.softmax(logits, dim=-1)

    def step(interface, memory, prev_weights):
        return fused.ntm_step(
            interface,
            memory,
            prev_weights,
            read_heads=read_heads,
            write_heads=write_heads,
            word_size=width,
            shift_range=shift_range,
        )

    inputs = tuple(t.requires_grad_() for t in (interface, memory, prev_weights))
    assert torch.autograd.gradcheck(step, inputs)


# ---------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------
def one_step_both_paths(access, interface, state):
    """One step by each path: (outputs, gradients of a random projection) for each."""
    leaves = [interface, state.memory, state.read_weights, state.write_weights]
    results = []
    for record in (True, False):
        generator = torch.Generator().manual_seed(3)  # the same projection for both paths
        if record:
            read_vectors, new_state, _ = access.step(interface, state, record=True)
        else:
            read_vectors, new_state, _ = fused.ntm.access_step(access, interface, state)
        assert fused_was_taken(read_vectors) == (not record)
        outputs = (read_vectors, *new_state)
        loss = sum(
            (o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in outputs
        )
        results.append(([o.detach() for o in outputs], torch.autograd.grad(loss, leaves)))
    return results


def weights_state(batch, read_heads, write_heads, memory, generator):
    weights = torch.softmax(
        torch.randn(batch, read_heads + write_heads, SLOTS, generator=generator).double(), -1
    )
    return (
        memory.requires_grad_(),
        weights[:, :read_heads].clone().requires_grad_(),
        weights[:, read_heads:].clone().requires_grad_(),
    )


def test_all_zero_memory_gives_no_nan_and_matches():
    generator = torch.Generator().manual_seed(11)
    access = NTMAccess(SLOTS, WIDTH, 2, 2, 3).double()
    state = NTMState(
        *weights_state(2, 2, 2, torch.zeros(2, SLOTS, WIDTH, dtype=torch.float64), generator)
    )
    interface = torch.randn(2, access.interface_size, generator=generator).double()
    interface.requires_grad_()
    (expected, expected_grads), (actual, actual_grads) = one_step_both_paths(
        access, interface, state
    )
    assert_close(actual, expected, torch.float64, "output")
    assert_close(actual_grads, expected_grads, torch.float64, "gradient")


def test_saturated_sharpening_matches():
    generator = torch.Generator().manual_seed(12)
    access = NTMAccess(SLOTS, WIDTH, 1, 1, 3).double()
    memory = torch.randn(2, SLOTS, WIDTH, generator=generator).double()
    state = NTMState(*weights_state(2, 1, 1, memory, generator))
    interface = torch.randn(2, access.interface_size, generator=generator).double()
    head = access.head_layout
    for start in (0, head.total):
        interface[:, start + head.offset("sharpening")] = 60.0  # γ = 61: w̃^61, nearly one-hot
    interface.requires_grad_()
    (expected, expected_grads), (actual, actual_grads) = one_step_both_paths(
        access, interface, state
    )
    assert expected[2].max() > 0.99  # the case is really saturated
    assert_close(actual, expected, torch.float64, "output")
    assert_close(actual_grads, expected_grads, torch.float64, "gradient")


def test_strength_and_sharpening_above_softplus_threshold():
    # torch's softplus is x itself above 20, with slope exactly 1 (not σ(x) = 1 - 1e-9).
    generator = torch.Generator().manual_seed(14)
    access = NTMAccess(SLOTS, WIDTH, 1, 1, 3).double()
    memory = torch.randn(2, SLOTS, WIDTH, generator=generator).double()
    state = NTMState(*weights_state(2, 1, 1, memory, generator))
    interface = 0.5 * torch.randn(2, access.interface_size, generator=generator).double()
    head = access.head_layout
    columns = [h * head.total + head.offset(name) for h in range(2)
               for name in ("key_strength", "sharpening")]  # β and γ logits  # fmt: skip
    interface[:, columns] = 20.5
    interface.requires_grad_()
    (expected, expected_grads), (actual, actual_grads) = one_step_both_paths(
        access, interface, state
    )
    assert_close(actual, expected, torch.float64, "output")
    assert_close(actual_grads, expected_grads, torch.float64, "gradient")
    # Slope σ(20.5) instead of 1 would move each of these by ~1e-9 of itself; rounding, by
    # ~1e-15 of the largest.
    expected_columns = expected_grads[0][:, columns]
    largest = expected_columns.abs().max()
    assert largest > 0
    error = (actual_grads[0][:, columns] - expected_columns).abs().max()
    assert error <= 1e-12 * largest


def test_exact_zero_weights_take_the_clamps_zero_gradient():
    # Gate g = 0 and shift s = δ_0 exactly: w̃ = w_{t-1}, whose zeros reach log(max(w̃, tiny)).
    generator = torch.Generator().manual_seed(13)
    access = NTMAccess(SLOTS, WIDTH, 1, 1, 3).double()
    memory = torch.randn(2, SLOTS, WIDTH, generator=generator).double()
    memory, read_weights, write_weights = weights_state(2, 1, 1, memory, generator)
    with torch.no_grad():
        for weights in (read_weights, write_weights):
            weights[..., ::2] = 0.0
            weights /= weights.sum(-1, keepdim=True)
    state = NTMState(memory, read_weights, write_weights)
    interface = torch.randn(2, access.interface_size, generator=generator).double()
    head = access.head_layout
    for start in (0, head.total):
        interface[:, start + head.offset("interpolation_gate")] = -BIG  # g = 0
        shift = head.slice("shift")
        interface[:, start + shift.start : start + shift.stop] = torch.tensor([-BIG, BIG, -BIG])
    interface.requires_grad_()
    (expected, expected_grads), (actual, actual_grads) = one_step_both_paths(
        access, interface, state
    )
    assert (expected[2][..., ::2] == 0).all()  # the zeros came through the sharpening
    assert_close(actual, expected, torch.float64, "output")
    assert_close(actual_grads, expected_grads, torch.float64, "gradient")


# ---------------------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------------------
def test_the_access_step_is_the_reference_whether_or_not_it_records():
    access = NTMAccess(SLOTS, WIDTH, 1, 1, 3)
    interface = torch.randn(2, access.interface_size)
    for record in (True, False):
        read_vectors, _, step_record = access.step(interface, access.initial_state(2), record)
        assert step_record is not None
        assert not fused_was_taken(read_vectors)


def test_ntm_step_rejects_sizes_that_do_not_fit():
    memory = torch.zeros(2, SLOTS, WIDTH)
    weights = torch.full((2, 2, SLOTS), 1.0 / SLOTS)
    sizes = dict(read_heads=1, write_heads=1, word_size=WIDTH, shift_range=3)
    interface = torch.zeros(2, 2 * (WIDTH + 6) + 2 * WIDTH)
    fused.ntm_step(interface, memory, weights, **sizes)  # fits
    with pytest.raises(ValueError, match="do not fit"):
        fused.ntm_step(interface[:, 1:], memory, weights, **sizes)
    with pytest.raises(ValueError, match="do not fit"):
        fused.ntm_step(interface, memory, weights, **{**sizes, "read_heads": 2})
