"""Plotly figures drawn from a Trace: pure functions of plain data, no Streamlit.

They are what the app shows, and work as well in a notebook or an exported HTML file.

- ``scrub_figure(trace)``: memory, read and write weightings, usage / precedence /
  allocation and the link matrix, with the input / target / output strip marking the step;
  one figure whose animation frames and slider scrub through time in the browser.
- ``step_figure(trace, step)``: the same panels for one step (no frames), for traces too big
  to ship as frames.
- ``timeline_figure(trace)``: read and write weightings over all steps as slot × time images,
  as in the NTM paper's figures.
- ``explanation(trace, step, head)`` and ``explain_figure(...)``: how one head's weighting was
  formed at one step, stage by stage.
- ``compare_figure(traces, names)``: several models on the same input, a row each, one slider.
- ``generalisation_figure(frame)``, ``training_figure(history)``, ``figure_html(figure)``.

Large memories are pooled along the slot axis into at most ``max_slots`` bins before drawing:
weightings (and the link matrix) are summed within a bin, so a bin shows the mass that falls
on it; memory and usage are averaged. Every heatmap keeps one colour range for all steps,
so colours can be compared while scrubbing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from mann.trace import READ_MODES, Trace

# Every figure's look, given as the Template object: a template named by string is looked up
# and checked anew for each figure (0.03 s of a figure's build), an object in half that.
TEMPLATE = pio.templates["plotly_white"]

# Drawn slot bins per axis; the link matrix is N×N, so it gets fewer.
MAX_SLOTS = 128
MAX_LINK_SLOTS = 64
# Numbers a scrub figure may carry in its frames before a page should draw one step at a
# time instead (float32, base64 in the page: about 5.3 MB at this bound).
MAX_ANIMATION_VALUES = 1_000_000

WEIGHT_COLORS = "Viridis"
MEMORY_COLORS = "RdBu_r"
STRIP_COLORS = "Greys"
MARKER_COLOR = "#d62728"
SCRUB_TITLE = "drag the slider (or press ▶) to move through time; the red box marks the step"

# Slider and play button: every frame is a redraw (heatmaps cannot be tweened).
_FRAME_ARGS = {
    "mode": "immediate",
    "frame": {"duration": 0, "redraw": True},
    "transition": {"duration": 0},
}


# ---------------------------------------------------------------------------------------
# Pooling slots into bins
# ---------------------------------------------------------------------------------------
def slot_bin_size(memory_size: int, max_slots: int) -> int:
    """How many slots one drawn bin holds so that at most ``max_slots`` bins are drawn."""
    if max_slots < 1:
        raise ValueError(f"max_slots must be an integer >= 1, got {max_slots!r}")
    return max(1, math.ceil(memory_size / max_slots))


def pool_slots(values: np.ndarray, bin_size: int, how: str = "sum", axis: int = -1) -> np.ndarray:
    """Pool ``values`` along ``axis`` into bins of ``bin_size`` consecutive slots.

    ``how="sum"`` for weightings (a bin shows the mass on its slots), ``"mean"`` for memory
    and usage. The last bin may hold fewer slots; its mean is over the slots it holds.
    """
    if how not in ("sum", "mean"):
        raise ValueError(f"how must be 'sum' or 'mean', got {how!r}")
    if bin_size == 1:
        return values
    moved = np.moveaxis(values, axis, -1)
    slots = moved.shape[-1]
    padding = (-slots) % bin_size
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, padding)])
    bins = padded.shape[-1] // bin_size  # stated: with no heads (an LSTM) -1 cannot be inferred
    pooled = padded.reshape(*moved.shape[:-1], bins, bin_size).sum(-1)
    if how == "mean":
        counts = np.full(pooled.shape[-1], bin_size, dtype=np.float32)
        counts[-1] = bin_size - padding
        pooled = pooled / counts
    return np.moveaxis(pooled.astype(np.float32), -1, axis)


def _positions_to_bins(positions: np.ndarray, bin_size: int) -> np.ndarray:
    """Slot indices (stored as floats) to the first slot of their drawn bin."""
    return (np.rint(positions).astype(np.int64) // bin_size) * bin_size


def _max_or_one(values: np.ndarray) -> float:
    """A colour range's top: the largest value, or 1 for an all-zero signal."""
    top = float(np.nanmax(values)) if values.size else 0.0
    return top if top > 0 else 1.0


# ---------------------------------------------------------------------------------------
# Panels: the drawn traces of a time-scrubbed figure
# ---------------------------------------------------------------------------------------
@dataclass
class _Panel:
    """One drawn trace: its subplot, the whole trace at step t, and what changes with t.

    ``update(t)`` holds only the data that moves between frames, so frames stay small;
    it is None for a trace drawn once (the input strip).
    """

    row: int
    col: int
    at: Callable[[int], dict]
    update: Callable[[int], dict] | None = None


def _heatmap(z, x, y, colors, zmin, zmax, hover: str, **extra) -> dict:
    return dict(
        type="heatmap", z=z, x=x, y=y, colorscale=colors, zmin=zmin, zmax=zmax,
        showscale=False, hovertemplate=hover + "<extra></extra>", **extra,
    )


def _slot_axis(memory_size: int, bin_size: int) -> np.ndarray:
    """The first slot of every drawn bin: the x coordinates of slot-indexed heatmaps."""
    return np.arange(0, memory_size, bin_size)


def _slot_hover(bin_size: int, what: str, axis: str = "x") -> str:
    where = f"slot %{{{axis}}}" if bin_size == 1 else f"slots %{{{axis}}}+{bin_size - 1}"
    return f"{where}<br>{what}"


def _head_labels(kind: str, count: int) -> list[str]:
    return [f"{kind} {h}" for h in range(count)]


def _state_rows(trace: Trace) -> list[tuple[str, str]]:
    """(field, how to pool) of the per-slot DNC state this trace has, in drawing order."""
    rows = [("usage", "mean"), ("precedence", "sum"), ("allocation", "sum")]
    return [(name, how) for name, how in rows if getattr(trace, name) is not None]


def _masked_targets(trace: Trace) -> np.ndarray | None:
    """Targets with unscored steps blank (NaN): only scored steps have a target."""
    if trace.targets is None:
        return None
    targets = trace.targets.copy()
    if trace.mask is not None:
        targets[trace.mask < 0.5] = np.nan
    return targets


def _strip_image(trace: Trace, parts: Sequence[str] = ("input", "target", "output")) -> tuple:
    """Inputs, targets and outputs stacked as one (rows, T) image, a blank row between them.

    Returns the image, a hover label per row, and tick positions and names for the blocks.
    """
    arrays = {"input": trace.inputs, "target": _masked_targets(trace), "output": trace.outputs}
    blocks, labels, tick_values, tick_names = [], [], [], []
    for name in parts:
        values = arrays[name]
        if values is None:
            continue
        if blocks:
            blocks.append(np.full((1, trace.steps), np.nan, dtype=np.float32))
            labels.append("")
        channels = values.shape[1]
        tick_values.append(len(labels) + (channels - 1) / 2)
        tick_names.append(name)
        blocks.append(values.T)
        labels += [f"{name} channel {c}" for c in range(channels)]
    return np.concatenate(blocks), labels, tick_values, tick_names


def _strip_panels(
    trace: Trace, row: int, col: int, parts: Sequence[str] = ("input", "target", "output")
) -> tuple[list[_Panel], dict]:
    """The strip image, drawn once, and a red box that marks the current step.

    Returns the panels and the y axis settings that name the blocks.
    """
    image, labels, tick_values, tick_names = _strip_image(trace, parts)
    rows = image.shape[0]
    text = np.repeat(np.array(labels, dtype=object)[:, None], trace.steps, axis=1)
    strip = _heatmap(
        image, np.arange(trace.steps), np.arange(rows), STRIP_COLORS, 0.0, 1.0,
        "%{text}<br>step %{x}<br>value %{z:.3f}", text=text, name="strip",
    )

    def box(t):
        left, right, bottom, top = t - 0.5, t + 0.5, -0.5, rows - 0.5
        return dict(
            type="scatter", x=[left, right, right, left, left],
            y=[bottom, bottom, top, top, bottom],
        )

    def box_at(t):
        return dict(
            box(t), mode="lines", line=dict(color=MARKER_COLOR, width=2), hoverinfo="skip",
            name="current step",
        )

    panels = [_Panel(row, col, lambda t: strip), _Panel(row, col, box_at, box)]
    return panels, dict(tickvals=tick_values, ticktext=tick_names)


def _weight_rows(trace: Trace, bin_size: int) -> tuple[list[str], np.ndarray]:
    """Write heads, read heads, then usage / precedence / allocation: (T, rows, bins)."""
    labels = _head_labels("write", trace.write_heads) + _head_labels("read", trace.read_heads)
    parts = [
        pool_slots(trace.write_weights, bin_size, "sum", axis=2),
        pool_slots(trace.read_weights, bin_size, "sum", axis=2),
    ]
    for name, how in _state_rows(trace):
        parts.append(pool_slots(getattr(trace, name), bin_size, how, axis=1)[:, None])
        labels.append(name)
    return labels, np.concatenate(parts, axis=1)


def _memory_panels(trace: Trace, bin_size: int, row: int, col: int) -> tuple[list[_Panel], float]:
    """Memory M_t as a word × slot image (each column is one slot's word)."""
    memory = pool_slots(trace.memory, bin_size, "mean", axis=1)  # (T, bins, W)
    memory_range = _max_or_one(np.abs(memory))
    slots = _slot_axis(trace.memory_size, bin_size)
    words = np.arange(trace.word_size)

    def at(t):
        return _heatmap(
            memory[t].T, slots, words, MEMORY_COLORS, -memory_range, memory_range,
            _slot_hover(bin_size, "word element %{y}<br>M = %{z:.3f}"), name="memory",
        )

    panel = _Panel(row, col, at, lambda t: dict(type="heatmap", z=memory[t].T))
    return [panel], min(max(trace.word_size, 6), 24)


def _weight_panels(trace: Trace, bin_size: int, row: int, col: int) -> tuple[list[_Panel], float]:
    """Every head's weighting and the usage state as rows of one image, with sparse markers."""
    labels, values = _weight_rows(trace, bin_size)
    top = _max_or_one(values)
    slots = _slot_axis(trace.memory_size, bin_size)

    def at(t):
        return _heatmap(
            values[t], slots, labels, WEIGHT_COLORS, 0.0, top,
            _slot_hover(bin_size, "%{y}: %{z:.3f}"), name="weightings",
        )

    panels = [_Panel(row, col, at, lambda t: dict(type="heatmap", z=values[t]))]
    if trace.read_positions is not None:
        # SAM / SDNC: the K slots each read head looked up.
        positions = _positions_to_bins(trace.read_positions, bin_size)  # (T, R, K)
        heads_of = np.repeat(np.array(_head_labels("read", trace.read_heads)), positions.shape[2])

        def positions_update(t):
            return dict(type="scatter", x=positions[t].ravel(), y=heads_of)

        def positions_at(t):
            return dict(
                positions_update(t), mode="markers", name="read positions",
                marker=dict(symbol="x-thin", size=9, line=dict(width=2, color="white")),
                hovertemplate="%{y} looked up slot %{x}<extra></extra>",
            )

        panels.append(_Panel(row, col, positions_at, positions_update))
    if trace.least_used is not None and "usage" in labels:
        least = _positions_to_bins(trace.least_used, bin_size)  # (T,)

        def least_update(t):
            return dict(type="scatter", x=[least[t]], y=["usage"])

        def least_at(t):
            return dict(
                least_update(t), mode="markers", name="least used",
                marker=dict(symbol="triangle-down", size=11, color=MARKER_COLOR),
                hovertemplate="least used: slot %{x}<extra></extra>",
            )

        panels.append(_Panel(row, col, least_at, least_update))
    return panels, 1.0 + 1.1 * len(labels)


def _link_panel(trace: Trace, link_bin_size: int, row: int, col: int) -> _Panel:
    """The temporal link matrix L_t[i, j]: how strongly slot i was written right after slot j."""
    if trace.link_positions is not None:
        # SDNC with a large memory: only the touched K×K sub-matrix, named by its slots.
        positions = np.rint(trace.link_positions).astype(np.int64)  # (T, K)
        k = positions.shape[1]
        top = _max_or_one(trace.link)
        axis = np.arange(k)

        def names(t):
            rows = positions[t]
            return [[f"slot {rows[i]} after slot {rows[j]}" for j in range(k)] for i in range(k)]

        def update(t):
            return dict(type="heatmap", z=trace.link[t], text=names(t))

        def at(t):
            return _heatmap(
                trace.link[t], axis, axis, WEIGHT_COLORS, 0.0, top, "%{text}<br>L = %{z:.3f}",
                text=names(t), name="link",
            )

        return _Panel(row, col, at, update)

    link = pool_slots(pool_slots(trace.link, link_bin_size, "sum", 1), link_bin_size, "sum", 2)
    top = _max_or_one(link)
    slots = _slot_axis(trace.memory_size, link_bin_size)
    if link_bin_size == 1:
        hover = "slot %{y} written after slot %{x}<br>L = %{z:.3f}"
    else:
        size = link_bin_size - 1
        hover = f"slots %{{y}}+{size} after slots %{{x}}+{size}<br>L summed = %{{z:.3f}}"

    def at(t):
        return _heatmap(link[t], slots, slots, WEIGHT_COLORS, 0.0, top, hover, name="link")

    return _Panel(row, col, at, lambda t: dict(type="heatmap", z=link[t]))


# ---------------------------------------------------------------------------------------
# Building figures from panels
# ---------------------------------------------------------------------------------------
def _require_step(trace: Trace, step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ValueError(f"step must be an integer in [0, {trace.steps - 1}], got {step!r}")
    if not 0 <= step < trace.steps:
        raise ValueError(f"step must be in [0, {trace.steps - 1}], got {step}")


def _step_title(trace: Trace, step: int) -> str:
    title = f"step {step} of {trace.steps - 1}"
    if trace.mask is not None:
        title += " (output scored)" if trace.mask[step] > 0.5 else " (output not scored)"
    return title


def _add_panels(figure: go.Figure, panels: Sequence[_Panel], step: int) -> list[int]:
    """Add every panel at ``step``; return the indices of the traces that move with time."""
    moving = []
    for index, panel in enumerate(panels):
        figure.add_trace(panel.at(step), row=panel.row, col=panel.col)
        if panel.update is not None:
            moving.append(index)
    return moving


def _add_frames(
    figure: go.Figure,
    panels: Sequence[_Panel],
    moving: list[int],
    steps: int,
    active: int,
) -> None:
    """Give the figure one animation frame per step, a slider over them and play / pause.

    Frames change data only: a layout change (a title per step) would cost a relayout per
    scrub step; the slider's own label names the step.
    """
    # Plain dicts: plotly checks them once as frames (go.Frame objects would be checked twice).
    figure.frames = [
        dict(name=str(t), data=[panels[index].update(t) for index in moving], traces=moving)
        for t in range(steps)
    ]
    play = {**_FRAME_ARGS, "frame": {"duration": 250, "redraw": True}, "fromcurrent": True}
    figure.update_layout(
        sliders=[
            dict(
                active=active,
                currentvalue=dict(prefix="step ", font=dict(size=13)),
                pad=dict(t=30, b=5),
                len=0.9,
                x=0.1,
                steps=[
                    dict(method="animate", label=str(t), args=[[str(t)], _FRAME_ARGS])
                    for t in range(steps)
                ],
            )
        ],
        updatemenus=[
            dict(
                type="buttons",
                direction="left",
                showactive=False,
                x=0.0,
                y=0,
                xanchor="left",
                yanchor="top",
                pad=dict(t=35, r=10),
                buttons=[
                    dict(label="▶", method="animate", args=[None, play]),
                    dict(label="❚❚", method="animate", args=[[None], _FRAME_ARGS]),
                ],
            )
        ],
    )


def _style(figure: go.Figure, height: int, title: str) -> None:
    figure.update_layout(
        height=height,
        margin=dict(l=80, r=20, t=70, b=20),
        showlegend=False,
        template=TEMPLATE,
        title_text=title,
    )
    figure.update_annotations(font_size=12)
    # Row 0 (word element, head, channel, slot) at the top of every image, as in a matrix.
    figure.update_yaxes(autorange="reversed", showgrid=False, zeroline=False)
    figure.update_xaxes(showgrid=False, zeroline=False)


def _scrub_panels(
    trace: Trace, max_slots: int, max_link_slots: int
) -> tuple[go.Figure, list[_Panel]]:
    """Lay out memory and weightings (left), links (right), the strip (bottom, full width)."""
    bin_size = slot_bin_size(trace.memory_size, max_slots)
    has_link = trace.link is not None
    panels, memory_height = _memory_panels(trace, bin_size, 1, 1)
    weight_panels, weight_height = _weight_panels(trace, bin_size, 2, 1)
    panels += weight_panels
    strip_panels, strip_axis = _strip_panels(trace, 3, 1)
    panels += strip_panels
    strip_height = 0.5 * len(_strip_image(trace)[1])
    titles = [
        f"memory M_t: {trace.memory_size} slots, each a column of {trace.word_size} numbers",
        "weightings" + (" and usage" if _state_rows(trace) else "") + " over slots",
        "input, target (scored steps) and output over time",
    ]
    if has_link:
        link_bin_size = slot_bin_size(trace.memory_size, max_link_slots)
        panels.append(_link_panel(trace, link_bin_size, 1, 2))
        titles.insert(
            1,
            "links among touched slots" if trace.link_positions is not None
            else "temporal links L_t[i, j]: i written after j",
        )
        specs = [[{}, {"rowspan": 2}], [{}, None], [{"colspan": 2}, None]]
    else:
        specs = [[{}], [{}], [{}]]
    heights = [memory_height, weight_height, strip_height]
    figure = make_subplots(
        rows=3,
        cols=2 if has_link else 1,
        specs=specs,
        column_widths=[0.64, 0.36] if has_link else None,
        row_heights=[h / sum(heights) for h in heights],
        vertical_spacing=0.07,
        horizontal_spacing=0.06,
        subplot_titles=titles,
    )
    figure.update_yaxes(strip_axis, row=3, col=1)
    figure.update_xaxes(title_text="slot", title_standoff=4, row=2, col=1)
    figure.update_xaxes(title_text="step", title_standoff=4, row=3, col=1)
    return figure, panels


def _scrub_height(trace: Trace) -> int:
    rows = len(_weight_rows(trace, slot_bin_size(trace.memory_size, trace.memory_size))[0])
    units = min(max(trace.word_size, 6), 24) + 1.1 * rows + 0.5 * len(_strip_image(trace)[1])
    return int(min(1100, max(620, 260 + 20 * units)))


def step_figure(
    trace: Trace, step: int, max_slots: int = MAX_SLOTS, max_link_slots: int = MAX_LINK_SLOTS
) -> go.Figure:
    """Memory, weightings, usage state, links and the strip at one ``step`` (no frames)."""
    _require_step(trace, step)
    figure, panels = _scrub_panels(trace, max_slots, max_link_slots)
    _add_panels(figure, panels, step)
    _style(figure, _scrub_height(trace), _step_title(trace, step))
    return figure


def scrub_figure(
    trace: Trace,
    step: int = 0,
    max_slots: int = MAX_SLOTS,
    max_link_slots: int = MAX_LINK_SLOTS,
) -> go.Figure:
    """``step_figure`` with one animation frame per step and a slider: scrubbing needs no server.

    Frame ``str(t)`` holds only what changes at step t (memory, weightings, links, sparse
    markers and the step box); the strip itself is drawn once.
    """
    _require_step(trace, step)
    figure, panels = _scrub_panels(trace, max_slots, max_link_slots)
    moving = _add_panels(figure, panels, step)
    _add_frames(figure, panels, moving, trace.steps, step)
    _style(figure, _scrub_height(trace) + 60, SCRUB_TITLE)
    return figure


def animation_size(
    trace: Trace, max_slots: int = MAX_SLOTS, max_link_slots: int = MAX_LINK_SLOTS
) -> int:
    """How many numbers ``scrub_figure(trace)`` carries in its frames (to decide whether to ship
    it, or draw ``step_figure`` one step at a time)."""
    bins = math.ceil(trace.memory_size / slot_bin_size(trace.memory_size, max_slots))
    rows = trace.read_heads + trace.write_heads + len(_state_rows(trace))
    per_step = bins * (trace.word_size + rows)
    if trace.link is not None:
        if trace.link_positions is not None:
            per_step += trace.link.shape[1] * trace.link.shape[2]
        else:
            link_bins = math.ceil(
                trace.memory_size / slot_bin_size(trace.memory_size, max_link_slots)
            )
            per_step += link_bins * link_bins
    if trace.read_positions is not None:
        per_step += trace.read_positions[0].size
    return per_step * trace.steps


def fits_in_browser(
    trace: Trace,
    limit: int | None = None,
    max_slots: int = MAX_SLOTS,
    max_link_slots: int = MAX_LINK_SLOTS,
) -> bool:
    """Whether ``scrub_figure(trace)`` stays under ``limit`` numbers of frame data
    (default ``MAX_ANIMATION_VALUES``)."""
    limit = MAX_ANIMATION_VALUES if limit is None else limit
    return animation_size(trace, max_slots, max_link_slots) <= limit


# ---------------------------------------------------------------------------------------
# Timeline: weightings over all steps (NTM paper, figures 4-6)
# ---------------------------------------------------------------------------------------
def timeline_figure(trace: Trace, max_slots: int = MAX_SLOTS) -> go.Figure:
    """The input / target / output strip and every head's weighting as slot × time images.

    A contiguous diagonal in the write image is an NTM walking through memory; a DNC's
    allocation jumps to whichever slot is free.
    """
    bin_size = slot_bin_size(trace.memory_size, max_slots)
    slots = _slot_axis(trace.memory_size, bin_size)
    steps = np.arange(trace.steps)
    strip, _, tick_values, tick_names = _strip_image(trace)
    strip_rows = strip.shape[0]
    titles = ["input, target and output (channel × step)"]
    heatmaps = [
        _heatmap(strip, steps, np.arange(strip_rows), STRIP_COLORS, 0.0, 1.0,
                 "step %{x}<br>row %{y}<br>value %{z:.3f}", name="strip")
    ]
    heights = [0.5 * strip_rows]
    hover = "step %{x}<br>" + _slot_hover(bin_size, "w = %{z:.3f}", axis="y")
    for kind, values in (("write", trace.write_weights), ("read", trace.read_weights)):
        pooled = pool_slots(values, bin_size, "sum", axis=2)  # (T, H, bins)
        top = _max_or_one(pooled)
        for head in range(pooled.shape[1]):
            titles.append(f"{kind} head {head}: weighting w^{kind[0]} (slot × step)")
            heatmaps.append(
                _heatmap(pooled[:, head].T, steps, slots, WEIGHT_COLORS, 0.0, top, hover,
                         name=f"{kind} {head}")
            )
            heights.append(min(max(len(slots), 8), 40) * 0.6)
    figure = make_subplots(
        rows=len(heatmaps),
        cols=1,
        shared_xaxes=True,
        row_heights=[h / sum(heights) for h in heights],
        vertical_spacing=min(0.05, 0.25 / len(heatmaps)),
        subplot_titles=titles,
    )
    for row, heatmap in enumerate(heatmaps, start=1):
        figure.add_trace(heatmap, row=row, col=1)
    _style(
        figure, int(min(1400, max(450, 140 + 14 * sum(heights)))),
        f"{trace.arch.upper()}: where each head read and wrote, step by step",
    )
    figure.update_yaxes(tickvals=tick_values, ticktext=tick_names, row=1, col=1)
    figure.update_yaxes(title_text="slot", row=2, col=1)
    figure.update_xaxes(title_text="step", row=len(heatmaps), col=1)
    return figure


# ---------------------------------------------------------------------------------------
# Explain: how one head's weighting was formed at one step
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One stage of an addressing pipeline: a weighting over slots and what made it."""

    title: str
    weights: np.ndarray  # (N,)
    caption: str
    overlay: np.ndarray | None = None  # a weighting drawn over this one, e.g. w_{t-1}
    overlay_name: str = ""


@dataclass(frozen=True)
class Explanation:
    """Stages from first to last; ``recorded`` is the weighting the model actually used."""

    arch: str
    step: int
    head: str
    stages: tuple[Stage, ...]
    gates: dict[str, float] = field(default_factory=dict)
    recorded: np.ndarray | None = None
    note: str = ""
    # How far the last stage may lie from ``recorded`` (sparse memories approximate the mix).
    tolerance: float = 1e-3
    # The stage parameters a user may change (name -> value, the shift as a list), as used
    # here: the recorded values unless ``explanation`` was given other ``knobs``.
    knobs: dict = field(default_factory=dict)
    # Masked content lookup (Csordás & Schmidhuber 2019): the head's mask over the word (W,),
    # which positions its content lookup compared; None without the improvement.
    content_mask: np.ndarray | None = None

    def mismatch(self) -> float:
        """Largest |last stage - recorded weighting|: ~0 when the stages reproduce the model."""
        if self.recorded is None:
            return 0.0
        return float(np.abs(self.stages[-1].weights - self.recorded).max())


def interesting_step(trace: Trace) -> int:
    """A step worth explaining first: the middle of the scored steps (when the model answers),
    else the middle of the run."""
    if trace.mask is not None and (trace.mask > 0.5).any():
        scored = np.flatnonzero(trace.mask > 0.5)
        return int(scored[len(scored) // 2])
    return trace.steps // 2


def heads(trace: Trace) -> list[str]:
    """The heads ``explanation`` accepts, as ``"read r"`` / ``"write w"`` names."""
    reads = _head_labels("read", trace.read_heads)
    writes = _head_labels("write", trace.write_heads)
    return reads + writes if trace.content_weights is not None else writes + reads


def _parse_head(trace: Trace, head: str) -> tuple[str, int]:
    allowed = heads(trace)
    if head not in allowed:
        raise ValueError(f"head must be one of {allowed}, got {head!r}")
    kind, index = head.split()
    return kind, int(index)


def _ntm_shift(weights: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Circular convolution: offset k - S//2 moves weight towards higher slots (numpy)."""
    offsets = np.arange(shift.shape[0]) - shift.shape[0] // 2
    return sum(s * np.roll(weights, int(o)) for s, o in zip(shift, offsets, strict=True))


def _ntm_sharpen(weights: np.ndarray, gamma: float) -> np.ndarray:
    logs = gamma * np.log(np.maximum(weights.astype(np.float64), np.finfo(np.float32).tiny))
    logs -= logs.max()
    sharpened = np.exp(logs)
    return (sharpened / sharpened.sum()).astype(np.float32)


def _repower(content: np.ndarray, recorded_strength: float, strength: float) -> np.ndarray:
    """A content weighting softmax(β cos) recomputed for another key strength β': it is
    proportional to softmax(β cos)^(β'/β), so the recorded weighting is all that is needed."""
    if strength == recorded_strength:
        return content
    logs = (strength / max(recorded_strength, 1e-12)) * np.log(
        np.maximum(content.astype(np.float64), np.finfo(np.float64).tiny)
    )
    logs -= logs.max()
    powered = np.exp(logs) * (content > 0)  # a slot outside a sparse lookup stays at 0
    return (powered / max(powered.sum(), 1e-300)).astype(np.float32)


def _knob(knobs: dict, name: str, recorded):
    """The knob's value if one was given, else the recorded one."""
    if name not in knobs:
        return recorded
    value = knobs[name]
    if isinstance(recorded, np.ndarray):
        value = np.asarray(value, dtype=np.float32)
        if value.shape != recorded.shape:
            raise ValueError(f"knob {name!r} must have shape {recorded.shape}, got {value.shape}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
        math.isfinite(value)
    ):
        raise ValueError(f"knob {name!r} must be a finite number, got {value!r}")
    return float(value)


def _previous_ntm_weights(trace: Trace, step: int, kind: str, index: int) -> np.ndarray | None:
    if step > 0:
        values = trace.read_weights if kind == "read" else trace.write_weights
        return values[step - 1, index]
    initial = trace.metadata.get("initial_weights", {}).get(kind)
    if initial is None:
        return None
    return np.asarray(initial, dtype=np.float32)[index]


def _explain_ntm(
    trace: Trace, step: int, kind: str, index: int, name: str, knobs: dict
) -> Explanation:
    h = index if kind == "read" else trace.read_heads + index  # reads first, then writes
    recorded_beta = float(trace.key_strength[step, h])
    beta = _knob(knobs, "β", recorded_beta)
    if beta < 0:
        raise ValueError(f"knob 'β' must be >= 0, got {beta}")
    content = _repower(trace.content_weights[step, h], recorded_beta, beta)
    g = _knob(knobs, "g", float(trace.interpolation_gate[step, h]))
    s = _knob(knobs, "s", trace.shift[step, h])
    gamma = _knob(knobs, "γ", float(trace.sharpening[step, h]))
    if not 0 <= g <= 1 or gamma < 1 or (s < 0).any() or abs(float(s.sum()) - 1) > 1e-3:
        raise ValueError("knobs must keep 0 <= g <= 1, γ >= 1 and the shift a distribution "
                         f"(>= 0, summing to 1), got g={g}, γ={gamma}, s={s.tolist()}")
    previous = _previous_ntm_weights(trace, step, kind, index)
    note = ""
    if previous is None:
        previous = np.zeros_like(content)
        note = "The head's initial weighting was not recorded: w_{t-1} is drawn as zero."
    gated = g * content + (1.0 - g) * previous
    shifted = _ntm_shift(gated, s)
    sharpened = _ntm_sharpen(shifted, gamma)
    offsets = np.arange(len(s)) - len(s) // 2
    shift_text = ", ".join(f"{o:+d}: {p:.2f}" for o, p in zip(offsets, s, strict=True))
    recorded = (trace.read_weights if kind == "read" else trace.write_weights)[step, index]
    stages = (
        Stage(
            f"1 content w^c (β = {beta:.2f})", content,
            "Cosine similarity of the key with every slot, sharpened by the key strength β "
            "and normalised: slots holding something like the key win.",
        ),
        Stage(
            f"2 interpolated w^g (g = {g:.2f})", gated,
            "The interpolation gate g mixes the content weighting with the head's previous "
            "weighting (drawn as a line): g near 1 looks up by content, near 0 keeps "
            "the previous location.",
            overlay=previous, overlay_name="w_{t-1}",
        ),
        Stage(
            "3 shifted w̃ (s)", shifted,
            f"Circular convolution with the shift distribution s ({shift_text}) moves the "
            "focus by a few slots: this is how an NTM walks through memory.",
        ),
        Stage(
            f"4 sharpened w (γ = {gamma:.2f})", sharpened,
            "Raising to the power γ ≥ 1 and renormalising undoes the blur of the shift: "
            "the final weighting.",
        ),
    )
    gates = {"β": beta, "g": g, "γ": gamma}
    gates.update({f"s[{o:+d}]": float(p) for o, p in zip(offsets, s, strict=True)})
    mask = None if trace.content_masks is None else trace.content_masks[step, h]
    if mask is not None:  # masked content: the share of the word compared
        gates["content mask, mean"] = float(mask.mean())
    used = {"β": beta, "g": g, "s": [float(p) for p in s], "γ": gamma}
    return Explanation(trace.arch, step, name, stages, gates, recorded, note, knobs=used,
                       content_mask=mask)  # fmt: skip


def _explain_dnc_write(trace: Trace, step: int, name: str, knobs: dict) -> Explanation:
    """DNC: w^w = g^w [g^a a + (1 - g^a) c^w]. SAM and SDNC record their write in the same
    fields: a = 1_LRU (the least recently used slot), c^w = w^r_{t-1} (the slots read last
    step), g^a = 1 - γ and g^w = α (docs/math.md, SAM)."""
    allocation = trace.allocation[step]
    content = trace.write_content_weights[step]
    used = {}
    if trace.write_strength is not None:
        recorded_beta = float(trace.write_strength[step])
        used["β^w"] = _knob(knobs, "β^w", recorded_beta)
        if used["β^w"] < 1:
            raise ValueError(f"knob 'β^w' must be >= 1 (oneplus), got {used['β^w']}")
        content = _repower(content, recorded_beta, used["β^w"])
    g_a = used["g^a"] = _knob(knobs, "g^a", float(trace.allocation_gate[step]))
    g_w = used["g^w"] = _knob(knobs, "g^w", float(trace.write_gate[step]))
    if not (0 <= g_a <= 1 and 0 <= g_w <= 1):
        raise ValueError(f"knobs 'g^a' and 'g^w' must lie in [0, 1], got {g_a} and {g_w}")
    mixed = g_a * allocation + (1.0 - g_a) * content
    sparse = trace.arch in ("sam", "sdnc")
    stages = []
    if trace.usage is not None:
        stages.append(Stage(
            "0 usage", trace.usage[step],
            "How recently each slot was used (SAM counts steps since it was last touched)."
            if sparse else
            "How used each slot is: raised by writes, lowered when read heads free the slots "
            "they read (free gates).",
        ))
    if sparse:
        stages += [
            Stage("1 least used slot 1_LRU", allocation,
                  "The slot unused for longest: new data goes there (it is wiped first)."),
            Stage("2 last step's reads w^r_{t-1}", content,
                  "The slots read at the previous step: writing there updates what was read."),
            Stage(f"3 mixed (1 - γ = {g_a:.2f})", mixed,
                  "γ chooses between updating the slots just read and the least used slot."),
        ]
    else:
        stages += [
            Stage("1 allocation a", allocation,
                  "Weights the least used slots, so new data goes where nothing is still "
                  "needed."),
            Stage("2 write content c^w", content,
                  "Content lookup with the write key: to update a slot that holds something "
                  "similar."),
            Stage(f"3 mixed (g^a = {g_a:.2f})", mixed,
                  "The allocation gate chooses between allocation (g^a near 1) and content "
                  "lookup."),
        ]
    gate = "α" if sparse else "g^w"
    stages.append(Stage(
        f"4 write weighting w^w ({gate} = {g_w:.2f})", g_w * mixed,
        f"The write gate {gate} scales it: near 0 means this step writes nothing.",
    ))
    gates = {"1 - γ": g_a, "α": g_w} if sparse else {"g^a": g_a, "g^w": g_w}
    if "β^w" in used:
        gates["β^w"] = used["β^w"]
    if trace.write_mask is not None:  # masked content: the share of the word compared
        gates["content mask, mean"] = float(trace.write_mask[step].mean())
    return Explanation(
        trace.arch, step, name, tuple(stages), gates, trace.write_weights[step, 0], knobs=used,
        content_mask=None if trace.write_mask is None else trace.write_mask[step],
    )


def _explain_dnc_read(
    trace: Trace, step: int, index: int, name: str, knobs: dict
) -> Explanation:
    modes = _knob(knobs, "π", trace.read_modes[step, index])
    if (modes < 0).any() or abs(float(modes.sum()) - 1) > 1e-3:
        raise ValueError(f"knob 'π' must be >= 0 and sum to 1, got {modes.tolist()}")
    backward = trace.backward_weights[step, index]
    content = trace.read_content_weights[step, index]
    used = {"π": [float(m) for m in modes]}
    if trace.read_strengths is not None:
        recorded_beta = float(trace.read_strengths[step, index])
        used["β^r"] = _knob(knobs, "β^r", recorded_beta)
        if used["β^r"] < 1:
            raise ValueError(f"knob 'β^r' must be >= 1 (oneplus), got {used['β^r']}")
        content = _repower(content, recorded_beta, used["β^r"])
    forward = trace.forward_weights[step, index]
    mixed = modes[0] * backward + modes[1] * content + modes[2] * forward
    pi = dict(zip(READ_MODES, (float(m) for m in modes), strict=True))
    stages = (
        Stage(
            f"1 backward b (π = {pi['backward']:.2f})", backward,
            "Follows the temporal links backwards from what the head read last step: the slot "
            "written just before it.",
        ),
        Stage(
            f"2 content c^r (π = {pi['content']:.2f})", content,
            "Content lookup with the read key on the memory just written.",
        ),
        Stage(
            f"3 forward f (π = {pi['forward']:.2f})", forward,
            "Follows the links forwards: the slot written just after the one read last step. "
            "This is how a DNC replays a sequence in order.",
        ),
        Stage(
            "4 read weighting w^r", mixed,
            "The read modes π mix the three: π[backward] b + π[content] c + π[forward] f.",
        ),
    )
    if trace.read_positions is not None:
        # SDNC keeps the mix to its K largest entries (K = the sparse reads).
        k = trace.read_positions.shape[2]
        kept = np.zeros_like(mixed)
        largest = np.argsort(mixed)[-k:]
        kept[largest] = mixed[largest]
        stages = stages[:3] + (
            Stage("4 mixed", mixed, stages[3].caption),
            Stage(f"5 read weighting w^r (K = {k})", kept,
                  f"Only the {k} largest entries are kept: the read stays sparse."),
        )
    gates = {f"π {mode}": value for mode, value in pi.items()}
    if "β^r" in used:
        gates["β^r"] = used["β^r"]
    if trace.forward_sharpness is not None:  # link sharpness (Csordás & Schmidhuber 2019)
        gates["s^f (forward sharpened)"] = float(trace.forward_sharpness[step, index])
        gates["s^b (backward sharpened)"] = float(trace.backward_sharpness[step, index])
    if trace.read_masks is not None:  # masked content: the share of the word compared
        gates["content mask, mean"] = float(trace.read_masks[step, index].mean())
    if trace.free_gates is not None:
        gates["free gate f"] = float(trace.free_gates[step, index])
    return Explanation(
        trace.arch, step, name, stages, gates, trace.read_weights[step, index], knobs=used,
        content_mask=None if trace.read_masks is None else trace.read_masks[step, index],
    )


def explanation(trace: Trace, step: int, head: str, knobs: dict | None = None) -> Explanation:
    """How the weighting of ``head`` (``"read r"`` or ``"write w"``) was formed at ``step``.

    NTM: content → interpolation (g) → shift (s) → sharpening (γ), recomputed from the
    recorded content weighting and gates. DNC write: usage, allocation and write content mixed
    by the allocation gate, scaled by the write gate. DNC read: backward, content and forward
    mixed by the read modes. Other memories (or a trace lacking those fields) get the recorded
    weighting alone, with a note.

    ``knobs`` replaces stage parameters by name (the keys of the recorded explanation's
    ``knobs``: NTM ``β``, ``g``, ``s`` (a list over offsets), ``γ``; DNC write ``β^w``,
    ``g^a``, ``g^w``; DNC read ``β^r``, ``π`` (backward, content, forward)) and recomputes the
    stages from the step's recorded inputs; a changed key strength re-powers the recorded
    content weighting (softmax(β' cos) ∝ softmax(β cos)^(β'/β)).
    """
    _require_step(trace, step)
    kind, index = _parse_head(trace, head)
    knobs = dict(knobs or {})
    if trace.content_weights is not None and trace.interpolation_gate is not None:
        explained = _explain_ntm(trace, step, kind, index, head, knobs)
    elif kind == "write" and trace.allocation is not None and trace.write_gate is not None:
        explained = _explain_dnc_write(trace, step, head, knobs)
    elif kind == "read" and trace.read_modes is not None and trace.forward_weights is not None:
        explained = _explain_dnc_read(trace, step, index, head, knobs)
    else:
        explained = None
    if explained is not None:
        unknown = sorted(set(knobs) - set(explained.knobs))
        if unknown:
            raise ValueError(f"unknown knobs {unknown} for {head}; known: {list(explained.knobs)}")
        return explained
    values = (trace.read_weights if kind == "read" else trace.write_weights)[step, index]
    stage = Stage(
        f"{head} weighting", values,
        "The weighting the model used at this step.",
    )
    note = f"The {trace.arch.upper()} trace records no intermediate weightings for this head."
    if trace.read_positions is not None and kind == "read":
        positions = np.rint(trace.read_positions[step, index]).astype(int).tolist()
        note += f" Its sparse read looked at slots {positions} (the K nearest to its key)."
    if knobs:
        raise ValueError(f"this {trace.arch.upper()} {head} has no knobs, got {sorted(knobs)}")
    return Explanation(trace.arch, step, head, (stage,), {}, values, note)


def explain_figure(
    explained: Explanation, max_slots: int = MAX_SLOTS, recorded: Explanation | None = None
) -> go.Figure:
    """A row of bar charts, one per stage, sharing one y range so heights compare. With
    ``recorded`` (the explanation without knobs), its stages are drawn as grey bars beside
    the knobs' ones."""
    count = len(explained.stages)
    figure = make_subplots(
        rows=1, cols=count, shared_yaxes=True, horizontal_spacing=0.03,
        subplot_titles=[stage.title for stage in explained.stages],
    )
    memory_size = explained.stages[0].weights.shape[0]
    bin_size = slot_bin_size(memory_size, max_slots)
    slots = _slot_axis(memory_size, bin_size)
    top = 0.0
    for col, stage in enumerate(explained.stages, start=1):
        if recorded is not None:
            before = pool_slots(recorded.stages[col - 1].weights, bin_size, "sum")
            top = max(top, float(before.max()))
            figure.add_trace(
                go.Bar(
                    x=slots, y=before, name="recorded", marker_color="#bbbbbb",
                    hovertemplate=_slot_hover(bin_size, "recorded w = %{y:.3f}")
                    + "<extra></extra>",
                ),
                row=1, col=col,
            )
        values = pool_slots(stage.weights, bin_size, "sum")
        top = max(top, float(values.max()))
        figure.add_trace(
            go.Bar(
                x=slots, y=values, name="with the knobs" if recorded else stage.title,
                marker_color="#1f77b4",
                hovertemplate=_slot_hover(bin_size, "w = %{y:.3f}") + "<extra></extra>",
            ),
            row=1, col=col,
        )
        if stage.overlay is not None:
            overlay = pool_slots(stage.overlay, bin_size, "sum")
            top = max(top, float(overlay.max()))
            figure.add_trace(
                go.Scatter(
                    x=slots, y=overlay, mode="lines", name=stage.overlay_name,
                    line=dict(color=MARKER_COLOR, width=1.5),
                    hovertemplate=_slot_hover(bin_size, f"{stage.overlay_name} = %{{y:.3f}}")
                    + "<extra></extra>",
                ),
                row=1, col=col,
            )
    figure.update_yaxes(range=[0, max(top, 1e-3) * 1.08])
    figure.update_xaxes(title_text="slot")
    figure.update_layout(
        height=320,
        margin=dict(l=50, r=20, t=60, b=40),
        showlegend=False,
        bargap=0.05,
        barmode="group",
        template=TEMPLATE,
        title_text=f"{explained.arch.upper()} {explained.head} at step {explained.step}"
        + (" (grey: as recorded; blue: with the knobs)" if recorded is not None else ""),
    )
    figure.update_annotations(font_size=12)
    return figure


def content_mask_figure(explained: Explanation) -> go.Figure:
    """The head's content mask as bars over the word's positions: 1 where its lookup compares
    memory and key, 0 where it ignores them (``Explanation.content_mask``; masked content)."""
    if explained.content_mask is None:
        raise ValueError(f"{explained.head} at step {explained.step} has no content mask "
                         "(the model was trained without masked_content)")  # fmt: skip
    mask = np.asarray(explained.content_mask, dtype=float)
    figure = go.Figure(go.Bar(
        x=np.arange(mask.shape[0]), y=mask, marker_color="#1f77b4",
        hovertemplate="word position %{x}: mask %{y:.3f}<extra></extra>",
    ))  # fmt: skip
    figure.update_yaxes(range=[0, 1.05], title_text="mask")
    figure.update_xaxes(title_text="position in the word")
    figure.update_layout(
        height=220, margin=dict(l=50, r=20, t=50, b=40), showlegend=False, bargap=0.1,
        template=TEMPLATE,
        title_text=f"{explained.head}'s content mask at step {explained.step}: which parts of "
        "the word its lookup compares",
    )  # fmt: skip
    return figure


# ---------------------------------------------------------------------------------------
# Compare: models on the same input, a row each, one slider
# ---------------------------------------------------------------------------------------
def compare_figure(
    traces: Sequence[Trace],
    names: Sequence[str],
    step: int = 0,
    max_slots: int = MAX_SLOTS,
) -> go.Figure:
    """One row per model: memory, weightings, and outputs with the step box; one slider.

    All rows move together. The traces must come from the same input (the same number of
    steps); their memories may differ in size. A trace's ``metadata["bit_errors"]`` is shown
    in its row's title.
    """
    if not 1 <= len(traces) <= 4:
        raise ValueError(f"traces must hold 1 to 4 traces, got {len(traces)}")
    if len(names) != len(traces):
        raise ValueError(f"names must name every trace: {len(names)} names, {len(traces)} traces")
    steps = {trace.steps for trace in traces}
    if len(steps) != 1:
        raise ValueError(f"traces must have the same number of steps, got {sorted(steps)}")
    _require_step(traces[0], step)
    titles = []
    for name, trace in zip(names, traces, strict=True):
        errors = trace.metadata.get("bit_errors")
        label = f"<b>{name}</b>" + ("" if errors is None else f" ({errors:g} bit errors)")
        titles += [f"{label}: memory", "weightings", "target and output"]
    figure = make_subplots(
        rows=len(traces), cols=3, column_widths=[0.36, 0.32, 0.32],
        horizontal_spacing=0.06, vertical_spacing=0.24 / len(traces),
        subplot_titles=titles,
    )
    panels: list[_Panel] = []
    strip_axes = []
    for row, trace in enumerate(traces, start=1):
        bin_size = slot_bin_size(trace.memory_size, max_slots)
        panels += _memory_panels(trace, bin_size, row, 1)[0]
        panels += _weight_panels(trace, bin_size, row, 2)[0]
        strip_panels, strip_axis = _strip_panels(trace, row, 3, parts=("target", "output"))
        panels += strip_panels
        strip_axes.append((row, strip_axis))
    moving = _add_panels(figure, panels, step)
    _add_frames(figure, panels, moving, traces[0].steps, step)
    _style(figure, int(190 + 300 * len(traces)), SCRUB_TITLE)
    for row, strip_axis in strip_axes:
        figure.update_yaxes(strip_axis, row=row, col=3)
    figure.update_xaxes(title_text="slot", title_standoff=2, col=1)
    figure.update_xaxes(title_text="slot", title_standoff=2, col=2)
    figure.update_xaxes(title_text="step", title_standoff=2, col=3)
    return figure


# ---------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------
def generalisation_figure(
    frame,
    x: str = "length",
    y: str = "mean_bit_errors",
    color: str = "model",
    trained_up_to: int | None = None,
) -> go.Figure:
    """Bit errors per sequence against sequence length, one line per model.

    ``frame``: a pandas DataFrame with columns ``x``, ``y`` and ``color`` (the shape of
    ``mann.evaluate.generalisation_frame``). ``trained_up_to`` draws a dashed line at the longest
    training length, so what lies right of it is generalisation.
    """
    missing = [column for column in (x, y, color) if column not in frame.columns]
    if missing:
        raise ValueError(
            f"frame must have columns {[x, y, color]}, missing {missing}; "
            f"it has {list(frame.columns)}"
        )
    figure = go.Figure()
    for name, rows in frame.groupby(color, sort=False):
        rows = rows.sort_values(x)
        figure.add_trace(go.Scatter(
            x=rows[x], y=rows[y], mode="lines+markers", name=str(name),
            hovertemplate=f"{name}<br>length %{{x}}<br>%{{y:.3f}} bit errors<extra></extra>",
        ))
    if trained_up_to is not None:
        figure.add_vline(
            x=trained_up_to, line_dash="dash", line_color="grey",
            annotation_text="longest training length", annotation_position="top left",
        )
    figure.update_layout(
        xaxis_title="sequence length",
        yaxis_title="bit errors per sequence",
        yaxis_rangemode="tozero",
        template=TEMPLATE,
        height=420,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(orientation="h", y=1.12),
    )
    return figure


def training_figure(history: Sequence, into: go.Figure | None = None) -> go.Figure:
    """The cost in bits per sequence and the bit errors per sequence against training step.

    ``history``: ``mann.train.Progress`` reports (or dicts with the same keys: ``step``,
    ``bits``, ``bit_errors``), oldest first. ``into``: a figure this function made before,
    whose curves are replaced in place; a progress view redrawn every second does that, as
    building the figure's layout anew costs 0.05 s of server CPU each time and the curves 1 ms.
    """

    def column(name: str) -> list:
        return [
            entry[name] if isinstance(entry, dict) else getattr(entry, name) for entry in history
        ]

    steps = column("step")
    if into is not None:
        for curve, name in zip(into.data, ("bits", "bit_errors"), strict=True):
            curve.x, curve.y = steps, column(name)
        return into
    figure = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.1,
        subplot_titles=["cost (bits per sequence)", "bit errors per sequence"],
    )
    for col, name in ((1, "bits"), (2, "bit_errors")):
        figure.add_trace(
            go.Scatter(x=steps, y=column(name), mode="lines", name=name), row=1, col=col
        )
    figure.update_xaxes(title_text="training step")
    figure.update_yaxes(rangemode="tozero")
    figure.update_layout(
        height=320, template=TEMPLATE, showlegend=False,
        margin=dict(l=50, r=20, t=40, b=40),
    )
    return figure


def for_screen(
    figure: go.Figure, height: int | None = None, text_scale: float = 1.0, title: bool = True
) -> go.Figure:
    """Fit ``figure`` to a screen: a new ``height`` in pixels (None keeps it), every text
    (ticks, titles, subplot titles, the slider's label, hover) ``text_scale`` times its size
    with margins grown to match, and without its title line if not ``title`` (where the page
    says what the figure is, that line is better spent on the plots). Changes ``figure`` in
    place and returns it.

    For a projector: 1.5 makes 12 px labels 18 px, readable from the back of a room.
    """
    if not text_scale > 0:
        raise ValueError(f"text_scale must be positive, got {text_scale}")
    if height is not None:
        if height < 100:
            raise ValueError(f"height must be at least 100 pixels, got {height}")
        figure.update_layout(height=height)
    if not title and figure.layout.title.text:
        # Room for the subplots' titles only.
        figure.update_layout(title_text=None, margin_t=round(32 * text_scale))
    if text_scale != 1.0:
        layout = figure.layout

        def scaled(size, default: float = 12) -> int:
            return round((size or default) * text_scale)

        figure.update_layout(
            font_size=scaled(layout.font.size),
            # The title is one line across the figure: it grows less, so it still fits.
            title_font_size=round((layout.title.font.size or 17) * min(text_scale, 1.15)),
            hoverlabel_font_size=scaled(layout.hoverlabel.font.size, 13),
        )
        for annotation in layout.annotations:
            annotation.font.size = scaled(annotation.font.size)
        for slider in layout.sliders:
            slider.currentvalue.font.size = scaled(slider.currentvalue.font.size, 13)
            slider.currentvalue.xanchor = "right"  # clear of the play buttons at the left
            slider.font.size = scaled(slider.font.size)
        margin = layout.margin
        top = margin.t if not title else scaled(margin.t, 80)
        figure.update_layout(margin=dict(l=scaled(margin.l, 80), r=margin.r, b=margin.b, t=top))
        _make_room_for_text(figure, extra=round(24 * (text_scale - 1)))
    return figure


def _make_room_for_text(figure: go.Figure, extra: int) -> None:
    """Lower the top of every subplot below another by ``extra`` pixels, and its title with
    it, so larger tick labels above and a larger title do not overlap."""
    layout = figure.layout
    height = layout.height or 450
    # A slider and its play buttons take about 120 pixels below the plots.
    below = (layout.margin.b or 80) + (120 if layout.sliders else 0)
    plot_height = height - (layout.margin.t or 80) - below
    if extra <= 0 or plot_height <= 0:
        return
    shift = extra / plot_height
    tops = {}
    for name in layout:
        if name.startswith("yaxis") and layout[name].domain:
            low, top = layout[name].domain
            if top < 0.99 and top - low > 2 * shift:
                layout[name].domain = (low, top - shift)
                tops[round(top, 6)] = top - shift
    for annotation in layout.annotations:
        if annotation.yref == "paper" and annotation.y is not None:
            moved = tops.get(round(annotation.y, 6))
            if moved is not None:
                annotation.y = moved


def figure_html(figure: go.Figure) -> str:
    """A standalone HTML page with plotly.js embedded: opens offline, slider included."""
    return figure.to_html(include_plotlyjs=True, full_html=True, auto_play=False)


def save_animation(trace: Trace, path, fps: float = 4.0, size: tuple[int, int] = (1280, 720)):
    """The scrub view as an animated GIF or MP4 for slides (``mann.animation``)."""
    from mann.animation import save_animation as save

    return save(trace, path, fps=fps, size=size)
