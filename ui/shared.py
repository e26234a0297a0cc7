"""The shared sidebar (which model, which input) and the caches every page reads through.

State lives in ``st.session_state`` under these keys:

- ``model_key``: the chosen model, one of ``model_keys()``: ``checkpoint:NAME`` (a file in
  the checkpoint directory), ``untrained:ARCH`` (freshly initialised, sized for the task chosen
  in ``untrained_task``) or ``session:ID`` (uploaded, or trained in the app, this session only);
- ``session_models``: ``{key: SessionModel}`` for the session's own models;
- ``input_seed`` and ``length:TASK``: the random input; ``edits``: hand-edited inputs by
  input key (see the Inspect page);
- ``pending_upload``: ``(file name, bytes)`` of an upload not yet checked.

Models are cached with ``st.cache_resource``, traces with a bounded ``st.cache_data`` and the
(heavier) scrub figures with a bounded ``st.cache_resource``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import runpy
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

REPOSITORY = Path(__file__).resolve().parent.parent
# Tasks an untrained model can be sized for: mann.tasks.TASKS in its order (tests/test_app.py
# checks they agree).
TASK_NAMES = (
    "copy", "repeat_copy", "associative_recall", "priority_sort", "adding", "argmax", "multi_copy",
    "ngrams",
)  # fmt: skip
ARCH_NAMES = {"ntm": "NTM", "dnc": "DNC", "sam": "SAM", "sdnc": "SDNC", "lstm": "LSTM"}
ACCESS_FILES = {"lstm": "none"}  # the memory-less baseline's access module
PAGES = {
    "home": "pages/home.py",
    "inspect": "pages/inspect.py",
    "explain": "pages/explain.py",
    "compare": "pages/compare.py",
    "train": "pages/train.py",
    "generalisation": "pages/generalisation.py",
    "patterns": "pages/patterns.py",
    "whatif": "pages/whatif.py",
    "learn": "pages/learn.py",
    "export": "pages/export.py",
}


# Whether this thread's script run is inside app.py's navigation (``inside_app``).
_APP_RUN = threading.local()


@contextlib.contextmanager
def inside_app():
    """app.py runs the chosen page inside this: ``page_needs_app`` then knows it is served
    as every page should be, within app.py's navigation and sidebar."""
    _APP_RUN.inside = True
    try:
        yield
    finally:
        _APP_RUN.inside = False


def page_needs_app() -> None:
    """Each page's first call: where Streamlit ran the page file on its own, run app.py
    instead (which serves this page inside its navigation and sidebar), then end the run.

    That happens once per server: until ``st.navigation`` has run in some session,
    Streamlit routes by the ``pages/`` directory (streamlit#8860), so the first request
    for /inspect runs pages/inspect.py without app.py. The page files are named after their
    URLs so that this routing finds them; were they not, it would show a "Page not found"
    dialog over the page (tests/test_browser.py checks neither happens).
    """
    if not getattr(_APP_RUN, "inside", False):
        runpy.run_path(str(REPOSITORY / "app.py"))
        st.stop()


def checkpoint_dir() -> Path:
    """Where checkpoints are listed and saved: ``$MANN_CHECKPOINTS`` or ``checkpoints/``."""
    return Path(os.environ.get("MANN_CHECKPOINTS", REPOSITORY / "checkpoints"))


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------
@dataclass
class SessionModel:
    """A model that lives only in this browser session (uploaded or trained in the app)."""

    label: str
    model: Any
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    """A chosen model with everything a page needs to run it."""

    key: str
    label: str
    model: Any  # mann.MemoryAugmentedNetwork
    task: Any  # mann.tasks.Task
    metadata: dict
    trained: bool
    version: str  # changes when the model behind the key changes (file time, session id)


def session_models() -> dict[str, SessionModel]:
    return st.session_state.setdefault("session_models", {})


def checkpoint_names() -> list[str]:
    """Checkpoints on disk (a directory listing; no torch import)."""
    from mann.demo import list_checkpoints

    return list_checkpoints(checkpoint_dir())


def untrained_architectures() -> list[str]:
    access = REPOSITORY / "mann" / "access"
    return [arch for arch in ARCH_NAMES
            if (access / f"{ACCESS_FILES.get(arch, arch)}.py").exists()]


def model_keys() -> list[str]:
    keys = [f"checkpoint:{name}" for name in checkpoint_names()]
    keys += list(session_models())
    keys += [f"untrained:{arch}" for arch in untrained_architectures()]
    return keys


def model_label(key: str) -> str:
    kind, _, name = key.partition(":")
    if kind == "checkpoint":
        return name
    if kind == "untrained":
        return f"untrained {ARCH_NAMES.get(name, name)} (random weights)"
    stored = session_models().get(key)
    return stored.label if stored else key


@st.cache_resource(show_spinner=False)
def kernel_warm_up() -> subprocess.Popen:
    """Start ``mann.demo.warm_kernels`` in a background process, once per server.

    On a fresh machine numba needs over a minute to compile SAM's and SDNC's kernels; this
    way that mostly passes while the user reads the first page. A process, not a thread:
    numba compiles under one lock per process, and in a thread the warm-up's compiles would
    hold up the pages' own (a DNC page waited behind SDNC's kernels). The pages load what it
    caches on disk; whatever they need before then, they compile themselves, as without it.
    It runs at low priority, with one thread, so it yields to the pages.
    """
    code = ("import os\nif hasattr(os, \"nice\"): os.nice(10)  # POSIX only\n"
            "from mann.demo import warm_kernels\nwarm_kernels()")
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPOSITORY, env=environment,
                            stdout=subprocess.DEVNULL)


@st.cache_resource(show_spinner=False)
def freeze_long_lived_objects() -> int:
    """Exempt what exists after the first page has run (the imported modules: torch, plotly,
    pandas, streamlit, ...) from the garbage collector's full passes, once per server.

    A full collection must otherwise scan a quarter of a million long-lived objects: 0.17 s.
    Streamlit runs one after every script run unless told not to (.streamlit/config.toml does,
    when the app is started from the repository); frozen, a pass scans only what was made
    since (0.02 s with four models, their traces and figures cached). Returns the number of
    objects frozen.
    """
    gc.collect()  # whatever is garbage now is freed, not frozen for good
    gc.freeze()
    return gc.get_freeze_count()


def first_run_note() -> str:
    """What a spinner adds while the kernels are still compiling (empty once they are not)."""
    if kernel_warm_up().poll() is not None:
        return ""
    return " The CPU kernels are still being compiled (once per machine, about a minute)."


@st.cache_resource(max_entries=16, show_spinner=False)
def _load_checkpoint(path: str, modified: float) -> tuple[Any, dict]:
    """The model and metadata of checkpoint ``path`` (re-read when the file changes)."""
    import mann
    from mann.checkpoint import read_metadata

    return mann.load(path), read_metadata(path)


@st.cache_resource(max_entries=16, show_spinner=False)
def _untrained(arch: str, task_name: str) -> Any:
    from mann.demo import untrained_model
    from mann.tasks import make_task

    return untrained_model(arch, make_task(task_name))


def resolve(key: str, untrained_task: str = "copy") -> Choice:
    """The model behind ``key``, loaded through the caches.

    Raises:
        ValueError: an unknown key; CheckpointError (a ValueError) for a damaged file.
    """
    from mann.demo import task_of

    kind, _, name = key.partition(":")
    if kind == "checkpoint":
        path = checkpoint_dir() / f"{name}.safetensors"
        if not path.exists():
            raise ValueError(f"checkpoint {name!r} is no longer in {checkpoint_dir()}")
        modified = path.stat().st_mtime
        model, metadata = _load_checkpoint(str(path), modified)
        return Choice(key, name, model, task_of(metadata), metadata, True, str(modified))
    if kind == "untrained" and name in ARCH_NAMES:
        if untrained_task not in TASK_NAMES:
            raise ValueError(f"untrained_task must be one of {TASK_NAMES}, got {untrained_task!r}")
        from mann.tasks import make_task

        model = _untrained(name, untrained_task)
        return Choice(
            key, model_label(key), model, make_task(untrained_task), {}, False, untrained_task
        )
    stored = session_models().get(key)
    if stored is None:
        raise ValueError(f"model {key!r} is not available (any more) in this session")
    return Choice(key, stored.label, stored.model, task_of(stored.metadata), stored.metadata,
                  True, key)


@st.cache_resource(max_entries=4, show_spinner=False)
def _resized(path: str, modified: float, memory_size: int) -> Any:
    from mann.checkpoint import resized_model

    model, _ = _load_checkpoint(path, modified)
    return resized_model(model, memory_size).eval()


def resolve_sized(key: str, memory_size: int | None = None) -> Choice:
    """``resolve(key)``, with a checkpoint's model given ``memory_size`` slots (in memory, the
    file untouched) when that is set: a lesson shows a sparse memory at a larger size."""
    choice = resolve(key)
    if memory_size is None or not key.startswith("checkpoint:"):
        return choice
    path = checkpoint_dir() / f"{key.partition(':')[2]}.safetensors"
    model = _resized(str(path), path.stat().st_mtime, memory_size)
    return Choice(key, f"{choice.label} ({memory_size} slots)", model, choice.task,
                  choice.metadata, True, f"{choice.version}|{memory_size}")


def register_session_model(label: str, model: Any, metadata: dict) -> str:
    """Keep ``model`` for this session; return its key (for ``model_key``)."""
    key = f"session:{uuid.uuid4().hex[:12]}"
    session_models()[key] = SessionModel(label, model, dict(metadata))
    return key


def _on_upload() -> None:
    """file_uploader callback: queue the upload; the sidebar checks it on this rerun."""
    upload = st.session_state.get("upload")
    if upload is not None:
        st.session_state["pending_upload"] = (upload.name, upload.getvalue())


def take_pending_upload() -> None:
    """Check a queued upload; on success it becomes the chosen model."""
    pending = st.session_state.pop("pending_upload", None)
    if pending is None:
        return
    from mann.demo import load_upload

    name, data = pending
    try:
        model, metadata = load_upload(name, data)
    except ValueError as error:  # CheckpointError is a ValueError
        st.session_state["upload_error"] = str(error)
        return
    st.session_state.pop("upload_error", None)
    key = register_session_model(f"uploaded: {name}", model, metadata)
    st.session_state["model_key"] = key


# ---------------------------------------------------------------------------------------
# The sidebar
# ---------------------------------------------------------------------------------------
def sidebar() -> None:
    """Model and input choice, shared by every page (drawn by app.py before the page)."""
    keys = model_keys()
    if not keys:
        st.sidebar.error("No model: no checkpoints and no memory modules were found.")
        return
    if st.session_state.get("model_key") not in keys:
        st.session_state["model_key"] = keys[0]
    with st.sidebar:
        st.subheader("Model")
        st.selectbox("model", keys, format_func=model_label, key="model_key",
                     label_visibility="collapsed")
        if st.session_state["model_key"].startswith("untrained:"):
            st.selectbox("sized for task", TASK_NAMES, key="untrained_task")
            st.caption("Random weights: the mechanics are real, the behaviour is not learned.")
        with st.expander("Upload a checkpoint"):
            st.file_uploader(
                "NAME.safetensors", type=["safetensors"], key="upload", on_change=_on_upload,
                help="A checkpoint written by mann.save or the trainer (at most 50 MB).",
            )
            if "upload_error" in st.session_state:
                st.error(st.session_state["upload_error"])
        try:
            choice = selected()
        except ValueError as error:
            st.error(str(error))
            return
        st.caption(_describe(choice))
        st.subheader("Input")
        task = choice.task
        from mann.demo import length_label

        low, high, default = length_bounds(task.name, task_json(task))
        # Defaults through the session: a link (ui.links) may have set these keys already.
        st.session_state.setdefault(f"length:{task.name}", default)
        st.number_input(
            f"{length_label(task)} ({task.name.replace('_', ' ')})", min_value=low,
            max_value=high, step=1, key=f"length:{task.name}",
        )
        if hasattr(task, "with_rounds"):
            st.session_state.setdefault(f"rounds:{task.name}", task.max_rounds)
            st.number_input("rounds (copy rounds in the episode)", min_value=1,
                            max_value=rounds_bound(task), step=1, key=f"rounds:{task.name}")
        st.session_state.setdefault("input_seed", 0)
        st.number_input("seed", min_value=0, max_value=2**31 - 1, step=1, key="input_seed")


# ---------------------------------------------------------------------------------------
# Display: fit a projector's screen, large text
# ---------------------------------------------------------------------------------------
FIT_KEY, LARGE_TEXT_KEY = "display_fit", "display_large_text"
SCREEN = (1280, 720)  # what "fit" fits: a common projector


@dataclass(frozen=True)
class Display:
    """How the pages draw: ``fit`` a 1280×720 screen (the main figure and what it needs above
    it, without scrolling) and ``large_text`` (figure text 1.5 times its size)."""

    fit: bool = False
    large_text: bool = False

    @property
    def text_scale(self) -> float:
        return 1.5 if self.large_text else 1.0

    def height(self, fitted: int) -> int | None:
        """The main figure's height: ``fitted`` pixels when fitting the screen, else its own."""
        return fitted if self.fit else None


def display() -> Display:
    return Display(bool(st.session_state.get(FIT_KEY)), bool(st.session_state.get(LARGE_TEXT_KEY)))


def display_controls() -> None:
    """The sidebar's display toggles, and, when fitting the screen, less empty space above
    the page (Streamlit leaves 6rem)."""
    with st.sidebar:
        st.subheader("Display")
        st.toggle(f"fit a {SCREEN[0]}×{SCREEN[1]} screen", key=FIT_KEY,
                  help="For a projector: the page's main figure fits the window without "
                  "scrolling; explanations and controls move below it.")  # fmt: skip
        st.toggle("large text", key=LARGE_TEXT_KEY,
                  help="Figure text at 1.5 times its size, readable from the back of a room.")
    if display().fit:
        st.html("<style>[data-testid='stMainBlockContainer']"
                "{padding-top: 3.2rem; padding-bottom: 1rem}</style>")


def heading(title: str, caption: str, summary: str = "") -> None:
    """A page's title and what it shows; one line (title and ``summary``) when fitting."""
    if display().fit:
        st.markdown(f"**{title}**" + (f" · {summary}" if summary else ""))
    else:
        st.title(title)
        st.caption(caption)


def _describe(choice: Choice) -> str:
    from mann.demo import describe

    text = describe(choice.model)
    metrics = choice.metadata.get("metrics") or {}
    if metrics.get("bit_errors") is not None:
        text += f"; trained to {metrics['bit_errors']:.3g} bit errors per sequence"
    if metrics.get("step"):
        text += f" in {metrics['step']} steps"
    return text + "."


@st.cache_data(max_entries=64, show_spinner=False)
def length_bounds(task_name: str, options: str) -> tuple[int, int, int]:
    """(shortest, longest, default) input length for the task: the longest keeps T within
    ``MAX_INPUT_STEPS``; the default is the longest length it was trained on."""
    from mann.demo import MAX_INPUT_STEPS, training_lengths
    from mann.tasks import make_task

    task = make_task(task_name, **json.loads(options))
    low, high = 1, 1
    while high < 1000 and task.with_lengths(high + 1, high + 1).max_steps <= MAX_INPUT_STEPS:
        high += 1
    try:
        task.with_lengths(low, low)
    except ValueError:
        low = training_lengths(task)[0]
    return low, high, min(max(training_lengths(task)[1], low), high)


def rounds_bound(task: Any) -> int:
    """The most rounds the sidebar offers for a task with rounds: its episodes of the longest
    offered length stay within ``MAX_INPUT_STEPS``."""
    from mann.demo import MAX_INPUT_STEPS

    _, high, _ = length_bounds(task.name, task_json(task))
    return max(1, MAX_INPUT_STEPS // (2 * min(task.max_length, high) + 1))


def task_json(task: Any) -> str:
    """A task's options as canonical JSON: part of every cache key of an input."""
    import dataclasses

    return json.dumps(dataclasses.asdict(task), sort_keys=True)


def selected() -> Choice:
    """The model chosen in the sidebar."""
    key = st.session_state.get("model_key") or model_keys()[0]
    return resolve(key, st.session_state.get("untrained_task", "copy"))


# ---------------------------------------------------------------------------------------
# Inputs and traces
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputChoice:
    """The input chosen in the sidebar (and perhaps edited by hand)."""

    key: str  # identifies the input: task, length, seed (and the edit)
    base_key: str  # the same without the edit: where an edit of it is stored
    task_name: str
    task_json: str  # the task's options: the same input for every model that fits the task
    length: int
    seed: int
    edited: bytes | None  # hand-edited inputs (float32 bytes), or None


def current_input(choice: Choice) -> InputChoice:
    task = choice.task
    if hasattr(task, "with_rounds"):  # multi_copy: the sidebar fixes the number of rounds
        rounds = int(st.session_state.get(f"rounds:{task.name}", task.max_rounds))
        task = task.with_rounds(rounds, rounds)
    options = task_json(task)
    low, high, default = length_bounds(task.name, options)
    length = int(st.session_state.get(f"length:{task.name}", default))
    seed = int(st.session_state.get("input_seed", 0))
    base_key = f"{task.name}|{options}|{length}|{seed}"
    edited = st.session_state.get("edits", {}).get(base_key)
    edited_bytes = None if edited is None else edited.astype("float32").tobytes()
    key = base_key
    if edited_bytes is not None:
        key += "|edit:" + hashlib.sha1(edited_bytes).hexdigest()[:12]
    return InputChoice(key, base_key, task.name, options, length, seed, edited_bytes)


def input_task(chosen: InputChoice) -> Any:
    """The task the chosen input is drawn from, options included."""
    from mann.tasks import make_task

    return make_task(chosen.task_name, **json.loads(chosen.task_json))


def input_batch(chosen: InputChoice) -> Any:
    """The one-item Batch of the chosen input."""
    from mann.demo import edited_input, sample_input

    task = input_task(chosen)
    if chosen.edited is not None:
        import numpy as np

        inputs = np.frombuffer(chosen.edited, dtype="float32").reshape(-1, task.input_size)
        return edited_input(task, inputs)
    return sample_input(task, chosen.length, chosen.seed)


def random_inputs(chosen: InputChoice) -> Any:
    """The chosen input as drawn at random, before any edit: a (T, X) numpy array."""
    unedited = input_choice(input_task(chosen), chosen.length, chosen.seed)
    return input_batch(unedited).inputs[0].numpy()


@st.cache_data(max_entries=32, show_spinner=False)
def _trace(model_key: str, version: str, input_key: str, _model: Any,
           _chosen: InputChoice) -> Any:
    from mann.demo import check_fits, record

    check_fits(_model, input_task(_chosen))
    return record(_model, input_batch(_chosen))


def trace_for(choice: Choice, chosen: InputChoice) -> Any:
    """The Trace of ``choice``'s model on the chosen input (cached per model version and
    input)."""
    return _trace(choice.key, choice.version, chosen.key, choice.model, chosen)


def trace_key(choice: Choice, chosen: InputChoice) -> str:
    return f"{choice.key}|{choice.version}|{chosen.key}"


def current() -> tuple[Choice, InputChoice, Any] | None:
    """The chosen model, input and its trace; shows the error and returns None if any fails."""
    try:
        choice = selected()
        chosen = current_input(choice)
        return choice, chosen, trace_for(choice, chosen)
    except ValueError as error:
        st.error(str(error))
        return None


@st.cache_resource(max_entries=12, show_spinner=False)
def figure(
    kind: str, key: str, _trace: Any, height: int | None = None, text_scale: float = 1.0,
    **options: Any,
) -> Any:
    """A figure of ``mann.figures`` (``kind`` is its function name) for the trace named ``key``,
    fitted to the screen by ``figures.for_screen(height, text_scale)`` (a figure given a
    height, to fit a screen, drops its title line).

    Cached as a resource: the same figure object is handed to every rerun and every visitor
    (Streamlit copies it when it draws it), so building frames happens once per trace.
    """
    from mann import figures

    built = getattr(figures, kind)(_trace, **options)
    return figures.for_screen(built, height, text_scale, title=height is None)


@st.cache_data(max_entries=8, show_spinner=False)
def _checkpoint_tasks(directory: str, listing: tuple[tuple[str, float], ...]) -> dict[str, str]:
    from mann.checkpoint import read_metadata

    tasks = {}
    for name, _ in listing:
        try:
            tasks[name] = read_metadata(Path(directory) / name).get("task")
        except ValueError:  # a damaged file: the sidebar says so when it is chosen
            continue
    return tasks


def checkpoint_tasks() -> dict[str, str]:
    """The task each checkpoint on disk was trained on (re-read when a file changes)."""
    directory = checkpoint_dir()
    listing = []
    for name in checkpoint_names():
        path = directory / f"{name}.safetensors"
        with contextlib.suppress(OSError):
            listing.append((name, path.stat().st_mtime))
    return _checkpoint_tasks(str(directory), tuple(listing))


def shipped_for(task_name: str) -> list[str]:
    """Checkpoints trained on ``task_name``."""
    return [name for name, task in checkpoint_tasks().items() if task == task_name]


def task_for(task_name: str) -> Any:
    """The task as the first checkpoint trained on it stores it (its options), else the
    task's defaults."""
    from mann.tasks import make_task

    for name in shipped_for(task_name):
        with contextlib.suppress(ValueError):
            return resolve(f"checkpoint:{name}").task
    return make_task(task_name)


def measure_patterns(models: dict, task: Any, episodes: int, seed: int, on_progress) -> tuple:
    """``mann.patterns.collect_traces`` (the first 50 episodes whole, the rest slim) and
    their ``mann.analysis.metrics_frame``."""
    from mann.analysis import metrics_frame
    from mann.patterns import collect_traces

    traces = collect_traces(models, task, episodes, seed, on_progress=on_progress,
                            full_traces=50)
    return traces, metrics_frame(traces)


@st.cache_data(max_entries=4, show_spinner="Drawing the frames...")
def animation_bytes(key: str, _trace: Any, suffix: str) -> bytes:
    """``mann.figures.save_animation`` of the trace named ``key``, as the file's bytes."""
    import tempfile

    from mann.figures import save_animation

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"animation{suffix}"
        save_animation(_trace, path)
        return path.read_bytes()


def interventions_key() -> str:
    """The session's What-if interventions as canonical JSON (part of the result's cache key)."""
    return json.dumps(st.session_state.get("whatif_list", []), sort_keys=True)


@st.cache_data(max_entries=16, show_spinner=False)
def _whatif(model_key: str, version: str, untrained_task: str, input_key: str,
            interventions: str, _chosen: InputChoice) -> Any:
    from mann.demo import check_fits
    from mann.intervention import Intervention
    from mann.whatif import whatif

    choice = resolve(model_key, untrained_task)
    check_fits(choice.model, input_task(_chosen))
    listed = [Intervention.from_dict(values) for values in json.loads(interventions)]
    return whatif(choice.model, input_batch(_chosen), listed)


def whatif_result(choice: Choice, chosen: InputChoice) -> Any:
    """``mann.whatif.whatif`` of the chosen model and input with the session's interventions
    (cached per model, input and list)."""
    untrained_task = choice.version if choice.key.startswith("untrained:") else ""
    return _whatif(choice.key, choice.version, untrained_task, chosen.key, interventions_key(),
                   chosen)


def fitting_keys(task: Any) -> list[str]:
    """Models that take ``task``'s inputs: checkpoints and session models trained on a task of
    the same name and sizes, and every untrained architecture (sized for it on demand)."""
    from mann.demo import check_fits

    keys = []
    for key in model_keys():
        if key.startswith("untrained:"):
            keys.append(key)
            continue
        try:
            choice = resolve(key)
            check_fits(choice.model, task)
        except ValueError:
            continue
        if choice.task.name == task.name:
            keys.append(key)
    return keys


def input_choice(task: Any, length: int, seed: int) -> InputChoice:
    """A random input of ``task`` that no sidebar setting chose (the home page's demo)."""
    options = task_json(task)
    key = f"{task.name}|{options}|{length}|{seed}"
    return InputChoice(key, key, task.name, options, int(length), int(seed), None)


@st.cache_resource(max_entries=6, show_spinner=False)
def compare_figure(
    key: str, _traces: tuple, names: tuple[str, ...], step: int = 0,
    height: int | None = None, text_scale: float = 1.0,
) -> Any:
    """``mann.figures.compare_figure``, cached by the traces' keys joined in ``key``, fitted
    to the screen."""
    from mann import figures

    built = figures.compare_figure(list(_traces), list(names), step)
    return figures.for_screen(built, height, text_scale, title=height is None)


def generalisation(
    keys: tuple[str, ...], task_options: str, task_name: str, lengths: tuple[int, ...],
    sequences: int, seed: int,
) -> Any:
    """``mann.demo.generalisation_frame`` for the models ``keys`` (cached per model version)."""
    versions = tuple(resolve(key, task_name).version for key in keys)
    return _generalisation(keys, versions, task_options, task_name, lengths, sequences, seed)


@st.cache_data(max_entries=16, show_spinner=False)
def _generalisation(keys, versions, task_options, task_name, lengths, sequences, seed) -> Any:
    from mann.demo import generalisation_frame
    from mann.tasks import make_task

    models = {}
    for key in keys:
        choice = resolve(key, task_name)
        label = choice.label
        while label in models:  # two uploads of the same file name
            label += "'"
        models[label] = choice.model
    task = make_task(task_name, **json.loads(task_options))
    return generalisation_frame(models, task, list(lengths), sequences, seed)
