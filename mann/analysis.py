"""Memory behaviour in numbers: how a model writes, reuses and reads its slots.

Everything here is a pure function of Traces (numpy in, numbers out), so any figure can be
recomputed from a saved ``.npz``. ``memory_metrics`` follows one written definition
(docs/analysis.md) for one write head and one read head, with w^w_t and w^r_t their weightings
at step t over N slots and argmax taking the lowest index on ties:

- s_t = Σ_n w^w_t[n]; the active write steps A = {t : s_t ≥ 0.5} in time order; the write
  focus f_t = argmax_n w^w_t[n];
- ``writes`` = |A|; ``slots_written`` = the number of distinct f_t over A;
  ``rewrites`` = writes − slots_written;
- ``write_locality``: over consecutive pairs in A, the share whose foci lie at circular
  distance min(|f − f'|, N − |f − f'|) = 1 (NaN when writes < 2);
- ``write_sharpness``: the mean over A of max_n w^w_t[n] / s_t (NaN when A is empty);
- r_t = Σ_n w^r_t[n]; the active read steps B = {t : r_t ≥ 0.5}; the read focus
  g_t = argmax_n w^r_t[n]; ``read_sharpness``: the mean over B of max_n w^r_t[n] / r_t;
- ``read_write_lag``: the mean, over those t in B for which some t' ≤ t in A has f_t' = g_t,
  of t − (the latest such t'); NaN when there is none.

An NTM walking its ring writes with locality near 1 and rewrites once the ring wraps; a DNC
that frees what it has read rewrites slots in the order allocation hands them out, with
locality near chance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from mann.trace import READ_MODES, Trace

if TYPE_CHECKING:
    import pandas as pd

ACTIVE = 0.5  # a weighting summing to at least this is an active read or write
METRICS = (
    "writes", "slots_written", "rewrites", "write_locality", "write_sharpness",
    "read_sharpness", "read_write_lag",
)  # fmt: skip
# The DNC's gates (and SAM's/SDNC's, which explain their write with the same fields).
GATES = ("write_gate", "allocation_gate", "free_gates")
PHASES = ("scored", "unscored")


def _head(trace: Trace, field: str, head: int) -> np.ndarray:
    weights = getattr(trace, field)
    heads = weights.shape[1]
    if heads == 0:  # a memory-less model: no weighting, so no active step
        return np.zeros((weights.shape[0], 0))
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < heads:
        kind = "write_head" if field == "write_weights" else "read_head"
        raise ValueError(f"{kind} must be an integer in [0, {heads - 1}], got {head!r}")
    return weights[:, head].astype(np.float64)


def focus(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The active steps of one head and their foci: weights (T,N) -> (steps (A,), foci (A,)).

    A step is active when its weighting sums to at least 0.5; its focus is the slot of the
    largest weight (the lowest index on ties, as ``np.argmax``).
    """
    active = np.flatnonzero(weights.sum(axis=1) >= ACTIVE)
    if weights.shape[1] == 0:  # no slots (a memory-less model): nothing is active
        return active, np.zeros(0, dtype=np.int64)
    return active, weights[active].argmax(axis=1)


def circular_distance(a: np.ndarray, b: np.ndarray, slots: int) -> np.ndarray:
    """min(|a − b|, N − |a − b|), elementwise."""
    difference = np.abs(np.asarray(a) - np.asarray(b))
    return np.minimum(difference, slots - difference)


def write_jumps(trace: Trace, write_head: int = 0) -> np.ndarray:
    """Signed circular jumps between consecutive write foci, each in (−N/2, N/2].

    An NTM walking forward gives +1 throughout; a DNC jumps wherever allocation points.
    """
    steps, foci = focus(_head(trace, "write_weights", write_head))
    slots = trace.memory_size
    jumps = np.diff(foci) % slots
    return np.where(jumps > slots // 2, jumps - slots, jumps)


def slot_write_counts(trace: Trace, write_head: int = 0) -> np.ndarray:
    """How many active writes focused on each slot: (N,) int. Above 1 is a reused slot."""
    _, foci = focus(_head(trace, "write_weights", write_head))
    return np.bincount(foci, minlength=trace.memory_size)


class ContextReads(NamedTuple):
    """Where one read head looked, by context (``context_reads``)."""

    one_slot_shares: list[float]  # per context met twice or more: share of its reads in one slot
    contexts: int  # different contexts in the sequence
    read_slots: int  # different slots its strongest read landed in, over the same steps


def context_reads(trace: Trace, context_bits: int = 5, read_head: int = 0) -> ContextReads:
    """For a bit sequence in input channel 0 (dynamic N-grams): group the steps by the context
    of the last ``context_bits`` input bits (the step's own included) and see where the read
    head's strongest weight landed. A model that keeps one slot per context reads each
    context's commonest slot every time (shares of 1) and reads as many slots as there are
    contexts."""
    foci = _head(trace, "read_weights", read_head).argmax(axis=1)
    bits = (trace.inputs[:, 0] > 0.5).astype(int)
    by_context: dict[tuple[int, ...], list[int]] = {}
    for step in range(context_bits - 1, trace.steps):
        context = tuple(bits[step - context_bits + 1 : step + 1])
        by_context.setdefault(context, []).append(int(foci[step]))
    shares = [max(slots.count(slot) for slot in set(slots)) / len(slots)
              for slots in by_context.values() if len(slots) > 1]  # fmt: skip
    return ContextReads(shares, len(by_context), len(set(foci[context_bits - 1 :].tolist())))


class PriorityPlacement(NamedTuple):
    """How a model stored and read back a priority sort (``priority_placement``)."""

    priority_fit: float  # Pearson r of each input's priority and its unwrapped write slot
    slots_written: int  # distinct write foci over the inputs
    items: int  # inputs in the sequence
    read_steps: float  # share of consecutive output reads at most one slot apart
    read_hits: float  # share of output steps whose read focus holds the item they answer
    read_head: int  # the read head measured: the answering one unless one was asked for


def unwrap(foci: np.ndarray, slots: int) -> np.ndarray:
    """Slot indices on a ring as positions on a line: cut the ring at its widest empty arc, so a
    band of slots across N−1 → 0 stays together (the order of positions is the ring's)."""
    taken = np.unique(foci)
    gaps = np.diff(np.append(taken, taken[0] + slots))  # gap after each taken slot
    start = taken[(int(np.argmax(gaps)) + 1) % len(taken)]  # first slot after the widest gap
    return (foci - start) % slots


def sorted_inputs(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """A priority-sort run (``mann.tasks.priority_sort``: priority in input channel X−2, the
    delimiter in X−1, the answers on the scored steps): the priorities of the inputs before the
    delimiter (L,), and per scored step the input step it answers (highest priority first)."""
    items = int(np.flatnonzero(trace.inputs[:, -1] > 0.5)[0])  # the delimiter
    priorities = trace.inputs[:items, -2].astype(np.float64)
    scored = 0 if trace.mask is None else int((trace.mask > 0).sum())
    return priorities, np.argsort(-priorities, kind="stable")[:scored]


def write_slots(trace: Trace, write_head: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A priority-sort run's inputs: their priorities (L,) and the slots they were written to
    (L,), each its write head's focus."""
    priorities, _ = sorted_inputs(trace)
    foci = _head(trace, "write_weights", write_head)[: len(priorities)].argmax(axis=1)
    return priorities, foci


def priority_placement(
    trace: Trace, write_head: int = 0, read_head: int | None = None
) -> PriorityPlacement:
    """For one priority-sort sequence (``sorted_inputs``): does the write slot follow the
    priority, as the NTM paper found its NTM doing, and do the reads walk the slots or jump
    to the answer by content?

    ``priority_fit`` is the paper's test, a linear fit of write location on priority (unwrapped
    with ``unwrap``): near ±1 when each item is placed by priority, near 0 when slots are handed
    out in arrival order (a DNC's allocation). ``read_hits`` counts an output step as a hit when
    its read focus is the slot that held the answered item's write. The reads are those of
    ``read_head``; by default the answering head, the one with the most hits (the lowest on a
    tie), since a model with several read heads may answer with any of them.
    """
    priorities, foci = write_slots(trace, write_head)
    _, answered = sorted_inputs(trace)
    positions = unwrap(foci, trace.memory_size).astype(np.float64)
    fit = (float(np.corrcoef(priorities, positions)[0, 1])
           if positions.std() > 0 and priorities.std() > 0 else math.nan)  # fmt: skip
    heads = range(trace.read_heads) if read_head is None else [read_head]
    read_foci = {head: _head(trace, "read_weights", head)[trace.mask > 0].argmax(axis=1)
                 for head in heads}  # fmt: skip
    hits = {head: float(np.mean(reads == foci[answered])) for head, reads in read_foci.items()}
    answering = max(heads, key=lambda head: (hits[head], -head))
    moves = circular_distance(read_foci[answering][1:], read_foci[answering][:-1],
                              trace.memory_size)  # fmt: skip
    return PriorityPlacement(
        priority_fit=fit,
        slots_written=len(np.unique(foci)),
        items=len(priorities),
        read_steps=float(np.mean(moves <= 1)) if len(moves) else math.nan,
        read_hits=hits[answering],
        read_head=answering,
    )


def placement_frame(traces: Mapping[str, Sequence[Trace]]) -> pd.DataFrame:
    """``priority_placement`` per model: one row per model with the mean over its episodes of
    each field and its standard deviation as ``FIELD_std`` (NaN fits, from episodes written to
    one slot, left out); each episode's reads are its answering head's."""
    import pandas as pd

    rows = []
    for name, model_traces in traces.items():
        found = [priority_placement(trace) for trace in model_traces]
        row: dict[str, object] = {"model": name}
        for field in PriorityPlacement._fields[:-1]:  # not read_head: an index, not a measure
            values = np.array([getattr(f, field) for f in found], dtype=np.float64)
            defined = values[~np.isnan(values)]
            row[field] = float(defined.mean()) if len(defined) else math.nan
            row[f"{field}_std"] = float(defined.std()) if len(defined) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def memory_metrics(trace: Trace, write_head: int = 0, read_head: int = 0) -> dict[str, float]:
    """The metrics of the module docstring for one write head and one read head."""
    write_weights = _head(trace, "write_weights", write_head)
    read_weights = _head(trace, "read_weights", read_head)
    slots = trace.memory_size
    write_steps, write_foci = focus(write_weights)
    read_steps, read_foci = focus(read_weights)

    writes = len(write_steps)
    slots_written = len(np.unique(write_foci))
    if writes >= 2:
        locality = float(np.mean(circular_distance(write_foci[1:], write_foci[:-1], slots) == 1))
    else:
        locality = math.nan

    def sharpness(weights: np.ndarray, steps: np.ndarray) -> float:
        if len(steps) == 0:
            return math.nan
        chosen = weights[steps]
        return float(np.mean(chosen.max(axis=1) / chosen.sum(axis=1)))

    # For each read step, the latest active write at or before it onto the read's focus.
    lags = []
    for step, slot in zip(read_steps, read_foci, strict=True):
        earlier = write_steps[(write_steps <= step) & (write_foci == slot)]
        if len(earlier):
            lags.append(step - earlier[-1])
    return {
        "writes": float(writes),
        "slots_written": float(slots_written),
        "rewrites": float(writes - slots_written),
        "write_locality": locality,
        "write_sharpness": sharpness(write_weights, write_steps),
        "read_sharpness": sharpness(read_weights, read_steps),
        "read_write_lag": float(np.mean(lags)) if lags else math.nan,
    }


def phases(trace: Trace) -> dict[str, np.ndarray]:
    """The steps of each task phase as boolean masks over time: ``scored`` (mask > 0) and
    ``unscored``; a trace without a mask has every step unscored."""
    if trace.mask is None:
        scored = np.zeros(trace.steps, dtype=bool)
    else:
        scored = trace.mask > 0
    return {"scored": scored, "unscored": ~scored}


def gate_activity(trace: Trace, read_head: int = 0) -> dict[str, float]:
    """Mean gate values and read-mode shares by phase: ``{"write_gate:scored": ..., ...}``.

    Keys are ``GATE:PHASE`` for the write gate, the allocation gate and read head
    ``read_head``'s free gate, and ``read_mode_MODE:PHASE`` for its backward / content /
    forward shares, each for phases scored and unscored. Gates a trace does not record (an
    NTM has none; SAM no free gates or read modes) are left out; a phase with no steps is NaN.
    """
    values: dict[str, np.ndarray] = {}
    for name in GATES:
        gate = getattr(trace, name)
        if gate is None:
            continue
        if gate.ndim == 2:  # one per read head
            _check_read_head(trace, read_head)
            gate = gate[:, read_head]
        values[name] = gate
    if trace.read_modes is not None:
        _check_read_head(trace, read_head)
        for index, mode in enumerate(READ_MODES):
            values[f"read_mode_{mode}"] = trace.read_modes[:, read_head, index]
    activity = {}
    for name, series in values.items():
        for phase, steps in phases(trace).items():
            activity[f"{name}:{phase}"] = float(series[steps].mean()) if steps.any() else math.nan
    return activity


def _check_read_head(trace: Trace, read_head: int) -> None:
    if isinstance(read_head, bool) or not isinstance(read_head, int):
        raise ValueError(f"read_head must be an integer, got {read_head!r}")
    if not 0 <= read_head < trace.read_heads:
        raise ValueError(f"read_head must be in [0, {trace.read_heads - 1}], got {read_head}")


def episode_metrics(
    traces: Mapping[str, Sequence[Trace]], write_head: int = 0, read_head: int = 0
) -> pd.DataFrame:
    """One row per trace: ``model``, ``episode``, ``bit_errors`` (NaN when not scored), the
    ``METRICS`` and the gate activity (columns absent for models without those gates)."""
    import pandas as pd

    rows = []
    for model, model_traces in traces.items():
        for episode, trace in enumerate(model_traces):
            row = {
                "model": model,
                "episode": episode,
                "bit_errors": float(trace.metadata.get("bit_errors", math.nan)),
            }
            row.update(memory_metrics(trace, write_head, read_head))
            row.update(gate_activity(trace, read_head))
            rows.append(row)
    return pd.DataFrame(rows)


def metrics_frame(
    traces: Mapping[str, Sequence[Trace]], write_head: int = 0, read_head: int = 0
) -> pd.DataFrame:
    """One row per model: ``episodes``, then the mean of every column of ``episode_metrics``
    and its standard deviation as ``COLUMN_std`` (NaN-aware: an episode whose metric is
    undefined does not count towards it)."""
    import pandas as pd

    per_episode = episode_metrics(traces, write_head, read_head)
    numeric = [column for column in per_episode.columns if column not in ("model", "episode")]
    rows = []
    for model in traces:
        group = per_episode[per_episode["model"] == model]
        row: dict[str, object] = {"model": model, "episodes": len(group)}
        for column in numeric:
            values = group[column].to_numpy(dtype=float)
            finite = values[~np.isnan(values)]
            row[column] = float(finite.mean()) if len(finite) else math.nan
            row[f"{column}_std"] = float(finite.std()) if len(finite) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """``metrics_frame`` (or ``mann.patterns.patterns_frame``) as text cells: one row per
    model (and length), each metric as "mean ± std" ("n/a" where undefined)."""
    import pandas as pd

    columns = list(columns or [c for c in ("bit_errors", *METRICS) if c in frame.columns])
    keys = [key for key in ("model", "length", "rounds", "episodes") if key in frame.columns]
    table = {key: frame[key].astype(str) for key in keys}
    for column in columns:
        spread = frame.get(f"{column}_std", pd.Series(math.nan, index=frame.index))
        table[column] = [
            "n/a" if np.isnan(mean) else f"{mean:.3g} ± {deviation:.2g}"
            for mean, deviation in zip(frame[column], spread, strict=True)
        ]
    return pd.DataFrame(table)


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """``summary_table`` as GitHub markdown (what ``python -m mann patterns`` prints)."""
    table = summary_table(frame, columns)
    numeric = [column != "model" for column in table.columns]
    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "".join("---:|" if right else "---|" for right in numeric),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
