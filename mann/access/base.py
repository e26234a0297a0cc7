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

from mann import addressing


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


class InterfaceLayout:
    """Where each named field of an interface vector lies: fields in order, with sizes.

    ``layout.offset("free_gates")``, ``layout.size(...)``, ``layout.slice(...)``,
    ``layout.total``; ``layout.split(interface)`` gives every field's columns by name. The
    access module's ``parse_interface``, the fused kernels' offsets (checked by tests) and the
    tests read positions from here: no bare indices into the interface.
    """

    def __init__(self, fields: list[tuple[str, int]]) -> None:
        self.fields = tuple(fields)
        self._offsets: dict[str, int] = {}
        offset = 0
        for name, size in self.fields:
            if name in self._offsets:
                raise ValueError(f"interface field {name!r} appears twice")
            self._offsets[name] = offset
            offset += size
        self.total = offset
        self._sizes = dict(self.fields)

    def offset(self, name: str) -> int:
        return self._offsets[name]

    def size(self, name: str) -> int:
        return self._sizes[name]

    def slice(self, name: str) -> slice:
        start = self._offsets[name]
        return slice(start, start + self._sizes[name])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    def split(self, interface: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each field's columns of ``interface`` (..., total), by name."""
        if interface.shape[-1] != self.total:
            raise ValueError(f"the interface has {interface.shape[-1]} columns, the layout "
                             f"{self.total}")  # fmt: skip
        parts = interface.split([size for _, size in self.fields], dim=-1)
        return dict(zip(self.names, parts, strict=True))


def content_lookup(
    memory: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor, masks: torch.Tensor | None
) -> torch.Tensor:
    """A content lookup as a memory has it: ``addressing.content_weights``, or with ``masks``
    (a memory's ``masked_content`` option) ``addressing.masked_content_weights``. The
    functions are looked up at each call, so a patched equation takes effect."""
    if masks is None:
        return addressing.content_weights(memory, keys, strengths)
    return addressing.masked_content_weights(memory, keys, strengths, masks)
