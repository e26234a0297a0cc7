"""The What-if figure: where an intervened run parts from the recorded one.

``whatif_figure(result)`` draws, over time steps, the answer bits that flipped (a strip, one
row per output bit), the bit errors per step of both runs, and how far memory moved apart;
intervention steps are marked, and the first diverging step is a dashed line.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mann.figures import TEMPLATE
from mann.intervention import Intervention
from mann.whatif import WhatIf

ORIGINAL_COLOR = "#7f7f7f"
INTERVENED_COLOR = "#d62728"
INTERVENTION_SHADE = "rgba(255, 165, 0, 0.25)"


def whatif_figure(result: WhatIf) -> go.Figure:
    """Three rows sharing the time axis: flipped answer bits, bit errors per step (recorded
    and intervened), Σ |ΔM| per step. Orange bands mark the intervention steps."""
    steps = np.arange(result.original.steps)
    figure = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.34, 0.36, 0.3],
        subplot_titles=["answer bits that flipped (scored steps)", "bit errors per step",
                        "memory: Σ |M_intervened − M_recorded| after the step"],
    )  # fmt: skip
    flipped = result.changed_bits.T.astype(np.float32)  # (Y,T)
    figure.add_trace(go.Heatmap(
        z=flipped, x=steps, y=np.arange(flipped.shape[0]), colorscale=[[0, "#f7f7f7"],
        [1, INTERVENED_COLOR]], zmin=0, zmax=1, showscale=False,
        hovertemplate="step %{x}, bit %{y}: %{z:.0f}<extra>flipped</extra>",
    ), row=1, col=1)  # fmt: skip
    for name, errors, color in (("recorded", result.original_errors, ORIGINAL_COLOR),
                                ("with interventions", result.intervened_errors,
                                 INTERVENED_COLOR)):  # fmt: skip
        figure.add_trace(go.Bar(
            x=steps, y=errors, name=name, marker_color=color,
            hovertemplate=f"{name}<br>step %{{x}}: %{{y:.0f}} wrong bits<extra></extra>",
        ), row=2, col=1)  # fmt: skip
    figure.add_trace(go.Scatter(
        x=steps, y=result.memory_difference, mode="lines+markers", name="memory apart",
        line=dict(color=INTERVENED_COLOR), showlegend=False,
        hovertemplate="step %{x}: Σ|ΔM| = %{y:.3f}<extra></extra>",
    ), row=3, col=1)  # fmt: skip
    for first, last in _intervention_runs(result):
        figure.add_vrect(x0=first - 0.5, x1=last + 0.5, fillcolor=INTERVENTION_SHADE,
                         line_width=0, layer="below")  # fmt: skip
    if result.first_changed_bit is not None:
        figure.add_vline(x=result.first_changed_bit, line_dash="dash", line_color="black",
                         annotation_text=f"first changed answer: step {result.first_changed_bit}",
                         annotation_position="top left", row=1, col=1)  # fmt: skip
    figure.update_yaxes(title_text="bit", autorange="reversed", row=1, col=1)
    figure.update_yaxes(title_text="wrong bits", rangemode="tozero", row=2, col=1)
    figure.update_yaxes(title_text="Σ |ΔM|", rangemode="tozero", row=3, col=1)
    figure.update_xaxes(title_text="time step", row=3, col=1)
    figure.update_layout(
        height=520, template=TEMPLATE, barmode="group", bargap=0.15,
        margin=dict(l=60, r=20, t=50, b=40), legend=dict(orientation="h", y=1.08),
    )  # fmt: skip
    figure.update_annotations(font_size=12)
    return figure


def _intervention_runs(result: WhatIf) -> list[tuple[int, int]]:
    runs = []
    for values in result.intervened.metadata.get("interventions", []):
        steps = Intervention.from_dict(values).steps()
        runs.append((steps.start, steps.stop - 1))
    return runs
