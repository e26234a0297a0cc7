"""Patterns: how two to four models use memory over many episodes, in numbers and pictures."""

import streamlit as st

from mann import pattern_figures
from mann.analysis import METRICS, summary_table
from mann.inputs import MAX_INPUT_STEPS, training_lengths
from mann.patterns import PLACEMENT
from ui import choosing, links, results, server

server.page_needs_app()

# Episodes of the shipped multi-copy models' bar: 6 rounds (30 items for 10 slots).
BAR_ROUNDS = 6

# What each metric means, in a line (the exact definitions: docs/analysis.md).
METRIC_HELP = {
    "bit_errors": "wrong output bits per episode",
    "writes": "steps whose write weighting sums to at least 0.5",
    "slots_written": "distinct slots those writes focused on",
    "rewrites": "writes − slots written: how often a slot was written again",
    "write_locality": "share of consecutive writes one slot apart (a ring walk gives 1)",
    "write_sharpness": "weight on the focused slot over the write's total",
    "read_sharpness": "the same for the read head",
    "read_write_lag": "steps from writing a slot to reading it back",
}


def preferred_models(task_name: str, options: list[str]) -> list[str]:
    """The shipped models of this task, NTMs first (on priority sort both ways to sort), then
    the sidebar's fitting choice."""
    stem = task_name.replace("_", "-")
    names = ("ntm", "ntm-pretrained", "dnc", "sdnc", "sam")
    keys = [f"checkpoint:{name}-{stem}" for name in names]
    default = [key for key in keys if key in options][:4]
    for key in ("untrained:ntm", "untrained:dnc"):
        if len(default) < 2 and key in options and key not in default:
            default.append(key)
    return default


def controls():
    """The task, models and episodes to measure; None when the choice cannot run."""
    tasks = [name for name in choosing.TASK_NAMES if choosing.shipped_for(name)] or ["copy"]
    default_task = "multi_copy" if "multi_copy" in tasks else tasks[0]
    first, second = st.columns([1, 3])
    task_name = first.selectbox(
        "task", choosing.TASK_NAMES, index=choosing.TASK_NAMES.index(default_task),
        key="patterns_task", format_func=lambda name: name.replace("_", " "),
    )
    task = choosing.task_for(task_name)
    options = choosing.fitting_keys(task)
    picked = second.multiselect(
        "models (two to four)", options,
        default=links.models_from_link(options) or preferred_models(task_name, options),
        format_func=choosing.model_label, max_selections=4, key=f"patterns_models:{task_name}",
    )
    shortest, longest = training_lengths(task)
    low, high, _ = choosing.length_bounds(task.name, choosing.task_json(task))
    columns = st.columns(4)
    from mann.inputs import length_label

    length = columns[0].number_input(length_label(task), low, high, longest,
                                     key=f"patterns_length:{task_name}")
    rounds = None
    if hasattr(task, "with_rounds"):
        rounds = columns[1].number_input(
            "rounds", 1, 100, min(task.max_rounds, BAR_ROUNDS), key="patterns_rounds",
            help=f"Trained on {task.min_rounds} to {task.max_rounds} rounds of {shortest} to "
            f"{longest}; more rounds than fit in memory make a model reuse its slots.",
        )
    episodes = columns[2].number_input("episodes", 10, 1000, 100, step=10,
                                       key="patterns_episodes")
    seed = columns[3].number_input("seed", 0, 2**31 - 1, 0, key="patterns_seed")
    return task, picked, int(length), None if rounds is None else int(rounds), int(episodes), \
        int(seed)


def measure(task, picked, length, rounds, episodes, seed) -> dict | None:
    """The measured result for these choices: recorded now (with a progress bar) when Measure
    is pressed, else the one kept in the session for exactly these choices, else None."""
    from mann.patterns import fixed_task

    if len(picked) < 2:
        st.info("Pick at least two models to compare.")
        return None
    try:
        fixed = fixed_task(task, length, rounds)
        if fixed.max_steps > MAX_INPUT_STEPS:
            raise ValueError(
                f"length {length} and {rounds} rounds make {fixed.max_steps} steps; the app "
                f"records at most {MAX_INPUT_STEPS} (fewer rounds or a shorter length)"
            )
        choices = [choosing.resolve(key, task.name) for key in picked]
    except ValueError as error:
        st.error(str(error))
        return None
    key = (tuple(f"{c.key}|{c.version}" for c in choices), choosing.task_json(fixed), episodes,
           seed)
    stored = st.session_state.get("patterns_result")
    if st.button("Measure", type="primary", icon=":material/play_arrow:"):
        bar = st.progress(0.0, text="recording episodes...")

        def progress(done: int, total: int) -> None:
            bar.progress(done / total, text=f"recorded {done} of {total} episodes (all models)")

        try:
            traces, frame = results.measure_patterns(
                {choice.label: choice.model for choice in choices}, fixed, episodes, seed,
                progress,
            )
        except ValueError as error:
            st.error(str(error))
            return None
        finally:
            bar.empty()
        stored = {"key": key, "traces": traces, "frame": frame}
        st.session_state["patterns_result"] = stored
    if stored is None or stored["key"] != key:
        st.info("Choose the models and the episodes, then press Measure.")
        return None
    return stored


def show(result: dict, task_name: str) -> None:
    traces, frame = result["traces"], result["frame"]
    st.subheader("In numbers")
    st.caption("Mean ± standard deviation over the episodes. " + "; ".join(
        f"**{name}**: {text}" for name, text in METRIC_HELP.items()) + ".")
    st.dataframe(summary_table(frame, ["bit_errors", *METRICS]), hide_index=True)
    if task_name == "priority_sort":
        show_placement(traces, frame)

    st.subheader("In pictures")
    count = len(next(iter(traces.values())))
    episode = st.slider("episode", 0, count - 1, 0, key="patterns_episode") if count > 1 else 0
    one = {name: model_traces[episode] for name, model_traces in traces.items()}
    st.plotly_chart(pattern_figures.allocation_path_figure(one), key="patterns_path")
    st.caption(
        "Where each write goes, step by step (grey bands: output steps). An NTM climbs a "
        "staircase: each write one slot past the last, wrapping from the last slot to the "
        "first, so after one lap it overwrites the oldest items. A DNC jumps to whichever "
        "slot allocation offers: the slots it freed when it read them back."
    )
    usage = pattern_figures.usage_figure(one)
    if usage is not None:
        st.plotly_chart(usage, key="patterns_usage")
        st.caption(
            "Total usage rises while a round is written and falls while it is read back: the "
            "free gates release each slot as it is read, so allocation can hand it out again. "
            "A baseline that creeps upward is usage that was not fully released; once it "
            "reaches the number of slots, allocation has nothing left to offer."
        )
    left, right = st.columns(2)
    left.plotly_chart(pattern_figures.jump_figure(traces), key="patterns_jumps")
    left.caption("A ring walk is almost all +1; allocation spreads the jumps over the slots.")
    right.plotly_chart(pattern_figures.slot_writes_figure(traces), key="patterns_slots")
    right.caption("Above 1, a slot holds more than one item over the episode: memory reuse.")
    gates = pattern_figures.gate_figure(frame)
    if gates is not None:
        st.plotly_chart(gates, key="patterns_gates")
        st.caption(
            "The write gate says how much a step writes, the allocation gate whether it "
            "writes to a fresh slot (1) or to one found by content (0), a free gate near 1 "
            "releases what the head read, and the read modes say whether a read follows the "
            "temporal links forward (in the order of writing), backward, or looks up content."
        )
    with st.expander("Every metric and gate, with standard deviations"):
        st.dataframe(frame, hide_index=True)


# The placement columns the page shows (``mann.patterns.memory_frame``), in this order.
PLACEMENT_COLUMNS = ("priority_fit", "slots_written", "read_steps", "read_hits")


def show_placement(traces: dict, frame) -> None:
    """Priority sort: placed by priority (the NTM paper's finding) or in arrival order?"""
    st.subheader("Placed by priority, or in arrival order?")
    st.caption(
        "Mean ± standard deviation over the episodes. **priority fit**: the correlation of an "
        "item's priority with the slot it is written to (±1: placed by priority, as the NTM "
        "paper found its NTM doing; near 0: slots handed out in arrival order); **slots "
        "written**: distinct slots for the items, fewer when items share a slot; **read "
        "steps**: share of consecutive answers read at most one slot apart (a walk along the "
        "slots); **read hits**: share of answers read from the slot their item was written to. "
        "Reads are each episode's answering read head's, the one with the most hits."
    )
    columns = [f"{PLACEMENT}{name}" for name in PLACEMENT_COLUMNS]
    table = summary_table(frame, columns).rename(
        columns=lambda c: c.removeprefix(PLACEMENT).replace("_", " "))
    st.dataframe(table, hide_index=True)
    st.plotly_chart(pattern_figures.priority_placement_figure(traces), key="patterns_placement")
    st.caption(
        "A line: the model computes where to write from the priority and reads the answers by "
        "walking the slots in order; items of close priority land in one slot and blur. A "
        "cloud: each item takes a fresh slot and each answer is found by content."
    )


def main() -> None:
    st.title("Patterns")
    st.caption(
        "How models use their memory over many episodes: how many slots they write, how often "
        "they write a slot again, how far each write moves, and (DNC, SDNC) what their gates "
        "do. Multi-copy has more items in an episode than memory has slots, so memory must be "
        "reused; that is where an NTM and a DNC part ways. On priority sort: whether an item's "
        "slot follows its priority or its arrival."
    )
    try:
        task, picked, length, rounds, episodes, seed = controls()
    except ValueError as error:
        st.error(str(error))
        return
    result = measure(task, picked, length, rounds, episodes, seed)
    if result is not None:
        show(result, task.name)
    links.link_box(models=picked)


main()
