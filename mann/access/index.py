"""k-nearest-neighbour search over memory rows, for the sparse memories (SAM, SDNC).

A sparse read looks up, for each read key, the K slots whose rows are most similar to it by
cosine similarity (Rae et al. 2016). Ranking by cosine is ranking by inner product with the
normalised rows ``M[i] / |M[i]|`` (the key's norm is the same for every slot), so every
index here searches by inner product over normalised rows.

Never-written slots come last. An all-zero row has no direction; scored as cosine 0 it would
outrank every written row that points away from the key, and a key that points away from all
of them (common early in training) would read only empty slots: a zero read vector, and no
gradient to turn the key towards anything written. So every index ranks all-zero rows after
every written row: the IVF index does not hold them, and the exact ones score them
``EMPTY_SIMILARITY`` (an extra column: ``index_rows``, ``index_queries``). When fewer than k
rows are written, the lowest-numbered empty slots make up the k; a read still weights them
by their cosine, 0 (``mann.access.sam``).

Three indexes, one interface (``update(positions, rows)`` with the rows a step wrote, and
``search(keys, k) -> positions``), one per batch item inside:

- ``ExactIndex`` ("exact"): a normalised copy of memory and a torch ``bmm`` + ``topk``. Exact,
  O(N W) per query, any dtype and device. The reference in tests, and the fallback when
  faiss-cpu is not installed.
- ``FaissExactIndex`` ("faiss-exact"): the same normalised copy (shared with numpy, no copy)
  searched by faiss's brute-force inner-product k-NN. Exact; "auto" picks it up to
  ``EXACT_LIMIT`` slots on the CPU.
- ``FaissIVFIndex`` ("faiss-ivf"): an inverted-file index (faiss ``IndexIVFFlat``) whose
  lists are keyed by ``lists`` fixed random unit centroids (a data-independent partition of
  the sphere, so nothing is trained and the same rows always land in the same lists). Only
  written, non-zero rows are in it; a rewritten row is removed and re-added under its slot
  number, so the index holds exactly the current rows and is never rebuilt, and what it
  returns depends only on the rows, not on their history. A query scans the lists of its
  ``probes`` nearest centroids, more while the index holds few rows, so it costs O(√N W)
  rather than O(N W). Approximate: a near row in an unprobed list is missed. "auto" picks
  it above ``EXACT_LIMIT`` slots on the CPU.

For memory on a GPU "auto" is the exact torch index, on the GPU. The faiss indexes, named,
work there too, on the CPU: they copy the rows a step writes and the keys to the CPU and
return positions there, which the memory moves back (``SlotStore.search``).

Every index returns exactly k distinct slots per query, ranked by cosine similarity on a grid
of ``TIE_RESOLUTION``: similarities closer than that count as tied and the lower slot wins.
Exact ties are common (a write adds the same vector a to several slots, which then point the
same way), and without a fixed rule float noise of 1e-7 would decide them, so the same item
would read other slots in a batch of 3 than alone. The faiss indexes fetch a few more
candidates than k and rank them by that rule. When the IVF index finds fewer than k rows
(memory nearly empty), the rest are the lowest-numbered slots not already returned.

No gradient flows through an index: it returns integer positions; the memories gather the
rows at those positions and compute the differentiable weights from them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:  # faiss-cpu is a dependency, but the exact torch index works without it.
    import faiss
except ImportError:  # pragma: no cover - exercised only where faiss is missing
    faiss = None

INDEX_KINDS = ("auto", "exact", "faiss-exact", "faiss-ivf")
# "auto" searches exactly up to this many slots, approximately (IVF) above.
EXACT_LIMIT = 2048
# The IVF index probes enough lists to expect at least this many rows per query.
IVF_MIN_CANDIDATES = 128
# Cosine similarities are compared on a grid of this step (ties: the lower slot wins).
TIE_RESOLUTION = 2.0**-12
# An all-zero row's score in the exact indexes: below every cosine (>= -1), above the -2 that
# ranking gives a place faiss found nothing for, and lower by EMPTY_STEP per slot number, so
# that topk and faiss (which break ties as they like) take the lowest-numbered empty slots as
# candidates, as the IVF index's fill does (on the ranking grid they then tie, lower slot
# first). Made by an extra column: the row's holds score / QUERY_MARKER for an all-zero row
# and 0 otherwise, the query's QUERY_MARKER. Distinct in float32 up to 2^20 slots.
EMPTY_SIMILARITY = -1.5
EMPTY_STEP = 2.0**-22
QUERY_MARKER = 2.0
# The faiss indexes fetch k + this many candidates, then rank them by the rule above.
EXTRA_CANDIDATES = 8
# An index ranks faiss's candidates and keeps the IVF index's books by the torch and numpy
# composition below (best_candidates, _fill_missing, FaissIVFIndex.update): the reference.
# Its ``kernels`` attribute, None unless the fused sequence kernel sets it (mann.fused.knn:
# exact_update, exact_queries, best_candidates, ivf_update, ivf_probes), does the same faster.


def normalize_rows(rows: torch.Tensor) -> torch.Tensor:
    """``M[i] / |M[i]|`` along the last axis; an all-zero row stays zero (no NaN)."""
    norms = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    return rows / norms.clamp_min(torch.finfo(rows.dtype).tiny)


def index_rows(rows: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """What the exact indexes store for memory rows (B,P,W) at slots ``positions`` (B,P)
    (default: all slots, P = N): the normalised row and a last column that scores an
    all-zero row ``EMPTY_SIMILARITY - slot EMPTY_STEP`` against any query -> (B,P,W+1)."""
    normalized = normalize_rows(rows)
    if positions is None:
        positions = torch.arange(rows.shape[-2], device=rows.device).expand(rows.shape[:-1])
    empty = (normalized == 0).all(-1)
    score = EMPTY_SIMILARITY - positions.to(torch.float64) * EMPTY_STEP
    marker = torch.where(empty, score / QUERY_MARKER, 0.0).to(normalized.dtype)
    return torch.cat([normalized, marker.unsqueeze(-1)], -1)


def index_queries(keys: torch.Tensor) -> torch.Tensor:
    """The queries (...,W+1) that go with ``index_rows``: the normalised key, then
    ``QUERY_MARKER``. Their inner product with a written row is its cosine similarity."""
    normalized = normalize_rows(keys)
    return torch.cat([normalized, torch.full_like(normalized[..., :1], QUERY_MARKER)], -1)


def ranking(similarity: torch.Tensor, positions: torch.Tensor, slots: int) -> torch.Tensor:
    """Integer ranking keys, larger first: similarity on the ``TIE_RESOLUTION`` grid, then
    the lower slot. similarity, positions (...,P) -> (...,P) int64."""
    grid = torch.round(similarity.clamp(-2.0, 2.0) / TIE_RESOLUTION).long()
    return grid * (slots + 1) + (slots - positions)


def exact_top_k(indexed_rows: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """The k slots of largest cosine similarity to each key, exactly (the reference).

    indexed_rows (B,N,W+1) as ``index_rows`` makes them, keys (B,H,W) -> (B,H,k) int64,
    most similar first (ties on the ``TIE_RESOLUTION`` grid: the lower slot first, among
    the k + ``EXTRA_CANDIDATES`` most similar); all-zero rows after every other.
    """
    queries = index_queries(keys.to(indexed_rows.dtype))
    similarity = torch.bmm(queries, indexed_rows.transpose(1, 2))
    slots = indexed_rows.shape[1]
    similarity, candidates = similarity.topk(min(slots, k + EXTRA_CANDIDATES), dim=-1)
    return best_candidates(similarity, candidates, k, slots)


def best_candidates(
    similarity: torch.Tensor, candidates: torch.Tensor, k: int, slots: int
) -> torch.Tensor:
    """The k best candidates (B,H,k') by ``ranking``; -1 candidates (none found) last.

    Returns (B,H,k) int64 slots, -1 where there were fewer than k candidates.
    """
    similarity = similarity.double().masked_fill(candidates < 0, -2.0)
    order = ranking(similarity, candidates.clamp_min(0), slots).topk(k, dim=-1).indices
    return candidates.gather(-1, order)


def resolve_index_kind(
    kind: str, slots: int, dtype: torch.dtype, device: torch.device | str
) -> str:
    """The concrete index kind for ``kind`` ("auto" or one of ``INDEX_KINDS``).

    faiss indexes need faiss-cpu and float32; "auto" takes them for memory on the CPU only
    and otherwise falls back to "exact" (on a GPU the torch search runs where the memory is).
    Asked for by name, they also serve memory on a GPU, from a copy on the CPU: the rows a
    step writes and the keys go to the CPU, the slots found come back.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"index must be one of {list(INDEX_KINDS)}, got {kind!r}")
    faiss_usable = faiss is not None and dtype == torch.float32
    if kind == "auto":
        if not faiss_usable or torch.device(device).type != "cpu":
            return "exact"
        return "faiss-exact" if slots <= EXACT_LIMIT else "faiss-ivf"
    if kind != "exact" and not faiss_usable:
        reason = "faiss-cpu is not installed" if faiss is None else "it needs float32"
        raise ValueError(f"index={kind!r} is not available here: {reason}; use 'exact' or 'auto'")
    return kind


def build_index(kind: str, memory: torch.Tensor, empty: bool = False, kernels=None):
    """A new index of ``kind`` over ``memory`` (B,N,W), filled from its current rows.

    ``empty=True`` promises that memory is all zeros, which spares the approximate index a
    scan of the rows. ``kernels`` (``mann.fused.knn``) ranks and keeps books faster.
    """
    kind = resolve_index_kind(kind, memory.shape[1], memory.dtype, memory.device)
    if kind == "exact":
        index = ExactIndex(memory)
    elif kind == "faiss-exact":
        index = FaissExactIndex(memory, kernels)
    else:
        index = FaissIVFIndex(memory, empty=empty, kernels=kernels)
    return index


class ExactIndex:
    """Exact search by torch over a normalised copy of memory (``index_rows``), kept up to
    date row by row."""

    kind = "exact"
    kernels = None  # torch does the whole search

    def __init__(self, memory: torch.Tensor) -> None:
        self.table = index_rows(memory.detach())

    def update(self, positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Rows (B,P,W) were written at slots ``positions`` (B,P); repeats carry equal rows."""
        batch = torch.arange(positions.shape[0], device=positions.device).unsqueeze(-1)
        self.table[batch, positions] = index_rows(rows.detach(), positions).to(self.table.dtype)

    def search(self, keys: torch.Tensor, k: int) -> torch.Tensor:
        """The k most similar slots to each key: keys (B,H,W) -> (B,H,k) int64."""
        return exact_top_k(self.table, keys.detach(), k)


class FaissExactIndex(ExactIndex):
    """Exact search by faiss's brute-force inner-product k-NN over the same copy, kept on the
    CPU whatever the memory's device."""

    kind = "faiss-exact"

    def __init__(self, memory: torch.Tensor, kernels=None) -> None:
        super().__init__(memory.cpu())
        self.kernels = kernels

    def update(self, positions: torch.Tensor, rows: torch.Tensor) -> None:
        if self.kernels is None:
            return super().update(positions.cpu(), rows.cpu())
        self.kernels.exact_update(
            self.table.numpy(), positions.cpu().contiguous().numpy(),
            rows.detach().to(torch.float32).cpu().contiguous().numpy(), EMPTY_SIMILARITY,
            EMPTY_STEP, QUERY_MARKER,
        )  # fmt: skip

    def search(self, keys: torch.Tensor, k: int) -> torch.Tensor:
        keys = keys.detach().to(torch.float32).cpu().contiguous()
        if self.kernels is not None:
            queries = self.kernels.exact_queries(keys.numpy(), QUERY_MARKER)
        else:
            queries = index_queries(keys).contiguous().numpy()
        database = self.table.numpy()  # shares memory with the torch copy
        slots = database.shape[1]
        wanted = min(slots, k + EXTRA_CANDIDATES)
        similarity = np.empty(queries.shape[:2] + (wanted,), dtype=np.float32)
        labels = np.empty(queries.shape[:2] + (wanted,), dtype=np.int64)
        for item in range(queries.shape[0]):
            similarity[item], labels[item] = faiss.knn(
                queries[item], database[item], wanted, metric=faiss.METRIC_INNER_PRODUCT
            )
        if self.kernels is not None:
            batch, heads = queries.shape[:2]
            found = self.kernels.best_candidates(
                similarity.reshape(batch * heads, wanted), labels.reshape(batch * heads, wanted),
                np.zeros(batch * heads, dtype=np.int64), k, slots, TIE_RESOLUTION, fill=False,
            )  # fmt: skip
            return torch.from_numpy(found.reshape(batch, heads, k))
        return best_candidates(torch.from_numpy(similarity), torch.from_numpy(labels), k, slots)


def _random_centroids(lists: int, width: int) -> np.ndarray:
    # Fixed (seeded) random unit vectors: the same partition for every index of this shape.
    generator = np.random.default_rng(lists * 1_000_003 + width)
    centroids = generator.standard_normal((lists, width)).astype(np.float32)
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


class FaissIVFIndex:
    """Approximate search: one faiss inverted-file index for the whole batch, updated in place.

    Each batch item has its own ``lists`` lists (about √N by default), keyed by the same fixed
    random centroids: item b's row of slot i has id ``b N + i`` and lives in list
    ``b lists + c``, c its nearest centroid. The lists are assigned here (in torch) and handed
    to faiss pre-assigned, so one call adds, one removes and one searches for all items.
    ``probes`` lists are scanned per query once an item holds many rows.
    """

    kind = "faiss-ivf"

    def __init__(
        self,
        memory: torch.Tensor,
        lists: int | None = None,
        probes: int = 8,
        empty: bool = False,
        kernels=None,
    ) -> None:
        self.kernels = kernels
        batch, slots, width = memory.shape
        self.batch, self.slots = batch, slots
        self.lists = lists or max(1, round(math.sqrt(slots)))
        self.probes = min(probes, self.lists)
        self.centroids = torch.from_numpy(_random_centroids(self.lists, width))
        self.centroids_t = np.ascontiguousarray(self.centroids.numpy().T)  # (W, lists)
        # faiss wants a quantizer; the pre-assigned calls never use it.
        self.quantizer = faiss.IndexFlatIP(width)
        self.index = faiss.IndexIVFFlat(
            self.quantizer, width, batch * self.lists, faiss.METRIC_INNER_PRODUCT
        )
        self.index.is_trained = True  # the centroids are fixed, nothing to learn
        self.index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove by id in O(1)
        self.present = np.zeros(batch * slots, dtype=bool)  # which ids are in the index
        self.rows = np.zeros(batch, dtype=np.int64)  # how many rows each item has in it
        self._offsets = np.zeros(0, dtype=np.int64)
        if not empty:
            positions = torch.arange(slots).expand(batch, slots)
            self.update(positions, memory.detach())

    def _query_offsets(self, heads: int) -> np.ndarray:
        # Slot 0's id for each of the B H queries (kept: a search is every time step).
        if self._offsets.shape[0] != self.batch * heads:
            self._offsets = np.repeat(np.arange(self.batch, dtype=np.int64) * self.slots, heads)
        return self._offsets

    def _item_offsets(self, per_item: int) -> torch.Tensor:
        return torch.arange(self.batch).unsqueeze(-1) * per_item

    def update(self, positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Rows (B,P,W) were written at slots ``positions`` (B,P); repeats carry equal rows."""
        if self.kernels is not None:
            stale, fresh, vectors, assigned = self.kernels.ivf_update(
                positions.cpu().contiguous().numpy(),
                rows.detach().to(torch.float32).cpu().contiguous().numpy(), self.slots,
                self.present, self.rows, self.centroids_t,
            )  # fmt: skip
            if stale.size:
                self.index.remove_ids(faiss.IDSelectorArray(stale.size, faiss.swig_ptr(stale)))
            if fresh.size:
                self._add(fresh, vectors, assigned)
            return
        normalized = normalize_rows(rows.detach().to(torch.float32).cpu())
        vectors = normalized.flatten(0, 1).numpy()
        ids = (positions.cpu() + self._item_offsets(self.slots)).flatten().numpy()
        ids, first = np.unique(ids, return_index=True)
        stale = ids[self.present[ids]]
        if stale.size:
            self.index.remove_ids(faiss.IDSelectorArray(stale.size, faiss.swig_ptr(stale)))
            np.subtract.at(self.rows, stale // self.slots, 1)
        keep = (np.abs(vectors).sum(-1) > 0)[first]
        fresh = ids[keep]
        if fresh.size:
            fresh_vectors = vectors[first[keep]]
            self._add(fresh, fresh_vectors, self._lists_of(fresh, fresh_vectors))
            np.add.at(self.rows, fresh // self.slots, 1)
        self.present[ids] = keep

    def _lists_of(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        # The list of each row: its item's copy of the nearest centroid. By torch, not numpy:
        # numpy's BLAS threads would spin beside torch's on the same cores (measured: every
        # operation around it 10x slower at N=65536).
        nearest = (torch.from_numpy(vectors) @ self.centroids.T).argmax(-1).numpy()
        return nearest + (ids // self.slots) * self.lists

    def _add(self, ids: np.ndarray, vectors: np.ndarray, assigned: np.ndarray) -> None:
        # Rows (n,W) with their ids (n,) into their pre-assigned lists (n,).
        ids, vectors = np.ascontiguousarray(ids), np.ascontiguousarray(vectors)
        assigned = np.ascontiguousarray(assigned)
        self.index.add_core(
            ids.size, faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(assigned)
        )

    def search(self, keys: torch.Tensor, k: int) -> torch.Tensor:
        """The k most similar slots to each key (approximately): keys (B,H,W) -> (B,H,k)."""
        wanted = min(self.slots, k + EXTRA_CANDIDATES)
        if self.kernels is not None:
            heads = keys.shape[1]
            flat_queries, lists = self.kernels.ivf_probes(
                keys.detach().to(torch.float32).cpu().contiguous().numpy(), self.centroids_t,
                self.rows, self.probes, IVF_MIN_CANDIDATES,
            )  # fmt: skip
            if self.index.nprobe != lists.shape[1]:
                self.index.nprobe = lists.shape[1]
            similarity, labels = self.index.search_preassigned(flat_queries, wanted, lists, None)
            found = self.kernels.best_candidates(
                similarity, labels, self._query_offsets(heads), k, self.slots, TIE_RESOLUTION,
                fill=True,
            )  # fmt: skip
            return torch.from_numpy(found.reshape(self.batch, heads, k))
        queries = normalize_rows(keys.detach().to(torch.float32).cpu())  # (B,H,W)
        flat_queries = queries.flatten(0, 1).contiguous().numpy()
        heads = queries.shape[1]
        # Probe enough lists to expect IVF_MIN_CANDIDATES rows: all of them while few.
        rows = np.maximum(self.rows, 1)
        probes = np.clip(
            (self.lists * IVF_MIN_CANDIDATES + rows - 1) // rows, self.probes, self.lists
        )
        most = int(probes.max())
        if int(probes.min()) == self.lists:  # every list scanned (few rows): no ranking needed
            nearest = np.broadcast_to(np.arange(most), (self.batch * heads, most))
        else:
            similarity = queries.flatten(0, 1) @ self.centroids.T  # torch's BLAS (_lists_of)
            nearest = similarity.topk(most, dim=-1).indices.numpy()
        item_lists = np.repeat(np.arange(self.batch) * self.lists, heads)[:, None]
        unused = np.arange(most) >= np.repeat(probes, heads)[:, None]
        lists = np.where(unused, -1, nearest + item_lists)  # faiss skips list -1
        self.index.nprobe = most
        similarity, labels = self.index.search_preassigned(flat_queries, wanted, lists, None)
        labels = labels.reshape(self.batch, heads, wanted)
        offsets = (np.arange(self.batch) * self.slots).reshape(-1, 1, 1)
        labels = torch.from_numpy(np.where(labels >= 0, labels - offsets, -1))
        similarity = torch.from_numpy(similarity.reshape(labels.shape))
        found = best_candidates(similarity, labels, k, self.slots).numpy()
        if (found < 0).any():
            _fill_missing(found, self.slots)
        return torch.from_numpy(found)


def _fill_missing(found: np.ndarray, slots: int) -> None:
    # Replace the -1s of each query by the lowest-numbered slots it does not already hold.
    for position in zip(*np.nonzero((found < 0).any(-1)), strict=True):
        row = found[position]
        missing = row < 0
        spare = np.setdiff1d(np.arange(min(slots, 2 * row.size)), row[~missing])
        row[missing] = spare[: missing.sum()]
