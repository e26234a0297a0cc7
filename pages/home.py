"""Home: what the app shows, a one-click demo (NTM against DNC on copy), where to go next."""

import streamlit as st

from ui import choosing, links, results, server

server.page_needs_app()

st.title("Watch memory-augmented networks at work")
st.markdown(
    """
A **Neural Turing Machine** (NTM) and a **Differentiable Neural Computer** (DNC) are neural
networks with an external memory: a matrix of slots they read from and write to through soft,
differentiable *weightings*. This app runs them on algorithmic tasks and shows, step by step,
what they write where, what they read back, and why: memory, read and write weightings, the
DNC's usage, precedence and temporal links, and how each weighting was formed.

An NTM walks through memory slot by slot (content lookup, then shifts); a DNC allocates
whichever slot is least used and remembers the order of its writes in a link matrix, so it
never overwrites what it still needs.
"""
)

DEMO_PAIR = ("ntm", "dnc")


def demo_keys() -> list[str]:
    """The shipped copy checkpoints when they exist, else untrained models of each kind."""
    names = choosing.checkpoint_names()
    return [
        f"checkpoint:{arch}-copy" if f"{arch}-copy" in names else f"untrained:{arch}"
        for arch in DEMO_PAIR
    ]


def demo() -> None:
    """NTM against DNC on copy: the shipped checkpoints when they exist, else untrained ones."""
    st.subheader("One-click demo: NTM against DNC on the copy task")
    st.write(
        "Both models read 12 random 8-bit vectors, see a delimiter, then must write the vectors "
        "back. Drag the slider under the figure to move through time."
    )
    left, right = st.columns([1, 3])
    if left.button("Run the demo", type="primary", icon=":material/play_arrow:"):
        st.session_state["demo_seed"] = st.session_state.get("demo_seed", -1) + 1
    if "demo_seed" in st.session_state:
        if right.button("Another sequence", icon=":material/casino:"):
            st.session_state["demo_seed"] += 1
        from mann.tasks import make_task

        task = make_task("copy")
        chosen = choosing.input_choice(task, 12, st.session_state["demo_seed"])
        keys = demo_keys()
        try:
            choices = [choosing.resolve(key, "copy") for key in keys]
            traces = [results.trace_for(choice, chosen) for choice in choices]
        except ValueError as error:
            st.error(str(error))
            return
        if any(not choice.trained for choice in choices):
            st.warning(
                "The shipped checkpoints ntm-copy and dnc-copy are not in "
                f"`{server.checkpoint_dir()}` yet, so the demo runs **untrained models with random "
                "weights**: the memory mechanics are real, the behaviour is not learned. Train one "
                "on the Train page to see the difference.",
                icon=":material/warning:",
            )
        names = tuple(choice.label for choice in choices)
        key = "|".join(results.trace_key(choice, chosen) for choice in choices)
        st.plotly_chart(results.compare_figure(key, tuple(traces), names), key="demo_figure")
        columns = st.columns(len(choices))
        for column, choice, trace in zip(columns, choices, traces, strict=True):
            errors = trace.metadata.get("bit_errors")
            column.metric(f"{choice.label}: bit errors on this sequence",
                          "n/a" if errors is None else f"{errors:g}")


demo()

REUSE_MODELS = ("ntm-multi-copy", "dnc-multi-copy")


def reuse_demo() -> None:
    """NTM against DNC on multi-copy: more items than slots, so memory must be reused."""
    st.subheader("One-click demo: how an NTM and a DNC reuse memory")
    names = choosing.checkpoint_names()
    if not all(name in names for name in REUSE_MODELS):
        st.caption(f"Needs the shipped checkpoints {' and '.join(REUSE_MODELS)} in "
                   f"`{server.checkpoint_dir()}`.")
        return
    st.write(
        "Six copy rounds of five items in one episode, and only ten memory slots: thirty items "
        "cannot all be kept, so each model must write new items over old ones. The NTM walks "
        "its ring of slots and overwrites the oldest; the DNC frees each slot as it reads it "
        "back and allocation hands it out again."
    )
    if st.button("Run the reuse demo", icon=":material/play_arrow:"):
        st.session_state["reuse_seed"] = st.session_state.get("reuse_seed", -1) + 1
    if "reuse_seed" not in st.session_state:
        return
    from mann import pattern_figures
    from mann.analysis import memory_metrics

    try:
        choices = [choosing.resolve(f"checkpoint:{name}", "multi_copy") for name in REUSE_MODELS]
        task = choices[0].task.with_rounds(6, 6)
        chosen = choosing.input_choice(task, 5, st.session_state["reuse_seed"])
        traces = {choice.label: results.trace_for(choice, chosen) for choice in choices}
    except ValueError as error:
        st.error(str(error))
        return
    st.plotly_chart(pattern_figures.allocation_path_figure(traces), key="reuse_path")
    usage = pattern_figures.usage_figure(traces)
    if usage is not None:
        st.plotly_chart(usage, key="reuse_usage")
    columns = st.columns(len(traces))
    for column, (name, trace) in zip(columns, traces.items(), strict=True):
        metrics = memory_metrics(trace)
        column.metric(f"{name}: bit errors", f"{trace.metadata.get('bit_errors', 0):g}")
        column.caption(
            f"{metrics['writes']:.0f} writes to {metrics['slots_written']:.0f} slots; "
            f"{100 * metrics['write_locality']:.0f}% of consecutive writes one slot apart."
        )
    st.page_link(server.PAGES["patterns"], label="Patterns: the same over many episodes",
                 icon=":material/scatter_plot:")


reuse_demo()

st.subheader("Where next")
st.page_link(server.PAGES["inspect"], label="Inspect: scrub one model through time",
             icon=":material/grid_on:")
st.page_link(server.PAGES["explain"], label="Explain: how one weighting was formed",
             icon=":material/functions:")
st.page_link(server.PAGES["compare"], label="Compare: two to four models on the same input",
             icon=":material/compare:")
st.page_link(server.PAGES["train"], label="Train: a model of your own, live",
             icon=":material/model_training:")
st.page_link(server.PAGES["generalisation"], label="Generalisation: longer sequences",
             icon=":material/show_chart:")
st.page_link(server.PAGES["patterns"], label="Patterns: how models allocate and reuse memory",
             icon=":material/scatter_plot:")
st.page_link(server.PAGES["export"], label="Export: the trace and an offline figure",
             icon=":material/download:")
st.caption("Choose the model and the input in the sidebar; every page uses that choice.")
links.link_box()
