"""What every memory access module offers the model: one interface for NTM, DNC, SAM, SDNC.

A memory is a ``torch.nn.Module`` holding only parameters (never recurrent state):

- ``interface_size``: how many numbers it needs from the controller each step;
- ``initial_state(batch_size, device, dtype=None)``: an immutable NamedTuple of tensors;
- ``initial_read_vectors(batch_size, device, dtype=None)``: r_0, (B,R,W);
- ``step(interface, state, record=True) -> (read_vectors (B,R,W), new_state, record)``.

``record`` is a NamedTuple whose field names are Trace field names; each value has the
batch first. The model stacks records over time only when asked to record. With
``record=False`` a memory may return None instead and take a fused fast path
(``mann.fused``) that computes the same step without keeping its intermediate quantities.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch


class MemoryAccess(Protocol):
    memory_size: int
    word_size: int
    read_heads: int
    write_heads: int
    interface_size: int

    def initial_state(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype | None = None
    ) -> NamedTuple: ...

    def initial_read_vectors(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype | None = None
    ) -> torch.Tensor: ...

    def step(
        self, interface: torch.Tensor, state: NamedTuple, record: bool = True
    ) -> tuple[torch.Tensor, NamedTuple, NamedTuple | None]: ...


def require_positive(name: str, value: int, minimum: int = 1) -> None:
    """Raise ValueError naming the parameter unless ``value`` is an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
