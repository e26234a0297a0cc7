"""Multi-copy (DNC paper, Extended Data Fig. 1): several copy rounds back to back in one episode.

With more items in an episode than memory slots, a model can only succeed by reusing memory:
a DNC frees what it has read (free gates), an NTM overwrites as it walks its ring.

Encoding, for R rounds of lengths L_1 .. L_R (X = bits + 1, Y = bits):

- each round is exactly a copy episode of its own length L, starting where the previous
  round ended: L steps of random bit vectors in input channels 0 .. bits-1, one delimiter
  step (a 1 in input channel ``bits``), then L zero-input steps whose targets are the round's
  vectors in order, scored (mask 1);
- T = sum over rounds of (2 L_r + 1); no other step is scored; shorter episodes of a batch
  are padded at the end with zeros, mask 0.

R is drawn per episode, uniform over ``min_rounds .. max_rounds``; each round's L
independently, uniform over ``min_length .. max_length``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from mann.tasks.base import Batch, TaskBase, gather_steps, random_bits, require_int, require_range


@dataclass(frozen=True)
class MultiCopyTask(TaskBase):
    """R copy rounds (R in ``min_rounds .. max_rounds``) of ``min_length .. max_length`` vectors."""

    name: ClassVar[str] = "multi_copy"

    bits: int = 8
    min_length: int = 1
    max_length: int = 5
    min_rounds: int = 1
    max_rounds: int = 6

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_int(owner, "bits", self.bits, 1)
        require_range(owner, "min_length", self.min_length, "max_length", self.max_length)
        require_range(owner, "min_rounds", self.min_rounds, "max_rounds", self.max_rounds)

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
        """T of the longest episode: max_rounds rounds of max_length vectors."""
        return self.max_rounds * (2 * self.max_length + 1)

    def with_rounds(self, min_rounds: int, max_rounds: int) -> MultiCopyTask:
        """A copy of this task drawing the number of rounds from ``min_rounds .. max_rounds``."""
        return dataclasses.replace(self, min_rounds=min_rounds, max_rounds=max_rounds)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of episodes; inputs (B,T,bits+1), targets (B,T,bits), mask (B,T)."""
        self._check_batch_size(batch_size)
        rounds = torch.randint(
            self.min_rounds, self.max_rounds + 1, (batch_size,), generator=generator
        )
        most_rounds = self.max_rounds
        lengths = torch.randint(
            self.min_length, self.max_length + 1, (batch_size, most_rounds), generator=generator
        )
        present = torch.arange(most_rounds).unsqueeze(0) < rounds.unsqueeze(1)  # (B, R)
        lengths = torch.where(present, lengths, torch.zeros_like(lengths))
        vectors = random_bits((batch_size, most_rounds, self.max_length, self.bits), generator)

        round_steps = torch.where(present, 2 * lengths + 1, torch.zeros_like(lengths))
        round_ends = round_steps.cumsum(1)  # (B, R) first step after each round
        round_starts = round_ends - round_steps
        total_steps = int(round_ends[:, -1].max())

        steps = torch.arange(total_steps).expand(batch_size, -1).contiguous()  # (B, T)
        # Which round each step lies in: the first round that ends after it (absent rounds
        # have zero steps and are skipped); past the last round it is padding.
        round_of_step = torch.searchsorted(round_ends, steps, right=True)
        in_episode = round_of_step < rounds.unsqueeze(1)
        round_index = round_of_step.clamp(max=most_rounds - 1)
        offset = steps - round_starts.gather(1, round_index)
        length = lengths.gather(1, round_index)

        shown = in_episode & (offset < length)
        delimiter = in_episode & (offset == length)
        answered = in_episode & (offset > length)
        flat_vectors = vectors.reshape(batch_size, most_rounds * self.max_length, self.bits)
        shown_row = round_index * self.max_length + offset
        answer_row = round_index * self.max_length + offset - length - 1

        inputs = torch.zeros(batch_size, total_steps, self.input_size)
        inputs[..., : self.bits] = gather_steps(flat_vectors, shown_row, shown)
        inputs[..., self.bits] = delimiter.to(torch.float32)
        targets = gather_steps(flat_vectors, answer_row, answered)
        return Batch(inputs, targets, answered.to(torch.float32))
