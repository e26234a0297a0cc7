"""Tests for the sparse memories: SAM and SDNC (mann/access/sam.py, sdnc.py), their k-NN
indexes (mann/access/index.py) and the sparse equations of mann/addressing.py.

The sparse equations are checked against the dense ones they approximate (equal whenever the
sparse form can hold the whole weighting), whole SAM steps against a numpy recomputation from
the documented interface layout, and the state machinery (in-place tables, journal, index
cache) by what a user can observe: streaming, stepping a state twice, failed steps, traces,
gradients (gradcheck in float64) and what autograd keeps per step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mann
from mann import addressing
from mann.access import index as knn
from mann.access import slots as slots_module
from mann.access.sam import SAMAccess
from mann.access.sdnc import SDNCAccess
from mann.access.slots import SlotStore
from mann.metrics import masked_bce
from mann.tasks import make_task

EPS = addressing.EPSILON
DELTA = addressing.USAGE_THRESHOLD


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def softmax(x, axis=-1):
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def interfaces(access, steps: int, batch: int, seed: int, dtype=torch.float32) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, access.interface_size, generator=generator, dtype=dtype)
        for _ in range(steps)
    ]


def run(access, inputs, state=None, record=False):
    """Step ``access`` over a list of interfaces; returns read vectors, final state, records."""
    state = (
        access.initial_state(inputs[0].shape[0], dtype=inputs[0].dtype) if state is None else state
    )
    reads, records = [], []
    for interface in inputs:
        read, state, step_record = access.step(interface, state)
        reads.append(read)
        records.append(step_record)
    return torch.stack(reads, 1), state, records


def dense_link(link_slots, link_weights, size):
    """(B,N(+1),K_L) link table rows -> dense (B,N,N) matrix, row by row."""
    return addressing.to_dense(link_slots[:, :size], link_weights[:, :size], size)


# ---------------------------------------------------------------------------------------
# The sparse equations against the dense ones
# ---------------------------------------------------------------------------------------
def test_merge_sparse_and_to_dense_keep_the_weighting(rng):
    size = 9
    positions = torch.from_numpy(rng.integers(0, size + 1, (3, 12)))  # N (= 9) is empty
    values = torch.from_numpy(rng.random((3, 12))).masked_fill(positions == size, 0.0)
    dense = np.zeros((3, size))
    for b in range(3):
        for p, v in zip(positions[b].tolist(), values[b].tolist(), strict=True):
            if p < size:
                dense[b, p] += v
    np.testing.assert_allclose(addressing.to_dense(positions, values, size), dense, atol=1e-12)
    merged_positions, merged_values = addressing.merge_sparse(positions, values, size)
    np.testing.assert_allclose(
        addressing.to_dense(merged_positions, merged_values, size), dense, atol=1e-12
    )
    for b in range(3):
        real = merged_positions[b][merged_positions[b] < size].tolist()
        assert real == sorted(set(real))  # each slot once, ascending, empties last
        assert (merged_values[b][merged_positions[b] == size] == 0).all()
    queries = torch.arange(size + 1).expand(3, -1)
    looked_up = addressing.sparse_lookup(merged_positions, merged_values, queries)
    np.testing.assert_allclose(looked_up[:, :size], dense, atol=1e-12)


def test_sparse_content_weights_over_every_slot_are_the_dense_content_weights(rng):
    memory = torch.from_numpy(rng.standard_normal((2, 6, 5)))
    memory[0, 3] = 0.0  # an empty slot
    keys = torch.from_numpy(rng.standard_normal((2, 3, 5)))
    strengths = torch.from_numpy(1 + rng.random((2, 3)) * 5)
    rows = memory.unsqueeze(1).expand(2, 3, 6, 5)  # every head "found" every slot, in order
    sparse = addressing.sparse_content_weights(rows, keys, strengths)
    torch.testing.assert_close(sparse, addressing.content_weights(memory, keys, strengths))
    reads = addressing.sparse_read(rows, sparse)
    torch.testing.assert_close(reads, addressing.read(memory, sparse))


def test_sparse_write_weighting_is_alpha_gamma_mean_read_plus_lru(rng):
    batch, heads, k, size = 3, 2, 3, 10
    positions = torch.from_numpy(rng.integers(0, size, (batch, heads, k)))
    weights = torch.softmax(torch.from_numpy(rng.standard_normal((batch, heads, k))), -1)
    least = torch.from_numpy(rng.integers(0, size, batch))
    alpha, gamma = torch.from_numpy(rng.random(batch)), torch.from_numpy(rng.random(batch))
    write_positions, write_weights = addressing.sparse_write_weighting(
        positions, weights, least, alpha, gamma
    )
    assert write_positions.shape == (batch, heads * k + 1)
    mean_read = addressing.to_dense(positions.flatten(1), weights.flatten(1), size) / heads
    lru = torch.nn.functional.one_hot(least, size).double()
    expected = alpha[:, None] * (gamma[:, None] * mean_read + (1 - gamma[:, None]) * lru)
    dense = addressing.to_dense(write_positions, write_weights, size)
    torch.testing.assert_close(dense, expected)
    assert (dense.sum(-1) <= alpha + 1e-12).all()


def test_sparse_erase_and_write_wipes_the_least_used_row_then_adds(rng):
    memory = torch.from_numpy(rng.standard_normal((2, 5, 3)))
    positions = torch.tensor([[0, 2, 2, 4], [1, 1, 3, 0]])
    weights = torch.from_numpy(rng.random((2, 4)))
    least = torch.tensor([4, 2])
    add = torch.from_numpy(rng.standard_normal((2, 3)))
    new = addressing.sparse_erase_and_write(memory, positions, weights, least, add)
    expected = memory.clone().numpy()
    for b in range(2):
        expected[b, least[b]] = 0.0
        for p, w in zip(positions[b].tolist(), weights[b].tolist(), strict=True):
            expected[b, p] += w * add[b].numpy()
    np.testing.assert_allclose(new, expected, atol=1e-12)


def test_sparse_precedence_is_the_dense_precedence_while_it_fits(rng):
    size, capacity = 12, 6
    prev_positions = torch.tensor([[3, 7, size, size, size, size]])
    prev_values = torch.tensor([[0.3, 0.2, 0, 0, 0, 0]], dtype=torch.float64)
    write_positions = torch.tensor([[7, 1, 1]])
    write_weights = torch.tensor([[0.1, 0.2, 0.15]], dtype=torch.float64)
    positions, values = addressing.sparse_precedence(
        prev_positions, prev_values, write_positions, write_weights, size
    )
    expected = addressing.precedence(
        addressing.to_dense(prev_positions, prev_values, size),
        addressing.to_dense(write_positions, write_weights, size),
    )
    torch.testing.assert_close(addressing.to_dense(positions, values, size), expected)
    # Beyond K_L non-zeros, the K_L largest are kept.
    many = torch.from_numpy(rng.permutation(size)[None, :9])
    weights = torch.from_numpy(rng.random((1, 9)) / 9)
    positions, values = addressing.sparse_precedence(
        prev_positions, prev_values, many, weights, size
    )
    full = addressing.precedence(
        addressing.to_dense(prev_positions, prev_values, size),
        addressing.to_dense(many, weights, size),
    )[0]
    top = full.topk(capacity).values
    torch.testing.assert_close(values[0].sort(descending=True).values, top)


def random_sparse_link(rng, size: int, per_row: int) -> torch.Tensor:
    """A link-like matrix (B=2): zero diagonal, at most ``per_row`` entries per row and column."""
    link = torch.zeros(2, size, size, dtype=torch.float64)
    for b in range(2):
        for i in range(size):
            for j in rng.permutation(size)[:per_row]:
                in_column = int((link[b, :, j] > 0).sum())
                if i != j and in_column < per_row and (link[b, i] > 0).sum() < per_row:
                    link[b, i, j] = rng.random() * 0.2
    return link


def tables_of(link: torch.Tensor, capacity: int, size: int):
    """Dense (B,N,N) -> row and column tables (B,N+1,capacity), empty entries (N, 0)."""
    batch = link.shape[0]
    rows = torch.full((batch, size + 1, capacity), size)
    row_values = torch.zeros(batch, size + 1, capacity, dtype=link.dtype)
    columns = torch.full((batch, size + 1, capacity), size)
    column_values = torch.zeros(batch, size + 1, capacity, dtype=link.dtype)
    for b in range(batch):
        for i in range(size):
            js = torch.nonzero(link[b, i]).flatten()
            rows[b, i, : len(js)], row_values[b, i, : len(js)] = js, link[b, i, js]
            is_ = torch.nonzero(link[b, :, i]).flatten()
            columns[b, i, : len(is_)], column_values[b, i, : len(is_)] = is_, link[b, is_, i]
    return rows, row_values, columns, column_values


@pytest.mark.parametrize("capacity", [4, 13])
def test_sparse_temporal_link_on_the_rows_and_columns_that_grow(rng, capacity):
    size = 12
    link = random_sparse_link(rng, size, per_row=min(capacity, 4))
    rows, row_values, columns, column_values = tables_of(link, capacity, size)
    written = torch.tensor([[1, 4, 5, size], [0, 2, 9, 11]])  # sorted, each slot once
    weights = torch.tensor([[0.2, 0.3, 0.1, 0.0], [0.05, 0.4, 0.3, 0.2]], dtype=torch.float64)
    preceding = torch.tensor([[4, 8, size], [3, 9, 10]])
    precedence = torch.tensor([[0.5, 0.3, 0.0], [0.2, 0.3, 0.4]], dtype=torch.float64)
    batch = torch.arange(2)[:, None]
    (new_columns, new_row_values), (new_rows, new_column_values) = addressing.sparse_temporal_link(
        (rows[batch, written], row_values[batch, written]),
        (columns[batch, preceding], column_values[batch, preceding]),
        written,
        weights,
        preceding,
        precedence,
        size,
        capacity,
    )
    dense = addressing.temporal_link(
        link,
        addressing.to_dense(preceding, precedence, size),
        addressing.to_dense(written, weights, size),
    )
    got_rows = addressing.to_dense(new_columns, new_row_values, size)  # (B,P,N)
    got_columns = addressing.to_dense(new_rows, new_column_values, size)  # (B,Q,N)
    assert ((new_row_values > 0).sum(-1) <= capacity).all()
    assert ((new_column_values > 0).sum(-1) <= capacity).all()
    for b in range(2):
        for p, i in enumerate(written[b].tolist()):
            if i == size:
                assert (got_rows[b, p] == 0).all()
                continue
            expected = dense[b, i]
            if capacity >= size:
                torch.testing.assert_close(got_rows[b, p], expected)
            else:  # what is kept is exact; a row that lost entries had more than K_L
                kept = got_rows[b, p] > 0
                torch.testing.assert_close(got_rows[b, p][kept], expected[kept])
                for j in torch.nonzero(~kept & (expected > 0)).flatten().tolist():
                    # dropped only where its row or its column held more than K_L
                    crowded_row = int((expected > 0).sum()) > capacity
                    crowded_column = int((dense[b, :, j] > 0).sum()) > capacity
                    assert crowded_row or crowded_column
        for q, j in enumerate(preceding[b].tolist()):
            if j == size:
                continue
            if capacity >= size:
                torch.testing.assert_close(got_columns[b, q], dense[b, :, j])
            # Rows and columns agree wherever both hold an entry.
            for p, i in enumerate(written[b].tolist()):
                if i < size:
                    assert math.isclose(
                        float(got_rows[b, p, j]), float(got_columns[b, q, i]), abs_tol=1e-12
                    )


def test_sparse_read_weighting_mixes_the_modes_then_keeps_the_k_largest(rng):
    size, k = 10, 3
    backward = (torch.tensor([[[1, 2]]]), torch.tensor([[[0.5, 0.1]]], dtype=torch.float64))
    content = (torch.tensor([[[2, 5, 7]]]), torch.tensor([[[0.6, 0.3, 0.1]]], dtype=torch.float64))
    forward = (torch.tensor([[[7, size]]]), torch.tensor([[[0.8, 0.0]]], dtype=torch.float64))
    modes = torch.tensor([[[0.2, 0.5, 0.3]]], dtype=torch.float64)
    positions, weights, mixture = addressing.sparse_read_weighting(
        backward, content, forward, modes, k, size
    )
    dense = addressing.read_weighting(
        *(addressing.to_dense(*part, size) for part in (backward, content, forward)), modes
    )
    torch.testing.assert_close(addressing.to_dense(*mixture, size), dense)
    expected = dense[0, 0].topk(k)
    assert positions[0, 0].tolist() == expected.indices.tolist()
    torch.testing.assert_close(weights[0, 0], expected.values)


# ---------------------------------------------------------------------------------------
# The k-NN indexes
# ---------------------------------------------------------------------------------------
def brute_force_top_k(memory: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Cosine similarity on the documented 2^-12 grid, ties to the lower slot; all-zero
    (never written) rows after every other."""
    norms = np.linalg.norm(memory, axis=-1, keepdims=True)
    rows = np.divide(memory, norms, out=np.zeros_like(memory), where=norms > 0)
    queries = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    similarity = np.einsum("bhw,bnw->bhn", queries, rows)
    similarity = np.where((norms[..., 0] > 0)[:, None, :], similarity, -1.5)
    grid = np.round(similarity / knn.TIE_RESOLUTION)
    return np.argsort(-grid, axis=-1, kind="stable")[..., :k]


@pytest.mark.skipif(knn.faiss is None, reason="faiss-cpu is not installed")
def test_faiss_and_torch_exact_indexes_agree_with_brute_force(rng):
    memory = torch.from_numpy(rng.standard_normal((3, 300, 16)).astype(np.float32))
    memory[:, 50:60] = 0.0  # empty slots: after every written one
    keys = torch.from_numpy(rng.standard_normal((3, 5, 16)).astype(np.float32))
    torch_index, faiss_index = knn.ExactIndex(memory), knn.FaissExactIndex(memory)
    expected = brute_force_top_k(memory.numpy(), keys.numpy(), 7)
    np.testing.assert_array_equal(torch_index.search(keys, 7).numpy(), expected)
    np.testing.assert_array_equal(faiss_index.search(keys, 7).numpy(), expected)
    # Rows written later (incremental update) are found as if the index were built anew.
    # Ten rows pointing the key's way (tied on the grid: the lowest slots come first).
    positions = torch.from_numpy(np.stack([rng.permutation(300)[:10] for _ in range(3)]))
    rows = keys[:, :1].expand(3, 10, 16) + 0.001 * torch.randn(3, 10, 16)
    for index in (torch_index, faiss_index):
        index.update(positions, rows)
    memory[torch.arange(3)[:, None], positions] = rows
    expected = brute_force_top_k(memory.numpy(), keys.numpy(), 7)
    np.testing.assert_array_equal(torch_index.search(keys, 7).numpy(), expected)
    np.testing.assert_array_equal(faiss_index.search(keys, 7).numpy(), expected)
    np.testing.assert_array_equal(knn.ExactIndex(memory).search(keys, 7).numpy(), expected)
    # faiss-exact's tables are kept by a numba kernel, the torch index's by index_rows; a
    # row written as zeros (a wiped slot) becomes an empty slot again in both.
    wiped = positions[:, :2]
    for index in (torch_index, faiss_index):
        index.update(wiped, torch.zeros(3, 2, 16))
    torch.testing.assert_close(faiss_index.table, torch_index.table, rtol=1e-6, atol=1e-7)
    assert (faiss_index.table[torch.arange(3)[:, None], wiped, -1] < -0.7).all()
    torch.testing.assert_close(faiss_index.table, knn.index_rows(faiss_index.table[..., :-1]))


@pytest.mark.skipif(knn.faiss is None, reason="faiss-cpu is not installed")
def test_ivf_index_holds_exactly_the_written_rows_and_finds_near_copies(rng):
    batch, slots, width = 2, 4000, 16
    memory = torch.zeros(batch, slots, width)
    index = knn.FaissIVFIndex(memory, empty=True)
    written = torch.from_numpy(np.stack([rng.permutation(slots)[:600] for _ in range(batch)]))
    rows = torch.from_numpy(rng.standard_normal((batch, 600, width)).astype(np.float32))
    for start in range(0, 600, 100):  # written over several steps
        index.update(written[:, start : start + 100], rows[:, start : start + 100])
    memory[torch.arange(batch)[:, None], written] = rows
    assert index.rows.tolist() == [600, 600]
    # Keys close to stored rows (cosine about 0.95) find them.
    source = torch.from_numpy(rng.integers(0, 600, (batch, 20)))
    keys = rows[torch.arange(batch)[:, None], source]
    keys = keys + 0.3 * torch.from_numpy(rng.standard_normal(keys.shape).astype(np.float32))
    found = index.search(keys, 4)
    targets = written[torch.arange(batch)[:, None], source]
    assert (found == targets[..., None]).any(-1).float().mean() >= 0.95
    # Rewriting a row moves it; zeroing it removes it; the results depend only on the rows.
    index.update(written[:, :1], torch.zeros(batch, 1, width))
    assert index.rows.tolist() == [599, 599]
    memory[torch.arange(batch)[:, None], written[:, :1]] = 0.0
    rebuilt = knn.FaissIVFIndex(memory)
    assert rebuilt.rows.tolist() == [599, 599]
    probe = torch.from_numpy(rng.standard_normal((batch, 6, width)).astype(np.float32))
    np.testing.assert_array_equal(index.search(probe, 5).numpy(), rebuilt.search(probe, 5).numpy())


@pytest.mark.parametrize("kind", ["exact", "faiss-exact", "faiss-ivf"])
def test_indexes_return_k_distinct_slots_even_for_a_nearly_empty_memory(kind):
    if kind != "exact" and knn.faiss is None:
        pytest.skip("faiss-cpu is not installed")
    memory = torch.zeros(2, 64, 8)
    memory[0, 5] = 1.0
    index = knn.build_index(kind, memory)
    found = index.search(torch.ones(2, 3, 8), 6)
    assert found.shape == (2, 3, 6)
    for row in found.reshape(-1, 6).tolist():
        assert len(set(row)) == 6 and all(0 <= slot < 64 for slot in row)
    assert (found[0, :, 0] == 5).all()  # the one similar row comes first


@pytest.mark.parametrize("kind", ["exact", "faiss-exact", "faiss-ivf"])
def test_every_index_ranks_written_rows_before_empty_ones_even_when_they_point_away(kind):
    # Scored as cosine 0, an empty slot would beat every written row a key points away from,
    # and that key would read nothing but empty slots (a zero read, no gradient towards the
    # written rows). Every kind ranks empties last, the lowest-numbered first.
    if kind != "exact" and knn.faiss is None:
        pytest.skip("faiss-cpu is not installed")
    memory = torch.zeros(2, 64, 8)
    memory[0, 9] = torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 0])
    memory[0, 30] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    memory[1, 40] = torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 2])
    keys = -torch.ones(2, 1, 8)  # negative cosine with every written row
    found = knn.build_index(kind, memory).search(keys, 4)
    assert found[0, 0].tolist() == [30, 9, 0, 1]  # cosines -0.35 and -0.5, then empties
    assert found[1, 0].tolist() == [40, 0, 1, 2]


def test_index_kinds_are_checked():
    with pytest.raises(ValueError, match="index must be one of.*'hnsw'"):
        knn.resolve_index_kind("hnsw", 100, torch.float32, "cpu")
    with pytest.raises(ValueError, match="faiss-exact"):
        knn.resolve_index_kind("faiss-exact", 100, torch.float64, "cpu")
    assert knn.resolve_index_kind("auto", 100, torch.float64, "cpu") == "exact"
    if knn.faiss is not None:
        assert (
            knn.resolve_index_kind("auto", knn.EXACT_LIMIT, torch.float32, "cpu") == "faiss-exact"
        )
        assert (
            knn.resolve_index_kind("auto", knn.EXACT_LIMIT + 1, torch.float32, "cpu") == "faiss-ivf"
        )
    with pytest.raises(ValueError, match="index"):
        SAMAccess(64, 4, 1, 2, index="kd-tree")


# ---------------------------------------------------------------------------------------
# SAM steps
# ---------------------------------------------------------------------------------------
def sam_reference(inputs, slots, width, heads, k):
    """Whole SAM steps in numpy, from the documented interface layout:
    read keys (R×W), read strengths (R), write vector (W), write gate α, interpolation γ."""
    batch = inputs[0].shape[0]
    memory = np.zeros((batch, slots, width))
    last = np.zeros((batch, slots), dtype=np.int64)
    prev_positions = np.tile(np.arange(k), (batch, heads, 1))
    prev_weights = np.zeros((batch, heads, k))
    outputs = []
    for t, interface in enumerate(inputs, start=1):
        x = interface.double().numpy()
        keys = x[:, : heads * width].reshape(batch, heads, width)
        strengths = 1 + softplus(x[:, heads * width : heads * width + heads])
        add = x[:, heads * width + heads : heads * width + heads + width]
        alpha, gamma = sigmoid(x[:, -2]), sigmoid(x[:, -1])
        step = dict(memory=[], positions=[], weights=[], reads=[], least=[])
        for b in range(batch):
            excluded = set(prev_positions[b][prev_weights[b] > 0].tolist())
            candidates = [i for i in range(slots) if i not in excluded] or list(range(slots))
            least = min(candidates, key=lambda i: (last[b, i], i))
            entries = [
                (int(p), alpha[b] * gamma[b] * w / heads)
                for p, w in zip(prev_positions[b].ravel(), prev_weights[b].ravel(), strict=True)
            ]
            entries.append((least, alpha[b] * (1 - gamma[b])))
            memory[b, least] = 0.0
            for p, w in entries:
                memory[b, p] += w * add[b]
            for p, w in entries:
                if w > DELTA:
                    last[b, p] = t
            norms = np.linalg.norm(memory[b], axis=-1)
            safe = np.where(norms > 0, norms, 1.0)
            for h in range(heads):
                key = keys[b, h]
                ranking = (memory[b] @ key) / safe / np.linalg.norm(key)
                ranking = np.where(norms > 0, ranking, -1.5)  # never-written slots last
                grid = np.round(ranking / 2.0**-12)
                order = sorted(range(slots), key=lambda i: (-grid[i], i))[:k]
                cosine = (memory[b, order] @ key) / (np.linalg.norm(key) * norms[order] + EPS)
                weights = softmax(strengths[b, h] * cosine)
                prev_positions[b, h], prev_weights[b, h] = order, weights
                step["reads"].append(weights @ memory[b, order])
                for p, w in zip(order, weights, strict=True):
                    if w > DELTA:
                        last[b, p] = t
            step["least"].append(least)
        step.update(
            memory=memory.copy(),
            positions=prev_positions.copy(),
            weights=prev_weights.copy(),
            last=last.copy(),
        )
        step["reads"] = np.array(step["reads"]).reshape(batch, heads, width)
        outputs.append(step)
    return outputs


@pytest.mark.parametrize("kind", ["exact", "faiss-exact"])
def test_sam_steps_match_the_numpy_reference(kind):
    if kind != "exact" and knn.faiss is None:
        pytest.skip("faiss-cpu is not installed")
    access = SAMAccess(memory_size=11, word_size=4, read_heads=2, sparse_reads=3, index=kind)
    assert access.interface_size == 2 * 4 + 2 + 4 + 2
    inputs = interfaces(access, steps=9, batch=3, seed=3)
    reads, state, records = run(access, inputs)
    expected = sam_reference(inputs, 11, 4, 2, 3)
    for t, step in enumerate(expected):
        np.testing.assert_array_equal(records[t].read_positions.numpy(), step["positions"])
        np.testing.assert_array_equal(records[t].least_used.numpy(), step["least"])
        np.testing.assert_allclose(records[t].memory.numpy(), step["memory"], atol=1e-5)
        np.testing.assert_allclose(reads[:, t].numpy(), step["reads"], atol=1e-5)
        np.testing.assert_allclose(records[t].usage.numpy(), (t + 1) - step["last"])
    np.testing.assert_allclose(state.read_weights.numpy(), expected[-1]["weights"], atol=1e-5)
    np.testing.assert_allclose(state.memory.numpy(), expected[-1]["memory"], atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "faiss-exact"])
def test_a_sparse_read_of_every_slot_is_the_dense_content_read(kind):
    if kind != "exact" and knn.faiss is None:
        pytest.skip("faiss-cpu is not installed")
    access = SAMAccess(memory_size=6, word_size=5, read_heads=3, sparse_reads=6, index=kind)
    inputs = interfaces(access, steps=5, batch=2, seed=4)
    _, _, records = run(access, inputs)
    for interface, record in zip(inputs, records, strict=True):
        io = access.parse_interface(interface)
        dense = addressing.content_weights(record.memory, io.read_keys, io.read_strengths)
        torch.testing.assert_close(record.read_weights, dense, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            record.read_vectors, addressing.read(record.memory, dense), atol=1e-5, rtol=0
        )


def test_each_write_touches_k_plus_one_slots_and_wipes_the_least_used_first():
    access = SAMAccess(memory_size=20, word_size=4, read_heads=1, sparse_reads=3)
    inputs = interfaces(access, steps=12, batch=4, seed=5)
    state = access.initial_state(4)
    previous = state.memory.clone()
    for t, interface in enumerate(inputs):
        prev_positions = state.read_positions.clone()
        _, state, record = access.step(interface, state)
        write = record.write_weights[:, 0]
        nonzero = (write > 0).sum(-1)
        # Step 1 has no previous read: only U is written. Then K previous reads + U.
        assert (nonzero == (1 if t == 0 else access.sparse_reads + 1)).all()
        least = record.least_used.long()
        if t > 0:
            assert not (prev_positions[:, 0] == least[:, None]).any()
        io = access.parse_interface(interface)
        expected = addressing.sparse_erase_and_write(
            previous, torch.arange(20).expand(4, 20), write, least, io.write_vector
        )
        torch.testing.assert_close(record.memory, expected)
        previous = record.memory


def test_least_used_slot_matches_a_brute_force_search(rng):
    for slots in (1, 7, 50, 130):
        for _ in range(5):
            last = torch.from_numpy(rng.integers(0, 6, (3, slots)))
            store = SlotStore(version=6, index_kind="exact")
            excluded = torch.from_numpy(rng.integers(0, slots, (3, 4)))
            exclude = torch.from_numpy(rng.random((3, 4)) < 0.7)
            got = store.least_used(last.clone(), excluded, exclude)
            for b in range(3):
                banned = set(excluded[b][exclude[b]].tolist())
                allowed = [i for i in range(slots) if i not in banned] or list(range(slots))
                assert int(got[b]) == min(allowed, key=lambda i: (int(last[b, i]), i))
            # Usage updates keep the block minima right.
            positions = torch.from_numpy(rng.integers(0, slots, (3, 5)))
            weights = torch.from_numpy(rng.random((3, 5)))
            tables = {"last_access": last}
            store.touch(tables, positions, weights)
            got = store.least_used(last, excluded[:, :0], exclude[:, :0])
            np.testing.assert_array_equal(got.numpy(), last.argmin(-1).numpy())


def test_zero_memory_and_zero_keys_give_no_nan():
    for access in (SAMAccess(8, 4, 2, 3), SDNCAccess(8, 4, 2, 3, 2)):
        interface = torch.zeros(2, access.interface_size, requires_grad=True)
        state = access.initial_state(2)
        reads, state, _ = access.step(interface, state)
        reads2, _, _ = access.step(interface * 2, state)
        assert torch.isfinite(reads).all() and torch.isfinite(reads2).all()
        (reads.sum() + reads2.square().sum()).backward()
        assert torch.isfinite(interface.grad).all()


def test_sam_gradients_through_several_steps_pass_gradcheck():
    access = SAMAccess(7, 3, 2, 3, index="exact")
    inputs = [x.requires_grad_() for x in interfaces(access, 4, 2, seed=6, dtype=torch.float64)]

    def reads(*xs):
        out, _, _ = run(access, list(xs))
        return out

    assert torch.autograd.gradcheck(reads, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.slow
def test_sdnc_gradients_pass_gradcheck_where_the_links_are_held_still():
    """Links carry no gradient (Rae et al. 2016), so a numerical gradient that moves them
    differs by design. Checked: (1) several steps reading by content only (π saturated), and
    (2) the forward/backward path into w^r_{t-1} on a step that writes nothing (α ≈ 0)."""
    access = SDNCAccess(7, 3, 2, 3, 3, index="exact")
    modes = access.layout.slice("read_modes")
    content_only = torch.tensor([-30.0, 30.0, -30.0] * 2, dtype=torch.float64)
    inputs = interfaces(access, 4, 2, seed=6, dtype=torch.float64)
    inputs = [x[:, : modes.start].clone().requires_grad_() for x in inputs]

    def reads(*xs):
        full = [torch.cat([x, content_only.expand(2, 6)], -1) for x in xs]
        out, _, _ = run(access, full)
        return out

    assert torch.autograd.gradcheck(reads, inputs, eps=1e-6, atol=1e-6)

    _, state, _ = run(access, interfaces(access, 6, 2, seed=7, dtype=torch.float64))
    assert (dense_link(state.link_predecessors, state.link_predecessor_weights, 7) > 0).any()
    previous = state.read_weights.detach().clone().requires_grad_()
    interface = interfaces(access, 1, 2, seed=8, dtype=torch.float64)[0]
    interface[:, access.layout.offset("write_gate")] = -30.0  # α = σ(-30): no write
    interface.requires_grad_()

    def step(x, weights):
        out, _, _ = access.step(x, state._replace(read_weights=weights))
        return out

    assert torch.autograd.gradcheck(step, (interface, previous), eps=1e-6, atol=1e-6)


def test_autograd_keeps_the_same_per_step_whatever_the_memory_size():
    def saved_bytes(slots: int, arch: str) -> int:
        access = SAMAccess(slots, 8, 2, 4) if arch == "sam" else SDNCAccess(slots, 8, 2, 4, 4)
        inputs = [x.requires_grad_() for x in interfaces(access, 6, 2, seed=7)]
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            reads, _, _ = run(access, inputs)
        reads.sum().backward()  # and the backward pass runs
        assert all(torch.isfinite(x.grad).all() for x in inputs)
        return total

    for arch in ("sam", "sdnc"):
        small, large = saved_bytes(64, arch), saved_bytes(4096, arch)
        assert small == large, (arch, small, large)
        assert small < 2 * 4096 * 8 * 4  # six steps keep less than one copy of the memory


# ---------------------------------------------------------------------------------------
# State: in-place tables that still behave as values
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "access", [SAMAccess(16, 4, 2, 3), SDNCAccess(16, 4, 2, 3, 3)], ids=["sam", "sdnc"]
)
def test_stepping_a_state_twice_branches_without_disturbing_the_first_branch(access):
    first, second, other = interfaces(access, 3, 2, seed=8)
    start = access.initial_state(2)
    _, state_1, _ = access.step(first, start)
    memory_1 = state_1.memory.clone()
    reads_2, state_2, _ = access.step(second, state_1)
    memory_2 = state_2.memory.clone()
    reads_b, state_b, _ = access.step(other, state_1)  # state_1 again: a branch
    torch.testing.assert_close(access.tables_at(state_1)["memory"], memory_1)
    torch.testing.assert_close(state_2.memory, memory_2)  # the first branch is intact
    fresh, _, _ = run(access, [first, other])
    torch.testing.assert_close(reads_b, fresh[:, 1])
    again, state_2b, _ = access.step(second, state_1)
    torch.testing.assert_close(again, reads_2)
    # Both branches go on independently.
    a, _, _ = access.step(other, state_2)
    b, _, _ = access.step(other, state_2b)
    torch.testing.assert_close(a, b)


def test_a_state_whose_cache_is_gone_steps_the_same():
    access = SAMAccess(16, 4, 2, 3)
    inputs = interfaces(access, 5, 2, seed=9)
    reads, state, _ = run(access, inputs[:3])
    copied = type(state)(*[value.clone() for value in state])  # no journal, no index
    assert slots_module.store_of(copied.memory) is None
    a, _, _ = run(access, inputs[3:], state)
    b, _, _ = run(access, inputs[3:], copied)
    torch.testing.assert_close(a, b)


def test_a_failed_step_leaves_the_state_as_it_was(monkeypatch):
    access = SDNCAccess(16, 4, 2, 3, 3)
    inputs = interfaces(access, 4, 2, seed=10)
    _, state, _ = run(access, inputs[:2])
    before = {name: table.clone() for name, table in access.tables_at(state).items()}

    def broken(*args, **kwargs):
        raise RuntimeError("index unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(SlotStore, "search", broken)
        with pytest.raises(RuntimeError, match="index unavailable"):
            access.step(inputs[2], state)
    for name, table in before.items():
        torch.testing.assert_close(getattr(state, name), table)
    after, _, _ = run(access, inputs[2:], state)
    whole, _, _ = run(access, inputs)
    torch.testing.assert_close(after, whole[:, 2:])


def test_the_index_is_built_once_and_then_updated_with_the_written_rows(monkeypatch):
    built = []
    original = slots_module.build_index

    def counting(*args, **kwargs):
        built.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(slots_module, "build_index", counting)
    for slots in (64, 5000):  # exact, then approximate
        access = SAMAccess(slots, 8, 2, 4)
        built.clear()
        run(access, interfaces(access, 12, 2, seed=11))
        assert len(built) == 1


# ---------------------------------------------------------------------------------------
# SDNC
# ---------------------------------------------------------------------------------------
def test_sdnc_links_follow_the_dense_equations_while_they_fit():
    model = mann.build_model(
        mann.ModelConfig(
            arch="sdnc",
            input_size=5,
            output_size=3,
            hidden_size=16,
            memory_size=9,
            word_size=4,
            read_heads=2,
            sparse_reads=3,
            temporal_reads=9,
        )
    )
    inputs = torch.randint(0, 2, (2, 10, 5), generator=torch.Generator().manual_seed(1)).float()
    _, _, trace = model(inputs, record=True, trace_item=1)
    steps, slots, heads = 10, 9, 2
    link = torch.from_numpy(trace.link).double()
    precedence = torch.from_numpy(trace.precedence).double()
    write = torch.from_numpy(trace.write_weights[:, 0]).double()
    prev_link = torch.cat([torch.zeros(1, slots, slots, dtype=torch.float64), link[:-1]])
    prev_precedence = torch.cat([torch.zeros(1, slots, dtype=torch.float64), precedence[:-1]])
    torch.testing.assert_close(
        link, addressing.temporal_link(prev_link, prev_precedence, write), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        precedence, addressing.precedence(prev_precedence, write), atol=1e-6, rtol=0
    )
    prev_reads = np.concatenate([np.zeros((1, heads, slots), np.float32), trace.read_weights[:-1]])
    np.testing.assert_allclose(
        trace.forward_weights, np.einsum("tij,trj->tri", trace.link, prev_reads), atol=1e-6
    )
    np.testing.assert_allclose(
        trace.backward_weights, np.einsum("tji,trj->tri", trace.link, prev_reads), atol=1e-6
    )
    modes = trace.read_modes[..., None]
    mixture = (
        modes[:, :, 0] * trace.backward_weights
        + modes[:, :, 1] * trace.read_content_weights
        + modes[:, :, 2] * trace.forward_weights
    )
    for t in range(steps):
        for h in range(heads):
            top = np.sort(mixture[t, h])[::-1][:3]
            np.testing.assert_allclose(np.sort(trace.read_weights[t, h])[::-1][:3], top, atol=1e-6)
    assert (np.diagonal(trace.link, axis1=1, axis2=2) == 0).all()


def test_sdnc_link_tables_stay_one_sparse_matrix_over_a_long_run():
    slots, capacity = 24, 3
    access = SDNCAccess(slots, 4, 2, 3, capacity)
    _, state, _ = run(access, interfaces(access, 30, 3, seed=12))
    rows = dense_link(state.link_predecessors, state.link_predecessor_weights, slots)
    columns = dense_link(state.link_successors, state.link_successor_weights, slots)
    torch.testing.assert_close(rows, columns.transpose(1, 2))  # L and Lᵀ hold the same entries
    assert ((rows > 0).sum(-1) <= capacity).all() and ((rows > 0).sum(-2) <= capacity).all()
    assert (torch.diagonal(rows, dim1=1, dim2=2) == 0).all()
    assert (rows >= 0).all() and (rows.sum(-1) <= 1 + 1e-5).all()
    assert (rows > 0).sum() > 20  # the run did link slots
    assert ((state.precedence_weights > 0).sum(-1) <= capacity).all()


def test_a_large_sdnc_traces_the_touched_link_submatrix():
    access = SDNCAccess(400, 4, 1, 2, 3)
    inputs = interfaces(access, 5, 2, seed=13)
    _, state, records = run(access, inputs)
    record = records[-1]
    assert "link_positions" in record._fields
    positions = record.link_positions.long()
    sub = record.link
    full = dense_link(state.link_predecessors, state.link_predecessor_weights, 400)
    for b in range(2):
        for a, i in enumerate(positions[b].tolist()):
            for c, j in enumerate(positions[b].tolist()):
                expected = float(full[b, i, j]) if i >= 0 and j >= 0 else 0.0
                assert math.isclose(float(sub[b, a, c]), expected, abs_tol=1e-7)


# ---------------------------------------------------------------------------------------
# Through the model
# ---------------------------------------------------------------------------------------
def sparse_config(arch: str, **changes) -> mann.ModelConfig:
    values = dict(
        arch=arch,
        input_size=5,
        output_size=3,
        hidden_size=16,
        memory_size=12,
        word_size=4,
        read_heads=2,
        sparse_reads=3,
        temporal_reads=2,
    )
    return mann.ModelConfig(**{**values, **changes})


@pytest.mark.parametrize("arch", ["sam", "sdnc"])
def test_trace_invariants(arch):
    model = mann.build_model(sparse_config(arch))
    inputs = torch.randint(0, 2, (3, 15, 5), generator=torch.Generator().manual_seed(2)).float()
    _, _, trace = model(inputs, record=True, trace_item=2)
    k = 3
    for name in ("read_weights", "write_weights", "allocation", "write_content_weights"):
        weights = getattr(trace, name)
        assert (weights >= 0).all() and (weights <= 1 + 1e-6).all(), name
    assert trace.read_positions.shape == (15, 2, k)
    for t in range(15):
        for h in range(2):
            looked_up = set(np.rint(trace.read_positions[t, h]).astype(int).tolist())
            assert set(np.nonzero(trace.read_weights[t, h])[0].tolist()) <= looked_up
    write_count = (trace.write_weights[:, 0] > 0).sum(-1)
    assert write_count[0] == 1 and (write_count[1:] <= 2 * k + 1).all()
    assert (write_count[1:] >= k + 1).all()
    if arch == "sam":
        np.testing.assert_allclose(trace.read_weights.sum(-1), 1.0, atol=1e-5)
    else:
        assert (trace.read_weights.sum(-1) <= 1 + 1e-5).all()
        assert ((trace.link > 0).sum(-1) <= 2).all() and ((trace.link > 0).sum(-2) <= 2).all()
        assert ((trace.precedence > 0).sum(-1) <= 2).all()
    # U is the slot unused longest among those not read just before.
    least = np.rint(trace.least_used).astype(int)
    usage_before = np.concatenate([np.zeros((1, 12)), trace.usage[:-1] + 1])
    for t in range(1, 15):
        read_before = set(np.nonzero(trace.read_weights[t - 1].sum(0))[0].tolist())
        candidates = [i for i in range(12) if i not in read_before]
        assert least[t] in candidates
        assert usage_before[t, least[t]] == max(usage_before[t, i] for i in candidates)


@pytest.mark.parametrize("arch", ["sam", "sdnc"])
def test_streaming_equals_one_call_with_the_approximate_index(arch):
    if knn.faiss is None:
        pytest.skip("faiss-cpu is not installed")
    config = sparse_config(arch, memory_size=knn.EXACT_LIMIT + 100)
    model = mann.build_model(config)
    inputs = torch.randint(0, 2, (2, 9, 5), generator=torch.Generator().manual_seed(3)).float()
    whole, whole_state = model(inputs)
    first, state = model(inputs[:, :4])
    second, streamed = model(inputs[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(streamed.access.memory, whole_state.access.memory)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "steps"), [("sam", 150), ("sdnc", 100)])
def test_a_short_copy_run_lowers_the_loss(arch, steps):
    torch.manual_seed(0)
    task = make_task("copy", bits=4, min_length=1, max_length=4)
    model = mann.build_model(
        sparse_config(
            arch,
            input_size=task.input_size,
            output_size=task.output_size,
            hidden_size=32,
            memory_size=16,
            word_size=8,
            read_heads=1,
            sparse_reads=2,
            temporal_reads=4,
        )
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        batch = task.sample(16, generator)
        logits, _ = model(batch.inputs)
        loss = masked_bce(logits, batch.targets, batch.mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: SAMAccess(memory_size=4, sparse_reads=5), "sparse_reads"),
        (lambda: SAMAccess(memory_size=0), "memory_size"),
        (lambda: SAMAccess(word_size=0), "word_size"),
        (lambda: SDNCAccess(temporal_reads=0), "temporal_reads"),
        (lambda: mann.build_model(sparse_config("sam", sparse_reads=13)), "sparse_reads"),
        (lambda: mann.build_model(sparse_config("sdnc", temporal_reads=0)), "temporal_reads"),
    ],
)
def test_impossible_sizes_raise_value_error_naming_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()
