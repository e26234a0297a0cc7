"""No memory: the access of the memory-less baseline (``arch="lstm"``).

The NTM paper's case for external memory is a comparison with a controller alone. This module
lets that controller run behind the same interface as the four memories: it takes no
interface numbers, reads nothing (R = 0) and keeps no state. What a Trace of it shows where a
memory would be is the controller's own state, which the model records in its place.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class NoMemoryState(NamedTuple):
    pass


class NoMemoryRecord(NamedTuple):
    read_vectors: torch.Tensor  # (B,0,W): nothing read


class ControllerRecord(NamedTuple):
    """A memory-less step's record: the controller's state where a memory would be."""

    memory: torch.Tensor  # (B,H,S): per unit, its state tensors (LSTM h and c per layer)
    read_weights: torch.Tensor  # (B,0,H): no heads
    write_weights: torch.Tensor  # (B,0,H)
    read_vectors: torch.Tensor  # (B,0,W)


def controller_record(
    controller_state: tuple[torch.Tensor, ...], hidden: torch.Tensor, read_vectors: torch.Tensor
) -> ControllerRecord:
    """The record of a step from the controller's new state (a feed-forward controller has
    none: its output ``hidden`` stands in)."""
    columns = controller_state or (hidden,)
    memory = torch.stack(columns, dim=-1)
    no_heads = memory.new_zeros(memory.shape[0], 0, memory.shape[1])
    return ControllerRecord(memory, no_heads, no_heads, read_vectors)


class NoMemoryAccess(nn.Module):
    """Reads nothing, writes nothing: r_t is empty, so the controller sees x_t alone."""

    memory_size = 0
    read_heads = 0
    write_heads = 0
    interface_size = 0

    def __init__(self, word_size: int = 1) -> None:
        super().__init__()
        self.word_size = word_size

    def initial_state(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> NoMemoryState:
        return NoMemoryState()

    def initial_read_vectors(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, 0, self.word_size, device=device, dtype=dtype)

    def step(
        self, interface: torch.Tensor, state: NoMemoryState, record: bool = True, edit=None
    ) -> tuple[torch.Tensor, NoMemoryState, NoMemoryRecord]:
        reads = interface.new_zeros(interface.shape[0], 0, self.word_size)
        return reads, state, NoMemoryRecord(reads)
