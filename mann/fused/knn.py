"""A fused kernel for the last stage of a sparse read's k-NN search (``mann.access.index``).

faiss returns k + a few candidates per query; ``index.best_candidates`` ranks them on the
``TIE_RESOLUTION`` grid (ties: the lower slot), keeps the k best, and the IVF index fills
the places it found nothing for with the lowest-numbered free slots (``_fill_missing``).
Composed from torch and numpy that is a dozen small operations and a Python loop per search;
this kernel does the same in one call, with the same results (tests hold them equal).
"""

from __future__ import annotations

import numpy as np

from mann.fused.runtime import HAVE_NUMBA, KERNEL_LOCK, njit

if HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _best(similarity, labels, offsets, k, slots, resolution, fill, found):
        # similarity, labels (Q,C) as faiss returns them (labels -1: none, else offset ids);
        # offsets (Q,) the id of each query's slot 0. found (Q,k): the k best slots.
        queries, count = labels.shape
        keys = np.empty(count, dtype=np.int64)
        positions = np.empty(count, dtype=np.int64)
        for q in range(queries):
            for c in range(count):
                label = labels[q, c]
                position = label - offsets[q] if label >= 0 else -1
                positions[c] = position
                value = np.float64(similarity[q, c]) if position >= 0 else -2.0
                value = min(max(value, -2.0), 2.0)
                grid = np.int64(np.rint(value / resolution))
                keys[c] = grid * (slots + 1) + (slots - max(position, 0))
            # Selection of the k largest keys, largest first (candidates are few).
            for j in range(k):
                best = -1
                for c in range(count):
                    if keys[c] != np.iinfo(np.int64).min and (best < 0 or keys[c] > keys[best]):
                        best = c
                found[q, j] = positions[best] if best >= 0 else -1
                if best >= 0:
                    keys[best] = np.iinfo(np.int64).min
            if not fill:
                continue
            # Empty places: the lowest-numbered slots the query does not already hold.
            candidate = 0
            for j in range(k):
                if found[q, j] >= 0:
                    continue
                while True:
                    taken = False
                    for other in range(k):
                        if found[q, other] == candidate:
                            taken = True
                    if not taken:
                        break
                    candidate += 1
                found[q, j] = candidate
                candidate += 1


def best_candidates(
    similarity: np.ndarray,
    labels: np.ndarray,
    offsets: np.ndarray,
    k: int,
    slots: int,
    resolution: float,
    fill: bool,
) -> np.ndarray:
    """The k best of each query's candidates (Q,C) -> (Q,k) int64 slots, ranked as
    ``index.best_candidates`` ranks them; with ``fill`` the -1s (fewer than k found) become
    the lowest-numbered slots not already returned, as ``index._fill_missing`` does."""
    found = np.empty((labels.shape[0], k), dtype=np.int64)
    with KERNEL_LOCK:
        _best(similarity, labels, offsets, k, slots, resolution, fill, found)
    return found


if HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _ivf_changes(ids, vectors, slots, present, counts, unique, first, stale, fresh_at):
        # The bookkeeping of FaissIVFIndex.update: the distinct ids in increasing order with
        # the first place each occurs, which of them the index holds (stale: to remove) and
        # which rows are non-zero (fresh: to add); present and counts follow, in place.
        # Returns the numbers of distinct, stale and fresh ids.
        nonzero = np.zeros(ids.shape[0], dtype=np.bool_)
        for place in range(ids.shape[0]):
            for c in range(vectors.shape[1]):
                if vectors[place, c] != 0:
                    nonzero[place] = True
                    break
        order = np.argsort(ids, kind="mergesort")  # stable: equal ids keep their order
        distinct = stale_count = fresh_count = 0
        for place in order:
            identifier = ids[place]
            if distinct and unique[distinct - 1] == identifier:
                continue
            unique[distinct] = identifier
            first[distinct] = place
            item = identifier // slots
            if present[identifier]:
                stale[stale_count] = identifier
                stale_count += 1
                counts[item] -= 1
            if nonzero[place]:
                fresh_at[fresh_count] = distinct
                fresh_count += 1
                counts[item] += 1
            present[identifier] = nonzero[place]
            distinct += 1
        return distinct, stale_count, fresh_count


def ivf_changes(ids: np.ndarray, vectors: np.ndarray, slots: int, present, counts):
    """What one ``FaissIVFIndex.update`` changes, with ``present`` and ``counts`` updated.

    ids (P,) int64 (item-offset slot ids, repeats allowed), vectors (P,W) the rows written
    there (an all-zero row is not held by the index). Returns (unique ids (D,), first place
    of each (D,), stale ids (S,) to remove from the index, positions in ``unique`` of the
    fresh ids (F,) to add).
    """
    count = ids.shape[0]
    unique, first = np.empty(count, np.int64), np.empty(count, np.int64)
    stale, fresh_at = np.empty(count, np.int64), np.empty(count, np.int64)
    with KERNEL_LOCK:
        distinct, stale_count, fresh_count = _ivf_changes(
            ids, vectors, slots, present, counts, unique, first, stale, fresh_at
        )
    return unique[:distinct], first[:distinct], stale[:stale_count], fresh_at[:fresh_count]


if HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _normalized(row, out):
        # index.normalize_rows for one row: row / |row|, an all-zero row stays zero.
        norm = 0.0
        for c in range(row.shape[0]):
            norm += np.float64(row[c]) * np.float64(row[c])
        norm = max(np.sqrt(norm), np.float64(np.finfo(np.float32).tiny))
        for c in range(row.shape[0]):
            out[c] = np.float32(row[c] / norm)

    @njit(cache=True, nogil=True)
    def _centroid_scores(vector, centroids_t, scores):
        # scores[l] = vector · centroid l; centroids_t (W,L): the inner loop runs along l,
        # so it vectorises without reassociating any sum.
        scores[:] = 0.0
        for c in range(centroids_t.shape[0]):
            value = vector[c]
            for m in range(centroids_t.shape[1]):
                scores[m] += value * centroids_t[c, m]

    @njit(cache=True, nogil=True)
    def _ivf_update(positions, rows, slots, present, counts, centroids_t,
                    stale, fresh_ids, fresh_vectors, fresh_lists):  # fmt: skip
        # FaissIVFIndex.update's work before faiss: ids, normalised rows, which ids to remove
        # and which rows to add, each added row's list (its item's copy of the nearest
        # centroid). Returns the numbers of stale and fresh ids.
        batch, count, width = rows.shape
        lists = centroids_t.shape[1]
        ids = np.empty(batch * count, dtype=np.int64)
        vectors = np.empty((batch * count, width), dtype=np.float32)
        for b in range(batch):
            for p in range(count):
                ids[b * count + p] = b * slots + positions[b, p]
                _normalized(rows[b, p], vectors[b * count + p])
        unique = np.empty(batch * count, np.int64)
        first = np.empty(batch * count, np.int64)
        fresh_at = np.empty(batch * count, np.int64)
        _, stale_count, fresh_count = _ivf_changes(
            ids, vectors, slots, present, counts, unique, first, stale, fresh_at
        )
        scores = np.empty(lists, dtype=np.float32)
        for f in range(fresh_count):
            identifier, place = unique[fresh_at[f]], first[fresh_at[f]]
            fresh_ids[f] = identifier
            fresh_vectors[f] = vectors[place]
            _centroid_scores(vectors[place], centroids_t, scores)
            fresh_lists[f] = np.argmax(scores) + (identifier // slots) * lists
        return stale_count, fresh_count

    @njit(cache=True, nogil=True)
    def _ivf_probes(keys, centroids_t, counts, probes_least, min_candidates, queries, probed):
        # FaissIVFIndex.search's work before faiss: normalised queries (B H, W) and the lists
        # each scans (B H, most), -1 past its item's number of probes. Returns ``most``.
        batch, heads, width = keys.shape
        lists = centroids_t.shape[1]
        probes = np.empty(batch, dtype=np.int64)
        most = 0
        fewest = lists
        for b in range(batch):
            rows = max(counts[b], 1)
            probes[b] = min(max((lists * min_candidates + rows - 1) // rows, probes_least), lists)
            most, fewest = max(most, probes[b]), min(fewest, probes[b])
        scores = np.empty(lists, dtype=np.float32)
        for b in range(batch):
            for h in range(heads):
                q = b * heads + h
                _normalized(keys[b, h], queries[q])
                if fewest == lists:  # every list scanned (few rows): no ranking needed
                    for j in range(most):
                        probed[q, j] = j + b * lists if j < probes[b] else -1
                    continue
                _centroid_scores(queries[q], centroids_t, scores)
                for j in range(most):  # the most similar lists, best first
                    best = np.argmax(scores)
                    scores[best] = -np.inf
                    probed[q, j] = best + b * lists if j < probes[b] else -1
        return most

    @njit(cache=True, nogil=True)
    def _exact_update(table, positions, rows, empty_similarity, empty_step, query_marker):
        # index.index_rows for the rows (B,P,W) written at positions (B,P), into the exact
        # index's table (B,N,W+1) in place.
        width = rows.shape[2]
        for b in range(rows.shape[0]):
            for p in range(rows.shape[1]):
                slot = positions[b, p]
                _normalized(rows[b, p], table[b, slot, :width])
                empty = True
                for c in range(width):
                    if rows[b, p, c] != 0:
                        empty = False
                        break
                score = (empty_similarity - slot * empty_step) / query_marker
                table[b, slot, width] = np.float32(score) if empty else np.float32(0.0)

    @njit(cache=True, nogil=True)
    def _exact_queries(keys, query_marker, queries):
        # index.index_queries: keys (B,H,W) -> queries (B,H,W+1).
        width = keys.shape[2]
        for b in range(keys.shape[0]):
            for h in range(keys.shape[1]):
                _normalized(keys[b, h], queries[b, h, :width])
                queries[b, h, width] = query_marker


def exact_update(table, positions, rows, empty_similarity: float, empty_step: float,
                 query_marker: float) -> None:  # fmt: skip
    """``index.index_rows`` of the rows (B,P,W) float32 written at positions (B,P) int64,
    into the exact index's table (B,N,W+1) float32, in one kernel."""
    with KERNEL_LOCK:
        _exact_update(table, positions, rows, empty_similarity, empty_step, query_marker)


def exact_queries(keys, query_marker: float):
    """``index.index_queries`` in one kernel: keys (B,H,W) float32 -> (B,H,W+1) float32."""
    batch, heads, width = keys.shape
    queries = np.empty((batch, heads, width + 1), np.float32)
    with KERNEL_LOCK:
        _exact_queries(keys, query_marker, queries)
    return queries


def ivf_update(positions, rows, slots: int, present, counts, centroids_t):
    """``FaissIVFIndex.update`` up to the faiss calls, in one kernel: positions (B,P) int64,
    rows (B,P,W) the rows written there; ``present`` and ``counts`` follow in place.
    Returns (stale ids to remove, fresh ids, their normalised rows (F,W) float32 and lists)."""
    batch, count, width = rows.shape
    stale, fresh_ids = np.empty(batch * count, np.int64), np.empty(batch * count, np.int64)
    fresh_vectors = np.empty((batch * count, width), np.float32)
    fresh_lists = np.empty(batch * count, np.int64)
    with KERNEL_LOCK:
        stale_count, fresh_count = _ivf_update(
            positions, rows, slots, present, counts, centroids_t, stale, fresh_ids,
            fresh_vectors, fresh_lists,
        )  # fmt: skip
    return (stale[:stale_count], fresh_ids[:fresh_count], fresh_vectors[:fresh_count],
            fresh_lists[:fresh_count])  # fmt: skip


def ivf_probes(keys, centroids_t, counts, probes_least: int, min_candidates: int):
    """``FaissIVFIndex.search`` up to the faiss call, in one kernel: keys (B,H,W) ->
    (normalised queries (B H, W) float32, lists to scan (B H, most) int64, -1: none)."""
    batch, heads, width = keys.shape
    queries = np.empty((batch * heads, width), np.float32)
    probed = np.empty((batch * heads, centroids_t.shape[1]), np.int64)
    with KERNEL_LOCK:
        most = _ivf_probes(keys, centroids_t, counts, probes_least, min_candidates, queries,
                           probed)  # fmt: skip
    return queries, np.ascontiguousarray(probed[:, :most])
