"""The sparse reads' kernels (mann/fused/sparse.py: ``content_read``, ``read_rows`` and the
SDNC's ``read_weighting`` as one autograd node) against the torch composition the reference
step uses (``mann.access.sam.content_read``, ``read_rows``, ``addressing``): the same weights,
reads and gradients, for one read on random rows (zero rows and keys included) and over whole
SAM and SDNC runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mann import addressing
from mann.access import sam as sam_module
from mann.access import sdnc as sdnc_module
from mann.access import sparse_autograd
from mann.access.sam import SAMAccess
from mann.access.sdnc import SDNCAccess
from mann.access.slots import memory_gradient_placeholder
from mann.fused import runtime
from mann.fused import sparse as fused_sparse

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
    content_read, read_rows = (
        (fused_sparse.content_read, fused_sparse.read_rows) if fused
        else (sparse_autograd.content_read, sparse_autograd.read_rows)
    )  # fmt: skip
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


def test_the_kernel_read_is_the_dense_content_read_over_every_slot():
    content_read = fused_sparse.content_read
    memory, _, keys, strengths = random_read(3, torch.float64, zero_rows=True)
    slots = memory.shape[1]
    positions = torch.arange(slots).expand(*keys.shape[:2], slots).contiguous()
    path = memory_gradient_placeholder(memory)
    weights, reads, _ = content_read(path, {"memory": memory}, positions, keys, strengths)
    expected = addressing.content_weights(memory, keys, strengths)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(reads, torch.bmm(expected, memory))


def use_kernels(monkeypatch) -> None:
    """The reference step with its reads (and SDNC's read weighting) by the kernels."""
    monkeypatch.setattr(sam_module, "content_read", fused_sparse.content_read)
    monkeypatch.setattr(sdnc_module, "read_rows", fused_sparse.read_rows)

    def read_weighting(self, tables, state, io, content_positions, content_weights):
        N, K = self.memory_size, self.sparse_reads
        flat = state.read_positions.flatten(1)
        shape = (*state.read_positions.shape, self.temporal_reads)
        successors, successor_weights = sdnc_module.link_rows(tables, "successor", flat, N)
        predecessors, predecessor_weights = sdnc_module.link_rows(tables, "predecessor", flat, N)
        links = tuple(table.view(shape) for table in
                      (successors, successor_weights, predecessors, predecessor_weights))
        return fused_sparse.read_weighting(state.read_weights, content_weights, io.read_modes,
                                           links, content_positions, K, N)  # fmt: skip

    monkeypatch.setattr(SDNCAccess, "_read_weighting", read_weighting)


def run(access, fused: bool, monkeypatch, steps: int = 30, batch: int = 3):
    if fused:
        use_kernels(monkeypatch)
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
    expected_reads, expected_positions, expected_gradients = run(access, False, monkeypatch)
    reads, positions, gradients = run(access, True, monkeypatch)
    assert torch.equal(positions, expected_positions)
    torch.testing.assert_close(reads, expected_reads)
    for got, expected in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, expected)
    assert sum(float(g.abs().sum()) for g in gradients[:-5]) > 0  # early steps get gradient


def test_the_reference_step_never_calls_the_kernels(monkeypatch):
    calls = []
    for name in ("content_read_forward", "rows_read_forward"):
        kernel = getattr(fused_sparse, name)
        monkeypatch.setattr(
            fused_sparse, name,
            lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args),
        )  # fmt: skip
    for access in (SAMAccess(12, 4, 2, 3), SDNCAccess(12, 4, 2, 2, 3)):
        state = access.initial_state(2)
        access.step(torch.randn(2, access.interface_size), state)
    assert calls == []
    use_kernels(monkeypatch)
    for access in (SAMAccess(12, 4, 2, 3), SDNCAccess(12, 4, 2, 2, 3)):
        access.step(torch.randn(2, access.interface_size), access.initial_state(2))
    assert calls == ["content_read_forward", "content_read_forward", "rows_read_forward"]
