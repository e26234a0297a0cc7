"""Compare: two to four models on the same input, one figure with a row each, one slider."""

import pandas as pd
import streamlit as st

from ui import choosing, links, results, server, sidebar

server.page_needs_app()


# The figure's height when the page fits a 1280×720 screen (one line above it).
FIT_HEIGHT = 600


def main() -> None:
    screen = sidebar.display()
    sidebar.heading(
        "Compare",
        "Every model runs on the sidebar's input; one slider moves all rows together. Only "
        "models that take this task's inputs are offered (untrained ones are sized for it).",
    )
    # Fitting the screen, the figure comes first and the choice of models below it.
    above = st.container()
    try:
        choice = choosing.selected()
        chosen = choosing.current_input(choice)
        task = choosing.input_task(chosen)
        options = choosing.fitting_keys(task)
    except ValueError as error:
        st.error(str(error))
        return

    preferred = [f"checkpoint:{arch}-{task.name.replace('_', '-')}" for arch in ("ntm", "dnc")]
    default = [key for key in preferred if key in options]
    for key in (choice.key, "untrained:ntm", "untrained:dnc"):
        if len(default) < 2 and key in options and key not in default:
            default.append(key)
    picked = st.multiselect(
        "models (two to four)", options, default=links.models_from_link(options) or default,
        format_func=choosing.model_label, max_selections=4, key=f"compare_models:{task.name}",
    )
    if len(picked) < 2:
        st.info("Pick at least two models.")
        return

    try:
        choices = [choosing.resolve(key, task.name) for key in picked]
        traces = [results.trace_for(model, chosen) for model in choices]
    except ValueError as error:
        st.error(str(error))
        return

    names = tuple(model.label for model in choices)
    key = "|".join(results.trace_key(model, chosen) for model in choices)
    step = links.step_from_link(traces[0].steps) or 0
    figure = results.compare_figure(key, tuple(traces), names, step,
                                   screen.height(FIT_HEIGHT), screen.text_scale)
    (above if screen.fit else st).plotly_chart(figure, key="compare_figure")

    rows = []
    for model, trace in zip(choices, traces, strict=True):
        rows.append({
            "model": model.label,
            "architecture": model.model.config.arch.upper(),
            "memory": f"{trace.memory_size} × {trace.word_size}",
            "trained": "yes" if model.trained else "no (random weights)",
            "bit errors on this input": trace.metadata.get("bit_errors"),
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    links.link_box(steps=traces[0].steps, step=step, models=picked)


main()
