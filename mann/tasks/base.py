"""What every task offers: the Batch it makes, and the small pieces the task modules share.

A task is a frozen dataclass of options. It offers:

- ``name``: its key in ``mann.tasks.TASKS``;
- ``input_size`` (X) and ``output_size`` (Y): the channel widths of inputs and targets;
- ``max_steps``: T of the longest sequence the task can make with its current options;
- ``sample(batch_size, generator) -> Batch``: a seeded batch, every random number drawn from
  ``generator``, so the same seed always gives the same batch;
- ``with_lengths(min_length, max_length)``: a copy with a new length range (the curriculum
  hook; ``min_length == max_length`` gives fixed-length evaluation batches).

Items in one batch may have different lengths. A batch is as long as its longest item; the
shorter items are padded at the end with zero inputs, zero targets and mask 0.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple, Protocol, Self

import torch


class Batch(NamedTuple):
    """One batch of a task, every tensor float32.

    Attributes:
        inputs: (B, T, X) what the model reads at each step.
        targets: (B, T, Y) what it should write at each step, in [0, 1] (BCE-scorable).
        mask: (B, T) 1 on the steps whose output is scored, 0 elsewhere (including padding).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


class Task(Protocol):
    """The interface every task dataclass satisfies (see the module docstring)."""

    name: ClassVar[str]

    @property
    def input_size(self) -> int: ...

    @property
    def output_size(self) -> int: ...

    @property
    def max_steps(self) -> int: ...

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch: ...

    def with_lengths(self, min_length: int, max_length: int) -> Task: ...


class TaskBase:
    """What the task dataclasses share: ``with_lengths`` over the two fields that make their
    length range (``length_fields``), and the check of a batch size."""

    length_fields: ClassVar[tuple[str, str]] = ("min_length", "max_length")

    def with_lengths(self, min_length: int, max_length: int) -> Self:
        """A copy of this task drawing lengths from ``min_length .. max_length`` (what its
        ``length_fields`` hold: vectors, items, inputs; validated like the task's own)."""
        low, high = self.length_fields
        return dataclasses.replace(self, **{low: min_length, high: max_length})

    def _check_batch_size(self, batch_size: object) -> None:
        require_int(type(self).__name__, "batch_size", batch_size, 1)


def require_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Raise ValueError naming ``owner.name`` unless ``value`` is an int >= ``minimum``."""
    # bool is an int subclass, but True as a length is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")


def require_range(
    owner: str,
    min_name: str,
    min_value: object,
    max_name: str,
    max_value: object,
    minimum: int = 1,
) -> None:
    """Raise ValueError unless both bounds are ints >= ``minimum`` and min <= max."""
    require_int(owner, min_name, min_value, minimum)
    require_int(owner, max_name, max_value, minimum)
    if min_value > max_value:  # type: ignore[operator]
        raise ValueError(
            f"{owner}: {min_name} must be <= {max_name}, "
            f"got {min_name}={min_value} and {max_name}={max_value}"
        )


def sample_lengths(
    batch_size: int, min_length: int, max_length: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw one length per item, uniform over ``min_length..max_length`` inclusive.

    Returns:
        (B,) int64.
    """
    return torch.randint(min_length, max_length + 1, (batch_size,), generator=generator)


def random_bits(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Independent Bernoulli(0.5) bits of the given shape, float32."""
    return torch.randint(0, 2, shape, generator=generator).to(torch.float32)


def gather_steps(
    source: torch.Tensor, source_index: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Lay rows of ``source`` out on a timeline: step t gets ``source[b, source_index[b, t]]``.

    This is how every task writes "these vectors go on those steps" without a Python loop.

    Args:
        source: (B, S, C) the vectors to place.
        source_index: (B, T) or (1, T) int64, which source row each step shows (ignored where
            not valid). A (1, T) index is shared by every item.
        valid: (B, T) or (1, T) bool, the steps that show a vector; the others are zero.

    Returns:
        (B, T, C) float32.
    """
    batch_size, row_count, channels = source.shape
    # torch.gather does not broadcast: a (1, T) index would read item 0 for every item.
    source_index = source_index.expand(batch_size, -1)
    safe_index = source_index.clamp(0, max(row_count - 1, 0))
    placed = torch.gather(source, 1, safe_index.unsqueeze(-1).expand(-1, -1, channels))
    return torch.where(valid.unsqueeze(-1), placed, torch.zeros((), dtype=source.dtype))


def step_window(start: torch.Tensor, count: torch.Tensor, total_steps: int) -> torch.Tensor:
    """Which steps lie in ``start .. start + count - 1``, per item.

    Args:
        start: (B,) int64 first step of the window.
        count: (B,) int64 number of steps in it.
        total_steps: T.

    Returns:
        (B, T) bool.
    """
    steps = torch.arange(total_steps).unsqueeze(0)
    return (steps >= start.unsqueeze(1)) & (steps < (start + count).unsqueeze(1))
