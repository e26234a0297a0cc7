"""The sparse memories' bookkeeping kernels against the torch compositions they replace:
usage (mann/fused/slots.py against ``SlotStore``'s torch methods, the reference) and the
ranking of k-NN candidates (mann/fused/knn.py, which an index uses when a store is given
kernels). The same least used slots, tables, minima and read positions, directly on random
inputs (ties, missing candidates) and over whole SAM runs. (The sequence kernel that uses them
is held to the reference step loop in tests/test_sparse_sequence.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mann import addressing
from mann.access import index as index_module
from mann.access import slots as slots_module
from mann.access.sam import SAMAccess
from mann.access.slots import SlotStore
from mann.fused import knn as fused_knn
from mann.fused import runtime
from mann.fused import slots as fused_slots

pytestmark = pytest.mark.skipif(not runtime.HAVE_NUMBA, reason="the fused kernels need numba")


def random_tables(rng, batch: int, slots: int, steps: int):
    last_access = torch.from_numpy(rng.integers(0, steps, (batch, slots)))
    store = SlotStore(steps, "exact")
    return store, last_access


@pytest.mark.parametrize("slots", [1, 5, 16, 17, 50])
def test_least_used_equals_the_torch_search_also_when_the_oldest_is_excluded(slots, monkeypatch):
    rng = np.random.default_rng(slots)
    hits = 0
    for trial in range(300):
        batch, count = int(rng.integers(1, 4)), int(rng.integers(1, 9))
        store, last_access = random_tables(rng, batch, slots, steps=int(rng.integers(1, 6)))
        excluded = torch.from_numpy(rng.integers(0, slots, (batch, count)))
        if trial % 2:  # exclude the least used slot itself: the second search
            oldest = last_access.argmin(-1, keepdim=True)
            excluded[:, :1] = oldest
        exclude = torch.from_numpy(rng.random((batch, count)) < 0.7)
        before = last_access.clone()
        expected = store.least_used(last_access, excluded, exclude)  # the reference
        minima = store.block_minima.clone()
        size = store.block_size(slots)
        got = fused_slots.least_used(last_access, minima, size, excluded, exclude)
        assert torch.equal(got, expected)
        assert torch.equal(last_access, before) and torch.equal(store.block_minima, minima)
        first = last_access.argmin(-1)
        hits += int(((first.unsqueeze(-1) == excluded) & exclude).any())
    assert hits > 50  # the second search ran often


@pytest.mark.parametrize("with_minima", [True, False])
def test_touch_equals_the_torch_update(with_minima):
    rng = np.random.default_rng(7)
    for _ in range(200):
        batch, slots, count = int(rng.integers(1, 4)), int(rng.integers(1, 40)), 6
        results, seed = {}, int(rng.integers(1 << 30))
        for fused in (False, True):
            rng_state = np.random.default_rng(seed)  # the same tables for both
            store, last_access = random_tables(rng_state, batch, slots, steps=5)
            if with_minima:
                store.minima(last_access)
            positions = torch.from_numpy(rng_state.integers(0, slots, (batch, count)))
            # Weights at and around the threshold δ, in float32 as a model gives them.
            threshold = addressing.USAGE_THRESHOLD
            choices = np.array([0.0, threshold, np.nextafter(np.float32(threshold), 1), 0.5])
            weights = rng_state.choice(choices, (batch, count)).astype(np.float32)
            weights = torch.from_numpy(weights)
            store.version = 6
            if fused:
                old, new = fused_slots.touch(
                    last_access, store.block_minima, store.block_size(slots), positions,
                    weights, addressing.USAGE_THRESHOLD, store.version,
                )  # fmt: skip
                changed = (old.flatten(), new.flatten())
            else:  # the reference
                store.touch({"last_access": last_access}, positions, weights)
                (change,) = store.journal["last_access"]
                changed = (change.old, change.new)
            results[fused] = last_access, store.block_minima, changed
        (table, minima, changed), (table_ref, minima_ref, changed_ref) = (
            results[True], results[False],
        )  # fmt: skip
        assert torch.equal(table, table_ref)
        assert (minima is None) == (minima_ref is None)
        assert minima is None or torch.equal(minima, minima_ref)
        for value, reference in zip(changed, changed_ref, strict=True):
            assert torch.equal(value, reference)


def run(access, steps: int, batch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randn(batch, access.interface_size, generator=generator).requires_grad_()
        for _ in range(steps)
    ]
    state = access.initial_state(batch)
    reads, least_used = [], []
    for interface in inputs:
        read, state, record = access.step(interface, state)
        reads.append(read)
        least_used.append(record.least_used)
    reads = torch.stack(reads, 1)
    gradients = torch.autograd.grad(reads.square().sum(), inputs)
    journal = slots_module.store_of(state.memory).journal
    return reads.detach(), torch.stack(least_used), state, gradients, journal


def test_kernels_are_used_on_the_cpu():
    assert fused_slots.usable(torch.zeros(2, 3, dtype=torch.int64))


def test_candidate_ranking_equals_the_torch_ranking_with_ties_and_missing_ones():
    rng = np.random.default_rng(11)
    for _ in range(500):
        queries, count, slots = int(rng.integers(1, 6)), int(rng.integers(1, 13)), 40
        k = int(rng.integers(1, count + 1))
        offsets = rng.integers(0, 4, queries) * slots
        labels = np.stack([rng.permutation(slots)[:count] for _ in range(queries)])
        labels += offsets[:, None]
        labels[rng.random(labels.shape) < 0.3] = -1  # none found there
        # Similarities on a coarse grid (many exact ties) or within the tie resolution.
        similarity = rng.integers(-4, 5, labels.shape) / 4
        similarity += rng.random(labels.shape) * index_module.TIE_RESOLUTION / 4
        similarity = similarity.astype(np.float32)
        local = labels - offsets[:, None] * (labels >= 0)  # the reference takes item-local slots
        expected = index_module.best_candidates(
            torch.from_numpy(similarity), torch.from_numpy(local), k, slots
        ).numpy()
        got = fused_knn.best_candidates(
            similarity, labels, offsets, k, slots, index_module.TIE_RESOLUTION, fill=False
        )
        np.testing.assert_array_equal(got, expected)
        index_module._fill_missing(expected, slots)
        got = fused_knn.best_candidates(
            similarity, labels, offsets, k, slots, index_module.TIE_RESOLUTION, fill=True
        )
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ["faiss-exact", "faiss-ivf"])
def test_sparse_reads_are_the_same_with_the_ranking_kernel(kind, monkeypatch):
    if index_module.faiss is None:
        pytest.skip("faiss-cpu is not installed")
    results = {}
    build = slots_module.build_index
    for fused in (True, False):
        kernels = fused_knn if fused else None

        def with_kernels(kind, memory, empty=False, kernels=kernels, **_):
            return build(kind, memory, empty, kernels=kernels)

        monkeypatch.setattr(slots_module, "build_index", with_kernels)
        access = SAMAccess(64, 4, 2, 3, index=kind)
        results[fused] = run(access, 40, 3, 2)
    reads, least_used, state, _, _ = results[True]
    assert torch.equal(reads, results[False][0]) and torch.equal(least_used, results[False][1])
    assert torch.equal(state.read_positions, results[False][2].read_positions)
    if kind == "faiss-ivf":  # the index's books: which rows it holds, how many per item
        index, reference = (slots_module.store_of(r[2].memory).index for r in results.values())
        np.testing.assert_array_equal(index.present, reference.present)
        np.testing.assert_array_equal(index.rows, reference.rows)
        assert index.index.ntotal == reference.index.ntotal == index.rows.sum() > 0
