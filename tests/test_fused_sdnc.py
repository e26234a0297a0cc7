"""The fused SDNC link upkeep (mann/fused/sdnc.py) against the torch composition it replaces
(``SDNCAccess._link_changes``, what the reference step uses; ``link_kernel`` makes the step
use the kernel instead).

The links carry no gradient, so the kernel must give the very same numbers: link tables,
precedence, reads, read vectors, the journal, gradients, a model's loss and Traces, all
compared exactly over long runs, with saturated write gates and with ties at the K_L cut
(zero memory and zero keys make every content weight, hence every write weight, equal).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import mann
from mann.access import slots as slots_module
from mann.access.sdnc import SDNCAccess
from mann.fused import runtime
from mann.fused import sdnc as fused_sdnc
from mann.metrics import masked_bce

pytestmark = pytest.mark.skipif(not runtime.HAVE_NUMBA, reason="the fused kernels need numba")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the steps the kernel computed (True) and those it left to torch (False)."""
    calls = []
    original = fused_sdnc.link_changes

    def counting(*args):
        changes = original(*args)
        calls.append(changes is not None)
        return changes

    monkeypatch.setattr(fused_sdnc, "link_changes", counting)
    return calls


@contextlib.contextmanager
def link_kernel(monkeypatch, fused: bool):
    """Within: the reference step with step 2's changed rows by ``fused_sdnc.link_changes``
    (when ``fused``; torch where the kernel leaves a case to it), else as it is."""
    with monkeypatch.context() as patch:
        if fused:
            reference = SDNCAccess._link_changes

            def link_changes(self, store, tables, written, weights, precedence):
                changes = fused_sdnc.link_changes(tables, written, weights, *precedence)
                if changes is None:
                    return reference(self, store, tables, written, weights, precedence)
                return changes

            patch.setattr(SDNCAccess, "_link_changes", link_changes)
        yield


def interfaces(access, steps: int, batch: int, seed: int, style: str, dtype=torch.float32):
    """Random interfaces; "strong": write gate near 1 and large logits; "ties": on two steps
    of three zero keys and write vectors (memory stays zero, every content weight equal)."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for step in range(steps):
        scale = 4.0 if style == "strong" else 1.0
        interface = scale * torch.randn(
            batch, access.interface_size, generator=generator, dtype=dtype
        )
        field = access.layout.split(interface)
        keys, write_vector, write_gate = (field["read_keys"], field["write_vector"],
                                          field["write_gate"])
        if style != "random":
            write_gate.fill_(12.0)
        if style == "ties" and step % 3 != 2:
            keys.zero_()
            write_vector.zero_()
        result.append(interface.requires_grad_())
    return result


def run(access, inputs, fused: bool, monkeypatch):
    """60-odd steps of ``access`` with the kernel or the reference; reads, state, the
    interfaces' gradients and the journal."""
    state = access.initial_state(inputs[0].shape[0], dtype=inputs[0].dtype)
    reads = []
    with link_kernel(monkeypatch, fused):
        for interface in inputs:
            read, state, _ = access.step(interface, state, record=False)
            reads.append(read)
    reads = torch.stack(reads, 1)
    weights = torch.randn(reads.shape, generator=torch.Generator().manual_seed(5))
    gradients = torch.autograd.grad((reads * weights.to(reads.dtype)).sum(), inputs)
    journal = slots_module.store_of(state.memory).journal
    return reads.detach(), state, gradients, journal


def assert_identical(first, second):
    assert type(first) is type(second)
    if isinstance(first, torch.Tensor):
        assert first.dtype == second.dtype and first.shape == second.shape
        assert torch.equal(first, second)
    elif isinstance(first, np.ndarray):
        np.testing.assert_array_equal(first, second)
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assert_identical(first[key], second[key])
    elif isinstance(first, tuple | list):
        assert len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            assert_identical(a, b)
    else:
        assert first == second


def test_top_k_places_ties_where_torch_topk_places_them():
    rng = np.random.default_rng(3)
    for _ in range(3000):
        length = int(rng.integers(1, 40))
        k = int(rng.integers(1, min(length, 17) + 1))
        values = (rng.integers(0, int(rng.integers(1, 5)), length) / 4).astype(np.float32)
        if rng.random() < 0.3:
            values = (rng.random(length) * (rng.random(length) < 0.5)).astype(np.float32)
        expected = torch.from_numpy(values.copy()).topk(k)
        order = np.empty(length, np.int64)
        assert fused_sdnc._top_k(values, order, k)
        np.testing.assert_array_equal(order[:k], expected.indices.numpy())
        np.testing.assert_array_equal(values[:k], expected.values.numpy())


@pytest.mark.parametrize(
    ("slots", "capacity", "batch", "heads", "sparse", "style", "dtype"),
    [
        (16, 2, 3, 2, 3, "ties", torch.float32),
        (16, 3, 1, 1, 2, "random", torch.float32),
        (24, 4, 2, 1, 3, "ties", torch.float32),
        (32, 8, 3, 2, 2, "strong", torch.float32),
        (48, 5, 2, 3, 2, "strong", torch.float32),
        (64, 8, 3, 2, 4, "ties", torch.float32),
        (64, 2, 2, 2, 3, "random", torch.float64),
    ],
)
def test_steps_equal_the_torch_composition(
    slots, capacity, batch, heads, sparse, style, dtype, kernel_calls, monkeypatch
):
    access = SDNCAccess(slots, 4, heads, sparse, capacity, index="exact")
    inputs = interfaces(access, 60, batch, seed=slots + capacity, style=style, dtype=dtype)
    fused = run(access, inputs, True, monkeypatch)
    assert kernel_calls == [True] * 60  # the kernel computed every step
    reference = run(access, inputs, False, monkeypatch)
    assert len(kernel_calls) == 60  # and the reference none
    reads, state, gradients, journal = fused
    assert (state.link_predecessor_weights > 0).sum() > 2 * batch  # the run did link slots
    assert_identical(reads, reference[0])
    assert_identical(tuple(state), tuple(reference[1]))  # tables, precedence, reads, steps
    assert_identical(gradients, reference[2])
    assert_identical(journal, reference[3])


def test_a_case_the_kernel_does_not_replay_falls_back_to_torch(kernel_calls, monkeypatch):
    # 18 entries per row: std::sort of 17 would leave insertion sort; the kernel declines.
    access = SDNCAccess(40, 4, 2, 3, 18, index="exact")
    inputs = interfaces(access, 8, 2, seed=1, style="strong")
    fused = run(access, inputs, True, monkeypatch)
    assert kernel_calls == [False] * 8
    assert_identical(fused, run(access, inputs, False, monkeypatch))
    # The kernel stopped mid-item with slots marked in its scratch maps; they are reset.
    maps = [where for pair in fused_sdnc._SCRATCH.values() for where in pair]
    assert maps and all((where == -1).all() for where in maps)


def test_stepping_a_state_twice_branches_the_same_with_the_kernel(monkeypatch):
    access = SDNCAccess(16, 4, 2, 3, 3, index="exact")
    inputs = interfaces(access, 12, 2, seed=7, style="ties")
    results = []
    for fused in (True, False):
        state = access.initial_state(2)
        with torch.no_grad(), link_kernel(monkeypatch, fused):
            for interface in inputs[:6]:
                _, state, _ = access.step(interface, state)
            middle = state
            for interface in inputs[6:]:
                _, state, _ = access.step(interface, state)
            for interface in inputs[6:]:  # from the middle again: a branch of the tables
                _, middle, _ = access.step(interface, middle)
        results.append((tuple(state), tuple(middle)))
    assert_identical(results[0][0], results[0][1])
    assert_identical(results[0], results[1])


def sdnc_config(slots: int, **changes) -> mann.ModelConfig:
    settings = dict(
        arch="sdnc", input_size=6, output_size=5, hidden_size=16, memory_size=slots,
        word_size=6, read_heads=2, sparse_reads=3, temporal_reads=4,
    )
    return mann.ModelConfig(**{**settings, **changes})


def test_a_training_step_by_the_sequence_kernel_equals_the_reference():
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randint(0, 2, (3, 30, 6), generator=generator).float()
    targets = torch.randint(0, 2, (3, 30, 5), generator=generator).float()
    mask = torch.ones(3, 30)
    results = []
    for backend in ("fused", "reference"):
        torch.manual_seed(0)
        model = mann.build_model(sdnc_config(32))
        with mann.backend(backend):
            logits, _ = model(inputs)
        loss = masked_bce(logits, targets, mask)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    # The links carry no gradient and are the same; the rest is the kernels' arithmetic.
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)
    for got, expected in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("slots", [20, 300])  # dense link, and the touched sub-matrix
def test_recorded_traces_equal_the_torch_composition(slots, kernel_calls, monkeypatch):
    inputs = torch.randint(0, 2, (2, 25, 6), generator=torch.Generator().manual_seed(4)).float()
    traces = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = mann.build_model(sdnc_config(slots))
        with link_kernel(monkeypatch, fused):
            _, _, trace = model(inputs, record=True, trace_item=1)
        traces.append(trace)
    assert kernel_calls == [True] * 25
    first, second = (
        {name: value for name, value in vars(trace).items() if name != "metadata"}
        for trace in traces
    )
    assert first["link"] is not None and (first["link"] > 0).sum() > 0
    assert_identical(first, second)


@pytest.mark.parametrize("fused", [True, False])
def test_the_sink_rows_stay_empty(fused, monkeypatch):
    # Row N of both link tables is the sink that empty entries point at; it must never gain
    # an entry (small N and K_L = 1 make the lists of touched rows full, which once let a
    # rewritten row's decayed entries land there).
    for slots, capacity, style in [(4, 1, "random"), (5, 1, "ties"), (8, 1, "saturated"),
                                   (8, 2, "saturated"), (10, 1, "random")]:  # fmt: skip
        access = SDNCAccess(slots, 4, 2, 1 if capacity == 1 else 2, capacity)
        state = access.initial_state(2)
        for t, interface in enumerate(interfaces(access, 40, 2, seed=slots, style=style)):
            with link_kernel(monkeypatch, fused):
                _, state, _ = access.step(interface, state, record=False)
            for table in (state.link_predecessor_weights, state.link_successor_weights):
                assert float(table[:, slots].abs().sum()) == 0.0, (slots, capacity, style, t)
