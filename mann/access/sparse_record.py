"""What a sparse memory's step records: dense (B,…,N) fields built from the journal only when a
Trace asks for them."""

from __future__ import annotations

from typing import NamedTuple

import torch

from mann import addressing
from mann.access.slots import SlotStore


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
