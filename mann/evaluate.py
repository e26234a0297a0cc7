"""Generalisation: how a trained model does on sequences of given lengths, longer ones included.

For each length L, ``generalisation`` draws ``sequences`` problems of exactly that length
(``task.with_lengths(L, L)``) from a generator seeded with ``seed`` (afresh for every length,
so a length's numbers do not depend on which other lengths are asked for), runs the model on
them in batches without gradients, and scores the masked steps: bit errors per sequence
(outputs thresholded at probability 0.5) and the cost in bits per sequence, beside the
Bayes-optimal predictor's cost on the same sequences for a task that has one (``ngrams``).
The model runs on its own device (a GPU, say); the sequences are drawn and scored on the CPU,
so they are the same wherever the model runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pandas as pd
import torch

from mann.devices import device_of
from mann.metrics import bit_errors, masked_bce
from mann.model import MemoryAugmentedNetwork, check_fits
from mann.tasks.base import Task

COLUMNS = (
    "length", "sequences", "mean_bit_errors", "max_bit_errors", "perfect_fraction", "cost_bits",
    "optimal_cost_bits",
)  # fmt: skip


def generalisation(
    model: MemoryAugmentedNetwork,
    task: Task,
    lengths: Iterable[int],
    sequences: int = 1000,
    seed: int = 0,
    batch_size: int = 100,
) -> pd.DataFrame:
    """Bit errors per sequence of ``model`` on ``task`` at each of ``lengths``.

    Args:
        model: a model whose input and output sizes match the task's.
        task: the task; each length L is evaluated on ``task.with_lengths(L, L)`` ("length" is
            what the task's ``with_lengths`` sets, e.g. the number of items for associative
            recall).
        lengths: the lengths to evaluate, each an integer the task accepts.
        sequences: problems per length.
        seed: seeds the task's generator, afresh for every length.
        batch_size: problems per forward pass (memory use grows with it).

    Returns:
        One row per length, in the order given, with columns ``length``, ``sequences``,
        ``mean_bit_errors``, ``max_bit_errors``, ``perfect_fraction`` (share of sequences with
        no wrong bit), ``cost_bits`` (mean BCE per sequence, in bits) and
        ``optimal_cost_bits`` (the task's ``optimal_cost_bits(batch)`` on the same sequences,
        NaN for a task without an optimal predictor).

    Raises:
        ValueError: naming the bad argument (sizes that do not match, an empty or bad list of
            lengths, a length the task rejects, non-positive counts).
    """
    if not isinstance(model, MemoryAugmentedNetwork):
        raise ValueError(f"model must be a MemoryAugmentedNetwork, got {type(model).__name__}")
    lengths = list(lengths)
    if not lengths:
        raise ValueError("lengths must name at least one length, got none")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"lengths must be integers >= 1, got {length!r}")
    for name, value in (("sequences", sequences), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    check_fits(model, task)

    rows = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for length in lengths:
                rows.append(_score_length(model, task, length, sequences, seed, batch_size))
    finally:
        model.train(was_training)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _score_length(
    model: MemoryAugmentedNetwork, task: Task, length: int, sequences: int, seed: int,
    batch_size: int,
) -> dict:
    fixed = task.with_lengths(length, length)
    device = device_of(model)
    generator = torch.Generator().manual_seed(seed)
    optimal = getattr(fixed, "optimal_cost_bits", None)
    errors, cost_nats, optimal_bits = [], 0.0, 0.0
    remaining = sequences
    while remaining:
        count = min(batch_size, remaining)
        batch = fixed.sample(count, generator)  # drawn on the CPU, scored there
        logits, _ = model(batch.inputs.to(device))
        logits = logits.cpu()
        errors.append(bit_errors(logits, batch.targets, batch.mask))
        cost_nats += float(masked_bce(logits, batch.targets, batch.mask)) * count
        if optimal is not None:
            optimal_bits += float(optimal(batch).sum())
        remaining -= count
    errors = torch.cat(errors)
    return {
        "length": length,
        "sequences": sequences,
        "mean_bit_errors": float(errors.mean()),
        "max_bit_errors": float(errors.max()),
        "perfect_fraction": float((errors == 0).float().mean()),
        "cost_bits": cost_nats / sequences / math.log(2.0),
        "optimal_cost_bits": optimal_bits / sequences if optimal is not None else math.nan,
    }


def markdown_table(frame: pd.DataFrame) -> str:
    """A generalisation table as GitHub markdown, for the terminal and the README."""
    with_optimal = "optimal_cost_bits" in frame and frame["optimal_cost_bits"].notna().any()
    header = "| length | sequences | bit errors / sequence | max | perfect | cost (bits) |"
    rule = "|---:|---:|---:|---:|---:|---:|"
    if with_optimal:
        header += " optimal cost (bits) | above optimal |"
        rule += "---:|---:|"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        line = (
            f"| {row.length} | {row.sequences} | {row.mean_bit_errors:.3f} | "
            f"{row.max_bit_errors:.0f} | {100 * row.perfect_fraction:.1f}% | {row.cost_bits:.3f} |"
        )
        if with_optimal:
            above = row.cost_bits / row.optimal_cost_bits - 1.0
            line += f" {row.optimal_cost_bits:.3f} | {100 * above:.1f}% |"
        lines.append(line)
    return "\n".join(lines)


def generalisation_frame(
    models: Mapping[str, MemoryAugmentedNetwork],
    task: Task,
    lengths: list[int],
    sequences: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """``generalisation`` for every model, stacked with a ``model`` column; at most
    ``mann.inputs.MAX_INPUT_STEPS`` steps per sequence."""
    from mann.inputs import MAX_INPUT_STEPS

    frames = []
    for name, model in models.items():
        check_fits(model, task)
        longest = task.with_lengths(max(lengths), max(lengths)).max_steps
        if longest > MAX_INPUT_STEPS:
            raise ValueError(
                f"length {max(lengths)} makes {longest} steps for task {task.name!r}; "
                f"at most {MAX_INPUT_STEPS} steps are evaluated here"
            )
        frame = generalisation(model, task, lengths, sequences=sequences, seed=seed)
        frame.insert(0, "model", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
