"""The sparse reads' kernels (mann/fused/sparse.py) and the SDNC's read weighting as one
autograd node (``mann.access.sdnc._ReadWeighting``) against the torch composition they replace
(``mann.access.sam.FUSED_READS = False``): the same weights, reads and gradients, for one
read on random rows (zero rows and keys included) and over whole SAM and SDNC runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mann import addressing
from mann.access import sam as sam_module
from mann.access.sam import SAMAccess, content_read, memory_gradient_placeholder, read_rows
from mann.access.sdnc import SDNCAccess
from mann.fused import runtime

pytestmark = pytest.mark.skipif(not runtime.HAVE_NUMBA, reason="the fused kernels need numba")


def random_read(seed: int, dtype: torch.dtype, zero_rows: bool):
    rng = np.random.default_rng(seed)
    batch, slots, heads, k, width = 3, 10, 2, 4, 5
    memory = torch.from_numpy(rng.standard_normal((batch, slots, width))).to(dtype)
    if zero_rows:
        memory[:, ::2] = 0.0  # never-written slots: |M[i]| = 0
    positions = torch.from_numpy(
        np.stack([[rng.choice(slots, k, replace=False) for _ in range(heads)]
                  for _ in range(batch)])  # fmt: skip
    )
    keys = torch.from_numpy(rng.standard_normal((batch, heads, width))).to(dtype)
    if zero_rows:
        keys[0, 0] = 0.0
    strengths = torch.from_numpy(1.0 + 5.0 * rng.random((batch, heads))).to(dtype)
    return memory, positions, keys, strengths


def read_and_gradients(fused: bool, memory, positions, keys, strengths, monkeypatch, seed):
    """One content read and one read by given weights, their outputs and every gradient
    (keys, strengths, weights, memory) of a random function of them."""
    monkeypatch.setattr(sam_module, "FUSED_READS", fused)
    keys, strengths = keys.clone().requires_grad_(), strengths.clone().requires_grad_()
    tables = {"memory": memory.clone()}
    path = memory_gradient_placeholder(memory).requires_grad_()
    weights, reads, path_after_read = content_read(path, tables, positions, keys, strengths)
    mixed = (0.5 * weights).detach().requires_grad_()
    mixed_reads, path_after = read_rows(path_after_read, tables, positions.flip(-1), mixed)
    generator = torch.Generator().manual_seed(seed)
    loss = sum(
        (torch.randn(t.shape, generator=generator, dtype=t.dtype) * t).sum()
        for t in (weights, reads, mixed_reads)
    )
    # dL/dM flows out along the path; the memory's own gradient is what reaches ``path``.
    grads = torch.autograd.grad(loss, (keys, strengths, mixed, path))
    return (weights, reads, mixed_reads), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("zero_rows", [False, True])
def test_a_read_and_its_gradients_equal_the_torch_composition(dtype, zero_rows, monkeypatch):
    for seed in range(5):
        inputs = random_read(seed, dtype, zero_rows)
        outputs, grads = read_and_gradients(True, *inputs, monkeypatch, seed)
        expected_outputs, expected_grads = read_and_gradients(False, *inputs, monkeypatch, seed)
        tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else {}
        for got, expected in zip(outputs, expected_outputs, strict=True):
            torch.testing.assert_close(got, expected, **tolerance)
        for got, expected in zip(grads, expected_grads, strict=True):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, expected, **tolerance)
        assert grads[3].abs().sum() > 0  # the memory's gradient is not lost


def test_the_kernel_read_is_the_dense_content_read_over_every_slot(monkeypatch):
    monkeypatch.setattr(sam_module, "FUSED_READS", True)
    memory, _, keys, strengths = random_read(3, torch.float64, zero_rows=True)
    slots = memory.shape[1]
    positions = torch.arange(slots).expand(*keys.shape[:2], slots).contiguous()
    path = memory_gradient_placeholder(memory)
    weights, reads, _ = content_read(path, {"memory": memory}, positions, keys, strengths)
    expected = addressing.content_weights(memory, keys, strengths)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(reads, torch.bmm(expected, memory))


def run(access, fused: bool, monkeypatch, steps: int = 30, batch: int = 3):
    monkeypatch.setattr(sam_module, "FUSED_READS", fused)
    generator = torch.Generator().manual_seed(11)
    inputs = [
        torch.randn(batch, access.interface_size, generator=generator, dtype=torch.float64)
        .requires_grad_()
        for _ in range(steps)
    ]
    state = access.initial_state(batch, dtype=torch.float64)
    reads, positions = [], []
    for interface in inputs:
        read, state, _ = access.step(interface, state)
        reads.append(read)
        positions.append(state.read_positions)
    reads = torch.stack(reads, 1)
    gradients = torch.autograd.grad(reads.square().sum(), inputs)
    return reads.detach(), torch.stack(positions), gradients


@pytest.mark.parametrize(
    "make", [lambda: SAMAccess(12, 4, 2, 3, index="exact"),
             lambda: SDNCAccess(12, 4, 2, 2, 3, index="exact")],
    ids=["sam", "sdnc"],
)  # fmt: skip
def test_whole_runs_and_their_gradients_equal_the_torch_composition(make, monkeypatch):
    access = make()
    reads, positions, gradients = run(access, True, monkeypatch)
    expected_reads, expected_positions, expected_gradients = run(access, False, monkeypatch)
    assert torch.equal(positions, expected_positions)
    torch.testing.assert_close(reads, expected_reads)
    for got, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, expected)
    assert sum(float(g.abs().sum()) for g in gradients[:-5]) > 0  # early steps get gradient


def test_the_kernels_are_used_on_the_cpu(monkeypatch):
    calls = []
    for name in ("content_read_forward", "rows_read_forward"):
        kernel = getattr(sam_module.fused_sparse, name)
        monkeypatch.setattr(
            sam_module.fused_sparse, name,
            lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args),
        )  # fmt: skip
    for access in (SAMAccess(12, 4, 2, 3), SDNCAccess(12, 4, 2, 2, 3)):
        state = access.initial_state(2)
        access.step(torch.randn(2, access.interface_size), state)
    assert calls == ["content_read_forward", "content_read_forward", "rows_read_forward"]
