"""What a visitor has chosen: the model (a checkpoint, an untrained architecture, or their own
upload or training) and the input (task, length, seed, hand edits), as the pages read them.

State lives in ``st.session_state`` under these keys:

- ``model_key``: the chosen model, one of ``model_keys()``: ``checkpoint:NAME`` (a file in
  the checkpoint directory), ``untrained:ARCH`` (freshly initialised, sized for the task chosen
  in ``untrained_task``) or ``session:ID`` (uploaded, or trained in the app, this visitor's
  only);
- ``session_models``: ``{key: SessionModel}`` for the visitor's own models;
- ``input_seed`` and ``length:TASK``: the random input; ``edits``: hand-edited inputs by
  input key (see the Inspect page);
- ``pending_upload``: ``(file name, bytes)`` of an upload not yet checked.

Models are cached with ``st.cache_resource``, shared by every visitor.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from ui import server

# Tasks an untrained model can be sized for: mann.tasks.TASKS in its order (tests/test_app.py
# checks they agree).
TASK_NAMES = (
    "copy", "repeat_copy", "associative_recall", "priority_sort", "adding", "argmax", "multi_copy",
    "ngrams",
)  # fmt: skip


ARCH_NAMES = {"ntm": "NTM", "dnc": "DNC", "sam": "SAM", "sdnc": "SDNC", "lstm": "LSTM"}


ACCESS_FILES = {"lstm": "none"}  # the memory-less baseline's access module


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
    from mann.catalog import list_checkpoints

    return list_checkpoints(server.checkpoint_dir())


def untrained_architectures() -> list[str]:
    access = server.REPOSITORY / "mann" / "access"
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


@st.cache_resource(max_entries=16, show_spinner=False)
def _load_checkpoint(path: str, modified: float) -> tuple[Any, dict]:
    """The model and metadata of checkpoint ``path`` (re-read when the file changes)."""
    import mann
    from mann.checkpoint import read_metadata

    return mann.load(path), read_metadata(path)


@st.cache_resource(max_entries=16, show_spinner=False)
def _untrained(arch: str, task_name: str) -> Any:
    from mann.catalog import untrained_model
    from mann.tasks import make_task

    return untrained_model(arch, make_task(task_name))


def resolve(key: str, untrained_task: str = "copy") -> Choice:
    """The model behind ``key``, loaded through the caches.

    Raises:
        ValueError: an unknown key; CheckpointError (a ValueError) for a damaged file.
    """
    from mann.catalog import task_of

    kind, _, name = key.partition(":")
    if kind == "checkpoint":
        path = server.checkpoint_dir() / f"{name}.safetensors"
        if not path.exists():
            raise ValueError(f"checkpoint {name!r} is no longer in {server.checkpoint_dir()}")
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
        raise ValueError(f"model {key!r} is no longer held for this visitor")
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
    path = server.checkpoint_dir() / f"{key.partition(':')[2]}.safetensors"
    model = _resized(str(path), path.stat().st_mtime, memory_size)
    return Choice(key, f"{choice.label} ({memory_size} slots)", model, choice.task,
                  choice.metadata, True, f"{choice.version}|{memory_size}")


def register_session_model(label: str, model: Any, metadata: dict) -> str:
    """Keep ``model`` for this visitor (an upload, or a run trained here); return its key
    (for ``model_key``)."""
    key = f"session:{uuid.uuid4().hex[:12]}"
    session_models()[key] = SessionModel(label, model, dict(metadata))
    return key


def on_upload() -> None:
    """file_uploader callback: queue the upload; the sidebar checks it on this rerun."""
    upload = st.session_state.get("upload")
    if upload is not None:
        st.session_state["pending_upload"] = (upload.name, upload.getvalue())


def take_pending_upload() -> None:
    """Check a queued upload; on success it becomes the chosen model."""
    pending = st.session_state.pop("pending_upload", None)
    if pending is None:
        return
    from mann.catalog import load_upload

    name, data = pending
    try:
        model, metadata = load_upload(name, data)
    except ValueError as error:  # CheckpointError is a ValueError
        st.session_state["upload_error"] = str(error)
        return
    st.session_state.pop("upload_error", None)
    key = register_session_model(f"uploaded: {name}", model, metadata)
    st.session_state["model_key"] = key


@st.cache_data(max_entries=64, show_spinner=False)
def length_bounds(task_name: str, options: str) -> tuple[int, int, int]:
    """(shortest, longest, default) input length for the task: the longest keeps T within
    ``MAX_INPUT_STEPS``; the default is the longest length it was trained on."""
    from mann.inputs import MAX_INPUT_STEPS, training_lengths
    from mann.tasks import make_task

    task = make_task(task_name, **json.loads(options))
    low = 1
    while _fixed_length(task, low) is None:  # e.g. N-grams: at least 7 bits
        low += 1
        if low > training_lengths(task)[1]:
            raise ValueError(f"task {task_name!r} accepts no length up to its training range")
    high = low
    while high < 1000:
        longer = _fixed_length(task, high + 1)
        if longer is None or longer.max_steps > MAX_INPUT_STEPS:
            break
        high += 1
    return low, high, min(max(training_lengths(task)[1], low), high)


def _fixed_length(task: Any, length: int) -> Any:
    """``task`` with every sequence of ``length``, or None if the task refuses that length."""
    try:
        return task.with_lengths(length, length)
    except ValueError:
        return None


def rounds_bound(task: Any) -> int:
    """The most rounds the sidebar offers for a task with rounds: its episodes of the longest
    offered length stay within ``MAX_INPUT_STEPS``."""
    from mann.inputs import MAX_INPUT_STEPS

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
    from mann.inputs import edited_input, sample_input

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
    directory = server.checkpoint_dir()
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


def fitting_keys(task: Any) -> list[str]:
    """Models that take ``task``'s inputs: checkpoints and session models trained on a task of
    the same name and sizes, and every untrained architecture (sized for it on demand)."""
    from mann.model import check_fits

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
