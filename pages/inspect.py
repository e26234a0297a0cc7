"""Inspect: one model on one input, scrubbed through time; the timeline of its weightings."""

import numpy as np
import pandas as pd
import streamlit as st

from mann import figures
from ui import choosing, links, results, server, sidebar

server.page_needs_app()


def edit_input(base_input: choosing.InputChoice) -> bool:
    """The hand-edit table; stores an edit under the input's key. False if the input fails."""
    edits = st.session_state.setdefault("edits", {})
    with st.expander("Edit the input by hand", icon=":material/edit:"):
        try:
            random_inputs = choosing.random_inputs(base_input)
        except ValueError as error:
            st.error(str(error))
            return False
        current_inputs = edits.get(base_input.base_key, random_inputs)
        binary = bool(np.isin(random_inputs, (0.0, 1.0)).all())
        columns = [f"ch {c}" for c in range(random_inputs.shape[1])]
        table = pd.DataFrame(current_inputs.astype(bool) if binary else current_inputs,
                             columns=columns)
        table.index.name = "step"
        st.caption(
            "Tick or untick bits (one row per step, one column per input channel). For copy "
            "the targets follow from the bits; for other tasks an edited input is not scored."
        )
        edited = st.data_editor(table, key=f"editor:{base_input.base_key}", height=300)
        edited_inputs = edited.to_numpy(dtype=np.float32)
        if not np.array_equal(edited_inputs, random_inputs):
            edits[base_input.base_key] = edited_inputs
        else:
            edits.pop(base_input.base_key, None)
        if base_input.base_key in edits and st.button("Back to the random input"):
            edits.pop(base_input.base_key, None)
            st.session_state.pop(f"editor:{base_input.base_key}", None)
            st.rerun()
    return True


# What to look for in the timeline, per architecture.
TIMELINE_NOTES = {
    "ntm": "an NTM's shifts move its heads slot by slot, so writes and reads run along diagonals.",
    "dnc": "a DNC writes wherever allocation offers a free slot, and reads back along its "
    "temporal links in the order it wrote.",
    "sam": "SAM writes to the least recently used slot or to the slots it just read, and reads "
    "the K slots nearest its key by content.",
    "sdnc": "SDNC writes as SAM does, and reads K slots found by content or by following its "
    "sparse temporal links forwards or backwards.",
    "lstm": "an LSTM has no memory: the 'memory' rows are its own state (per unit, h and c of "
    "each layer), everything it can remember.",
}


# The scrub figure's height when the page fits a 1280×720 screen (one line and the tabs
# above it).
FIT_HEIGHT = 560


def main() -> None:
    screen = sidebar.display()
    try:
        choice = choosing.selected()
        base_input = choosing.current_input(choice)
    except ValueError as error:
        st.title("Inspect")
        st.error(str(error))
        return
    if not screen.fit:
        st.title("Inspect")
        st.caption(
            "The model and the input come from the sidebar. Scrubbing runs in your browser: "
            "the figure holds every step. Colours: memory blue (negative) to red (positive); "
            "weightings dark (0) to yellow (the largest value in this run)."
        )
        # The editor comes before the trace, so an edit shows at once.
        if not edit_input(base_input):
            return
    current = results.current()
    if current is None:
        return
    choice, chosen, trace = current
    key = results.trace_key(choice, chosen)

    errors = trace.metadata.get("bit_errors")
    errors = "not scored" if errors is None else f"{errors:g}"
    if screen.fit:
        sidebar.heading("Inspect", "", f"{choice.label} · {trace.steps} steps · bit errors "
                       f"{errors} · memory {trace.memory_size} × {trace.word_size}")
    else:
        st.subheader(choice.label)
        first, second, third = st.columns(3)
        first.metric("steps", trace.steps)
        second.metric("bit errors on this input", errors)
        third.metric("memory (slots × word)", f"{trace.memory_size} × {trace.word_size}")
        if not choice.trained:
            st.info("Untrained model (random weights): the mechanics are real, the behaviour "
                    "is not learned.", icon=":material/info:")
        if chosen.edited is not None:
            st.info("Showing your hand-edited input.", icon=":material/edit:")

    scrub_tab, timeline_tab = st.tabs(["Scrub through time", "Timeline"])
    with scrub_tab:
        step = links.step_from_link(trace.steps) or 0
        if figures.fits_in_browser(trace):
            figure = results.figure("scrub_figure", key, trace, step=step,
                                   height=screen.height(FIT_HEIGHT),
                                   text_scale=screen.text_scale)  # fmt: skip
            st.plotly_chart(figure, key="scrub_figure")
        else:
            st.caption(
                f"This trace is too big to send every step to the browser "
                f"({figures.animation_size(trace):,} numbers): the slider below asks the "
                "server for each step."
            )
            one_step(trace, step)
    with timeline_tab:
        st.caption(
            "Every head's weighting over all steps, as in the NTM paper's figures: "
            + TIMELINE_NOTES.get(trace.arch, "")
        )
        st.plotly_chart(results.figure("timeline_figure", key, trace,
                                      text_scale=screen.text_scale), key="timeline_figure")
    links.link_box(steps=trace.steps, step=step)


@st.fragment
def one_step(trace, start: int = 0) -> None:
    """Server-side scrubbing for big traces: only this fragment reruns when the slider moves."""
    step = st.slider("step", 0, trace.steps - 1, start, key=f"server_step:{trace.steps}")
    screen = sidebar.display()
    figure = figures.step_figure(trace, step)
    figures.for_screen(figure, screen.height(FIT_HEIGHT - 60), screen.text_scale,
                       title=not screen.fit)
    st.plotly_chart(figure, key="step_figure")


main()
