"""The tables of a chain of sparse-memory states (SAM, SDNC), their journal, k-NN index and
least-used cache: ``SlotStore``.

Writing K+1 rows must not copy the N×W memory, so the big per-slot tables of a state
(``memory``, ``last_access``; SDNC adds its link rows) are changed in place. A state is still a
value: ``steps`` names its version of the tables, and a ``SlotStore`` hung on the memory
tensor keeps, for that chain of states, a journal of every change (the touched rows' old and
new values), the k-NN index and a cache for finding the least used slot. Stepping a state
whose tables have since moved on (stepping the same state twice) clones the tables and rolls
the clone back through the journal to the state's version, so the result is what it would
have been; streaming (two halves with the carried state) is exactly one call. The index and
the least-used cache are caches of the tables: when the store is missing (the state's tensors
were copied) or the index was never built, they are rebuilt from the tables, and an exact
index gives the same result either way. One caveat of in-place tables: reading
``state.memory`` of a state that has been stepped further shows the later memory; use
``SAMAccess.tables_at(state)`` for a state's own tables. The journal costs O(K W) per step and
also lets a Trace show the memory of every step without copying it during the run (a step's
record builds its dense (B,…,N) fields only when read, which the model does only when asked
to record). The least used slot is found in O(√N) from a cached minimum per block of √N
slots, refreshed for the blocks a step touches.

Nothing costs O(N) per step, and per sequence only allocation does: the tables (and the
backward pass's gradient buffer) are zeros the operating system maps lazily (an anonymous
memory map, ``lazy_zeros``), so a step touches only the pages of the rows it uses and peak
memory grows with the rows used, at most with the memory matrix itself.
"""

from __future__ import annotations

import bisect
import functools
import math
import mmap
from typing import NamedTuple

import numpy as np
import torch

from mann import addressing
from mann.access.index import build_index

# An excluded slot's last use, when picking the least used: later than any real step.
_EXCLUDED = torch.iinfo(torch.int64).max


class Change(NamedTuple):
    version: int  # the step that made the change
    # Tensors, or numpy arrays where a kernel made the change (converted when applied):
    index: torch.Tensor  # (P,) rows changed, numbered in the table viewed as (B*rows, ...)
    old: torch.Tensor  # (P,...) their values before (repeated rows carry equal values)
    new: torch.Tensor  # (P,...) and after


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """Zeros in an anonymous memory map, whose pages the operating system maps only when first
    written: a table of N rows costs nothing until rows are used, so starting a sequence with
    a large memory touches none of it. (Not numpy's calloc: numpy asks for 2 MB huge pages,
    so each touched row would cost 2 MB of RSS.) torch.zeros off the CPU."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    count = math.prod(shape)
    size = max(count * torch.empty((), dtype=dtype).element_size(), 1)
    return torch.frombuffer(mmap.mmap(-1, size), dtype=dtype, count=count).view(shape)


@functools.lru_cache(maxsize=64)
def _arange(size: int, device: torch.device) -> torch.Tensor:
    return torch.arange(size, device=device)


@functools.lru_cache(maxsize=64)
def _row_offsets(batch: int, rows: int, device: torch.device) -> torch.Tensor:
    # (B,1): where each item's rows start in a table viewed (B*rows, ...). Cached: a step
    # makes a dozen flat indexes, and each new offset tensor is two more dispatches.
    return torch.arange(batch, device=device).unsqueeze(-1) * rows


def flat_index(positions: torch.Tensor, rows: int) -> torch.Tensor:
    """Row numbers (B,P) of each item -> (B*P,) row numbers of the table viewed (B*rows, ...)."""
    return (positions + _row_offsets(positions.shape[0], rows, positions.device)).flatten()


def rows_at(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``table[b, positions[b]]``: table (B,rows,...), positions (B,P) -> (B,P,...), a copy."""
    index = flat_index(positions, table.shape[1])
    return table.flatten(0, 1).index_select(0, index).view(*positions.shape, *table.shape[2:])


class SlotStore:
    """Journal, k-NN index and least-used cache for the tables of one chain of states.

    The tables themselves belong to the states (dicts name -> (B, rows, ...) tensor passed
    to every method); the store never holds them, so it keeps no memory alive by itself.
    """

    def __init__(self, version: int, index_kind: str, memory_is_zero: bool = False) -> None:
        self.version = version
        self.index_kind = index_kind
        self.journal: dict[str, list[Change]] = {}
        self.index = None
        self.memory_is_zero = memory_is_zero
        self.block_minima: torch.Tensor | None = None
        self._scratch: torch.Tensor | None = None
        self._snapshots: dict[str, tuple[int, torch.Tensor]] = {}
        # The index's ranking kernels (``mann.fused.knn``), set by the fused sequence kernel;
        # None: the reference (torch and numpy).
        self.kernels = None

    def use_kernels(self, kernels) -> None:
        """Rank and keep the index's books with ``kernels`` (``mann.fused.knn``), or None."""
        self.kernels = kernels
        if self.index is not None and self.index.kind != "exact":
            self.index.kernels = kernels

    # ---- versions ----------------------------------------------------------------------
    def begin_step(self) -> int:
        self.version += 1
        return self.version

    def _journal(self, name: str, index: torch.Tensor, old: torch.Tensor, new: torch.Tensor):
        self.journal.setdefault(name, []).append(Change(self.version, index, old, new))

    def change(self, tables: dict, name: str, positions: torch.Tensor, values: torch.Tensor):
        """Set rows ``positions`` (B,P) of table ``name`` to ``values`` (B,P,...), in place,
        journaled. Repeated positions must carry equal values."""
        table = tables[name]
        flat = table.flatten(0, 1)
        index = flat_index(positions, table.shape[1])
        old = flat.index_select(0, index)
        new = values.reshape(old.shape)
        flat.index_copy_(0, index, new)
        self._journal(name, index, old, new)

    @staticmethod
    def _apply(table: torch.Tensor, changes, undo: bool) -> None:
        flat = table.flatten(0, 1)
        for change in changes:
            values = torch.as_tensor(change.old if undo else change.new)
            flat.index_copy_(0, torch.as_tensor(change.index), values)

    def rollback(self, tables: dict, version: int) -> None:
        """Undo, in place, every change made after ``version`` (a step that failed)."""
        for name, changes in self.journal.items():
            cut = bisect.bisect_right(changes, version, key=lambda change: change.version)
            self._apply(tables[name], reversed(changes[cut:]), undo=True)
            del changes[cut:]
        self.version = version
        self.index = None  # it may hold rows of the undone step: rebuild when needed
        self.block_minima = None
        self._snapshots.clear()

    def branch(self, tables: dict, version: int) -> tuple[SlotStore, dict]:
        """A new store and a copy of the tables as they were at ``version``."""
        copies = {name: table.clone() for name, table in tables.items()}
        store = SlotStore(version, self.index_kind)
        for name, changes in self.journal.items():
            cut = bisect.bisect_right(changes, version, key=lambda change: change.version)
            self._apply(copies[name], reversed(changes[cut:]), undo=True)
            store.journal[name] = changes[:cut]
        return store, copies

    def snapshot(self, tables: dict, name: str, version: int) -> torch.Tensor:
        """A copy of table ``name`` as it was at ``version`` (walks the journal from the
        nearest known version: sequential versions cost O(changes) each, plus the copy)."""
        changes = self.journal.get(name, [])
        cached = self._snapshots.get(name)
        if cached is not None and cached[0] <= version:
            result = cached[1].clone()
            first = bisect.bisect_right(changes, cached[0], key=lambda change: change.version)
            last = bisect.bisect_right(changes, version, key=lambda change: change.version)
            self._apply(result, changes[first:last], undo=False)
        else:
            result = tables[name].detach().clone()
            cut = bisect.bisect_right(changes, version, key=lambda change: change.version)
            self._apply(result, reversed(changes[cut:]), undo=True)
        self._snapshots[name] = (version, result)
        return result.clone()

    # ---- lookups -----------------------------------------------------------------------
    def lookup(
        self, positions: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, slots: int
    ) -> torch.Tensor:
        """A sparse weighting (B,P) (each slot at most once) read at slots ``queries`` (B,Q)
        -> (B,Q), 0 where absent; through a dense scratch row, O(P + Q)."""
        shape = (positions.shape[0], slots + 1)
        if self._scratch is None or self._scratch.shape != shape:
            self._scratch = lazy_zeros(shape, values.dtype, values.device)
        scratch = self._scratch.to(values.dtype)
        scratch.scatter_(1, positions, values)
        found = scratch.gather(1, queries.flatten(1)).view(queries.shape)
        scratch.scatter_(1, positions, 0.0)
        self._scratch = scratch
        return found

    # ---- memory rows -------------------------------------------------------------------
    def write(
        self,
        tables: dict,
        positions: torch.Tensor,
        weights: torch.Tensor,
        add: torch.Tensor,
        least_used: torch.Tensor,
    ) -> None:
        """``M_t = (1 - 1_U 1ᵀ) ∘ M_{t-1} + w^w aᵀ`` on the K+1 touched rows, in place."""
        memory = tables["memory"]
        batch, slots, width = memory.shape
        flat = memory.flatten(0, 1)
        touched_positions = torch.cat([positions, least_used.unsqueeze(-1)], -1)  # (B,P+1)
        touched = flat_index(touched_positions, slots)
        old = flat.index_select(0, touched)
        flat.index_fill_(0, flat_index(least_used.unsqueeze(-1), slots), 0.0)
        additions = (weights.unsqueeze(-1) * add.unsqueeze(1)).flatten(0, 1)
        flat.index_add_(0, flat_index(positions, slots), additions)
        new = flat.index_select(0, touched)
        self._journal("memory", touched, old, new)
        self.rows_written(memory, touched_positions, new.view(batch, -1, width))

    def rows_written(self, memory: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor):
        """Rows (B,P,W) were just written at slots ``positions`` (B,P): the index follows."""
        if self.index is None and self.memory_is_zero:
            self.index = build_index(self.index_kind, memory, empty=True,  # nothing to scan
                                     kernels=self.kernels)  # fmt: skip
        self.memory_is_zero = False
        if self.index is not None:
            self.index.update(positions, rows)

    def changed(self, tables: dict, name: str, positions: np.ndarray, old, new) -> None:
        """Journal a change a kernel made in place: rows ``positions`` (B,P) of table ``name``
        were ``old`` and are ``new`` (numpy (B,P,...)). In numpy: a step journals six."""
        rows = tables[name].shape[1]
        index = (positions + np.arange(0, positions.shape[0] * rows, rows)[:, None]).ravel()
        self.journal_rows(name, index, old.reshape(-1, *old.shape[2:]),
                          new.reshape(-1, *new.shape[2:]))  # fmt: skip

    def journal_rows(self, name: str, index: np.ndarray, old, new) -> None:
        """``changed`` with the rows numbered in the table viewed as (B*rows, ...)."""
        self._journal(name, index, old, new)

    def search(self, tables: dict, keys: torch.Tensor, k: int) -> torch.Tensor:
        """The k nearest slots to each key (B,H,W) in the current memory -> (B,H,k)."""
        if self.index is None:
            self.index = build_index(self.index_kind, tables["memory"], self.memory_is_zero,
                                     kernels=self.kernels)  # fmt: skip
        return self.index.search(keys, k).to(keys.device)

    # ---- usage -------------------------------------------------------------------------
    @staticmethod
    def block_size(slots: int) -> int:
        return math.ceil(math.sqrt(slots))

    def _block_slots(self, blocks: torch.Tensor, slots: int) -> torch.Tensor:
        # (B,...) block numbers -> (B,..., block size) their slots; the last block's overhang
        # repeats slot N-1 (same block, so minima and first-minimum positions are unchanged).
        size = self.block_size(slots)
        offsets = _arange(size, blocks.device)
        return (blocks.unsqueeze(-1) * size + offsets).clamp_max(slots - 1)

    def minima(self, last_access: torch.Tensor) -> torch.Tensor:
        if self.block_minima is None and self.memory_is_zero:
            # A new state's tables (initial_state) are all zero: every minimum is 0, with no
            # pass over the N slots (at N = 16384 and batch 8 that pass took 2.4 ms).
            blocks = math.ceil(last_access.shape[1] / self.block_size(last_access.shape[1]))
            self.block_minima = last_access.new_zeros((last_access.shape[0], blocks))
        if self.block_minima is None:
            slots = last_access.shape[1]
            blocks = torch.arange(math.ceil(slots / self.block_size(slots)))
            ids = self._block_slots(blocks.to(last_access.device), slots)
            self.block_minima = last_access[:, ids].amin(-1)
        return self.block_minima

    def _least_used_in(self, last_access: torch.Tensor, minima: torch.Tensor) -> torch.Tensor:
        # The first slot of the first block whose minimum is smallest: (B,).
        ids = self._block_slots(minima.argmin(-1), last_access.shape[1])  # (B,size)
        values = last_access.gather(1, ids)
        return ids.gather(1, values.argmin(-1, keepdim=True)).squeeze(-1)

    def least_used(
        self, last_access: torch.Tensor, excluded: torch.Tensor, exclude: torch.Tensor
    ) -> torch.Tensor:
        """The least recently used slot U (B,), not one of ``excluded`` (B,P) where
        ``exclude`` (B,P) is set, unless every slot is. O(P √N): a √N-block minimum."""
        minima = self.minima(last_access)
        least = self._least_used_in(last_access, minima)
        if not ((least.unsqueeze(-1) == excluded) & exclude).any():
            return least
        # Rare (an excluded slot read with weight <= δ is the oldest): mark the excluded
        # slots as used last, search again, restore.
        slots = last_access.shape[1]
        saved = last_access.gather(1, excluded)
        marked = torch.where(exclude, torch.full_like(saved, _EXCLUDED), saved)
        last_access.scatter_reduce_(1, excluded, marked, reduce="amax")
        blocks = excluded // self.block_size(slots)
        ids = self._block_slots(blocks, slots)
        fresh = last_access.gather(1, ids.flatten(1)).view(ids.shape).amin(-1)
        least = self._least_used_in(last_access, minima.scatter(-1, blocks, fresh))
        last_access.scatter_(1, excluded, saved)
        return least

    def touch(self, tables: dict, positions: torch.Tensor, weights: torch.Tensor) -> None:
        """Slots ``positions`` (B,P) whose weight there (B,P) exceeds δ are used now."""
        last_access = tables["last_access"]
        slots = last_access.shape[1]
        index = flat_index(positions, slots)
        flat = last_access.view(-1)
        used = weights.detach().flatten() > addressing.USAGE_THRESHOLD
        old = flat.index_select(0, index)
        now = torch.where(used, torch.full_like(old, self.version), old)
        flat.scatter_reduce_(0, index, now, reduce="amax")  # repeats: used by any entry
        self._journal("last_access", index, old, flat.index_select(0, index))
        if self.block_minima is not None:
            blocks = positions // self.block_size(slots)
            ids = self._block_slots(blocks, slots)
            fresh = last_access.gather(1, ids.flatten(1)).view(ids.shape).amin(-1)
            self.block_minima.scatter_(-1, blocks, fresh)


def store_of(memory: torch.Tensor) -> SlotStore | None:
    """The store hung on a state's memory tensor, if any."""
    return getattr(memory, "_mann_slot_store", None)


def attach(memory: torch.Tensor, store: SlotStore) -> None:
    memory._mann_slot_store = store


def checkout(state: NamedTuple, table_names: tuple[str, ...], index_kind: str):
    """The store and tables to step ``state`` with: in place when the state is the newest of
    its chain, else a copy rolled back to it; a fresh store when the state has none."""
    tables = {name: getattr(state, name) for name in table_names}
    version = int(state.steps)
    store = store_of(state.memory)
    if store is None:
        store = SlotStore(version, index_kind)
        attach(state.memory, store)
    elif store.version != version:
        store, tables = store.branch(tables, version)
        attach(tables["memory"], store)
    return store, tables


def memory_gradient_placeholder(memory: torch.Tensor) -> torch.Tensor:
    """A tensor of the memory's shape and dtype, no storage: the path autograd passes dL/dM on."""
    return memory.new_zeros(()).expand(memory.shape)
