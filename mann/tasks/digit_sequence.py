"""The input the adding and argmax tasks share: a sequence of one-hot digits, then a delimiter.

For L digits, each a value in 0 .. digits-1 (X = digits + 1):

- steps 0 .. L-1: a one-hot of the digit's value over input channels 0 .. digits-1;
- step L: the delimiter, a 1 in input channel ``digits`` (the answer step).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mann.tasks.base import sample_lengths


class DigitSequence(NamedTuple):
    """A batch of digit sequences.

    Attributes:
        values: (B, longest) int64 digit values; entries at or after an item's length are 0
            and mean nothing.
        lengths: (B,) int64 L of each item; its answer step is L.
        inputs: (B, longest + 1, digits + 1) float32, the encoding above, zero-padded.
    """

    values: torch.Tensor
    lengths: torch.Tensor
    inputs: torch.Tensor


def sample_digit_sequence(
    batch_size: int,
    digits: int,
    min_length: int,
    max_length: int,
    generator: torch.Generator,
) -> DigitSequence:
    """Draw L uniform over ``min_length .. max_length`` and L uniform digits per item."""
    lengths = sample_lengths(batch_size, min_length, max_length, generator)
    longest = int(lengths.max())
    values = torch.randint(0, digits, (batch_size, longest), generator=generator)
    present = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)  # (B, longest)
    values = torch.where(present, values, 0)

    inputs = torch.zeros(batch_size, longest + 1, digits + 1)
    one_hot = torch.nn.functional.one_hot(values, digits).to(torch.float32)
    inputs[:, :longest, :digits] = one_hot * present.unsqueeze(-1)
    inputs[torch.arange(batch_size), lengths, digits] = 1.0
    return DigitSequence(values, lengths, inputs)
