"""Generalisation: bit errors per sequence against length, for several models on one plot."""

import streamlit as st

from mann import figures
from mann.inputs import parse_lengths, training_lengths
from ui import choosing, links, results, server

server.page_needs_app()

# The NTM paper's picture: trained on copies of at most 20, who still copies at 4x and 6x?
PAPER_MODELS = ("lstm-copy", "ntm-copy", "dnc-copy")
PAPER_LENGTHS = "10,20,30,40,60,80,120"
PAPER_SEQUENCES = 50


def paper_preset() -> None:
    """Button callback: the copy models, lengths up to 120, evaluated on the next run."""
    names = choosing.checkpoint_names()
    keys = [f"checkpoint:{name}" for name in PAPER_MODELS if name in names]
    st.session_state["model_key"] = keys[1] if len(keys) > 1 else keys[0]  # a copy model
    st.session_state["generalisation_models:copy"] = keys
    st.session_state["generalisation_lengths:copy"] = PAPER_LENGTHS
    st.session_state["generalisation_sequences"] = PAPER_SEQUENCES
    st.session_state["generalisation_evaluate_now"] = True


def main() -> None:
    st.title("Generalisation")
    st.caption(
        "How each model does on sequences of given lengths, longer than it was trained on "
        "included: the mean bit errors per sequence over fresh random sequences."
    )
    available = [name for name in PAPER_MODELS if name in choosing.checkpoint_names()]
    if len(available) >= 2:
        st.button(
            "The NTM paper's picture: " + " vs ".join(n.split("-")[0].upper() for n in available)
            + " on copy, lengths up to 120", on_click=paper_preset, icon=":material/science:",
            help="All three were trained on copies of 1 to 20 vectors. An LSTM alone fails "
            "past its training length; with an external memory the same task generalises.",
        )  # fmt: skip
    try:
        choice = choosing.selected()
        task = choosing.input_task(choosing.current_input(choice))
        options = choosing.fitting_keys(task)
    except ValueError as error:
        st.error(str(error))
        return

    trained = [key for key in options if not key.startswith("untrained:")]
    models_key = f"generalisation_models:{task.name}"
    if models_key in st.session_state:  # keep only what is still offered
        st.session_state[models_key] = [k for k in st.session_state[models_key] if k in options]
    else:
        st.session_state[models_key] = trained[:4] or [choice.key]
    picked = st.multiselect("models", options, format_func=choosing.model_label, key=models_key)
    shortest, longest = training_lengths(task)
    low, high, _ = choosing.length_bounds(task.name, choosing.task_json(task))
    suggested = sorted({n for n in (longest // 2, longest, 2 * longest, 3 * longest, 4 * longest)
                        if low <= n <= high})
    first, second, third = st.columns([2, 1, 1])
    # Defaults through the session (the preset sets these keys too).
    st.session_state.setdefault(f"generalisation_lengths:{task.name}",
                                ",".join(str(n) for n in suggested))  # fmt: skip
    st.session_state.setdefault("generalisation_sequences", 100)
    lengths_text = first.text_input(
        "lengths (comma-separated)", key=f"generalisation_lengths:{task.name}",
        help=f"Trained on {shortest} to {longest}; at most {high} here.",
    )
    sequences = second.number_input("sequences per length", 10, 1000, step=10,
                                    key="generalisation_sequences")
    seed = third.number_input("seed", 0, 2**31 - 1, 0, key="generalisation_seed")

    evaluate_now = st.session_state.pop("generalisation_evaluate_now", False)
    if st.button("Evaluate", type="primary", icon=":material/play_arrow:") or evaluate_now:
        try:
            lengths = parse_lengths(lengths_text, maximum=high)
            if not picked:
                raise ValueError("pick at least one model")
            running = f"Running {len(picked)} model(s) on {len(lengths)} lengths..."
            with st.spinner(running + server.first_run_note()):
                frame = results.generalisation(tuple(picked), choosing.task_json(task), task.name,
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
links.link_box()
