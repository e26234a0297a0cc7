"""Sparse Access Memory, SAM (Rae et al. 2016, "Scaling Memory-Augmented Neural Networks with
Sparse Reads and Writes").

A step touches O(K) slots, not N, so memory can hold hundreds of thousands of slots:

1. least used: U = the slot unused longest (usage below), never one read at t-1;
2. write weighting ``w^w_t = α (γ w^r_{t-1} + (1 - γ) 1_U)``: the K slots read last step and U,
   K+1 non-zero weights (``addressing.sparse_write_weighting``);
3. write ``M_t = (1 - 1_U 1ᵀ) ∘ M_{t-1} + w^w_t aᵀ``: U is wiped, then written;
4. sparse read: a k-NN index (``mann.access.index``) finds each read key's K nearest slots in
   M_t; ``w^r_t = softmax over those K of β D(k, M_t[i])``, every other slot 0;
   ``r_t = Σ_k w^r_t[k] M_t[i_k]``;
5. usage: a slot is used at step t when its read or write weight exceeds δ = 0.005; the
   least used slot is the one whose last use is oldest (ties: the lowest slot number).
The controller is wired as for the DNC (``mann.model``): input [x_t; r_{t-1}], output from
[h_t; r_t]. Interface per step: read keys k^r (R×W), read strengths β^r = oneplus (R), write
vector a (W), write gate α = σ (1), interpolation gate γ = σ (1).

State, and where the index lives
--------------------------------
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

The backward pass: O(K) per step
--------------------------------
The memory itself is never part of autograd. The autograd functions that touch it are
``_Write`` (the write weighting and the write, steps 2–3) and the reads (``_ContentRead``,
``_ReadRows``, or ``_GatherRows`` in the reference composition), each of which copies the
rows it uses. Each takes and returns ``memory_gradient``, a placeholder of the memory's
shape with no storage, that orders them in time; the gradient that autograd passes along
that path is dL/dM_t, one dense buffer for the whole sequence, allocated when the backward
pass reaches the last read and then updated in place, step by step, going back in time:
- a read adds its rows' gradients into the buffer at its K positions;
- a write, linear in M, needs no memory values: dL/dw^w = (dL/dM_t[i])·a at its K+1 rows,
  dL/da = Σ w^w[i] dL/dM_t[i], and dL/dM_{t-1} is dL/dM_t with the wiped row U zeroed.
What autograd keeps per step is the K gathered rows, the K+1 positions and weights and the
write vector: O(K W), never a copy of memory. (The paper keeps the touched rows' old values and
rolls memory back; here no step's backward needs memory at all, since reads keep their rows.)
No gradient flows through the index or the usage: they yield integer positions.

Approximations against the paper (Rae et al. 2016)
--------------------------------------------------
- k-NN: exact search up to ``index.EXACT_LIMIT`` slots (faiss brute force, or torch), above it
  an IVF index over fixed random centroids (the paper used FLANN's randomized k-d trees or
  LSH). The IVF index holds only written rows and is updated, never rebuilt; when it finds
  fewer than K rows the read takes the lowest-numbered other slots (see ``index``).
- With R read heads, w^r_{t-1} in the write weighting is the mean of the heads' weightings
  (the paper states the one-head form); the write then touches up to R K + 1 slots.
- U is never one of the slots read with non-zero weight at t-1 (when any other exists), so
  the write has exactly K+1 non-zero weights with one read head; in the paper U could
  coincide with a slot read with weight <= δ.
- Usage is the step of last use with threshold δ (the paper's discrete-time form); slots
  never used count as used at step 0.
- Memory starts at zero and the first step has no previous read (w^r_0 = 0), so step 1
  writes U only.
- Never-written (all-zero) slots rank after every written slot, whatever the key; the
  lowest-numbered make up the K while fewer than K slots are written (``mann.access.index``).
  The paper's K nearest would include them at similarity 0, ahead of every written slot the
  key points away from; a key pointing away from all of them then read only zeros and got
  no gradient towards what was written. Measured on copy (SAM 64×32, 2 read heads, seed 1,
  one run each): the length curriculum of an LSTM controller reached lengths 1–20 after 750
  steps, against 4,300 with empty slots at similarity 0; a feed-forward controller's after
  1,350, where with empty slots at 0 it was still on lengths 1–4 after 20,000.
- Similarities closer than ``index.TIE_RESOLUTION`` (2^-12) count as tied and the lower slot
  is read, so float noise does not decide which of several equal rows is read.
- A slot counts as used when any single read or write entry there exceeds δ (several heads'
  small weights on one slot are not added up).
"""

from __future__ import annotations

import bisect
import functools
import math
import mmap
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mann import addressing
from mann.access.base import InterfaceLayout, require_positive
from mann.access.index import build_index, resolve_index_kind
from mann.intervention import NO_EDITS, StepEdits

# An excluded slot's last use, when picking the least used: later than any real step.
_EXCLUDED = torch.iinfo(torch.int64).max


class SAMState(NamedTuple):
    memory: torch.Tensor  # M_t (B,N,W), changed in place by later steps (module docstring)
    last_access: torch.Tensor  # (B,N) int64: the step each slot was last used (0: never)
    read_positions: torch.Tensor  # the slots read at t (B,R,K) int64
    read_weights: torch.Tensor  # w^r_t at those slots (B,R,K)
    steps: torch.Tensor  # t () int64: the version of memory and last_access
    memory_gradient: torch.Tensor  # (B,N,W) storage-free placeholder: the path of dL/dM


class SAMInterface(NamedTuple):
    """The controller's interface vector split into the paper's named quantities."""

    read_keys: torch.Tensor  # k^r (B,R,W)
    read_strengths: torch.Tensor  # β^r = oneplus(·) (B,R)
    write_vector: torch.Tensor  # a (B,W)
    write_gate: torch.Tensor  # α = σ(·) (B,)
    interpolation_gate: torch.Tensor  # γ = σ(·) (B,): previously read slots (1) or U (0)


# ---------------------------------------------------------------------------------------
# The journal, index and least-used cache of a chain of states
# ---------------------------------------------------------------------------------------
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


def _attach(memory: torch.Tensor, store: SlotStore) -> None:
    memory._mann_slot_store = store


def checkout(state: NamedTuple, table_names: tuple[str, ...], index_kind: str):
    """The store and tables to step ``state`` with: in place when the state is the newest of
    its chain, else a copy rolled back to it; a fresh store when the state has none."""
    tables = {name: getattr(state, name) for name in table_names}
    version = int(state.steps)
    store = store_of(state.memory)
    if store is None:
        store = SlotStore(version, index_kind)
        _attach(state.memory, store)
    elif store.version != version:
        store, tables = store.branch(tables, version)
        _attach(tables["memory"], store)
    return store, tables


def memory_gradient_placeholder(memory: torch.Tensor) -> torch.Tensor:
    """A tensor of the memory's shape and dtype, no storage: the path autograd passes dL/dM on."""
    return memory.new_zeros(()).expand(memory.shape)


# ---------------------------------------------------------------------------------------
# Autograd: the memory's gradient travels along ``memory_gradient``
# ---------------------------------------------------------------------------------------
class _Write(torch.autograd.Function):
    """Steps 2–3, the write weighting and the write (in place), as one autograd node with an
    O(K) backward; see the module docstring. Returns (next path, write positions (B,P),
    write weights (B,P)); the weights are for the record and the usage, their gradient
    flows through the write itself."""

    @staticmethod
    def forward(ctx, path, prev_read_weights, write_gate, interpolation_gate, add,
                store, tables, prev_read_positions, least_used):  # fmt: skip
        ctx.set_materialize_grads(False)
        positions, weights = addressing.sparse_write_weighting(
            prev_read_positions, prev_read_weights, least_used, write_gate, interpolation_gate
        )
        store.write(tables, positions, weights, add, least_used)
        ctx.save_for_backward(
            weights, add, positions, least_used, prev_read_weights, write_gate, interpolation_gate
        )
        ctx.mark_non_differentiable(positions, weights)
        return memory_gradient_placeholder(path), positions, weights

    @staticmethod
    def backward(ctx, grad_memory, _grad_positions, _grad_weights):
        if grad_memory is None:  # nothing later read this memory
            return (None,) * 9
        weights, add, positions, least_used, prev_read_weights, write_gate, gamma = (
            ctx.saved_tensors
        )
        grad_rows = rows_at(grad_memory, positions)  # dL/dM_t at the written rows (B,P,W)
        grad_weights = (grad_rows * add.unsqueeze(1)).sum(-1)
        grad_add = torch.bmm(weights.unsqueeze(1), grad_rows).squeeze(1)
        # M_t[U] does not depend on M_{t-1}[U].
        unused = flat_index(least_used.unsqueeze(-1), grad_memory.shape[1])
        grad_memory.flatten(0, 1).index_fill_(0, unused, 0.0)
        # w^w = [α γ / R · w^r_{t-1}, α (1 - γ)] (addressing.sparse_write_weighting).
        batch, heads, k = prev_read_weights.shape
        grad_read_part, grad_unused = grad_weights[:, :-1], grad_weights[:, -1]
        along_reads = (grad_read_part * prev_read_weights.reshape(batch, heads * k)).sum(-1)
        grad_prev = (write_gate * gamma / heads).unsqueeze(-1) * grad_read_part
        grad_write_gate = gamma / heads * along_reads + (1.0 - gamma) * grad_unused
        grad_gamma = write_gate / heads * along_reads - write_gate * grad_unused
        return (grad_memory, grad_prev.view(batch, heads, k), grad_write_gate, grad_gamma,
                grad_add, None, None, None, None)  # fmt: skip


class _GatherRows(torch.autograd.Function):
    """A copy of the memory rows at ``positions`` (B,Q) -> (B,Q,W), with its O(K) backward."""

    @staticmethod
    def forward(ctx, path, tables, positions):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(positions)
        ctx.memory_shape = path.shape
        return rows_at(tables["memory"], positions), memory_gradient_placeholder(path)

    @staticmethod
    def backward(ctx, grad_rows, grad_memory):
        if grad_rows is None:
            return grad_memory, None, None
        (positions,) = ctx.saved_tensors
        if grad_memory is None:  # the last read of the sequence: start the buffer
            grad_memory = lazy_zeros(ctx.memory_shape, grad_rows.dtype, grad_rows.device)
        index = flat_index(positions, grad_memory.shape[1])
        grad_memory.flatten(0, 1).index_add_(0, index, grad_rows.flatten(0, 1))
        return grad_memory, None, None


def content_read(path, tables, positions, keys, strengths, read: bool = True):
    """Weights softmax_k(β D(k, M[i_k])) (B,H,K) over the rows at ``positions`` (B,H,K), and
    with ``read`` the read vectors Σ_k w_k M[i_k] (B,H,W) (else None), and the next path."""
    memory = tables["memory"]
    batch, heads, k = positions.shape
    rows, path = gather_rows(path, tables, positions.flatten(1))
    rows = rows.view(batch, heads, k, memory.shape[2])
    weights = addressing.sparse_content_weights(rows, keys, strengths)
    return weights, (addressing.sparse_read(rows, weights) if read else None), path


def read_rows(path, tables, positions, weights):
    """Read vectors Σ_k w_k M[i_k] (B,H,W) at ``positions`` (B,H,K), and the next path."""
    memory = tables["memory"]
    rows, path = gather_rows(path, tables, positions.flatten(1))
    rows = rows.view(*positions.shape, memory.shape[2])
    return addressing.sparse_read(rows, weights), path


def write(path, store, tables, prev_read_positions, prev_read_weights, least_used, io):
    """The write weighting and the write, in place: (next path, write positions, weights)."""
    return _Write.apply(
        path, prev_read_weights, io.write_gate, io.interpolation_gate, io.write_vector,
        store, tables, prev_read_positions, least_used,
    )  # fmt: skip


def gather_rows(path, tables, positions) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows at ``positions`` (B,Q) -> ((B,Q,W), next ``memory_gradient`` placeholder)."""
    return _GatherRows.apply(path, tables, positions)


# ---------------------------------------------------------------------------------------
# Records: dense fields made only when a Trace asks for them
# ---------------------------------------------------------------------------------------
class TablesAt(NamedTuple):
    """The tables of one state, as of its step, read through the journal on demand."""

    store: SlotStore
    tables: dict
    version: int

    def table(self, name: str) -> torch.Tensor:
        return self.store.snapshot(self.tables, name, self.version)


class SparseRecord:
    """A step's record, duck-typing the record NamedTuples: ``_fields`` and one attribute
    per field (batch first). Dense (B,...,N) fields cost O(N), so they are computed only when
    read: the model reads a record only when asked to record a Trace."""

    _fields: tuple[str, ...] = ()

    def __init__(self, tables: TablesAt, slots: int, **parts: torch.Tensor) -> None:
        self._tables = tables
        self._slots = slots
        self._parts = parts

    def _asdict(self) -> dict:
        return {name: getattr(self, name) for name in self._fields}

    def _dense(self, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return addressing.to_dense(positions, values, self._slots)

    @property
    def memory(self) -> torch.Tensor:
        return self._tables.table("memory")

    @property
    def usage(self) -> torch.Tensor:
        """Steps since each slot was last used (read or written with weight > δ)."""
        return (self._tables.version - self._tables.table("last_access")).float()

    @property
    def read_weights(self) -> torch.Tensor:
        return self._dense(self._parts["read_positions"], self._parts["read_weights"])

    @property
    def write_weights(self) -> torch.Tensor:
        parts = self._parts
        return self._dense(parts["write_positions"], parts["write_weights"]).unsqueeze(1)

    @property
    def read_vectors(self) -> torch.Tensor:
        return self._parts["read_vectors"]

    @property
    def allocation(self) -> torch.Tensor:
        """1_U, the least used slot, the DNC allocation's counterpart."""
        least_used = self._parts["least_used"]
        ones = torch.ones_like(least_used, dtype=torch.float32).unsqueeze(-1)
        return self._dense(least_used.unsqueeze(-1), ones)

    @property
    def write_content_weights(self) -> torch.Tensor:
        """w^r_{t-1} (mean over read heads), the write's other target."""
        positions, weights = self._parts["prev_read_positions"], self._parts["prev_read_weights"]
        heads = positions.shape[1]
        return self._dense(positions.flatten(1), weights.flatten(1) / heads)

    @property
    def allocation_gate(self) -> torch.Tensor:
        """1 - γ: the share of the write that goes to U (the DNC's g^a)."""
        return 1.0 - self._parts["interpolation_gate"]

    @property
    def write_gate(self) -> torch.Tensor:
        return self._parts["write_gate"]

    @property
    def read_positions(self) -> torch.Tensor:
        return self._parts["read_positions"].float()

    @property
    def least_used(self) -> torch.Tensor:
        return self._parts["least_used"].float()


class SAMRecord(SparseRecord):
    _fields = (
        "memory",
        "read_weights",
        "write_weights",
        "read_vectors",
        "usage",
        "allocation",
        "write_content_weights",
        "allocation_gate",
        "write_gate",
        "read_positions",
        "least_used",
    )


# ---------------------------------------------------------------------------------------
# The memory
# ---------------------------------------------------------------------------------------
def sam_layout(word_size: int, read_heads: int) -> InterfaceLayout:
    """SAM's interface, in SAMInterface's order (the fused sparse kernels read these offsets,
    which tests hold them to)."""
    return InterfaceLayout([
        ("read_keys", read_heads * word_size), ("read_strengths", read_heads),
        ("write_vector", word_size), ("write_gate", 1), ("interpolation_gate", 1),
    ])  # fmt: skip


class SAMAccess(nn.Module):
    """Sparse Access Memory: K-sparse reads through a k-NN index, K+1-sparse writes."""

    write_heads = 1
    table_names: tuple[str, ...] = ("memory", "last_access")

    def __init__(
        self,
        memory_size: int = 128,
        word_size: int = 20,
        read_heads: int = 1,
        sparse_reads: int = 4,
        index: str = "auto",
    ) -> None:
        super().__init__()
        require_positive("memory_size", memory_size)
        require_positive("word_size", word_size)
        require_positive("read_heads", read_heads)
        require_positive("sparse_reads", sparse_reads)
        if sparse_reads > memory_size:
            raise ValueError(
                f"sparse_reads must be at most memory_size={memory_size}, got {sparse_reads}"
            )
        resolve_index_kind(index, memory_size, torch.float32, "cpu")  # validates the name
        self.memory_size = memory_size
        self.word_size = word_size
        self.read_heads = read_heads
        self.sparse_reads = sparse_reads
        self.index = index
        self.layout = sam_layout(word_size, read_heads)
        self.interface_size = self.layout.total

    def parse_interface(self, interface: torch.Tensor) -> SAMInterface:
        batch = interface.shape[0]
        field = self.layout.split(interface)
        return SAMInterface(
            read_keys=field["read_keys"].view(batch, self.read_heads, self.word_size),
            read_strengths=addressing.oneplus(field["read_strengths"]),
            write_vector=field["write_vector"],
            write_gate=torch.sigmoid(field["write_gate"]).squeeze(-1),
            interpolation_gate=torch.sigmoid(field["interpolation_gate"]).squeeze(-1),
        )

    # ---- state -------------------------------------------------------------------------
    def _initial_tables(self, batch_size: int, device, dtype) -> dict:
        N, W = self.memory_size, self.word_size
        return {
            "memory": lazy_zeros((batch_size, N, W), dtype, device),
            "last_access": lazy_zeros((batch_size, N), torch.int64, device),
        }

    def _initial_reads(self, batch_size: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # No read before the first step: weights 0 (the positions are never used).
        shape = (batch_size, self.read_heads, self.sparse_reads)
        positions = torch.arange(self.sparse_reads, device=device).expand(shape).contiguous()
        return positions, torch.zeros(shape, device=device, dtype=dtype)

    def _new_store(self, tables: dict) -> None:
        memory = tables["memory"]
        kind = resolve_index_kind(self.index, self.memory_size, memory.dtype, memory.device)
        _attach(memory, SlotStore(0, kind, memory_is_zero=True))

    def initial_state(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> SAMState:
        dtype = dtype or torch.get_default_dtype()
        tables = self._initial_tables(batch_size, device, dtype)
        self._new_store(tables)
        read_positions, read_weights = self._initial_reads(batch_size, device, dtype)
        return SAMState(
            **tables,
            read_positions=read_positions,
            read_weights=read_weights,
            steps=torch.zeros((), dtype=torch.int64),
            memory_gradient=memory_gradient_placeholder(tables["memory"]),
        )

    def initial_read_vectors(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.read_heads, self.word_size, device=device, dtype=dtype)

    def tables_at(self, state: NamedTuple) -> dict:
        """Copies of the state's own tables (memory, last_access, …) as of its step."""
        store = store_of(state.memory)
        version = int(state.steps)
        names = self.table_names
        tables = {name: getattr(state, name) for name in names}
        if store is None or store.version == version:
            return {name: table.detach().clone() for name, table in tables.items()}
        return {name: store.snapshot(tables, name, version) for name in names}

    def with_memory(self, state: NamedTuple, memory: torch.Tensor) -> NamedTuple:
        """``state`` with another memory (an intervention): the tables become copies as of
        the state's step, under a store of their own, so the chain the state came from (and
        the records of its steps) stays as it was."""
        tables = self.tables_at(state)
        tables["memory"] = memory.detach().clone()
        return state._replace(**tables)

    def _checkout(self, state: NamedTuple):
        kind = resolve_index_kind(
            self.index, self.memory_size, state.memory.dtype, state.memory.device
        )
        return checkout(state, self.table_names, kind)

    # ---- the step ----------------------------------------------------------------------
    def _write(self, io, state, store, tables):
        """Steps 1–3: least used slot, write weighting, write. Returns what the read needs."""
        least_used = store.least_used(
            tables["last_access"],
            state.read_positions.flatten(1),
            state.read_weights.detach().flatten(1) > 0,
        )
        path, write_positions, write_weights = write(
            state.memory_gradient, store, tables, state.read_positions, state.read_weights,
            least_used, io,
        )  # fmt: skip
        return least_used, write_positions, write_weights, path

    def _content_read(self, io, store, tables, path, read: bool = True):
        """Step 4's content part: the K nearest slots per key, their weights and (``read``)
        the read vectors."""
        positions = store.search(tables, io.read_keys, self.sparse_reads)  # (B,R,K)
        weights, reads, path = content_read(
            path, tables, positions, io.read_keys, io.read_strengths, read
        )
        return positions, weights, reads, path

    def step(
        self,
        interface: torch.Tensor,
        state: SAMState,
        record: bool = True,
        edit: StepEdits | None = None,
    ) -> tuple[torch.Tensor, SAMState, SAMRecord]:
        """One step; ``edit`` (``mann.intervention``) replaces the controller's gates, write
        vector, read strengths (and SDNC's read modes) and the read vectors."""
        edit = edit or NO_EDITS
        io = edit.interface(self.parse_interface(interface))
        store, tables = self._checkout(state)
        version = store.begin_step()
        try:
            least_used, write_positions, write_weights, path = self._write(io, state, store, tables)
            read_positions, read_weights, read_vectors, path = self._content_read(
                io, store, tables, path
            )
            read_vectors = edit("read_vectors", read_vectors)
            store.touch(
                tables,
                torch.cat([write_positions, read_positions.flatten(1)], -1),
                torch.cat([write_weights, read_weights.flatten(1)], -1),
            )
        except BaseException:
            store.rollback(tables, version - 1)
            raise
        new_state = SAMState(
            **tables,
            read_positions=read_positions,
            read_weights=read_weights,
            steps=torch.tensor(version),
            memory_gradient=path,
        )
        step_record = SAMRecord(
            TablesAt(store, tables, version),
            self.memory_size,
            read_positions=read_positions,
            read_weights=read_weights,
            write_positions=write_positions,
            write_weights=write_weights,
            read_vectors=read_vectors,
            least_used=least_used,
            prev_read_positions=state.read_positions,
            prev_read_weights=state.read_weights,
            interpolation_gate=io.interpolation_gate,
            write_gate=io.write_gate,
        )
        return read_vectors, new_state, step_record
