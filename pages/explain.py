"""Explain: how one head's weighting was formed at one step, stage by stage."""

import streamlit as st

from mann import figures
from ui import links, results, server

server.page_needs_app()


# How each architecture forms its weightings, in the stages the figure shows.
PIPELINES = {
    "ntm": "NTM: content → interpolation (g) → shift (s) → sharpening (γ).",
    "dnc": "DNC write: allocation and content mixed by the allocation gate, scaled by the write "
    "gate. DNC read: backward, content and forward mixed by the read modes.",
    "sam": "SAM write: the least used slot and the last step's reads mixed by γ, scaled by α. "
    "SAM read: a softmax over the K slots the index found nearest the key.",
    "sdnc": "SDNC write: as SAM's. SDNC read: backward and forward through the sparse temporal "
    "links and content over the K nearest slots, mixed by the read modes.",
    "lstm": "An LSTM alone has no memory and so no heads: there is no weighting to explain.",
}


# Slider ranges of the knobs: key strengths reach past what trained models use.
STRENGTH_MAX = 30.0
MODE_NAMES = ("backward", "content", "forward")


def knob_sliders(recorded: dict, prefix: str) -> dict:
    """Sliders preset to the recorded stage parameters; returns the knobs as set (shift and
    read modes normalised to sum to 1)."""
    st.markdown("**Knobs**: change a stage parameter and the stages are recomputed from this "
                "step's recorded inputs (grey bars: as recorded).")
    knobs = {}
    scalars = [name for name, value in recorded.items() if not isinstance(value, list)]
    columns = st.columns(max(len(scalars), 1))
    for column, name in zip(columns, scalars, strict=False):
        value = float(recorded[name])
        if name.startswith("β"):
            low, high = (0.0 if name == "β" else 1.0), max(STRENGTH_MAX, 2 * value)
        elif name == "γ":
            low, high = 1.0, max(STRENGTH_MAX, 2 * value)
        else:
            low, high = 0.0, 1.0
        knobs[name] = column.slider(name, low, high, value, (high - low) / 200,
                                    key=f"{prefix}:{name}", format="%.3f")  # fmt: skip
        if knobs[name] == value:
            knobs[name] = recorded[name]  # untouched: exactly the recorded value
    for name, values in recorded.items():
        if not isinstance(values, list):
            continue
        if name == "s":
            labels = [f"s[{offset:+d}]" for offset in range(-(len(values) // 2),
                                                            len(values) // 2 + 1)]
        else:
            labels = [f"π {mode}" for mode in MODE_NAMES]
        columns = st.columns(len(values))
        raw = [column.slider(label, 0.0, 1.0, float(value), 0.005, key=f"{prefix}:{label}",
                             format="%.3f")
               for column, label, value in zip(columns, labels, values, strict=True)]  # fmt: skip
        total = sum(raw)
        knobs[name] = values if raw == values else (
            [value / total for value in raw] if total > 0 else values
        )
    return knobs


def try_in_run(choice, trace, step, head, knobs, recorded) -> None:
    """The knobs as What-if interventions at this step: "Try it in the run"."""
    from mann.whatif import knob_interventions

    interventions = knob_interventions(trace.arch, trace.read_heads, step, head, knobs,
                                       recorded)  # fmt: skip
    if not interventions:
        return
    if st.button("Try it in the run", icon=":material/science:",
                 help="Open What if with these knob values as interventions at this step."):
        st.session_state["whatif_list"] = [i.to_dict() for i in interventions]
        st.session_state.pop("whatif_preset", None)
        st.switch_page(server.PAGES["whatif"])


def main() -> None:
    st.title("Explain")
    current = results.current()
    if current is None:
        return
    choice, chosen, trace = current
    st.caption(f"Pick a step and a head. {PIPELINES.get(trace.arch, '')}")
    st.caption(f"{choice.label} on the sidebar's input ({trace.steps} steps).")

    heads = figures.heads(trace)
    if not heads:
        st.info("This model has no memory heads. Inspect shows its controller state over time.",
                icon=":material/info:")
        return
    left, right = st.columns([3, 1])
    linked_step = links.step_from_link(trace.steps)
    linked_head = st.session_state.get(links.HEAD)
    with left:
        # Keys include the trace's shape, so a stored step is never out of a new range.
        step = st.slider("step", 0, trace.steps - 1,
                         figures.interesting_step(trace) if linked_step is None else linked_step,
                         key=f"explain_step:{trace.steps}")  # fmt: skip
    with right:
        head = st.selectbox("head", heads, key=f"explain_head:{'/'.join(heads)}",
                            index=heads.index(linked_head) if linked_head in heads else 0)

    links.link_box(step=step, head=head)
    explained = figures.explanation(trace, step, head)
    prefix = f"knob:{results.trace_key(choice, chosen)}:{step}:{head}"
    knobs = knob_sliders(explained.knobs, prefix) if explained.knobs else {}
    changed = knobs != explained.knobs
    if changed:
        try:
            turned = figures.explanation(trace, step, head, knobs)
        except ValueError as error:
            st.error(str(error))
            return
        st.plotly_chart(figures.explain_figure(turned, recorded=explained), key="explain_figure")
        try_in_run(choice, trace, step, head, knobs, explained.knobs)
        explained = turned
    else:
        st.plotly_chart(figures.explain_figure(explained), key="explain_figure")

    shown = {name: value for name, value in explained.gates.items()
             if not explained.knobs or name.startswith(("s^", "content mask", "free gate"))}
    if shown:  # with knobs, the sliders show the others
        gate_columns = st.columns(min(len(shown), 6))
        for index, (name, value) in enumerate(shown.items()):
            gate_columns[index % len(gate_columns)].metric(name, f"{value:.3f}")
    stage_columns = st.columns(len(explained.stages))
    for column, stage in zip(stage_columns, explained.stages, strict=True):
        column.markdown(f"**{stage.title}**")
        column.caption(stage.caption)
    if explained.content_mask is not None:  # masked content (Csordás & Schmidhuber 2019)
        st.plotly_chart(figures.content_mask_figure(explained), key="explain_mask")
        st.caption("Masked content lookup: the key and each slot are multiplied by this "
                   "learned mask before they are compared, so a lookup can match on part of "
                   "a word (say, an item's key) and ignore the rest.")
    if explained.note:
        st.info(explained.note, icon=":material/info:")
    if explained.mismatch() > explained.tolerance:
        st.warning(
            f"The last stage differs from the weighting the model recorded by up to "
            f"{explained.mismatch():.2g}: this trace may come from another version of the "
            "equations."
        )


main()
