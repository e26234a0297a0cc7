"""Tests for the fused DNC step (mann/fused/dnc.py): the reference's numbers, faster.

``DNCAccess.step`` composes ``mann.addressing`` when it records (the reference, what traces
show) and runs ``dnc_write``, the fused link and ``dnc_read`` when it does not. Both paths
are run on the same module and compared: values and gradients, one step at a time along a
trajectory and through several steps, from the all-equal initial state (where allocation
sorts ties) and from random states; the Functions alone under gradcheck; an all-zero memory;
a whole model.
"""

from __future__ import annotations

import pytest
import torch

import mann
from mann import fused
from mann.access.dnc import DNCAccess, DNCState

pytestmark = pytest.mark.skipif(not fused.HAVE_NUMBA, reason="the fused kernels need numba")

# (memory_size N, word_size W, read_heads R, batch B). N > 16 matters: beyond 16 elements
# torch's CPU sort takes another algorithm, whose handling of ties must still be stable.
# 520 slots: the blocked transpose (from 512), with a last block of 8.
CONFIGS = [(8, 4, 1, 1), (16, 6, 2, 3), (24, 5, 2, 1), (64, 20, 4, 3), (520, 3, 2, 1)]
STEPS = 6
TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=2e-6)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    tolerances = dict(TOLERANCES[expected.dtype])
    # Gradients at an all-zero memory are of order 1/ε; float32 rounds those in absolute terms.
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    tolerances["atol"] = max(tolerances["atol"], tolerances["rtol"] * scale)
    torch.testing.assert_close(
        actual, expected, **tolerances, msg=lambda text: f"{what}: {text}"
    )


def interfaces(access: DNCAccess, batch: int, dtype: torch.dtype, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [
        (2.0 * torch.randn(batch, access.interface_size, generator=generator)).to(dtype)
        for _ in range(STEPS)
    ]


def initial_state(access: DNCAccess, batch: int, dtype: torch.dtype) -> DNCState:
    return DNCState(*(tensor.to(dtype) for tensor in access.initial_state(batch)))


def random_state(access: DNCAccess, batch: int, dtype: torch.dtype, seed: int) -> DNCState:
    """A state a DNC could be in: distinct usages in [0,1), link with zero diagonal and rows
    summing below 1, weightings summing to at most 1."""
    generator = torch.Generator().manual_seed(seed)
    N, W, R = access.memory_size, access.word_size, access.read_heads

    def weighting(*shape: int) -> torch.Tensor:
        return 0.9 * torch.softmax(2.0 * torch.randn(*shape, generator=generator), dim=-1)

    link = weighting(batch, N, N) * (1.0 - torch.eye(N))
    state = DNCState(
        memory=torch.randn(batch, N, W, generator=generator),
        usage=torch.rand(batch, N, generator=generator),
        link=link,
        precedence=weighting(batch, N),
        read_weights=weighting(batch, R, N),
        write_weights=weighting(batch, 1, N),
    )
    return DNCState(*(tensor.to(dtype) for tensor in state))


def leaves(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [tensor.detach().clone().requires_grad_() for tensor in tensors]


def probe(tensors: list[torch.Tensor], seed: int) -> torch.Tensor:
    """A random linear functional of all the tensors: its gradient is a random cotangent."""
    generator = torch.Generator().manual_seed(seed)
    return sum(
        (tensor * torch.randn(tensor.shape, generator=generator).to(tensor.dtype)).sum()
        for tensor in tensors
    )


def step(access, interface, state, record: bool):
    """The reference step (record=True) or the fused kernels' (``mann.fused.dnc.access_step``)."""
    if record:
        return access.step(interface, state, record=True)
    return fused.dnc.access_step(access, interface, state)


def run(access, interface_list, state, record: bool):
    """Steps from ``state``; returns the read vectors of every step and the last state."""
    reads = []
    for interface in interface_list:
        read_vectors, state, step_record = step(access, interface, state, record)
        assert (step_record is None) == (not record)
        reads.append(read_vectors)
    return reads, state


# ---------------------------------------------------------------------------------------
# One step at a time: exactly the reference, ties included
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("slots", "width", "heads", "batch"), CONFIGS)
@pytest.mark.parametrize("start", ["initial", "random"])
def test_each_fused_step_equals_the_reference_step(start, slots, width, heads, batch, dtype):
    access = DNCAccess(slots, width, heads)
    if start == "initial":
        state = initial_state(access, batch, dtype)
    else:
        state = random_state(access, batch, dtype, seed=slots)
    for t, interface in enumerate(interfaces(access, batch, dtype, seed=heads)):
        results = {}
        for record in (True, False):
            inputs = leaves([interface, *state])
            read_vectors, new_state, _ = step(access, inputs[0], DNCState(*inputs[1:]), record)
            outputs = [read_vectors, *new_state]
            gradients = torch.autograd.grad(probe(outputs, seed=t), inputs)
            results[record] = outputs, gradients
        (expected, expected_grads), (actual, actual_grads) = results[True], results[False]
        names = ["read_vectors", *DNCState._fields]
        for name, value, reference in zip(names, actual, expected, strict=True):
            assert_close(value, reference, f"step {t}: {name}")
        for name, grad, reference in zip(["interface", *DNCState._fields], actual_grads,
                                         expected_grads, strict=True):  # fmt: skip
            assert_close(grad, reference, f"step {t}: gradient of {name}")
        state = DNCState(*(tensor.detach() for tensor in expected[1:]))


def test_the_first_step_allocates_the_lowest_of_equal_usages():
    # All usages are equal at the start: both paths must pick slot 0 (a stable sort), which
    # is also what makes a fresh DNC's writes easy to follow in a figure.
    access = DNCAccess(memory_size=64, word_size=4, read_heads=1)
    interface = torch.zeros(1, access.interface_size)
    gates = slice(access.layout.offset("erase"), None)
    interface[:, gates] = 30.0  # erase, free, allocation and write gates shut fully open
    state = initial_state(access, 1, torch.float32)
    _, reference, _ = step(access, interface, state, record=True)
    _, fused_state, _ = step(access, interface, state, record=False)
    assert int(reference.write_weights.argmax()) == 0
    assert int(fused_state.write_weights.argmax()) == 0
    torch.testing.assert_close(fused_state.write_weights, reference.write_weights)


# ---------------------------------------------------------------------------------------
# Through several steps
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("slots", "width", "heads", "batch"), CONFIGS)
def test_several_fused_steps_from_a_random_state_equal_the_reference(
    slots, width, heads, batch, dtype
):
    access = DNCAccess(slots, width, heads)
    start = random_state(access, batch, dtype, seed=slots + heads)
    interface_list = interfaces(access, batch, dtype, seed=slots)
    results = {}
    for record in (True, False):
        inputs = leaves([*interface_list, *start])
        reads, final = run(access, inputs[:STEPS], DNCState(*inputs[STEPS:]), record)
        outputs = [*reads, *final]
        results[record] = outputs, torch.autograd.grad(probe(outputs, seed=1), inputs)
    (expected, expected_grads), (actual, actual_grads) = results[True], results[False]
    names = [f"reads at step {t}" for t in range(STEPS)] + list(DNCState._fields)
    for name, value, reference in zip(names, actual, expected, strict=True):
        assert_close(value, reference, name)
    names = [f"interface {t}" for t in range(STEPS)] + [f"initial {f}" for f in DNCState._fields]
    for name, grad, reference in zip(names, actual_grads, expected_grads, strict=True):
        assert_close(grad, reference, f"gradient of {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("slots", "width", "heads", "batch"), CONFIGS)
def test_several_fused_steps_from_the_initial_state_read_as_the_reference(
    slots, width, heads, batch, dtype
):
    # From the empty state many slots stay equally unused for several steps, and which of
    # them the next write takes is decided by rounding in usage (a 1-ulp difference
    # reorders the sort, in the reference too). Those slots are interchangeable: what is
    # read, and the gradients of anything that does not name a slot, are the same.
    access = DNCAccess(slots, width, heads)
    interface_list = interfaces(access, batch, dtype, seed=slots * heads)
    results = {}
    for record in (True, False):
        inputs = leaves(interface_list)
        reads, final = run(access, inputs, initial_state(access, batch, dtype), record)
        loss = probe(reads, seed=2) + sum((tensor**2).sum() for tensor in final)
        results[record] = reads, torch.autograd.grad(loss, inputs)
    for t in range(STEPS):
        assert_close(results[False][0][t], results[True][0][t], f"reads at step {t}")
        assert_close(results[False][1][t], results[True][1][t], f"gradient of interface {t}")


# ---------------------------------------------------------------------------------------
# The Functions alone
# ---------------------------------------------------------------------------------------
def small_inputs(seed: int):
    access = DNCAccess(memory_size=5, word_size=3, read_heads=2)
    state = random_state(access, 2, torch.float64, seed=seed)
    # Usages well apart, so gradcheck's perturbations never reorder the sort.
    usage = torch.stack([torch.randperm(5, generator=torch.Generator().manual_seed(b)) for b in
                         range(2)]).double() / 5 + 0.05  # fmt: skip
    interface = torch.randn(2, access.interface_size, dtype=torch.float64)
    return access, interface, state._replace(usage=usage)


def test_dnc_write_passes_gradcheck():
    _, interface, state = small_inputs(seed=3)
    inputs = leaves([interface, state.memory, state.usage, state.write_weights.squeeze(1),
                     state.read_weights])  # fmt: skip
    assert torch.autograd.gradcheck(fused.dnc_write, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_dnc_read_passes_gradcheck():
    access, interface, state = small_inputs(seed=4)
    generator = torch.Generator().manual_seed(5)
    forward, backward = torch.rand(2, 2, 2, 5, generator=generator, dtype=torch.float64) / 5
    inputs = leaves([interface, state.memory, state.precedence, state.write_weights.squeeze(1),
                     forward, backward])  # fmt: skip
    assert torch.autograd.gradcheck(fused.dnc_read, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("keys", ["random", "zero"])
def test_all_zero_memory_gives_no_nan(keys):
    # |M[i]| = 0 (and |k| = 0 for zero keys): cosine similarity must stay finite, and
    # the norms' gradient zero, as in the reference.
    access = DNCAccess(memory_size=20, word_size=4, read_heads=2)
    interface = (
        torch.randn(3, access.interface_size)
        if keys == "random"
        else torch.zeros(3, access.interface_size)
    )
    results = {}
    for record in (True, False):
        inputs = leaves([interface, *initial_state(access, 3, torch.float32)])
        read_vectors, new_state, _ = step(access, inputs[0], DNCState(*inputs[1:]), record)
        gradients = torch.autograd.grad(probe([read_vectors, *new_state], seed=0), inputs)
        for tensor in (read_vectors, *new_state, *gradients):
            assert torch.isfinite(tensor).all()
        results[record] = gradients
    for grad, reference in zip(results[False], results[True], strict=True):
        # Gradients through |M[i]| + ε = ε are of order 1/ε: compare relative to the largest.
        scale = float(reference.abs().max())
        torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-5 * scale)


def test_the_fused_step_runs_the_fused_functions_and_the_access_step_never_does():
    access = DNCAccess(memory_size=8, word_size=4, read_heads=2)
    interface = torch.randn(2, access.interface_size, requires_grad=True)
    read_vectors, state, record = fused.dnc.access_step(access, interface, access.initial_state(2))
    assert record is None
    assert type(read_vectors.grad_fn).__name__ == "_ReadBackward"
    assert type(state.memory.grad_fn).__name__ == "_WriteBackward"
    for record in (True, False):  # the access module is the reference either way
        read_vectors, _, _ = access.step(interface, access.initial_state(2), record=record)
        assert "_Read" not in type(read_vectors.grad_fn).__name__


# ---------------------------------------------------------------------------------------
# A whole model
# ---------------------------------------------------------------------------------------
def test_a_dnc_model_gives_the_same_logits_and_gradients_fused_and_recorded():
    # record=False takes the whole-sequence kernel (the "auto" backend), record=True the
    # reference.
    config = mann.ModelConfig(arch="dnc", input_size=5, output_size=4, hidden_size=32,
                              num_layers=2, memory_size=24, word_size=6, read_heads=3)  # fmt: skip
    model = mann.build_model(config)
    inputs = torch.randn(3, 9, 5, generator=torch.Generator().manual_seed(0))
    results = {}
    for record in (True, False):
        model.zero_grad()
        logits = model(inputs, record=record)[0]
        probe([logits], seed=3).backward()
        results[record] = logits, [p.grad.clone() for p in model.parameters()]
    assert_close(results[False][0], results[True][0], "logits")
    names = [name for name, _ in model.named_parameters()]
    for name, grad, reference in zip(names, results[False][1], results[True][1], strict=True):
        assert_close(grad, reference, f"gradient of {name}")
