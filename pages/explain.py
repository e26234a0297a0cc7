"""Explain: how one head's weighting was formed at one step, stage by stage."""

import streamlit as st

from mann import figures
from ui import shared

shared.page_needs_app()


# How each architecture forms its weightings, in the stages the figure shows.
PIPELINES = {
    "ntm": "NTM: content → interpolation (g) → shift (s) → sharpening (γ).",
    "dnc": "DNC write: allocation and content mixed by the allocation gate, scaled by the write "
    "gate. DNC read: backward, content and forward mixed by the read modes.",
    "sam": "SAM write: the least used slot and the last step's reads mixed by γ, scaled by α. "
    "SAM read: a softmax over the K slots the index found nearest the key.",
    "sdnc": "SDNC write: as SAM's. SDNC read: backward and forward through the sparse temporal "
    "links and content over the K nearest slots, mixed by the read modes.",
}


def main() -> None:
    st.title("Explain")
    current = shared.current()
    if current is None:
        return
    choice, chosen, trace = current
    st.caption(f"Pick a step and a head. {PIPELINES.get(trace.arch, '')}")
    st.caption(f"{choice.label} on the sidebar's input ({trace.steps} steps).")

    heads = figures.heads(trace)
    left, right = st.columns([3, 1])
    with left:
        # Keys include the trace's shape, so a stored step is never out of a new range.
        step = st.slider("step", 0, trace.steps - 1, figures.interesting_step(trace),
                         key=f"explain_step:{trace.steps}")
    with right:
        head = st.selectbox("head", heads, key=f"explain_head:{'/'.join(heads)}")

    explained = figures.explanation(trace, step, head)
    st.plotly_chart(figures.explain_figure(explained), key="explain_figure")

    if explained.gates:
        gate_columns = st.columns(min(len(explained.gates), 6))
        for index, (name, value) in enumerate(explained.gates.items()):
            gate_columns[index % len(gate_columns)].metric(name, f"{value:.3f}")
    stage_columns = st.columns(len(explained.stages))
    for column, stage in zip(stage_columns, explained.stages, strict=True):
        column.markdown(f"**{stage.title}**")
        column.caption(stage.caption)
    if explained.note:
        st.info(explained.note, icon=":material/info:")
    if explained.mismatch() > explained.tolerance:
        st.warning(
            f"The last stage differs from the weighting the model recorded by up to "
            f"{explained.mismatch():.2g}: this trace may come from another version of the "
            "equations."
        )


main()
