"""Repeat copy (Graves et al. 2014, NTM paper): read a sequence and a count, write it that often.

Encoding, for L vectors of ``bits`` bits repeated R times (X = bits + 2, Y = bits + 1,
T = L*R + L + 3):

- steps 0 .. L-1: input channels 0 .. bits-1 hold the vectors (Bernoulli(0.5) bits);
- step L: the delimiter, a 1 in input channel ``bits``;
- step L+1: the repeat count, R / ``repeat_scale`` in input channel ``bits + 1``;
- steps L+2 .. L+1+L*R: zero input; the target is the sequence R times over, i.e. the vector
  of step (t - L - 2) mod L in target channels 0 .. bits-1 (channel ``bits`` is 0);
- step L+2+L*R: the end marker, target 1 in channel ``bits`` and 0 in the bit channels;
- scored (mask 1): all L*R + 1 output steps, every target channel; nothing else is.

``repeat_scale`` defaults to ``max_repeats`` at construction, so training counts lie in
(0, 1]. It is then a fixed part of the encoding: ``with_repeats`` and ``with_lengths`` keep it,
so a model trained on 1..10 repeats and evaluated with ``task.with_repeats(1, 20)`` sees 20
repeats as 2.0 - the same linear scale it learned, extended, rather than a silently rescaled
input. (Dividing by the largest count of each new task would make "10" mean 1.0 in training
and 0.5 in evaluation.)

L and R are drawn per item, uniform over ``min_length .. max_length`` and
``min_repeats .. max_repeats``; shorter items are padded at the end with zeros, mask 0.
"""

from __future__ import annotations

import dataclasses
import math
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
class RepeatCopyTask(TaskBase):
    """Copy a sequence of ``min_length .. max_length`` vectors ``min_repeats .. max_repeats``
    times, then mark the end."""

    name: ClassVar[str] = "repeat_copy"

    bits: int = 8
    min_length: int = 1
    max_length: int = 10
    min_repeats: int = 1
    max_repeats: int = 10
    # The count channel shows R / repeat_scale; None means max_repeats (fixed from then on).
    repeat_scale: float | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_int(owner, "bits", self.bits, 1)
        require_range(owner, "min_length", self.min_length, "max_length", self.max_length)
        require_range(owner, "min_repeats", self.min_repeats, "max_repeats", self.max_repeats)
        if self.repeat_scale is None:
            # Frozen dataclass: resolve the default once so copies keep the same scale.
            object.__setattr__(self, "repeat_scale", float(self.max_repeats))
        scale = self.repeat_scale
        if (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ValueError(
                f"{owner}: repeat_scale must be a positive finite number (or None for "
                f"max_repeats), got {scale!r}"
            )
        object.__setattr__(self, "repeat_scale", float(scale))

    @property
    def input_size(self) -> int:
        """X: the bits, the delimiter channel and the repeat-count channel."""
        return self.bits + 2

    @property
    def output_size(self) -> int:
        """Y: the bits and the end-marker channel."""
        return self.bits + 1

    @property
    def max_steps(self) -> int:
        """T of the longest sequence: max_length * max_repeats + max_length + 3."""
        return self.steps_for(self.max_length, self.max_repeats)

    @staticmethod
    def steps_for(length: int, repeats: int) -> int:
        """T for ``length`` vectors repeated ``repeats`` times."""
        return length * repeats + length + 3

    def with_repeats(self, min_repeats: int, max_repeats: int) -> RepeatCopyTask:
        """A copy drawing repeat counts from ``min_repeats .. max_repeats``, same count scale."""
        return dataclasses.replace(self, min_repeats=min_repeats, max_repeats=max_repeats)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of repeat-copy problems; inputs (B,T,bits+2), targets (B,T,bits+1)."""
        self._check_batch_size(batch_size)
        lengths = sample_lengths(batch_size, self.min_length, self.max_length, generator)
        repeats = sample_lengths(batch_size, self.min_repeats, self.max_repeats, generator)
        longest = int(lengths.max())
        total_steps = int((lengths * repeats + lengths + 3).max())
        sequence = random_bits((batch_size, longest, self.bits), generator)

        steps = torch.arange(total_steps).unsqueeze(0)  # (1, T)
        item_rows = torch.arange(batch_size)
        delimiter_channel = self.bits
        count_channel = self.bits + 1
        end_channel = self.bits

        inputs = torch.zeros(batch_size, total_steps, self.input_size)
        shown = step_window(torch.zeros_like(lengths), lengths, total_steps)
        inputs[..., : self.bits] = gather_steps(sequence, steps, shown)
        inputs[item_rows, lengths, delimiter_channel] = 1.0
        scaled_counts = repeats.to(torch.float32) / self.repeat_scale
        inputs[item_rows, lengths + 1, count_channel] = scaled_counts

        answer_start = lengths + 2
        answer_steps = lengths * repeats
        repeated = step_window(answer_start, answer_steps, total_steps)
        # Step answer_start + j shows vector j mod L: the sequence over and over.
        source_index = (steps - answer_start.unsqueeze(1)).clamp(min=0) % lengths.unsqueeze(1)
        targets = torch.zeros(batch_size, total_steps, self.output_size)
        targets[..., : self.bits] = gather_steps(sequence, source_index, repeated)
        end_step = answer_start + answer_steps
        targets[item_rows, end_step, end_channel] = 1.0

        scored = step_window(answer_start, answer_steps + 1, total_steps)
        return Batch(inputs, targets, scored.to(torch.float32))
