"""Allocation patterns: run models over many episodes and measure how they use memory.

``collect_traces`` records every episode of a batch in one forward pass per batch
(``mann.record_traces``); ``patterns_frame`` turns that into the ``mann.analysis`` metrics,
one row per model and length. ``python -m mann patterns`` and the app's Patterns page both
call these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from mann.analysis import metrics_frame, placement_frame
from mann.model import MemoryAugmentedNetwork, check_fits, record_traces
from mann.tasks.base import Task
from mann.trace import Trace

if TYPE_CHECKING:
    import pandas as pd

# Called after each recorded batch with (episodes done, episodes in all).
ProgressCallback = Callable[[int, int], None]


def fixed_task(task: Task, length: int, rounds: int | None = None) -> Task:
    """``task`` at exactly ``length`` (what its ``with_lengths`` sets) and, for a task with
    rounds (multi_copy), exactly ``rounds`` rounds. Errors name the parameter."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    fixed = task.with_lengths(length, length)
    if rounds is not None:
        if not hasattr(fixed, "with_rounds"):
            raise ValueError(f"rounds: task {task.name!r} has no rounds (multi_copy has)")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
        fixed = fixed.with_rounds(rounds, rounds)
    return fixed


def slim(trace: Trace) -> Trace:
    """The trace without what the pattern metrics never read: the link matrix, the content
    weightings, and the memory's words (kept as a (T,N,0) array, so N is still known). A
    thousand slim episodes of a 64-slot DNC take megabytes instead of a gigabyte."""
    return trace.replace(
        memory=trace.memory[:, :, :0], link=None, read_vectors=trace.read_vectors[:, :, :0],
        write_content_weights=None, read_content_weights=None, forward_weights=None,
        backward_weights=None, content_weights=None, precedence=None, allocation=None,
    )  # fmt: skip


def collect_traces(
    models: Mapping[str, MemoryAugmentedNetwork],
    task: Task,
    sequences: int = 100,
    seed: int = 0,
    batch_size: int = 100,
    on_progress: ProgressCallback | None = None,
    full_traces: int | None = None,
) -> dict[str, list[Trace]]:
    """Traces of ``sequences`` episodes of ``task`` for every model, the same episodes for all.

    The episodes are drawn from a generator seeded with ``seed``, ``batch_size`` at a time;
    each batch is recorded in one forward pass per model. With ``full_traces`` set, only the
    first that many episodes keep every field; the others are ``slim``.
    """
    for name, value in (("sequences", sequences), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not models:
        raise ValueError("models must name at least one model")
    for name, model in models.items():
        check_fits(model, task, name)
    generator = torch.Generator().manual_seed(seed)
    traces: dict[str, list[Trace]] = {name: [] for name in models}
    done, total = 0, sequences * len(models)
    remaining = sequences
    while remaining:
        batch = task.sample(min(batch_size, remaining), generator)
        remaining -= len(batch.inputs)
        for name, model in models.items():
            for trace in record_traces(model, batch):
                if full_traces is not None and len(traces[name]) >= full_traces:
                    trace = slim(trace)
                traces[name].append(trace)
            done += len(batch.inputs)
            if on_progress is not None:
                on_progress(done, total)
    return traces


PLACEMENT = "placement:"  # the prefix of the priority-sort placement columns


def memory_frame(traces: Mapping[str, Sequence[Trace]], task: Task) -> pd.DataFrame:
    """``mann.analysis.metrics_frame`` of the traces and, on priority sort, the means and
    deviations of ``mann.analysis.placement_frame`` as ``placement:priority_fit`` etc."""
    frame = metrics_frame(traces)
    if task.name == "priority_sort":  # placed by priority or allocated (docs/analysis.md)
        placement = placement_frame(traces).drop(columns=["items", "items_std"])
        placement.columns = ["model", *(f"{PLACEMENT}{c}" for c in placement.columns[1:])]
        frame = frame.merge(placement, on="model", how="left")
    return frame


def patterns_frame(
    models: Mapping[str, MemoryAugmentedNetwork],
    task: Task,
    lengths: Iterable[int],
    sequences: int = 100,
    seed: int = 0,
    rounds: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """``mann.analysis.metrics_frame`` for every model at every length: one row per model and
    length (``memory_frame``), with ``length`` (and ``rounds`` when given) as the second
    column."""
    import pandas as pd

    lengths = list(lengths)
    if not lengths:
        raise ValueError("lengths must name at least one length, got none")
    tasks = [fixed_task(task, length, rounds) for length in lengths]
    frames = []
    for index, (length, fixed) in enumerate(zip(lengths, tasks, strict=True)):

        def progress(done: int, total: int, index: int = index) -> None:
            if on_progress is not None:
                on_progress(index * total + done, len(lengths) * total)

        traces = collect_traces(models, fixed, sequences, seed, on_progress=progress)
        frame = memory_frame(traces, fixed)
        frame.insert(1, "length", length)
        if rounds is not None:
            frame.insert(2, "rounds", rounds)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
