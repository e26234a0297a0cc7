"""Adding: read a sequence of digits, write their sum in binary.

This is the adding task of the ``dnc`` package (ixaxaar/pytorch-dnc, ``tasks/adding_task.py``),
made exact and BCE-scorable. There, each number is a one-hot over all but the last input
channel, the last channel marks the end, and the summed network output at the last step is
regressed onto the sum with a squared error. Here the sum is written in binary instead, so each
target is in {0, 1} and a model's answer is right or wrong bit by bit.

Encoding, for L digits each a value in 0 .. digits-1 (X = digits + 1, Y = sum_bits, T = L + 1):

- steps 0 .. L-1: a one-hot of the digit's value over input channels 0 .. digits-1;
- step L (the answer step): the delimiter, a 1 in input channel ``digits``; the target is the
  sum of the L values in binary, least significant bit first: target channel j holds bit j
  (worth 2 ** j); this is the only scored step (mask 1);
- every other target is 0; shorter items are padded at the end with zeros, mask 0.

As in the package, the answer is asked for on the delimiter step itself.

``sum_bits`` defaults to just enough bits for the largest sum, max_length * (digits - 1), and is
fixed from then on (``with_lengths`` keeps it, so the output layer does not change). A length
range whose largest sum does not fit raises ValueError: to test generalisation to longer
sequences, give ``sum_bits`` headroom when the task is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mann.tasks.base import Batch, TaskBase, require_int, require_range
from mann.tasks.digit_sequence import sample_digit_sequence

_MOST_SUM_BITS = 62


@dataclass(frozen=True)
class AddingTask(TaskBase):
    """Sum ``min_length .. max_length`` digits in ``0 .. digits-1``; answer in binary."""

    name: ClassVar[str] = "adding"

    digits: int = 5
    min_length: int = 2
    max_length: int = 10
    # Width of the binary answer; None means just enough for max_length * (digits - 1).
    sum_bits: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_int(owner, "digits", self.digits, 2)
        require_range(owner, "min_length", self.min_length, "max_length", self.max_length)
        needed = max(1, self.largest_sum.bit_length())
        if self.sum_bits is None:
            object.__setattr__(self, "sum_bits", needed)
        require_int(owner, "sum_bits", self.sum_bits, 1)
        if self.sum_bits > _MOST_SUM_BITS:  # type: ignore[operator]
            # Sums are int64 tensors; bit 63 is the sign.
            raise ValueError(
                f"{owner}: sum_bits must be <= {_MOST_SUM_BITS}, got sum_bits={self.sum_bits}"
            )
        if self.sum_bits < needed:  # type: ignore[operator]
            raise ValueError(
                f"{owner}: sum_bits must be >= {needed} to hold the largest sum "
                f"max_length * (digits - 1) = {self.largest_sum}, got sum_bits={self.sum_bits}"
            )

    @property
    def largest_sum(self) -> int:
        """The largest sum a sequence can have: max_length * (digits - 1)."""
        return self.max_length * (self.digits - 1)

    @property
    def input_size(self) -> int:
        """X: one channel per digit value, plus the delimiter channel."""
        return self.digits + 1

    @property
    def output_size(self) -> int:
        """Y: the bits of the sum."""
        return self.sum_bits  # type: ignore[return-value]

    @property
    def max_steps(self) -> int:
        """T of the longest sequence: max_length + 1."""
        return self.max_length + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of sums; inputs (B,T,digits+1), targets (B,T,sum_bits)."""
        self._check_batch_size(batch_size)
        sequence = sample_digit_sequence(
            batch_size, self.digits, self.min_length, self.max_length, generator
        )
        batch_rows = torch.arange(batch_size)
        total_steps = sequence.inputs.shape[1]
        sums = sequence.values.sum(dim=1)  # padding values are 0, so they add nothing
        place_values = 2 ** torch.arange(self.output_size)
        sum_bits = ((sums.unsqueeze(1) // place_values) % 2).to(torch.float32)  # (B, sum_bits)

        targets = torch.zeros(batch_size, total_steps, self.output_size)
        targets[batch_rows, sequence.lengths] = sum_bits
        mask = torch.zeros(batch_size, total_steps)
        mask[batch_rows, sequence.lengths] = 1.0
        return Batch(sequence.inputs, targets, mask)
