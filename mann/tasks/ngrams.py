"""Dynamic N-grams (Graves et al. 2014, NTM paper, section 4.4): predict the next bit of a
sequence drawn from a random 6-gram model, learning that model as the sequence goes.

Each sequence has its own 6-gram model: for every one of the 2^5 = 32 contexts of five bits a
probability p_c of the next bit being 1, drawn from Beta(½, ½). The first five bits are fair
coin flips; after them, bit t is 1 with probability p_c of the five bits before it.

Encoding, for a sequence of L bits x_0 .. x_{L-1} (X = 1, Y = 1, T = L - 1):

- step t (0 .. L-2): input channel 0 holds x_t; the target is x_{t+1};
- scored (mask 1) where x_{t+1} has a full context, t + 1 >= 5; the first four steps are not;
- shorter sequences of a batch are padded at the end with zeros, mask 0.

The quantity to compare is the cost in bits per sequence. ``optimal_probabilities`` is the
Bayes-optimal predictor (the model is unknown, its prior known): a context seen N1 times
followed by 1 and N0 times by 0 predicts P(1) = (N1 + ½) / (N1 + N0 + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from mann.tasks.base import Batch, TaskBase, random_bits, require_range, sample_lengths

CONTEXT_BITS = 5  # a 6-gram: five bits of context, then the predicted one
CONTEXTS = 2**CONTEXT_BITS


def context_index(bits: torch.Tensor) -> torch.Tensor:
    """The context of each step: the five bits before it read as a binary number, the oldest
    the most significant. bits (B,L) -> (B,L) int64, -1 where there are fewer than five."""
    batch, length = bits.shape
    index = torch.full((batch, length), -1, dtype=torch.int64)
    if length <= CONTEXT_BITS:
        return index
    windows = bits.long().unfold(1, CONTEXT_BITS, 1)[:, :-1]  # (B, L-5, 5): bits t-5 .. t-1
    weights = 2 ** torch.arange(CONTEXT_BITS - 1, -1, -1)
    index[:, CONTEXT_BITS:] = (windows * weights).sum(-1)
    return index


@dataclass(frozen=True)
class NGramsTask(TaskBase):
    """Predict each next bit of ``min_length .. max_length``-bit sequences of a random 6-gram."""

    name: ClassVar[str] = "ngrams"

    min_length: int = 200
    max_length: int = 200

    def __post_init__(self) -> None:
        require_range(type(self).__name__, "min_length", self.min_length, "max_length",
                      self.max_length, minimum=CONTEXT_BITS + 2)  # fmt: skip

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return 1

    @property
    def max_steps(self) -> int:
        return self.max_length - 1

    def sample_bits(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The sequences themselves: (B, L) float32 bits, L the batch's longest length; bits
        past an item's own length are 0."""
        return self._draw(batch_size, generator)[0]

    def _draw(self, batch_size: int, generator: torch.Generator):
        self._check_batch_size(batch_size)
        lengths = sample_lengths(batch_size, self.min_length, self.max_length, generator)
        longest = int(lengths.max())
        # Beta(½, ½) as the arcsine law: sin²(πU/2) for U uniform.
        uniform = torch.rand(batch_size, CONTEXTS, generator=generator, dtype=torch.float64)
        probabilities = torch.sin(math.pi * uniform / 2) ** 2
        draws = torch.rand(batch_size, longest, generator=generator, dtype=torch.float64)
        bits = torch.zeros(batch_size, longest)
        bits[:, :CONTEXT_BITS] = random_bits((batch_size, CONTEXT_BITS), generator)
        weights = 2 ** torch.arange(CONTEXT_BITS - 1, -1, -1)
        rows = torch.arange(batch_size)
        for step in range(CONTEXT_BITS, longest):  # each bit depends on the five before it
            context = (bits[:, step - CONTEXT_BITS : step].long() * weights).sum(-1)
            bits[:, step] = (draws[:, step] < probabilities[rows, context]).float()
        keep = torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)
        return bits * keep, lengths

    def optimal_cost_bits(self, batch: Batch) -> torch.Tensor:
        """The Bayes-optimal predictor's cost in bits per sequence on ``batch``: (B,)."""
        return optimal_cost_bits(batch)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Inputs (B,T,1) the bits, targets (B,T,1) the next bits, T = longest length - 1."""
        bits, lengths = self._draw(batch_size, generator)
        steps = bits.shape[1] - 1
        inputs = bits[:, :-1].unsqueeze(-1)
        targets = bits[:, 1:].unsqueeze(-1)
        step = torch.arange(steps).unsqueeze(0)
        mask = (step + 1 >= CONTEXT_BITS) & (step + 1 < lengths.unsqueeze(1))
        inputs = inputs * (step < lengths.unsqueeze(1) - 1).unsqueeze(-1)
        return Batch(inputs, targets * mask.unsqueeze(-1), mask.float())


def optimal_probabilities(inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """The Bayes-optimal P(next bit = 1) at every step of an ``ngrams`` batch: (B,T).

    At step t the next bit's context has been seen N1 times followed by 1 and N0 times by 0
    earlier in the sequence; with a Beta(½, ½) prior, P(1) = (N1 + ½) / (N1 + N0 + 1).
    Steps without a full context (not scored) get ½.
    """
    batch, steps, _ = inputs.shape
    # x_0 .. x_T: the inputs, then the last target (targets of unscored steps are zero).
    following = torch.cat([inputs[:, 1:, 0], targets[:, -1:, 0]], dim=1)
    following = torch.where(mask > 0, targets[:, :, 0], following)
    bits = torch.cat([inputs[:, :1, 0], following], dim=1)
    contexts = context_index(bits)[:, 1:]  # the context of x_{t+1}, per step t
    ones = torch.zeros(batch, CONTEXTS, dtype=torch.float64)
    seen = torch.zeros(batch, CONTEXTS, dtype=torch.float64)
    probabilities = torch.full((batch, steps), 0.5, dtype=torch.float64)
    rows = torch.arange(batch)
    for step in range(steps):
        context = contexts[:, step]
        valid = (context >= 0) & (mask[:, step] > 0)
        safe = context.clamp(min=0)
        estimate = (ones[rows, safe] + 0.5) / (seen[rows, safe] + 1.0)
        probabilities[:, step] = torch.where(valid, estimate, probabilities[:, step])
        # Then the bit is seen: it updates its context's counts.
        bit = bits[:, step + 1].double()
        ones[rows, safe] += torch.where(valid, bit, torch.zeros_like(bit))
        seen[rows, safe] += valid.double()
    return probabilities


def optimal_cost_bits(batch: Batch) -> torch.Tensor:
    """The Bayes-optimal predictor's cost in bits per sequence, summed over scored steps: (B,)."""
    probabilities = optimal_probabilities(*batch)
    bits = batch.targets[:, :, 0].double()
    likelihood = torch.where(bits > 0.5, probabilities, 1.0 - probabilities)
    return -(torch.log2(likelihood) * batch.mask.double()).sum(-1)
