"""Figures of allocation patterns: where the difference between an NTM and a DNC shows.

Pure functions of Traces (and of ``mann.analysis`` frames), plotly, no Streamlit:

- ``allocation_path_figure({name: trace})``: the write focus against time for one episode per
  model on one axis: an NTM climbs a staircase that wraps around its ring, a DNC jumps to
  whichever slot allocation hands out;
- ``usage_figure({name: trace})``: the DNC's total usage Σ_n u_t[n] against time: it rises as
  a round is written and falls as it is read and freed;
- ``jump_figure({name: traces})``: how far the write focus moves from one write to the next,
  as shares of all jumps over many episodes;
- ``slot_writes_figure({name: traces})``: writes per slot per episode; above 1 is reuse;
- ``gate_figure(frame)``: mean gate values and read-mode shares on scored and unscored steps;
- ``priority_placement_figure({name: traces})``: on priority sort, each input's write slot
  against its priority: a line where a model places items by priority (the NTM paper's
  finding), a cloud where it takes slots in arrival order (a DNC's allocation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from mann.analysis import (
    GATES,
    PHASES,
    focus,
    priority_placement,
    slot_write_counts,
    unwrap,
    write_jumps,
    write_slots,
)
from mann.figures import TEMPLATE
from mann.trace import READ_MODES, Trace

if TYPE_CHECKING:
    import pandas as pd

PHASE_COLORS = {"unscored": "#9ecae1", "scored": "#08519c"}
SCORED_SHADE = "rgba(120, 120, 120, 0.12)"


def _layout(figure: go.Figure, title: str, height: int, **axes) -> go.Figure:
    figure.update_layout(
        title_text=title, height=height, template=TEMPLATE,
        margin=dict(l=60, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.2), **axes,
    )  # fmt: skip
    return figure


def _shade_scored(figure: go.Figure, trace: Trace) -> None:
    """Grey bands over the scored steps (the output phases), taken from the trace's mask."""
    if trace.mask is None:
        return
    scored = np.flatnonzero(trace.mask > 0)
    if not len(scored):
        return
    # Runs of consecutive scored steps, each one band.
    breaks = np.flatnonzero(np.diff(scored) > 1)
    starts = np.concatenate([[scored[0]], scored[breaks + 1]])
    ends = np.concatenate([scored[breaks], [scored[-1]]])
    for start, end in zip(starts, ends, strict=True):
        figure.add_vrect(x0=start - 0.5, x1=end + 0.5, fillcolor=SCORED_SHADE, line_width=0,
                         layer="below")  # fmt: skip


def memory_change(trace: Trace) -> np.ndarray:
    """How much each step changed memory: Σ |M_t − M_{t−1}| per step (T,); step 0 against an
    all-zero memory. A write whose erase and add vectors are near zero changes nothing."""
    previous = np.concatenate([np.zeros_like(trace.memory[:1]), trace.memory[:-1]])
    return np.abs(trace.memory - previous).sum(axis=(1, 2))


def allocation_path_figure(traces: Mapping[str, Trace], write_head: int = 0) -> go.Figure:
    """Write focus against step, one line per model (active writes only; grey bands are the
    first trace's scored steps). Hover gives the write's strength and how much it changed
    memory."""
    figure = go.Figure()
    first = next(iter(traces.values()))
    _shade_scored(figure, first)
    for name, trace in traces.items():
        weights = trace.write_weights[:, write_head]
        steps, foci = focus(weights)
        strength = weights[steps].sum(axis=1)
        change = memory_change(trace)[steps]
        figure.add_trace(go.Scatter(
            x=steps, y=foci, mode="lines+markers", name=name, line_shape="hv",
            customdata=np.stack([strength, change], axis=1),
            hovertemplate=(f"{name}<br>step %{{x}}: writes slot %{{y}}<br>strength "
                           "%{customdata[0]:.2f}, memory change %{customdata[1]:.2f}"
                           "<extra></extra>"),
        ))  # fmt: skip
    slots = max(trace.memory_size for trace in traces.values())
    return _layout(
        figure, "allocation path: which slot each write goes to (grey: output phases)", 380,
        xaxis_title="time step", yaxis_title="slot written",
        yaxis=dict(range=[-0.5, slots - 0.5], dtick=1 if slots <= 16 else None),
    )  # fmt: skip


def usage_figure(traces: Mapping[str, Trace]) -> go.Figure | None:
    """Total usage Σ_n u_t[n] against step for the models that keep usage (DNC, SDNC), with
    each model's slot count dashed; None when no trace has usage. For SAM, whose ``usage``
    counts steps since last use, this is not drawn."""
    figure = go.Figure()
    drawn = False
    for name, trace in traces.items():
        if trace.usage is None or trace.arch == "sam":
            continue
        if not drawn:
            _shade_scored(figure, trace)
        drawn = True
        figure.add_trace(go.Scatter(
            x=np.arange(trace.steps), y=trace.usage.sum(axis=1), mode="lines", name=name,
            hovertemplate=f"{name}<br>step %{{x}}: usage %{{y:.2f}}<extra></extra>",
        ))  # fmt: skip
        figure.add_hline(y=trace.memory_size, line_dash="dot", line_color="grey",
                         annotation_text=f"{trace.memory_size} slots")  # fmt: skip
    if not drawn:
        return None
    return _layout(
        figure, "usage: rises as a round is written, falls as it is read and freed", 320,
        xaxis_title="time step", yaxis_title="Σ usage over slots", yaxis_rangemode="tozero",
    )  # fmt: skip


def jump_figure(traces: Mapping[str, Sequence[Trace]], write_head: int = 0) -> go.Figure:
    """Shares of jumps f_{next} − f between consecutive write foci (circular, in
    (−N/2, N/2]) over all episodes, grouped bars per model: a ring walk is all +1."""
    figure = go.Figure()
    for name, model_traces in traces.items():
        jumps = np.concatenate(
            [write_jumps(trace, write_head) for trace in model_traces] or [np.zeros(0)]
        )
        if not len(jumps):
            continue
        values, counts = np.unique(jumps, return_counts=True)
        figure.add_trace(go.Bar(
            x=values, y=counts / counts.sum(), name=name,
            hovertemplate=f"{name}<br>jump %{{x:+d}}: %{{y:.1%}} of writes<extra></extra>",
        ))  # fmt: skip
    return _layout(
        figure, "how far the write focus moves between consecutive writes", 340,
        xaxis_title="jump (slots, circular)", yaxis_title="share of jumps", barmode="group",
        xaxis=dict(dtick=1), yaxis_tickformat=".0%",
    )  # fmt: skip


def slot_writes_figure(traces: Mapping[str, Sequence[Trace]], write_head: int = 0) -> go.Figure:
    """Mean active writes per slot per episode, grouped bars per model; the dotted line at 1
    separates slots written once from reused ones."""
    figure = go.Figure()
    for name, model_traces in traces.items():
        if not model_traces:
            continue
        counts = np.mean([slot_write_counts(trace, write_head) for trace in model_traces], axis=0)
        figure.add_trace(go.Bar(
            x=np.arange(len(counts)), y=counts, name=name,
            hovertemplate=f"{name}<br>slot %{{x}}: %{{y:.2f}} writes per episode<extra></extra>",
        ))  # fmt: skip
    figure.add_hline(y=1, line_dash="dot", line_color="grey", annotation_text="written once")
    return _layout(
        figure, "writes per slot per episode (above the line: the slot is reused)", 340,
        xaxis_title="slot", yaxis_title="writes per episode", barmode="group",
    )  # fmt: skip


def gate_figure(frame: pd.DataFrame) -> go.Figure | None:
    """Gate means and read-mode shares by phase from ``mann.analysis.metrics_frame``: one
    group of bars per model and gate; None when no model records gates (NTMs only)."""
    names = [*GATES, *(f"read_mode_{mode}" for mode in READ_MODES)]
    labels = {"write_gate": "write gate", "allocation_gate": "allocation gate",
              "free_gates": "free gate", **{f"read_mode_{m}": f"read: {m}" for m in READ_MODES}}
    present = [name for name in names if f"{name}:scored" in frame.columns]
    if not present:
        return None
    figure = go.Figure()
    for phase in PHASES:
        x_model, x_gate, y, spread = [], [], [], []
        for _, row in frame.iterrows():
            for name in present:
                value = row[f"{name}:{phase}"]
                if np.isnan(value):
                    continue
                x_model.append(str(row["model"]))
                x_gate.append(labels[name])
                y.append(value)
                spread.append(row.get(f"{name}:{phase}_std", 0.0))
        figure.add_trace(go.Bar(
            x=[x_model, x_gate], y=y, name=f"{phase} steps", marker_color=PHASE_COLORS[phase],
            error_y=dict(type="data", array=spread, visible=True, thickness=1),
            hovertemplate="%{x}<br>mean %{y:.2f}<extra>" + phase + "</extra>",
        ))  # fmt: skip
    return _layout(
        figure, "gates by phase (scored = output steps): what writes, allocates and frees", 380,
        barmode="group", yaxis=dict(range=[0, 1.05], title="mean over the phase's steps"),
    )  # fmt: skip


def priority_placement_figure(
    traces: Mapping[str, Sequence[Trace]], episodes: int = 5, write_head: int = 0
) -> go.Figure:
    """Priority-sort episodes (``mann.analysis.priority_placement``): each input's write slot,
    unwrapped around the ring so a band across the last slot stays together, against its
    priority, for the first ``episodes`` episodes of each model; the legend gives the mean fit
    r over those episodes."""
    figure = go.Figure()
    for name, model_traces in traces.items():
        shown = list(model_traces[:episodes])
        if not shown:
            continue
        x, y, fits = [], [], []
        for trace in shown:
            priorities, foci = write_slots(trace, write_head)
            x.append(priorities)
            y.append(unwrap(foci, trace.memory_size))
            fits.append(priority_placement(trace, write_head).priority_fit)
        fit = np.nanmean(fits) if not np.all(np.isnan(fits)) else np.nan
        figure.add_trace(go.Scatter(
            x=np.concatenate(x), y=np.concatenate(y), mode="markers", opacity=0.7,
            name=f"{name} (r = {fit:+.2f})",
            hovertemplate=f"{name}<br>priority %{{x:.2f}}: slot %{{y}} from the band's start"
                          "<extra></extra>",
        ))  # fmt: skip
    return _layout(
        figure, "where each item is written, against its priority", 380,
        xaxis_title="priority", yaxis_title="slot written (from the first slot used)",
    )  # fmt: skip
