"""Associative recall (Graves et al. 2014, NTM paper): shown a list of items and then one of
them, write the item that came next in the list.

An item is ``item_length`` vectors of ``bits`` bits. For N items, with k = item_length
(X = bits + 2, Y = bits, T = (N + 2)(k + 1)):

- for item i in 0 .. N-1, its block is steps i(k+1) .. i(k+1)+k:
  step i(k+1) is an item delimiter, a 1 in input channel ``bits``;
  steps i(k+1)+1 .. i(k+1)+k hold the item's vectors in input channels 0 .. bits-1;
- step N(k+1): a query delimiter, a 1 in input channel ``bits + 1``;
- steps N(k+1)+1 .. N(k+1)+k: a copy of item q, with q uniform over 0 .. N-2 (never the last
  item, which has no successor);
- step N(k+1)+k+1: the query delimiter again (channel ``bits + 1``);
- steps N(k+1)+k+2 .. N(k+1)+2k+1 (the last k steps): zero input; the target is item q+1,
  one vector per step, scored (mask 1); no other step is scored.

The items of one sequence are distinct (duplicates are redrawn), so "the item after the query"
is always one item; this needs 2 ** (bits * item_length) >= max_items.

The length of this task is its number of items: N is drawn per sequence, uniform over
``min_items .. max_items``, and ``with_lengths`` sets that range. Shorter sequences are padded
at the end with zeros, mask 0.
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
class AssociativeRecallTask(TaskBase):
    """Recall the item that followed a query item in a list of ``min_items .. max_items``."""

    name: ClassVar[str] = "associative_recall"
    length_fields: ClassVar[tuple[str, str]] = ("min_items", "max_items")

    bits: int = 6
    item_length: int = 3
    min_items: int = 2
    max_items: int = 6

    def __post_init__(self) -> None:
        owner = type(self).__name__
        require_int(owner, "bits", self.bits, 1)
        require_int(owner, "item_length", self.item_length, 1)
        # Two items at least: the query must have a successor.
        require_range(owner, "min_items", self.min_items, "max_items", self.max_items, minimum=2)
        distinct_items = 2 ** (self.bits * self.item_length)
        if distinct_items < self.max_items:
            raise ValueError(
                f"{owner}: max_items must be <= 2 ** (bits * item_length) = {distinct_items} "
                f"so the items can be distinct, got max_items={self.max_items}"
            )

    @property
    def min_length(self) -> int:
        """The length of this task is its number of items."""
        return self.min_items

    @property
    def max_length(self) -> int:
        """The length of this task is its number of items."""
        return self.max_items

    @property
    def input_size(self) -> int:
        """X: the bits, the item-delimiter channel and the query-delimiter channel."""
        return self.bits + 2

    @property
    def output_size(self) -> int:
        """Y: the bits."""
        return self.bits

    @property
    def max_steps(self) -> int:
        """T of the longest sequence: (max_items + 2) * (item_length + 1)."""
        return self.steps_for(self.max_items)

    def steps_for(self, items: int) -> int:
        """T for a list of ``items`` items."""
        return (items + 2) * (self.item_length + 1)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of recall problems; inputs (B,T,bits+2), targets (B,T,bits)."""
        self._check_batch_size(batch_size)
        item_counts = sample_lengths(batch_size, self.min_items, self.max_items, generator)
        most_items = int(item_counts.max())
        total_steps = self.steps_for(most_items)
        items = self._distinct_items(batch_size, most_items, generator)
        # q uniform over 0 .. N-2: floor(u * (N - 1)) with u uniform in [0, 1).
        uniform = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        query_item = (uniform * (item_counts - 1)).floor().to(torch.int64)

        k = self.item_length
        block = k + 1
        steps = torch.arange(total_steps).unsqueeze(0)  # (1, T)
        item_rows = torch.arange(batch_size)
        item_delimiter_channel = self.bits
        query_delimiter_channel = self.bits + 1
        # All items' vectors one after another: item i, vector j is row i*k + j.
        item_vectors = items.reshape(batch_size, most_items * k, self.bits)

        list_end = item_counts * block  # first step after the list: the query delimiter
        in_list = steps < list_end.unsqueeze(1)
        step_in_block = steps % block
        # (1, T): within the list, step t shows vector (t mod block) - 1 of item t // block.
        list_vector_index = (steps // block) * k + step_in_block - 1
        shows_item_vector = in_list & (step_in_block > 0)

        query_start = list_end + 1
        query_steps = step_window(query_start, torch.full_like(item_counts, k), total_steps)
        query_vector_index = query_item.unsqueeze(1) * k + steps - query_start.unsqueeze(1)

        answer_start = query_start + k + 1
        answer_steps = step_window(answer_start, torch.full_like(item_counts, k), total_steps)
        answer_vector_index = (query_item + 1).unsqueeze(1) * k + steps - answer_start.unsqueeze(1)

        inputs = torch.zeros(batch_size, total_steps, self.input_size)
        inputs[..., : self.bits] = gather_steps(
            item_vectors, list_vector_index, shows_item_vector
        ) + gather_steps(item_vectors, query_vector_index, query_steps)
        item_delimiters = in_list & (step_in_block == 0)
        inputs[..., item_delimiter_channel] = item_delimiters.to(torch.float32)
        inputs[item_rows, list_end, query_delimiter_channel] = 1.0
        inputs[item_rows, answer_start - 1, query_delimiter_channel] = 1.0

        targets = gather_steps(item_vectors, answer_vector_index, answer_steps)
        return Batch(inputs, targets, answer_steps.to(torch.float32))

    def _distinct_items(
        self, batch_size: int, item_count: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Random items, distinct within each sequence.

        Any item equal to an earlier one of its sequence is redrawn until none is; validation
        guarantees enough distinct items exist, and each redraw of a duplicate succeeds with
        probability >= 1 - (max_items - 1) / 2 ** (bits * item_length).

        Returns:
            (B, item_count, item_length, bits) float32 bits.
        """
        shape = (batch_size, item_count, self.item_length, self.bits)
        items = random_bits(shape, generator)
        earlier = torch.ones(item_count, item_count).tril(diagonal=-1).bool()  # [i, j]: j < i
        while True:
            flat = items.reshape(batch_size, item_count, -1)
            same = (flat.unsqueeze(2) == flat.unsqueeze(1)).all(dim=-1)  # (B, N, N)
            duplicate = (same & earlier).any(dim=-1)  # (B, N)
            if not duplicate.any():
                return items
            redraw = random_bits(shape, generator)
            items = torch.where(duplicate[..., None, None], redraw, items)
