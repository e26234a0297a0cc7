"""Copy (Graves et al. 2014, NTM paper): read a sequence of random bit vectors, write it back.

Encoding, for a sequence of L vectors of ``bits`` bits (X = bits + 1, Y = bits, T = 2L + 1):

- steps 0 .. L-1: input channels 0 .. bits-1 hold the vectors (Bernoulli(0.5) bits);
- step L: the delimiter, a 1 in input channel ``bits`` (all other channels 0);
- steps L+1 .. 2L: zero input; the target is the vector of step t - L - 1, scored (mask 1);
- no other step is scored; items shorter than the batch's longest are padded with zeros, mask 0.

L is drawn per item, uniform over ``min_length .. max_length``.
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
class CopyTask(TaskBase):
    """Copy a sequence of ``min_length .. max_length`` random vectors of ``bits`` bits."""

    name: ClassVar[str] = "copy"

    bits: int = 8
    min_length: int = 1
    max_length: int = 20

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_int(owner, "bits", self.bits, 1)
        require_range(owner, "min_length", self.min_length, "max_length", self.max_length)

    @property
    def input_size(self) -> int:
        """X: the bits plus the delimiter channel."""
        return self.bits + 1

    @property
    def output_size(self) -> int:
        """Y: the bits."""
        return self.bits

    @property
    def max_steps(self) -> int:
        """T of the longest sequence: 2 * max_length + 1."""
        return self.steps_for(self.max_length)

    @staticmethod
    def steps_for(length: int) -> int:
        """T for a sequence of ``length`` vectors: input, delimiter, output."""
        return 2 * length + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of ``batch_size`` copy problems; inputs (B,T,bits+1), targets (B,T,bits)."""
        self._check_batch_size(batch_size)
        lengths = sample_lengths(batch_size, self.min_length, self.max_length, generator)
        longest = int(lengths.max())
        total_steps = self.steps_for(longest)
        sequence = random_bits((batch_size, longest, self.bits), generator)

        steps = torch.arange(total_steps).unsqueeze(0)  # (1, T)
        item_rows = torch.arange(batch_size)
        shown = step_window(torch.zeros_like(lengths), lengths, total_steps)
        answer_start = lengths + 1
        answered = step_window(answer_start, lengths, total_steps)

        inputs = torch.zeros(batch_size, total_steps, self.input_size)
        inputs[..., : self.bits] = gather_steps(sequence, steps, shown)
        inputs[item_rows, lengths, self.bits] = 1.0

        targets = gather_steps(sequence, steps - answer_start.unsqueeze(1), answered)
        return Batch(inputs, targets, answered.to(torch.float32))
