"""Argmax: read a sequence of digits, point at the position of the largest.

This is the argmax task of the ``dnc`` package (ixaxaar/pytorch-dnc, ``tasks/argmax_task.py``),
made exact and BCE-scorable. There, each number is a one-hot over all but the last input
channel, the last channel marks the end, and the summed network output at the last step is
regressed onto the INDEX of the maximum (its position in the sequence, not its value), the
latest position winning a tie. Here that same position is the answer, written as a one-hot, so
each target is in {0, 1}.

Encoding, for L digits each a value in 0 .. digits-1 (X = digits + 1, Y = num_positions,
T = L + 1):

- steps 0 .. L-1: a one-hot of the digit's value over input channels 0 .. digits-1;
- step L (the answer step): the delimiter, a 1 in input channel ``digits``; the target is a
  one-hot over channels 0 .. num_positions-1 of the position p in 0 .. L-1 holding the largest
  value; when several positions hold it, p is the LAST of them (as in the package); this is
  the only scored step (mask 1);
- every other target is 0; shorter items are padded at the end with zeros, mask 0.

As in the package, the answer is asked for on the delimiter step itself.

``num_positions`` defaults to ``max_length`` and is fixed from then on (``with_lengths`` keeps
it, so the output layer does not change). A length range longer than ``num_positions`` raises
ValueError: to test generalisation to longer sequences, give it headroom when the task is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mann.tasks.base import Batch, TaskBase, require_int, require_range
from mann.tasks.digit_sequence import sample_digit_sequence


@dataclass(frozen=True)
class ArgmaxTask(TaskBase):
    """Find the (last) position of the largest of ``min_length .. max_length`` digits."""

    name: ClassVar[str] = "argmax"

    digits: int = 5
    min_length: int = 2
    max_length: int = 10
    # Width of the one-hot answer; None means max_length.
    num_positions: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_int(owner, "digits", self.digits, 2)
        require_range(owner, "min_length", self.min_length, "max_length", self.max_length)
        if self.num_positions is None:
            object.__setattr__(self, "num_positions", self.max_length)
        require_int(owner, "num_positions", self.num_positions, 1)
        if self.num_positions < self.max_length:  # type: ignore[operator]
            raise ValueError(
                f"{owner}: num_positions must be >= max_length = {self.max_length} so every "
                f"position has a channel, got num_positions={self.num_positions}"
            )

    @property
    def input_size(self) -> int:
        """X: one channel per digit value, plus the delimiter channel."""
        return self.digits + 1

    @property
    def output_size(self) -> int:
        """Y: one channel per position."""
        return self.num_positions  # type: ignore[return-value]

    @property
    def max_steps(self) -> int:
        """T of the longest sequence: max_length + 1."""
        return self.max_length + 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of argmax problems; inputs (B,T,digits+1), targets (B,T,num_positions)."""
        self._check_batch_size(batch_size)
        sequence = sample_digit_sequence(
            batch_size, self.digits, self.min_length, self.max_length, generator
        )
        batch_rows = torch.arange(batch_size)
        longest = sequence.values.shape[1]
        total_steps = sequence.inputs.shape[1]
        positions = torch.arange(longest).unsqueeze(0)  # (1, longest)
        # Rank by value first, then by position, so a tie goes to the later position;
        # padding gets -1 and never wins.
        rank_keys = sequence.values * longest + positions
        rank_keys = torch.where(positions < sequence.lengths.unsqueeze(1), rank_keys, -1)
        answer_position = rank_keys.argmax(dim=1)  # (B,)

        targets = torch.zeros(batch_size, total_steps, self.output_size)
        targets[batch_rows, sequence.lengths, answer_position] = 1.0
        mask = torch.zeros(batch_size, total_steps)
        mask[batch_rows, sequence.lengths] = 1.0
        return Batch(sequence.inputs, targets, mask)
