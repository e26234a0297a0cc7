"""The memories behind the compat DNC, SAM and SDNC: this library's access modules
(``mann.access.dnc``, ``sam``, ``sdnc``) under the ``dnc`` 1.1.0 package's parameter names and
dict states. An adapter computes no equation of its own; it owns three things:

- the interface weights, named as in 1.1.0 (``interface_weights``, or with
  ``independent_linears`` one linear per field, ``read_keys_transform`` and so on), their rows
  in 1.1.0's order wherever 1.1.0 has the field; ``interface_projection`` reorders them into
  the access module's layout once per call, so a 1.1.0 DNC's weights drive the same fields;
- the conversion between 1.1.0's dict state (``export``) and a "carry": the access module's
  NamedTuple state with what the dict shows beyond it (``import_carry``, ``initial_carry``);
- what 1.1.0's ``debug=True`` returned per step: the dict of batch item 0 (``debug_entry``).

The DNC's dict holds exactly its state, so a dict converts both ways without loss. The sparse
memories' dicts are views in 1.1.0's keys and shapes (each key's meaning is listed in
docs/coming-from-dnc.md); the exact state (in-place tables, k-NN index, the path of the
memory's gradient) travels beside them under ``CARRIED_KEY``. A dict fed back with that entry
continues exactly; with its tensors detached it continues without the old graph; with a
tensor replaced or edited in place it is rebuilt from the visible keys.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mann import backends
from mann.access.dnc import DNCAccess, DNCState
from mann.access.sam import SAMAccess, SAMInterface, SAMState
from mann.access.sdnc import SDNCAccess, SDNCInterface, SDNCState
from mann.access.slots import memory_gradient_placeholder, rows_at, store_of
from mann.addressing import to_dense

# The entry of a sparse memory's dict that carries the exact state (``CarriedState``).
CARRIED_KEY = "mann_state"


class Field(NamedTuple):
    """One field of the interface vector, as 1.1.0 stores it."""

    name: str  # the access module's interface field
    transform: str  # 1.1.0's linear for it with independent_linears
    size: int
    # The stored rows in the access module's order, when they differ (the read modes).
    order: list[int] | None = None


class MemoryAdapter(nn.Module):
    """One access module (which has no parameters) with the interface weights under 1.1.0's
    names; subclasses convert its states to and from 1.1.0's dicts."""

    dict_keys: tuple[str, ...] = ()  # 1.1.0's keys of the memory dict

    def __init__(
        self,
        access: nn.Module,
        hidden_size: int,
        fields: list[Field],
        library_order: tuple[str, ...],
        independent_linears: bool,
        clip: float,
        orthogonal: bool,
    ) -> None:
        super().__init__()
        self.access = access
        self.fields = tuple(fields)
        self.independent_linears = bool(independent_linears)
        self.clip = clip
        if self.independent_linears:
            for field in self.fields:
                setattr(self, field.transform, nn.Linear(hidden_size, field.size))
        else:
            self.interface_weights = nn.Linear(hidden_size, sum(f.size for f in self.fields))
        if orthogonal:  # 1.1.0 initialises the sparse memories' interface weights so
            for linear in self._linears():
                nn.init.orthogonal_(linear.weight)
        rows = self._library_rows(library_order)
        if rows.numel() != access.interface_size:
            raise AssertionError("the stored interface fields do not cover the access layout")
        # Not persistent: a state_dict holds only 1.1.0's parameters.
        self.register_buffer("library_rows", rows, persistent=False)

    def _linears(self) -> list[nn.Linear]:
        if self.independent_linears:
            return [getattr(self, field.transform) for field in self.fields]
        return [self.interface_weights]

    def _library_rows(self, library_order: tuple[str, ...]) -> torch.Tensor:
        """Which stored row feeds each position of the access module's interface."""
        rows_by_field, start = {}, 0
        for field in self.fields:
            rows = torch.arange(start, start + field.size)
            rows_by_field[field.name] = rows if field.order is None else rows[field.order]
            start += field.size
        return torch.cat([rows_by_field[name] for name in library_order])

    def interface_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Wᵀ (H,I), b (I)) in the access module's layout: make once per call."""
        linears = self._linears()
        weight = torch.cat([linear.weight for linear in linears]).index_select(0, self.library_rows)
        bias = torch.cat([linear.bias for linear in linears]).index_select(0, self.library_rows)
        return weight.t(), bias

    def interface(self, hidden: torch.Tensor, projection) -> torch.Tensor:
        """ξ_t = W h_t + b, clipped to ±clip (this library's wiring; clip 0: no clipping)."""
        weight_t, bias = projection
        interface = torch.addmm(bias, hidden, weight_t)
        return interface.clamp(-self.clip, self.clip) if self.clip else interface

    def debug_entry(self, carry) -> dict[str, np.ndarray]:
        """1.1.0's per-step debug record: each key of batch item 0's dict, flattened."""
        exported = self.export(carry, items=slice(0, 1), carried=False)
        return {
            key: exported[key][0].detach().cpu().numpy().reshape(-1).copy()
            for key in self.dict_keys
        }

    # Subclasses: initial_carry, step, export, import_carry.


def _fused_step_usable(interface: torch.Tensor, state: NamedTuple) -> bool:
    """Whether a DNC step runs by the fused kernels: "reference" never, "auto" when they
    take the tensors (CPU, one float dtype, numba installed), "fused" always (or an error)."""
    name = backends.active()
    if name == "reference":
        return False
    from mann.fused.runtime import usable

    if usable(interface, *state):
        return True
    if name == "fused":
        raise backends.BackendError("backend 'fused' cannot run this DNC step: the kernels "
                                    "take CPU float32 or float64 tensors of one dtype and "
                                    "need numba")  # fmt: skip
    return False


def _expect(hidden: dict, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """hidden[key] as a tensor of ``shape``, or a ValueError naming the key."""
    if key not in hidden:
        raise ValueError(f"the memory state has no {key!r} entry (keys: {sorted(hidden)})")
    value = hidden[key]
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"the memory state's {key!r} must have shape {tuple(shape)}, got {got}")
    return value


def _as_dict(hidden) -> dict:
    if not isinstance(hidden, dict):
        raise ValueError(f"a memory state must be a dict, got {type(hidden).__name__}")
    return hidden


# ---------------------------------------------------------------------------------------
# DNC
# ---------------------------------------------------------------------------------------
class DNCMemory(MemoryAdapter):
    """The DNC's memory (``mann.access.dnc.DNCAccess``) with 1.1.0's interface weights and
    dict state. The interface has 1.1.0's size and fields, so its weights load unchanged."""

    dict_keys = (
        "memory", "link_matrix", "precedence", "read_weights", "write_weights", "usage_vector",
    )  # fmt: skip

    def __init__(
        self,
        hidden_size: int,
        nr_cells: int,
        cell_size: int,
        read_heads: int,
        independent_linears: bool,
        clip: float,
    ) -> None:
        access = DNCAccess(nr_cells, cell_size, read_heads)
        R, W = read_heads, cell_size
        # 1.1.0's read modes per head are (backward, forward, content); here (backward,
        # content, forward).
        mode_order = [3 * head + mode for head in range(R) for mode in (0, 2, 1)]
        fields = [  # 1.1.0's order
            Field("read_keys", "read_keys_transform", R * W),
            Field("read_strengths", "read_strengths_transform", R),
            Field("write_key", "write_key_transform", W),
            Field("write_strength", "write_strength_transform", 1),
            Field("erase", "erase_vector_transform", W),
            Field("write_vector", "write_vector_transform", W),
            Field("free_gates", "free_gates_transform", R),
            Field("allocation_gate", "allocation_gate_transform", 1),
            Field("write_gate", "write_gate_transform", 1),
            Field("read_modes", "read_modes_transform", 3 * R, mode_order),
        ]
        super().__init__(access, hidden_size, fields, access.layout.names, independent_linears,
                         clip, orthogonal=False)  # fmt: skip

    def initial_carry(self, batch_size: int, device, dtype) -> tuple[DNCState, None]:
        return self.access.initial_state(batch_size, device, dtype), None

    def step(self, interface: torch.Tensor, carry):
        """One step of ``DNCAccess``: by the fused kernels (``mann.fused.dnc.access_step``,
        tested equal to the reference) where the active backend (``mann.backend``) allows
        and they take the tensors, else by the reference ``DNCAccess.step``."""
        state = carry[0]
        if _fused_step_usable(interface, state):
            from mann.fused.dnc import access_step

            read_vectors, state, _ = access_step(self.access, interface, state)
        else:
            read_vectors, state, _ = self.access.step(interface, state, record=False)
        return read_vectors, (state, None)

    def export(self, carry, items: slice = slice(None), carried: bool = True) -> dict:
        """The state as 1.1.0's dict; its tensors are the state's (views), graph included."""
        state = carry[0]
        return {
            "memory": state.memory[items],
            "link_matrix": state.link[items].unsqueeze(1),  # 1.1.0: (B,1,N,N)
            "precedence": state.precedence[items].unsqueeze(1),  # (B,1,N)
            "read_weights": state.read_weights[items],
            "write_weights": state.write_weights[items],
            "usage_vector": state.usage[items],
        }

    def import_carry(self, hidden, batch_size: int, device, dtype):
        """A 1.1.0 DNC dict as a DNCState, without loss; the tensors are used, not changed."""
        hidden = _as_dict(hidden)
        access = self.access
        B, N, W, R = batch_size, access.memory_size, access.word_size, access.read_heads

        def get(key, shape):
            return _expect(hidden, key, shape).to(device=device, dtype=dtype)

        state = DNCState(
            memory=get("memory", (B, N, W)),
            usage=get("usage_vector", (B, N)),
            link=get("link_matrix", (B, 1, N, N))[:, 0],
            precedence=get("precedence", (B, 1, N))[:, 0],
            read_weights=get("read_weights", (B, R, N)),
            write_weights=get("write_weights", (B, 1, N)),
        )
        return state, None


# ---------------------------------------------------------------------------------------
# SAM and SDNC
# ---------------------------------------------------------------------------------------
class LastStep(NamedTuple):
    """What a sparse memory's dict shows beyond its state: the latest step's outputs."""

    read_vectors: torch.Tensor | None  # r_t (B,R,W)
    record: object | None  # the step's SAMRecord / SDNCRecord (dense views on demand)
    # For a state rebuilt from a dict (no record):
    write_weights: torch.Tensor | None = None  # (B,N)
    temporal_slots: torch.Tensor | None = None  # SDNC: forward and backward slots (B,2K_L)


class CarriedState:
    """The exact state of a sparse memory, carried in its dict under ``CARRIED_KEY``, with
    the visible tensors it was exported with (to notice when they were detached or edited)."""

    def __init__(self, state: NamedTuple, last: LastStep, signature: tuple, exported: dict):
        self.state = state
        self.last = last
        self.signature = signature
        self.exported = {key: (value, value._version) for key, value in exported.items()}

    def __repr__(self) -> str:
        return f"CarriedState({type(self.state).__name__}, step {int(self.state.steps)})"

    def status(self, hidden: dict) -> str:
        """"same", "detached" (every visible tensor the one exported or a detached view of
        it) or "edited" (a tensor replaced, moved, or changed in place)."""
        detached = False
        for key, (exported, version) in self.exported.items():
            value = hidden.get(key)
            if value is exported and exported._version == version:
                continue
            if (
                not isinstance(value, torch.Tensor)
                or value.shape != exported.shape
                or value.device != exported.device
                or value.data_ptr() != exported.data_ptr()
                or exported._version != version  # detach shares the version counter
            ):
                return "edited"
            detached = detached or (exported.requires_grad and not value.requires_grad)
        return "detached" if detached else "same"


def _detached(values: NamedTuple) -> NamedTuple:
    """A NamedTuple with every tensor that requires grad detached."""
    return type(values)(*(
        value.detach() if isinstance(value, torch.Tensor) and value.requires_grad else value
        for value in values
    ))  # fmt: skip


def _slots_as_float(slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # A sparse table's slot numbers beside its weights in one float tensor; -1 where empty.
    return torch.where(weights > 0, slots, -1).to(weights.dtype)


class SAMMemory(MemoryAdapter):
    """SAM's memory (``mann.access.sam.SAMAccess``) with 1.1.0's parameter names and dict
    keys. Its interface is this library's SAM's (read strengths, one interpolation gate), so
    1.1.0 SAM interface weights do not load."""

    dict_keys = (
        "memory", "visible_memory", "read_weights", "write_weights", "read_vectors",
        "least_used_mem", "usage", "read_positions",
    )  # fmt: skip

    def __init__(
        self,
        hidden_size: int,
        nr_cells: int,
        cell_size: int,
        read_heads: int,
        sparse_reads: int,
        independent_linears: bool,
        clip: float,
        temporal_reads: int | None = None,
    ) -> None:
        # As 1.1.0: no more reads (and links) per row than there are slots.
        sparse_reads = min(sparse_reads, nr_cells)
        R, W = read_heads, cell_size
        fields = [  # 1.1.0's fields first, in its order; then this library's own
            Field("read_keys", "read_query_transform", R * W),
            Field("write_vector", "write_vector_transform", W),
            Field("interpolation_gate", "interpolation_gate_transform", 1),
            Field("write_gate", "write_gate_transform", 1),
            Field("read_strengths", "read_strengths_transform", R),
        ]
        if temporal_reads is None:
            access = SAMAccess(nr_cells, cell_size, read_heads, sparse_reads)
            order, state_type = SAMInterface._fields, SAMState
        else:
            access = SDNCAccess(nr_cells, cell_size, read_heads, sparse_reads,
                                min(temporal_reads, nr_cells))  # fmt: skip
            fields.append(Field("read_modes", "read_modes_transform", 3 * R))
            order, state_type = SDNCInterface._fields, SDNCState
        super().__init__(access, hidden_size, fields, order, independent_linears, clip,
                         orthogonal=True)  # fmt: skip
        self.state_type = state_type

    @property
    def temporal_slots(self) -> int:
        """How many of read_positions' columns sit between the reads and the least used."""
        return 0

    @property
    def visible_size(self) -> int:
        """1.1.0's c: the columns of ``read_positions`` and rows of ``visible_memory``."""
        access = self.access
        return access.read_heads * access.sparse_reads + self.temporal_slots + 1

    def signature(self) -> tuple:
        access = self.access
        return (type(access).__name__, access.memory_size, access.word_size, access.read_heads,
                access.sparse_reads, getattr(access, "temporal_reads", None))  # fmt: skip

    # ---- stepping ----------------------------------------------------------------------
    def initial_carry(self, batch_size: int, device, dtype):
        return self.access.initial_state(batch_size, device, dtype), LastStep(None, None)

    def step(self, interface: torch.Tensor, carry):
        read_vectors, state, record = self.access.step(interface, carry[0])
        return read_vectors, (state, LastStep(read_vectors, record))

    # ---- the dict ----------------------------------------------------------------------
    def _own_tables(self, state: NamedTuple, items: slice) -> dict:
        """Copies of batch items ``items`` of the state's tables as of its step."""
        store = store_of(state.memory)
        names = self.access.table_names
        if store is None or store.version == int(state.steps):  # the live tables are its own
            return {name: getattr(state, name)[items].detach().clone() for name in names}
        return {name: table[items] for name, table in self.access.tables_at(state).items()}

    def _next_least_used(self, state: NamedTuple) -> torch.Tensor:
        """U (B,): the slot the next step's write will wipe, as that step will find it."""
        store, tables = self.access._checkout(state)  # in place only for the newest state
        return store.least_used(
            tables["last_access"],
            state.read_positions.flatten(1),
            state.read_weights.detach().flatten(1) > 0,
        )

    def _temporal_columns(self, state, last: LastStep, items: slice) -> list[torch.Tensor]:
        return []

    def export(self, carry, items: slice = slice(None), carried: bool = True) -> dict:
        """1.1.0's dict of the state (batch items ``items``), and the exact state under
        ``CARRIED_KEY`` when ``carried``. See docs/coming-from-dnc.md for each key."""
        state, last = carry
        access = self.access
        N = access.memory_size
        tables = self._own_tables(state, items)
        memory = tables["memory"]
        read_positions = state.read_positions[items].flatten(1)  # (B,R·K)
        least_used = self._next_least_used(state)[items]
        slots = torch.cat(
            [read_positions, *self._temporal_columns(state, last, items), least_used[:, None]],
            -1,
        )
        if last.record is not None:
            write_weights = last.record.write_weights[items].squeeze(1)
        elif last.write_weights is not None:
            write_weights = last.write_weights[items]
        else:
            write_weights = memory.new_zeros(memory.shape[:2])
        read_vectors = last.read_vectors
        if read_vectors is None:
            read_vectors = memory.new_zeros(memory.shape[0], access.read_heads, access.word_size)
        else:
            read_vectors = read_vectors[items]
        exported = {
            "memory": memory,
            "visible_memory": rows_at(memory, slots),
            # Each slot's read weight, summed over the read heads.
            "read_weights": to_dense(read_positions, state.read_weights[items].flatten(1), N),
            "write_weights": write_weights,
            "read_vectors": read_vectors,
            "least_used_mem": least_used[:, None],
            # Steps since each slot was last read or written with weight above δ.
            "usage": (int(state.steps) - tables["last_access"]).to(memory.dtype),
            "read_positions": slots,
            **self._link_entries(state, tables, items),
        }
        if carried:
            exported[CARRIED_KEY] = CarriedState(state, last, self.signature(), dict(exported))
        return exported

    def _link_entries(self, state, tables: dict, items: slice) -> dict:
        return {}

    # ---- from a dict -------------------------------------------------------------------
    def import_carry(self, hidden, batch_size: int, device, dtype):
        """The state a dict holds: the carried one (detached if its tensors were), else
        rebuilt from the visible keys."""
        hidden = _as_dict(hidden)
        carried = hidden.get(CARRIED_KEY)
        if (
            isinstance(carried, CarriedState)
            and carried.signature == self.signature()
            and carried.state.memory.shape[0] == batch_size
            and carried.state.memory.device == torch.device(device)
        ):
            status = carried.status(hidden)
            if status == "same":
                return carried.state, carried.last
            if status == "detached":
                state = _detached(carried.state)
                state = state._replace(memory_gradient=memory_gradient_placeholder(state.memory))
                return state, self._without_graph(state, carried.last)
        return self._rebuild(hidden, batch_size, device, dtype)

    def _without_graph(self, state, last: LastStep) -> LastStep:
        """``last`` detached, its record (which holds the step's graph) made dense."""
        read_vectors = None if last.read_vectors is None else last.read_vectors.detach()
        if last.record is None:
            return _detached(last._replace(read_vectors=read_vectors))
        columns = self._temporal_columns(state, last, slice(None))
        return LastStep(
            read_vectors,
            None,
            last.record.write_weights.squeeze(1).detach(),
            torch.cat(columns, -1) if columns else None,
        )

    def _rebuild(self, hidden: dict, batch_size: int, device, dtype):
        """A fresh chain of states from the visible keys: memory, usage, read positions and
        weights (a slot several heads read gives each an equal share of its weight)."""
        access = self.access
        B, N, W = batch_size, access.memory_size, access.word_size
        R, K = access.read_heads, access.sparse_reads
        memory = _expect(hidden, "memory", (B, N, W)).detach().to(device=device, dtype=dtype)
        usage = _expect(hidden, "usage", (B, N)).detach().to(device)
        positions = _expect(hidden, "read_positions", (B, self.visible_size)).to(device).long()
        dense_reads = _expect(hidden, "read_weights", (B, N)).to(device=device, dtype=dtype)
        read_positions = positions[:, : R * K].clamp(0, N - 1)
        counts = to_dense(read_positions, torch.ones_like(read_positions, dtype=dtype), N)
        read_weights = dense_reads.gather(1, read_positions) / counts.gather(1, read_positions)
        tables = {
            "memory": memory.clone(memory_format=torch.contiguous_format),
            # Slots are ranked by last use: steps since use, counted back from step 0.
            "last_access": (-usage).round().to(torch.int64).contiguous(),
        }
        tables.update(self._rebuild_links(hidden, B, device, dtype))
        fields = dict(
            tables,
            read_positions=read_positions.view(B, R, K).contiguous(),
            read_weights=read_weights.view(B, R, K),
            steps=torch.zeros((), dtype=torch.int64),
            memory_gradient=memory_gradient_placeholder(tables["memory"]),
        )
        fields.update(self._rebuild_precedence(hidden, B, device, dtype))
        state = self.state_type(**fields)
        read_vectors = hidden.get("read_vectors")
        if read_vectors is not None:
            read_vectors = _expect(hidden, "read_vectors", (B, R, W)).to(device=device,
                                                                          dtype=dtype)  # fmt: skip
        write_weights = hidden.get("write_weights")
        if write_weights is not None:
            write_weights = _expect(hidden, "write_weights", (B, N)).to(device=device,
                                                                       dtype=dtype)  # fmt: skip
        temporal = positions[:, R * K : R * K + self.temporal_slots]
        return state, LastStep(read_vectors, None, write_weights, temporal)

    def _rebuild_links(self, hidden, batch_size, device, dtype) -> dict:
        return {}

    def _rebuild_precedence(self, hidden, batch_size, device, dtype) -> dict:
        return {}


class SDNCMemory(SAMMemory):
    """The SDNC's memory (``mann.access.sdnc.SDNCAccess``) with 1.1.0's parameter names and
    dict keys. Its sparse link tables (K_L = temporal_reads entries per row) fill 1.1.0's
    (B, N, 2 K_L) link matrices: each row's K_L weights, then their slots."""

    dict_keys = SAMMemory.dict_keys + ("link_matrix", "rev_link_matrix", "precedence")

    def __init__(
        self,
        hidden_size: int,
        nr_cells: int,
        cell_size: int,
        read_heads: int,
        sparse_reads: int,
        temporal_reads: int,
        independent_linears: bool,
        clip: float,
    ) -> None:
        super().__init__(hidden_size, nr_cells, cell_size, read_heads, sparse_reads,
                         independent_linears, clip, temporal_reads=temporal_reads)  # fmt: skip

    @property
    def temporal_slots(self) -> int:
        return 2 * self.access.temporal_reads

    def _temporal_columns(self, state, last: LastStep, items: slice) -> list[torch.Tensor]:
        """The K_L slots of largest forward weight, then of largest backward weight, summed
        over the heads (1.1.0 read those slots besides the content reads)."""
        links = self.access.temporal_reads
        if last.record is not None:
            return [
                weights[items].sum(1).topk(links, dim=-1).indices
                for weights in (last.record.forward_weights, last.record.backward_weights)
            ]
        if last.temporal_slots is not None:
            return [last.temporal_slots[items]]
        batch = state.read_positions[items].shape[0]
        first = torch.arange(links, device=state.read_positions.device)
        return [first.repeat(2).expand(batch, -1)]  # no step yet: zero weights anyway

    def _link_entries(self, state, tables: dict, items: slice) -> dict:
        N = self.access.memory_size
        entries = {}
        for key, kind in (("link_matrix", "predecessor"), ("rev_link_matrix", "successor")):
            slots = tables[f"link_{kind}s"][:, :N]  # row N is the empty sink
            weights = tables[f"link_{kind}_weights"][:, :N]
            entries[key] = torch.cat([weights, _slots_as_float(slots, weights)], -1)
        weights = state.precedence_weights[items]
        positions = state.precedence_positions[items]
        entries["precedence"] = torch.cat([weights, _slots_as_float(positions, weights)], -1)
        return entries

    def _rebuild_links(self, hidden, batch_size, device, dtype) -> dict:
        N, links = self.access.memory_size, self.access.temporal_reads
        tables = {}
        for key, kind in (("link_matrix", "predecessor"), ("rev_link_matrix", "successor")):
            packed = _expect(hidden, key, (batch_size, N, 2 * links)).detach().to(device)
            weights, slots = packed[..., :links].to(dtype), packed[..., links:].round().long()
            empty = (slots < 0) | (weights <= 0)
            sink = torch.zeros(batch_size, 1, links, device=device)  # row N: always empty
            tables[f"link_{kind}s"] = torch.cat([slots.masked_fill(empty, N), sink.long()], 1)
            tables[f"link_{kind}_weights"] = torch.cat(
                [weights.masked_fill(empty, 0.0), sink.to(dtype)], 1
            )
        return tables

    def _rebuild_precedence(self, hidden, batch_size, device, dtype) -> dict:
        N, links = self.access.memory_size, self.access.temporal_reads
        packed = _expect(hidden, "precedence", (batch_size, 2 * links)).detach().to(device)
        weights, positions = packed[:, :links].to(dtype), packed[:, links:].round().long()
        empty = (positions < 0) | (weights <= 0)
        return {
            "precedence_positions": positions.masked_fill(empty, N),
            "precedence_weights": weights.masked_fill(empty, 0.0),
        }
