"""Generalisation: bit errors per sequence against length, for several models on one plot."""

import streamlit as st

from mann import figures
from mann.demo import parse_lengths, training_lengths
from ui import shared

shared.page_needs_app()


def main() -> None:
    st.title("Generalisation")
    st.caption(
        "How each model does on sequences of given lengths, longer than it was trained on "
        "included: the mean bit errors per sequence over fresh random sequences."
    )
    try:
        choice = shared.selected()
        task = shared.input_task(shared.current_input(choice))
        options = shared.fitting_keys(task)
    except ValueError as error:
        st.error(str(error))
        return

    trained = [key for key in options if not key.startswith("untrained:")]
    picked = st.multiselect(
        "models", options, default=trained[:4] or [choice.key], format_func=shared.model_label,
        key=f"generalisation_models:{task.name}",
    )
    shortest, longest = training_lengths(task)
    low, high, _ = shared.length_bounds(task.name, shared.task_json(task))
    suggested = sorted({n for n in (longest // 2, longest, 2 * longest, 3 * longest, 4 * longest)
                        if low <= n <= high})
    first, second, third = st.columns([2, 1, 1])
    lengths_text = first.text_input(
        "lengths (comma-separated)", ",".join(str(n) for n in suggested),
        key=f"generalisation_lengths:{task.name}",
        help=f"Trained on {shortest} to {longest}; at most {high} here.",
    )
    sequences = second.number_input("sequences per length", 10, 1000, 100, step=10,
                                    key="generalisation_sequences")
    seed = third.number_input("seed", 0, 2**31 - 1, 0, key="generalisation_seed")

    if st.button("Evaluate", type="primary", icon=":material/play_arrow:"):
        try:
            lengths = parse_lengths(lengths_text, maximum=high)
            if not picked:
                raise ValueError("pick at least one model")
            running = f"Running {len(picked)} model(s) on {len(lengths)} lengths..."
            with st.spinner(running + shared.first_run_note()):
                frame = shared.generalisation(tuple(picked), shared.task_json(task), task.name,
                                              tuple(lengths), int(sequences), int(seed))
        except ValueError as error:
            st.error(str(error))
        else:
            st.session_state["generalisation_result"] = (task.name, frame)

    result = st.session_state.get("generalisation_result")
    if result is not None and result[0] == task.name:
        frame = result[1]
        st.plotly_chart(figures.generalisation_figure(frame, trained_up_to=longest),
                        key="generalisation_figure")
        st.dataframe(frame, hide_index=True)
    else:
        st.info("Choose models and lengths, then press Evaluate.")


main()
