"""Sparse Differentiable Neural Computer, SDNC (Rae et al. 2016, section 3.4 and supplement).

SAM's sparse memory (``mann.access.sam``: K-sparse content reads through a k-NN index, writes
to the slots read last step or the least used one, usage by last use) plus the DNC's temporal
links, kept sparse so a step still costs O(K K_L), not O(N) or O(N²):

1. least used slot U, write weighting ``w^w_t = α (γ w^r_{t-1} + (1 - γ) 1_U)`` and write,
   exactly as SAM (no DNC allocation, no erase vector);
2. link ``L_t[i,j] = (1 - w[i] - w[j]) L_{t-1}[i,j] + w[i] p_{t-1}[j]``, ``L_t[i,i] = 0``, with
   at most K_L non-zeros in every row and every column
   (``addressing.sparse_temporal_link``);
3. precedence ``p_t = (1 - Σ w) p_{t-1} + w``, its K_L largest entries
   (``addressing.sparse_precedence``);
4. content ``c^r``: softmax over the K nearest slots of each read key in M_t;
5. forward ``f = L_t w^r_{t-1}`` and backward ``b = L_tᵀ w^r_{t-1}`` from the link rows and
   columns of the K slots each head read last step;
6. read weighting ``w^r_t = π[0] b + π[1] c + π[2] f``, kept to its K largest entries, and
   ``r_t = Σ w^r_t[i] M_t[i]``.
Interface per step: read keys (R×W), read strengths β^r = oneplus (R), write vector a (W),
write gate α = σ (1), interpolation gate γ = σ (1), read modes π^r = softmax over backward,
content, forward (3R).

Sparse links
------------
L_t is held twice, as two tables of K_L entries per row, changed in place like SAM's memory
(journaled, see ``mann.access.sam``): ``link_predecessors`` (row i: the slots j written right
before i, with L[i,j]) and ``link_successors`` (row j: the slots i written right after j,
with L[i,j]) — the paper's L and Lᵀ. Both always hold the same entries. Only rows of
written slots and columns of preceding slots can gain entries; they are recomputed whole
(``addressing.sparse_temporal_link``: the equation, then the K_L cut). Every other entry a
step changes only decays: entries of unwritten rows in written or preceding columns (found
through the successor table), and the mirrors of written rows' entries in other columns.
Those rows are gathered, decayed, and written back, so a step costs O((K R + K_L) K_L²)
whatever N. An empty entry has weight 0 (its slot is then read as N, one past the last);
row N of each table is an always-empty sink, so empty entries can be followed without a
branch. The tables start as lazily mapped zeros (``slots.lazy_zeros``). No gradient passes
through the links or the precedence (as in the paper); gradients reach w^r_{t-1} through f
and b, and memory rows through the reads as in SAM.

Approximations against the paper (Rae et al. 2016), beyond SAM's
----------------------------------------------------------------
- Each row and column of L keeps its K_L largest entries; when a step's new entries overflow
  a row, the row is cut first, then the columns among the rows' survivors, and an entry cut
  from either is dropped from both tables (the paper keeps L and Lᵀ as two K_L-sparse
  matrices without saying how they stay consistent).
- The mixed read weighting has up to K (1 + 2 K_L) non-zeros; it is cut to its K largest
  (they sum to at most 1), so reads and the next write stay O(K).
- The Trace holds the dense link (T,N,N) only while N <= ``DENSE_LINK_LIMIT``; above that the
  sub-matrix over the slots a step wrote and the previous precedence's slots, named by
  ``link_positions`` (-1 pads).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mann import addressing
from mann.access.base import InterfaceLayout, require_positive
from mann.access.sam import SAMAccess, sam_layout
from mann.access.slots import lazy_zeros, memory_gradient_placeholder, rows_at
from mann.access.sparse_autograd import read_rows
from mann.access.sparse_record import SparseRecord, TablesAt
from mann.intervention import NO_EDITS, StepEdits

# Up to this many slots the Trace records the dense link matrix (T,N,N).
DENSE_LINK_LIMIT = 256


class SDNCState(NamedTuple):
    memory: torch.Tensor  # M_t (B,N,W), changed in place by later steps (see sam.py)
    last_access: torch.Tensor  # (B,N) int64: the step each slot was last used (0: never)
    link_predecessors: torch.Tensor  # (B,N+1,K_L) int64: row i of L_t, slots j (N: empty)
    link_predecessor_weights: torch.Tensor  # (B,N+1,K_L): L_t[i,j]
    link_successors: torch.Tensor  # (B,N+1,K_L) int64: column j of L_t, slots i (N: empty)
    link_successor_weights: torch.Tensor  # (B,N+1,K_L): L_t[i,j]
    precedence_positions: torch.Tensor  # p_t's slots (B,K_L) int64 (N: empty)
    precedence_weights: torch.Tensor  # p_t there (B,K_L)
    read_positions: torch.Tensor  # the slots read at t (B,R,K) int64
    read_weights: torch.Tensor  # w^r_t at those slots (B,R,K)
    steps: torch.Tensor  # t () int64: the version of the tables above
    memory_gradient: torch.Tensor  # (B,N,W) storage-free placeholder: the path of dL/dM


class SDNCInterface(NamedTuple):
    """The controller's interface vector split into the paper's named quantities."""

    read_keys: torch.Tensor  # k^r (B,R,W)
    read_strengths: torch.Tensor  # β^r = oneplus(·) (B,R)
    write_vector: torch.Tensor  # a (B,W)
    write_gate: torch.Tensor  # α = σ(·) (B,)
    interpolation_gate: torch.Tensor  # γ = σ(·) (B,)
    read_modes: torch.Tensor  # π^r = softmax(·) over backward, content, forward (B,R,3)


def unique_sorted(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Each slot of ``positions`` (B,P) once, ascending, padded at the end with N = ``size``."""
    ordered = positions.sort(dim=-1).values
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    return ordered.masked_fill(repeat, size).sort(dim=-1).values


def link_rows(tables: dict, kind: str, positions: torch.Tensor, size: int):
    """Rows of the link table ``kind`` ("predecessor" or "successor") at slots ``positions``
    (B,P) -> (slots, weights) (B,P,K_L), empty entries as (N, 0)."""
    slots = rows_at(tables[f"link_{kind}s"], positions)
    weights = rows_at(tables[f"link_{kind}_weights"], positions)
    return torch.where(weights > 0, slots, size), weights


class SDNCRecord(SparseRecord):
    """SAM's record fields plus the DNC's links, precedence and read-weighting parts."""

    def __init__(self, tables: TablesAt, slots: int, dense_link: bool, **parts) -> None:
        super().__init__(tables, slots, **parts)
        self._fields = (
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
            "precedence",
            "link",
            "read_content_weights",
            "forward_weights",
            "backward_weights",
            "read_modes",
        ) + (() if dense_link else ("link_positions",))
        self._dense_link = dense_link

    @property
    def precedence(self) -> torch.Tensor:
        return self._dense(self._parts["precedence_positions"], self._parts["precedence_weights"])

    def _link_positions(self) -> torch.Tensor:
        # The slots this step wrote, then the previous precedence's: (B,S), N where empty.
        parts = self._parts
        touched = torch.cat([parts["write_positions"], parts["prev_precedence_positions"]], -1)
        return unique_sorted(touched, self._slots)

    @property
    def link(self) -> torch.Tensor:
        predecessors = self._tables.table("link_predecessors")[:, : self._slots]
        weights = self._tables.table("link_predecessor_weights")[:, : self._slots]
        if self._dense_link:
            return self._dense(predecessors, weights)  # (B,N,N)
        slots = self._link_positions()  # (B,S)
        rows = slots.clamp_max(self._slots - 1)
        row_slots, row_weights = rows_at(predecessors, rows), rows_at(weights, rows)  # (B,S,K_L)
        row_slots = torch.where(row_weights > 0, row_slots, self._slots)
        match = row_slots.unsqueeze(-2) == slots.unsqueeze(-2).unsqueeze(-1)  # (B,S,S,K_L)
        sub = (match * row_weights.unsqueeze(-2)).sum(-1)
        valid = slots < self._slots
        return sub * (valid.unsqueeze(-1) & valid.unsqueeze(-2))

    @property
    def link_positions(self) -> torch.Tensor:
        slots = self._link_positions()
        return torch.where(slots < self._slots, slots, -1).float()

    @property
    def read_content_weights(self) -> torch.Tensor:
        return self._dense(self._parts["content_positions"], self._parts["content_weights"])

    @property
    def forward_weights(self) -> torch.Tensor:
        return self._dense(*self._parts["forward"])

    @property
    def backward_weights(self) -> torch.Tensor:
        return self._dense(*self._parts["backward"])

    @property
    def read_modes(self) -> torch.Tensor:
        return self._parts["read_modes"]


def sdnc_layout(word_size: int, read_heads: int) -> InterfaceLayout:
    """SDNC's interface: SAM's, then each read head's three read-mode logits (backward,
    content, forward)."""
    sam = sam_layout(word_size, read_heads)
    return InterfaceLayout([*sam.fields, ("read_modes", 3 * read_heads)])


class SDNCAccess(SAMAccess):
    """Sparse DNC: SAM's sparse reads and writes plus K_L-sparse temporal links."""

    table_names = (
        "memory",
        "last_access",
        "link_predecessors",
        "link_predecessor_weights",
        "link_successors",
        "link_successor_weights",
    )

    def __init__(
        self,
        memory_size: int = 128,
        word_size: int = 20,
        read_heads: int = 1,
        sparse_reads: int = 4,
        temporal_reads: int = 8,
        index: str = "auto",
    ) -> None:
        super().__init__(memory_size, word_size, read_heads, sparse_reads, index)
        require_positive("temporal_reads", temporal_reads)
        self.temporal_reads = temporal_reads
        self.layout = sdnc_layout(word_size, read_heads)
        self.interface_size = self.layout.total

    def parse_interface(self, interface: torch.Tensor) -> SDNCInterface:
        batch = interface.shape[0]
        field = self.layout.split(interface)
        modes = field["read_modes"].view(batch, self.read_heads, 3)
        return SDNCInterface(
            read_keys=field["read_keys"].view(batch, self.read_heads, self.word_size),
            read_strengths=addressing.oneplus(field["read_strengths"]),
            write_vector=field["write_vector"],
            write_gate=torch.sigmoid(field["write_gate"]).squeeze(-1),
            interpolation_gate=torch.sigmoid(field["interpolation_gate"]).squeeze(-1),
            read_modes=torch.softmax(modes, dim=-1),
        )

    # ---- state -------------------------------------------------------------------------
    def _initial_tables(self, batch_size: int, device, dtype) -> dict:
        tables = super()._initial_tables(batch_size, device, dtype)
        shape = (batch_size, self.memory_size + 1, self.temporal_reads)
        for kind in ("predecessor", "successor"):
            # Every entry empty (weight 0; its position is then meaningless).
            tables[f"link_{kind}s"] = lazy_zeros(shape, torch.int64, device)
            tables[f"link_{kind}_weights"] = lazy_zeros(shape, dtype, device)
        return tables

    def initial_state(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> SDNCState:
        dtype = dtype or torch.get_default_dtype()
        tables = self._initial_tables(batch_size, device, dtype)
        self._new_store(tables)
        read_positions, read_weights = self._initial_reads(batch_size, device, dtype)
        precedence = (batch_size, self.temporal_reads)
        return SDNCState(
            **tables,
            precedence_positions=torch.full(
                precedence, self.memory_size, device=device, dtype=torch.int64
            ),
            precedence_weights=torch.zeros(precedence, device=device, dtype=dtype),
            read_positions=read_positions,
            read_weights=read_weights,
            steps=torch.zeros((), dtype=torch.int64),
            memory_gradient=memory_gradient_placeholder(tables["memory"]),
        )

    # ---- links -------------------------------------------------------------------------
    def _update_links(self, store, tables, write_positions, write_weights, precedence):
        """Step 2 on the tables, in place: the rows and columns that can grow, by
        ``addressing.sparse_temporal_link``, then the entries elsewhere that only decay
        (``_link_changes``; ``mann.fused.sdnc`` computes the same numbers by one kernel)."""
        written, weights = addressing.merge_sparse(write_positions, write_weights, self.memory_size)
        changes = self._link_changes(store, tables, written, weights, precedence)
        kinds = ("predecessor", "successor")
        for kind, (positions, slots, values) in zip(kinds, changes, strict=True):
            store.change(tables, f"link_{kind}s", positions, slots)
            store.change(tables, f"link_{kind}_weights", positions, values)

    def _link_changes(self, store, tables, written, weights, precedence):
        """The torch composition of step 2: from the merged write weighting ``written``,
        ``weights`` (B,P) and p_{t-1} (positions, values) (B,K_L), the rows of each table
        that change and their new contents: ((rows (B,P+M), slots, weights (B,P+M,K_L)),
        (columns (B,K_L+M'), slots, weights (B,K_L+M',K_L)))."""
        N, capacity = self.memory_size, self.temporal_reads
        preceding, precedence_values = precedence
        old_rows = link_rows(tables, "predecessor", written, N)  # (B,P,K_L)
        old_columns = link_rows(tables, "successor", preceding, N)  # (B,Q,K_L)
        # Other rows of L (unwritten) with an entry in a preceding or written column, and
        # other columns (not preceding) with an entry in a written row or written themselves.
        written_columns = link_rows(tables, "successor", written, N)[0]
        other_rows = unique_sorted(torch.cat([old_columns[0], written_columns], 1).flatten(1), N)
        other_columns = unique_sorted(torch.cat([old_rows[0].flatten(1), written], -1), N)
        row_columns, row_values = link_rows(tables, "predecessor", other_rows, N)  # (B,M,K_L)
        column_rows, column_values = link_rows(tables, "successor", other_columns, N)

        # Every look-up of the write weighting and the precedence, in one pass each.
        in_written = self._where_in(
            store,
            written,
            [
                preceding,
                old_rows[0],
                old_columns[0],
                other_rows,
                row_columns,
                column_rows,
                other_columns,
            ],
        )
        at_preceding, at_row_columns, column_rows_written = in_written[:3]
        other_rows_written, row_columns_written, column_rows_in, other_columns_in = in_written[3:]
        other_columns_preceding, row_columns_preceding = self._where_in(
            store, preceding, [other_columns, row_columns]
        )

        def write_at(index):  # w^w_t at slots found at ``index`` in ``written`` (-1: none)
            found = weights.gather(1, index.clamp_min(0).flatten(1)).view(index.shape)
            return torch.where(index >= 0, found, torch.zeros_like(found))

        new_rows, new_columns = addressing.sparse_temporal_link(
            old_rows,
            old_columns,
            written,
            weights,
            preceding,
            precedence_values,
            N,
            capacity,
            (write_at(at_preceding), write_at(at_row_columns), column_rows_written >= 0),
        )

        # Rows: entry (i, j), i unwritten, decays by (1 - w[j]); if j precedes, it stays only
        # if column j kept i.
        other_rows = other_rows.masked_fill(other_rows_written >= 0, N)  # rewritten above
        values = ((1.0 - 0.0 - write_at(row_columns_written)) * row_values).clamp_min(0.0)
        kept_rows = rows_at(new_columns[0], row_columns_preceding.clamp_min(0).flatten(1))
        kept = (kept_rows.view(*row_columns.shape, -1) == other_rows[..., None, None]).any(-1)
        values = values.masked_fill((row_columns_preceding >= 0) & ~kept, 0.0)
        # Rows sent to the sink (written: recomputed above; or padding) must leave it empty.
        values = values.masked_fill((other_rows == N).unsqueeze(-1), 0.0)
        decayed_rows = (torch.where(values > 0, row_columns, N), values)

        # Columns: entry (i, j), j not preceding, decays by (1 - w[i] - w[j]); if i was
        # written, it stays only if row i kept j.
        other_columns = other_columns.masked_fill(other_columns_preceding >= 0, N)
        write_i, write_j = write_at(column_rows_in), write_at(other_columns_in).unsqueeze(-1)
        values = ((1.0 - write_i - write_j) * column_values).clamp_min(0.0)
        kept_columns = rows_at(new_rows[0], column_rows_in.clamp_min(0).flatten(1))
        kept = (kept_columns.view(*column_rows.shape, -1) == other_columns[..., None, None]).any(-1)
        values = values.masked_fill((column_rows_in >= 0) & ~kept, 0.0)
        values = values.masked_fill((other_columns == N).unsqueeze(-1), 0.0)
        decayed_columns = (torch.where(values > 0, column_rows, N), values)

        return tuple(
            (torch.cat(positions, 1), torch.cat([p[0] for p in parts], 1),
             torch.cat([p[1] for p in parts], 1))
            for positions, parts in (
                ((written, other_rows), (new_rows, decayed_rows)),
                ((preceding, other_columns), (new_columns, decayed_columns)),
            )
        )

    def _where_in(self, store, positions, queries: list) -> list:
        """For each tensor of slots in ``queries``: where each sits in ``positions`` (B,P)
        (each slot once but for N), -1 if absent. One scratch pass for all of them."""
        numbers = torch.arange(1, positions.shape[1] + 1, device=positions.device)
        numbers = numbers.to(torch.float32).expand(positions.shape)  # exact: P < 2^24
        flat = torch.cat([query.flatten(1) for query in queries], 1)
        found = store.lookup(positions, numbers, flat, self.memory_size).long() - 1
        parts = found.split([query[0].numel() for query in queries], 1)
        return [part.view(query.shape) for part, query in zip(parts, queries, strict=True)]

    def _read_weighting(self, tables, state, io, content_positions, content_weights):
        """Steps 5–6: forward and backward weightings from the links of last step's reads,
        mixed with the content weighting by the read modes and kept to the K largest.
        Returns (read positions, read weights, forward, backward)."""
        N, K = self.memory_size, self.sparse_reads
        flat = state.read_positions.flatten(1)
        shape = (*state.read_positions.shape, self.temporal_reads)
        successors, successor_weights = link_rows(tables, "successor", flat, N)
        predecessors, predecessor_weights = link_rows(tables, "predecessor", flat, N)
        links = tuple(
            table.view(shape)
            for table in (successors, successor_weights, predecessors, predecessor_weights)
        )
        forward, backward = addressing.sparse_directional_weights(*links, state.read_weights)
        read_positions, read_weights, _ = addressing.sparse_read_weighting(
            backward, (content_positions, content_weights), forward, io.read_modes, K, N
        )
        return read_positions, read_weights, forward, backward

    # ---- the step ----------------------------------------------------------------------
    def step(
        self,
        interface: torch.Tensor,
        state: SDNCState,
        record: bool = True,
        edit: StepEdits | None = None,
    ) -> tuple[torch.Tensor, SDNCState, SDNCRecord]:
        """One step; ``edit`` (``mann.intervention``) replaces the controller's gates, write
        vector, read strengths (and SDNC's read modes) and the read vectors."""
        edit = edit or NO_EDITS
        io = edit.interface(self.parse_interface(interface))
        N = self.memory_size
        store, tables = self._checkout(state)
        version = store.begin_step()
        try:
            least_used, write_positions, write_weights, path = self._write(io, state, store, tables)
            # Links and precedence carry no gradient (Rae et al. 2016).
            written = write_weights.detach()
            prev_precedence = (state.precedence_positions, state.precedence_weights)
            self._update_links(store, tables, write_positions, written, prev_precedence)
            precedence = addressing.sparse_precedence(*prev_precedence, write_positions, written, N)

            content_positions, content_weights, _, path = self._content_read(
                io, store, tables, path, read=False
            )
            read_positions, read_weights, forward, backward = self._read_weighting(
                tables, state, io, content_positions, content_weights
            )
            # An empty entry (weight 0, possible only if the mixture had fewer than K
            # non-zeros) reads slot N-1 with weight 0.
            read_positions = read_positions.clamp_max(N - 1)
            read_vectors, path = read_rows(path, tables, read_positions, read_weights)
            read_vectors = edit("read_vectors", read_vectors)
            store.touch(
                tables,
                torch.cat([write_positions, read_positions.flatten(1)], -1),
                torch.cat([write_weights, read_weights.flatten(1)], -1),
            )
        except BaseException:
            store.rollback(tables, version - 1)
            raise
        new_state = SDNCState(
            **tables,
            precedence_positions=precedence[0],
            precedence_weights=precedence[1],
            read_positions=read_positions,
            read_weights=read_weights,
            steps=torch.tensor(version),
            memory_gradient=path,
        )
        step_record = SDNCRecord(
            TablesAt(store, tables, version),
            N,
            N <= DENSE_LINK_LIMIT,
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
            precedence_positions=precedence[0],
            precedence_weights=precedence[1],
            prev_precedence_positions=state.precedence_positions,
            content_positions=content_positions,
            content_weights=content_weights,
            forward=forward,
            backward=backward,
            read_modes=io.read_modes,
        )
        return read_vectors, new_state, step_record
