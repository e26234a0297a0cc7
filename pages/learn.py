"""Learn: guided lessons, a few steps each, every step a live view of a shipped model."""

from urllib.parse import urlencode

import streamlit as st

from mann import figures, pattern_figures
from ui import choosing, links, results, server
from ui.lessons import LESSONS, View

server.page_needs_app()

LESSON_KEY, STEP_KEY = "learn_lesson", "learn_step"


def traces_for(view: View, names: tuple[str, ...]):
    """The models ``names``, the view's input (one for all) and their traces on it."""
    choices = [choosing.resolve_sized(f"checkpoint:{name}", view.sized(name)) for name in names]
    task = choices[0].task
    if view.rounds is not None:
        task = task.with_rounds(view.rounds, view.rounds)
    chosen = choosing.input_choice(task, view.length, view.seed)
    return choices, chosen, [results.trace_for(choice, chosen) for choice in choices]


def full_page_link(view: View) -> str:
    query = {"model": view.model or view.models[0], "length": view.length, "seed": view.seed}
    if view.rounds is not None:
        query["rounds"] = view.rounds
    if view.kind in ("scrub", "explain", "compare"):
        query["step"] = view.step
    if view.head:
        query["head"] = view.head
    if view.models:
        query["models"] = ",".join(view.models)
    return f"/{view.page}?{urlencode(query)}"


def draw(view: View) -> None:
    """The live view of a lesson step (pages compose: the figures come from mann)."""
    names = view.needed
    choices, chosen, traces = traces_for(view, names) if view.kind != "generalisation" else (
        [], None, [])
    labels = [choice.label for choice in choices]
    key = f"learn|{view}"
    if view.kind == "scrub":
        step = min(view.step, traces[0].steps - 1)
        st.plotly_chart(results.figure("scrub_figure", key, traces[0], step=step),
                        key="learn_view")  # fmt: skip
    elif view.kind == "timeline":
        st.plotly_chart(results.figure("timeline_figure", key, traces[0]), key="learn_view")
    elif view.kind == "explain":
        explained = figures.explanation(traces[0], min(view.step, traces[0].steps - 1), view.head)
        st.plotly_chart(figures.explain_figure(explained), key="learn_view")
        if explained.gates:
            st.caption(", ".join(f"{name} = {value:.2f}"
                                 for name, value in explained.gates.items()))  # fmt: skip
    elif view.kind == "compare":
        step = min(view.step, traces[0].steps - 1)
        st.plotly_chart(results.compare_figure(key, tuple(traces), tuple(labels), step),
                        key="learn_view")  # fmt: skip
    elif view.kind == "reuse":
        one = dict(zip(labels, traces, strict=True))
        st.plotly_chart(pattern_figures.allocation_path_figure(one), key="learn_view")
        usage = pattern_figures.usage_figure(one)
        if usage is not None:
            st.plotly_chart(usage, key="learn_usage")
    elif view.kind == "whatif":
        from mann.whatif import presets
        from mann.whatif_figures import whatif_figure

        found = [p for p in presets(traces[0]) if p.name.startswith(view.preset)]
        if not found:
            st.info(f"The preset {view.preset!r} does not apply to this run.")
            return
        from mann.whatif import whatif

        result = whatif(choices[0].model, choosing.input_batch(chosen), found[0].interventions)
        st.caption(f"{found[0].name}: bit errors {result.original.metadata['bit_errors']:g} as "
                   f"recorded, {result.intervened.metadata['bit_errors']:g} with it.")
        st.plotly_chart(whatif_figure(result), key="learn_view")
    elif view.kind == "generalisation":
        from mann.tasks import make_task

        task = make_task("copy")
        with st.spinner("Evaluating each model on fresh sequences..."):
            frame = results.generalisation(tuple(f"checkpoint:{n}" for n in names),
                                          choosing.task_json(task), "copy", view.lengths, 30, 0)
        st.plotly_chart(figures.generalisation_figure(frame, trained_up_to=20), key="learn_view")


def main() -> None:
    st.title("Learn")
    st.caption("Guided lessons: read a step, look at the live view under it, go on. Each view "
               "opens in its full page from the link under it.")
    titles = {lesson.key: lesson.title for lesson in LESSONS}
    lesson_key = st.radio("lesson", list(titles), format_func=titles.get, key=LESSON_KEY,
                          horizontal=True, label_visibility="collapsed",
                          on_change=lambda: st.session_state.update({STEP_KEY: 0}))
    lesson = next(lesson for lesson in LESSONS if lesson.key == lesson_key)
    st.markdown(f"*{lesson.summary}*")
    available = set(choosing.checkpoint_names())
    missing = sorted({name for step in lesson.steps for name in step.view.needed} - available)
    if missing:
        others = [item.title for item in LESSONS
                  if {n for s in item.steps for n in s.view.needed} <= available]
        st.warning(f"This lesson needs the shipped checkpoint(s) {', '.join(missing)}, which "
                   f"are not in `{server.checkpoint_dir()}`. "
                   + (f"Lessons you can take here: {'; '.join(others)}." if others else ""),
                   icon=":material/warning:")
        return
    index = min(int(st.session_state.get(STEP_KEY, 0)), len(lesson.steps) - 1)
    step = lesson.steps[index]
    st.progress((index + 1) / len(lesson.steps),
                text=f"step {index + 1} of {len(lesson.steps)}: {step.title}")
    st.subheader(step.title)
    st.write(step.text)
    if step.equation:
        st.latex(step.equation)
    if step.look_at:
        st.info(f"Look at {step.look_at}.", icon=":material/visibility:")
    try:
        draw(step.view)
    except ValueError as error:
        st.error(str(error))
    st.markdown(f"[Open this view in its full page]({full_page_link(step.view)})")
    back, _, forward = st.columns([1, 4, 1])
    if back.button("Back", icon=":material/arrow_back:", disabled=index == 0):
        st.session_state[STEP_KEY] = index - 1
        st.rerun()
    if forward.button("Next", icon=":material/arrow_forward:",
                      disabled=index == len(lesson.steps) - 1):  # fmt: skip
        st.session_state[STEP_KEY] = index + 1
        st.rerun()


main()
links.link_box()
