"""Priority sort (Graves et al. 2014, NTM paper): read vectors with priorities, write the ones
of highest priority in descending order of priority.

For L input vectors of ``bits`` bits and K = min(num_outputs, L) outputs
(X = bits + 2, Y = bits, T = L + 1 + K):

- steps 0 .. L-1: input channels 0 .. bits-1 hold a random vector (Bernoulli(0.5) bits), input
  channel ``bits`` its priority, uniform in [-1, 1];
- step L: the delimiter, a 1 in input channel ``bits + 1``;
- steps L+1 .. L+K: zero input; the target at step L+1+j is the WHOLE input vector with the
  j-th highest priority (j = 0 first), its bits only (the priority is not part of the target);
  scored (mask 1); no other step is scored.

Vectors move as whole rows: each output row is one input row, never a column-wise sort of bits.

The length of this task is L, its number of inputs: L is drawn per sequence, uniform over
``min_inputs .. num_inputs`` (``min_inputs`` defaults to ``num_inputs``: the paper's fixed 20),
and ``with_lengths`` sets that range. ``num_outputs`` stays fixed and is capped at L, so short
sequences (early in a curriculum) are sorted completely and long ones (in generalisation tests)
still ask for the top ``num_outputs``. Shorter sequences are padded at the end, mask 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mann.tasks.base import (
    Batch,
    TaskBase,
    gather_steps,
    random_bits,
    require_int,
    require_range,
    sample_lengths,
    step_window,
)


@dataclass(frozen=True)
class PrioritySortTask(TaskBase):
    """Sort ``min_inputs .. num_inputs`` prioritised vectors; write the top ``num_outputs``."""

    name: ClassVar[str] = "priority_sort"
    length_fields: ClassVar[tuple[str, str]] = ("min_inputs", "num_inputs")

    bits: int = 8
    num_inputs: int = 20
    num_outputs: int = 16
    # The fewest inputs a sequence has; None means num_inputs (every sequence the same length).
    min_inputs: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.min_inputs is None:
            object.__setattr__(self, "min_inputs", self.num_inputs)
        require_int(owner, "bits", self.bits, 1)
        require_int(owner, "num_outputs", self.num_outputs, 1)
        require_range(owner, "min_inputs", self.min_inputs, "num_inputs", self.num_inputs)

    @property
    def min_length(self) -> int:
        """The length of this task is its number of inputs."""
        return self.min_inputs  # type: ignore[return-value]

    @property
    def max_length(self) -> int:
        """The length of this task is its number of inputs."""
        return self.num_inputs

    @property
    def input_size(self) -> int:
        """X: the bits, the priority channel and the delimiter channel."""
        return self.bits + 2

    @property
    def output_size(self) -> int:
        """Y: the bits."""
        return self.bits

    @property
    def max_steps(self) -> int:
        """T of the longest sequence: num_inputs + 1 + min(num_outputs, num_inputs)."""
        return self.steps_for(self.num_inputs)

    def outputs_for(self, inputs: int) -> int:
        """K, the number of sorted vectors asked for after ``inputs`` inputs."""
        return min(self.num_outputs, inputs)

    def steps_for(self, inputs: int) -> int:
        """T for a sequence of ``inputs`` inputs."""
        return inputs + 1 + self.outputs_for(inputs)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of sorting problems; inputs (B,T,bits+2), targets (B,T,bits)."""
        self._check_batch_size(batch_size)
        lengths = sample_lengths(batch_size, self.min_length, self.num_inputs, generator)
        longest = int(lengths.max())
        output_counts = lengths.clamp(max=self.num_outputs)
        total_steps = int((lengths + 1 + output_counts).max())
        vectors = random_bits((batch_size, longest, self.bits), generator)
        priorities = torch.rand(batch_size, longest, generator=generator) * 2.0 - 1.0

        steps = torch.arange(total_steps).unsqueeze(0)  # (1, T)
        item_rows = torch.arange(batch_size)
        shown = step_window(torch.zeros_like(lengths), lengths, total_steps)

        inputs = torch.zeros(batch_size, total_steps, self.input_size)
        # Bits and priority side by side, laid out together so they stay one row.
        rows = torch.cat([vectors, priorities.unsqueeze(-1)], dim=-1)
        inputs[..., : self.bits + 1] = gather_steps(rows, steps, shown)
        inputs[item_rows, lengths, self.bits + 1] = 1.0

        # Padding rows get -inf so they sort after every real input.
        sort_keys = torch.where(shown[:, :longest], priorities, float("-inf"))
        order = torch.sort(sort_keys, dim=1, descending=True, stable=True).indices  # (B, longest)
        answer_start = lengths + 1
        answered = step_window(answer_start, output_counts, total_steps)
        rank = (steps - answer_start.unsqueeze(1)).clamp(0, longest - 1)
        source_row = torch.gather(order, 1, rank)  # which input row is written at each step
        targets = gather_steps(vectors, source_row, answered)
        return Batch(inputs, targets, answered.to(torch.float32))
