"""Train: a model of your own in a background thread, with live curves; save it; inspect it."""

import streamlit as st

from mann import checkpoint, figures
from mann.background import BackgroundTraining
from mann.catalog import UNTRAINED_SIZES, available_architectures, checkpoint_name_error
from mann.model import MEMORY_OPTIONS, ModelConfig, option_owner_label
from mann.tasks import TASKS, make_task
from mann.tasks.registry import parse_options
from mann.train import LR_DECAYS, OPTIMIZERS, TrainConfig, load_initial_weights
from ui import choosing, links, server

server.page_needs_app()

st.title("Train")
st.caption(
    "Training runs in the background: the rest of the app stays usable, and this page shows "
    "the curves as they come. On this machine copy takes a few minutes to learn."
)

# Seconds without a page showing a run (the fragment refreshes every second) before it stops.
ABANDON_AFTER = 60.0

training: BackgroundTraining | None = st.session_state.get("training")
running = training is not None and training.running

FRESH = "new weights: the model below"

with st.form("train_form"):
    st.subheader("Model")
    start_from = st.selectbox(
        "start from", (FRESH, *choosing.checkpoint_names()), key="train_init",
        help="A checkpoint's weights and model go on training on the task below (the model "
        "fields are then ignored), as `python -m mann train --init` does: a model fine-tuned "
        "on another task, such as ntm-pretrained-priority-sort's associative recall first.",
    )  # fmt: skip
    first, second, third, fourth = st.columns(4)
    arch = first.selectbox("architecture", available_architectures(), key="train_arch")
    controller = second.selectbox("controller", ("lstm", "gru", "feedforward"),
                                  key="train_controller")
    hidden_size = third.number_input("controller size", 1, 1024, 100, key="train_hidden")
    num_layers = fourth.number_input("controller layers", 1, 4, 1, key="train_layers")
    first, second, third, fourth = st.columns(4)
    memory_size = first.number_input("memory slots N", 1, 65536, 64, key="train_memory")
    word_size = second.number_input("word size W", 1, 512, 20, key="train_word")
    read_heads = third.number_input("read heads", 1, 16, 1, key="train_reads")
    write_heads = fourth.number_input("write heads (NTM only)", 1, 8, 1, key="train_writes")
    st.subheader("Task and optimiser")
    first, second, third, fourth = st.columns(4)
    task_name = first.selectbox("task", list(TASKS), key="train_task")
    steps = second.number_input("steps", 1, 100_000, 1000, step=100, key="train_steps")
    batch_size = third.number_input("batch size", 1, 256, 16, key="train_batch")
    learning_rate = fourth.number_input("learning rate", 1e-5, 1.0, 1e-2, format="%.4f",
                                        key="train_lr")
    task_options = st.text_input(
        "task options", key="train_task_options", placeholder="e.g. bits=8 item_length=1",
        help="KEY=VALUE pairs, as `--task-option` takes them, separated by spaces or commas; "
        "docs/tasks.md lists each task's options. Empty: the task's defaults.",
    )  # fmt: skip
    first, second, third, fourth = st.columns(4)
    optimizer = first.selectbox("optimizer", OPTIMIZERS, index=OPTIMIZERS.index("adam"),
                                key="train_optimizer")
    curriculum = second.selectbox("curriculum", ("length", "none"), key="train_curriculum")
    lr_decay = third.selectbox(
        "learning-rate decay", LR_DECAYS, key="train_lr_decay",
        help="cosine: anneal to 1% of the rate over the run; the shipped models were trained "
        "with it, and it is what let the DNC generalise to longer sequences",
    )
    seed = fourth.number_input("seed", 0, 2**31 - 1, 0, key="train_seed")
    st.caption("Memory options. DNC: Csordás & Schmidhuber's (2019) improvements, which train "
               "by the pure-torch reference (slower than the plain DNC's fused kernels); "
               "masked content applies to the NTM's heads too. NTM: a learned initial memory, "
               "so a content key can pick a slot before anything is written, and the DNC's "
               "order within a step (read after write), which, like masked content, trains "
               "by the reference.")
    columns = st.columns(2)  # two to a row, so each label fits
    switches = {
        name: columns[index % 2].checkbox(f"{label} ({option_owner_label(name)})",
                                          key=f"train_{name}", help=what)
        for index, (name, (_, label, what)) in enumerate(MEMORY_OPTIONS.items())
    }
    start = st.form_submit_button("Start training", type="primary",
                                  icon=":material/play_arrow:", disabled=running)

if start:
    try:
        task_values = parse_options(task_options.replace(",", " ").split())
        task = make_task(task_name, **task_values)
        init = None if start_from == FRESH else server.checkpoint_dir() / start_from
        if init is None:
            sizes = UNTRAINED_SIZES.get(arch, {})
            model_config = ModelConfig(
                arch=arch, input_size=task.input_size, output_size=task.output_size,
                controller=controller, hidden_size=int(hidden_size), num_layers=int(num_layers),
                memory_size=int(memory_size), word_size=int(word_size),
                read_heads=int(read_heads), write_heads=int(write_heads) if arch == "ntm" else 1,
                sparse_reads=min(sizes.get("sparse_reads", 4), int(memory_size)),
                **{name: on for name, on in switches.items() if on},
            )
        else:  # the checkpoint's model; BackgroundTraining checks it fits the task
            model_config = ModelConfig.from_dict(checkpoint.read_metadata(init)["config"])
        train_config = TrainConfig(
            task=task_name, task_options=task_values, steps=int(steps), batch_size=int(batch_size),
            lr=float(learning_rate), lr_decay=lr_decay, optimizer=optimizer,
            curriculum=curriculum, seed=int(seed),
            log_every=max(1, min(10, int(steps) // 20 or 1)),
            init=None if init is None else str(init),
        )
        # Runs take turns on a shared server; one whose visitor has left (no page showing it
        # for a minute) stops.
        training = BackgroundTraining(model_config, train_config, abandon_after=ABANDON_AFTER)
        if init is not None:
            load_initial_weights(training.model, init)
        training.start()
    except (ValueError, checkpoint.CheckpointError) as error:
        st.error(f"Cannot train this: {error}")
    else:
        st.session_state["training"] = training
        st.session_state.pop("trained_key", None)
        running = True


def show_progress(run: BackgroundTraining) -> None:
    run.heartbeat()  # this visitor is still here
    history = run.poll()
    total = run.train_config.steps
    done = history[-1].step if history else 0
    place = run.queue_position
    if place is not None:
        st.info(f"Waiting for its turn: {place} in the queue ({run.queue.slots} training at a "
                "time on this server). It starts by itself; stay on the page.",
                icon=":material/hourglass_top:")  # fmt: skip
    state = run.state
    if run.abandoned:
        state = "stopped (nobody was watching)"
    st.progress(done / total, text=f"{state}: step {done} of {total}")
    if history:
        last = history[-1]
        first, second, third, fourth = st.columns(4)
        first.metric("cost (bits per sequence)", f"{last.bits:.3g}")
        second.metric("bit errors per sequence", f"{last.bit_errors:.3g}")
        third.metric("lengths now trained", f"{last.min_length} to {last.max_length}")
        fourth.metric("seconds", f"{last.seconds:.0f}")
        # One figure per run, its curves replaced on each refresh (cheaper than a new one).
        drawn = st.session_state.get("training_drawn")
        if drawn is None or drawn[0] is not run:
            drawn = (run, figures.training_figure(history))
            st.session_state["training_drawn"] = drawn
        st.plotly_chart(figures.training_figure(history, into=drawn[1]), key="training_figure")
    if run.error is not None:
        st.error(f"Training failed: {run.error}")
    if run.running:
        st.button("Stop", icon=":material/stop:", on_click=run.stop, key="train_stop")
    elif not st.session_state.get("training_shown_finished"):
        # The run ended while this fragment was refreshing: redraw the page for saving.
        st.session_state["training_shown_finished"] = True
        st.rerun(scope="app")


if training is not None:
    st.subheader("Progress")
    if running:
        st.session_state["training_shown_finished"] = False
    st.fragment(show_progress, run_every=1.0 if running else None)(training)


def use_trained(run: BackgroundTraining, name: str, save: bool) -> None:
    """Button callback: keep (and perhaps save) the trained model and choose it in the sidebar."""
    if save:
        try:
            run.save(server.checkpoint_dir() / name)  # never over an existing checkpoint
        except (OSError, ValueError) as error:
            st.session_state["train_save_error"] = f"Could not save {name!r}: {error}"
            return
        st.session_state["model_key"] = f"checkpoint:{name}"
    else:
        metadata = {"task": run.train_config.task, "task_options": {},
                    "metrics": run.result.metrics if run.result else {}}
        st.session_state["model_key"] = choosing.register_session_model(
            f"trained in app: {name}", run.model, metadata
        )
    st.session_state["open_inspect"] = True


if training is not None and training.finished and training.result is not None:
    st.subheader("Keep the model")
    name = st.text_input("checkpoint name", f"my-{training.model_config.arch}-"
                         f"{training.train_config.task.replace('_', '-')}", key="train_name")
    problem = checkpoint_name_error(name, server.checkpoint_dir())
    bad_name = checkpoint_name_error(name)  # the label of a model kept unsaved
    if problem:
        st.error(problem)
    first, second = st.columns(2)
    first.button(
        "Save as checkpoint and open in Inspect", type="primary", disabled=bool(problem),
        on_click=use_trained, args=(training, name, True), icon=":material/save:",
        help=f"Writes {name}.safetensors and {name}.json to {server.checkpoint_dir()}.",
    )
    second.button(
        "Open in Inspect without saving", disabled=bool(bad_name),
        on_click=use_trained, args=(training, name, False), icon=":material/visibility:",
    )
    if "train_save_error" in st.session_state:
        st.error(st.session_state.pop("train_save_error"))
    if st.session_state.pop("open_inspect", False):
        st.switch_page(server.PAGES["inspect"])
links.link_box()
