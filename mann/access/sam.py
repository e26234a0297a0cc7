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

The tables, journal and index of its states are ``mann.access.slots``; the autograd
functions of its reads and writes (O(K) per step backward) ``mann.access.sparse_autograd``;
its records ``mann.access.sparse_record``.

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

from typing import NamedTuple

import torch
from torch import nn

from mann import addressing
from mann.access.base import InterfaceLayout, require_positive
from mann.access.index import resolve_index_kind
from mann.access.slots import (
    SlotStore,
    attach,
    checkout,
    lazy_zeros,
    memory_gradient_placeholder,
    store_of,
)
from mann.access.sparse_autograd import content_read, write
from mann.access.sparse_record import SparseRecord, TablesAt
from mann.intervention import NO_EDITS, StepEdits


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
        attach(memory, SlotStore(0, kind, memory_is_zero=True))

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
