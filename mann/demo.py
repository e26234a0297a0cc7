"""What the app's pages call: finding and loading models, making inputs, recording traces,
training in the background. Plain Python, no Streamlit, so every piece is testable on its own.

- ``list_checkpoints(directory)``: the checkpoints in a directory, shipped ones first;
- ``untrained_model(arch, task)``: a freshly initialised model sized for a task, for looking
  at the mechanics before any training (and until the shipped checkpoints exist);
- ``task_of(metadata)``: the task a checkpoint was trained on;
- ``sample_input(task, length, seed)`` / ``edited_input(task, inputs)``: one input sequence;
- ``record(model, batch)``: its Trace, with what the Explain page needs in its metadata;
- ``load_upload(name, data)``: an uploaded checkpoint, checked before it is used;
- ``BackgroundTraining``: ``mann.train.train`` in a thread, with progress, stop and save;
- ``generalisation_frame(models, task, lengths)``: bit errors by length for several models;
- ``warm_kernels()``: compile the fused kernels ahead of first use (the app does it at start).
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_module
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mann.checkpoint import WEIGHTS_SUFFIX, CheckpointError, load, read_metadata, save
from mann.model import ARCHITECTURES, MemoryAugmentedNetwork, ModelConfig, build_model, check_fits
from mann.model import record_trace as _record_trace
from mann.tasks import TASKS, Batch, make_task
from mann.tasks.base import Task
from mann.trace import Trace

# The checkpoints the project ships, in the order the app lists them.
SHIPPED = (
    "ntm-copy", "dnc-copy", "ntm-repeat-copy", "dnc-repeat-copy", "ntm-associative-recall",
    "dnc-associative-recall", "ntm-multi-copy", "dnc-multi-copy", "sam-copy", "sdnc-copy",
    "lstm-copy",
)
# Sizes of the untrained models, per architecture (input and output sizes come from the task).
UNTRAINED_SIZES: dict[str, dict[str, Any]] = {
    "ntm": dict(memory_size=64, word_size=20, hidden_size=100, read_heads=1, write_heads=1),
    "dnc": dict(memory_size=32, word_size=20, hidden_size=64, read_heads=2),
    "sam": dict(memory_size=128, word_size=20, hidden_size=100, read_heads=1, sparse_reads=4),
    "sdnc": dict(
        memory_size=128, word_size=20, hidden_size=100, read_heads=1, sparse_reads=4,
        temporal_reads=8,
    ),
    "lstm": dict(hidden_size=100),
}
CONTROLLER_NAMES = {"lstm": "LSTM", "gru": "GRU", "feedforward": "feed-forward"}
# The longest input the app records (T), and the largest checkpoint it accepts as an upload.
MAX_INPUT_STEPS = 400
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
# Initial weightings go into a trace's metadata (JSON) only for memories this small.
MAX_SLOTS_IN_METADATA = 4096


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------
def available_architectures() -> list[str]:
    """The architectures this installation can build (SAM and SDNC arrive separately)."""
    names = []
    for arch in ARCHITECTURES:
        try:
            __import__(f"mann.access.{'none' if arch == 'lstm' else arch}")
        except ImportError:
            continue
        names.append(arch)
    return names


def list_checkpoints(directory: str | os.PathLike) -> list[str]:
    """Names of the checkpoints (``NAME.safetensors``) in ``directory``: shipped ones first,
    in ``SHIPPED`` order, then the others alphabetically. Training states are not listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = {
        path.name[: -len(WEIGHTS_SUFFIX)]
        for path in directory.glob(f"*{WEIGHTS_SUFFIX}")
        if not path.name.endswith(".train" + WEIGHTS_SUFFIX) and not path.name.startswith(".")
    }
    shipped = [name for name in SHIPPED if name in names]
    return shipped + sorted(names - set(shipped))


def untrained_config(arch: str, task: Task) -> ModelConfig:
    """The config of ``untrained_model(arch, task)``."""
    if arch not in UNTRAINED_SIZES:
        raise ValueError(f"arch must be one of {sorted(UNTRAINED_SIZES)}, got {arch!r}")
    return ModelConfig(
        arch=arch, input_size=task.input_size, output_size=task.output_size,
        **UNTRAINED_SIZES[arch],
    )


def untrained_model(arch: str, task: Task, seed: int = 0) -> MemoryAugmentedNetwork:
    """A freshly initialised ``arch`` model sized for ``task`` (the same seed, the same weights)."""
    config = untrained_config(arch, task)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config)
    return model.eval()


def task_of(metadata: Mapping[str, Any], default: str = "copy") -> Task:
    """The task a checkpoint was trained on, from its metadata (``task``, ``task_options``).

    A checkpoint saved without a task gets ``default`` with its default options.
    """
    name = metadata.get("task") or default
    options = dict(metadata.get("task_options") or {})
    return make_task(name, **options)


def describe(model: MemoryAugmentedNetwork) -> str:
    """One line: architecture, memory and controller sizes."""
    config = model.config
    text = (
        f"{config.arch.upper()}: memory {config.memory_size}×{config.word_size}, "
        f"{CONTROLLER_NAMES.get(config.controller, config.controller)} "
        f"{config.hidden_size}×{config.num_layers}, "
        f"{config.read_heads} read head{'s' if config.read_heads > 1 else ''}"
    )
    if config.arch == "ntm":
        text += f", {config.write_heads} write head{'s' if config.write_heads > 1 else ''}"
    if config.arch in ("sam", "sdnc"):
        text += f", K = {config.sparse_reads}"
    return text


def load_upload(
    name: str, data: bytes, max_bytes: int | None = None
) -> tuple[MemoryAugmentedNetwork, dict]:
    """Load an uploaded checkpoint file (``NAME.safetensors``) and its metadata.

    ``max_bytes`` defaults to ``MAX_UPLOAD_BYTES``.

    The bytes are written to a private temporary directory and read by ``mann.load`` (which
    checks the header, the checksum, the config and every tensor's shape), then removed.

    Raises:
        ValueError: the file is too large or is not named ``*.safetensors``.
        CheckpointError: the file is not a valid mann checkpoint (says what is wrong).
    """
    if max_bytes is None:
        max_bytes = MAX_UPLOAD_BYTES
    if len(data) > max_bytes:
        raise ValueError(
            f"upload {name!r} is {len(data) / 1e6:.1f} MB; checkpoints of at most "
            f"{max_bytes / 1e6:.0f} MB are accepted"
        )
    if not name.endswith(WEIGHTS_SUFFIX) or name.endswith(".train" + WEIGHTS_SUFFIX):
        raise ValueError(
            f"upload {name!r} is not a checkpoint: upload the NAME{WEIGHTS_SUFFIX} file "
            "(the .json beside it is only a readable copy of its metadata)"
        )
    with tempfile.TemporaryDirectory(prefix="mann-upload-") as directory:
        path = Path(directory) / Path(name).name
        path.write_bytes(data)
        model = load(path)
        metadata = read_metadata(path)
    return model, metadata


# ---------------------------------------------------------------------------------------
# Inputs and traces
# ---------------------------------------------------------------------------------------
def length_label(task: Task) -> str:
    """What "length" means for ``task`` (what its ``with_lengths`` sets)."""
    return {
        "associative_recall": "items",
        "priority_sort": "input vectors",
        "adding": "numbers",
        "argmax": "numbers",
        "multi_copy": "round length",
    }.get(task.name, "sequence length")


def training_lengths(task: Task) -> tuple[int, int]:
    """The length range ``task`` was made with (its ``with_lengths`` bounds)."""
    for low, high in (("min_length", "max_length"), ("min_items", "max_items"),
                      ("min_inputs", "num_inputs")):
        if hasattr(task, high):
            return int(getattr(task, low) or getattr(task, high)), int(getattr(task, high))
    return 1, int(task.max_steps)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def sample_input(task: Task, length: int, seed: int) -> Batch:
    """One sequence of exactly ``length`` (what the task's ``with_lengths`` sets), seeded.

    Raises:
        ValueError: a length the task rejects, or one whose sequence would be longer than
            ``MAX_INPUT_STEPS`` steps; a negative seed.
    """
    _check_int("length", length, 1)
    _check_int("seed", seed, 0)
    fixed = task.with_lengths(int(length), int(length))
    if fixed.max_steps > MAX_INPUT_STEPS:
        raise ValueError(
            f"length {length} makes {fixed.max_steps} steps for task {task.name!r}; "
            f"the app records at most {MAX_INPUT_STEPS} steps"
        )
    return fixed.sample(1, torch.Generator().manual_seed(int(seed)))


def edited_input(task: Task, inputs: np.ndarray) -> Batch:
    """A one-item batch from hand-edited inputs (T, X).

    For copy, the targets follow from the inputs (the vectors before the delimiter, written
    back after it), so they are recomputed; for other tasks the targets are unknown and the
    batch holds all-zero targets with mask 0 (nothing is scored).

    Raises:
        ValueError: inputs of the wrong width, empty, not finite, or (copy) without exactly
            one delimiter with room for the answer after it.
    """
    inputs = np.array(inputs, dtype=np.float32)  # a copy: the caller's array stays its own
    if inputs.ndim != 2 or inputs.shape[1] != task.input_size or inputs.shape[0] < 1:
        raise ValueError(
            f"inputs must be (steps, {task.input_size}) for task {task.name!r}, "
            f"got shape {inputs.shape}"
        )
    if inputs.shape[0] > MAX_INPUT_STEPS:
        raise ValueError(
            f"inputs have {inputs.shape[0]} steps; the app records at most {MAX_INPUT_STEPS}"
        )
    if not np.isfinite(inputs).all():
        raise ValueError("inputs must be finite numbers (no NaN or empty cells)")
    steps = inputs.shape[0]
    targets = np.zeros((steps, task.output_size), dtype=np.float32)
    mask = np.zeros(steps, dtype=np.float32)
    if task.name == "copy":
        bits = task.bits
        delimiters = np.flatnonzero(inputs[:, bits] > 0.5)
        if len(delimiters) != 1:
            raise ValueError(
                f"copy inputs need exactly one delimiter (a 1 in channel {bits}), "
                f"found {len(delimiters)}"
            )
        length = int(delimiters[0])
        if steps < 2 * length + 1:
            raise ValueError(
                f"copy inputs with the delimiter at step {length} need {2 * length + 1} steps "
                f"to hold the answer, got {steps}"
            )
        targets[length + 1 : 2 * length + 1] = (inputs[:length, :bits] > 0.5)
        mask[length + 1 : 2 * length + 1] = 1.0
    as_tensor = torch.from_numpy
    return Batch(as_tensor(inputs)[None], as_tensor(targets)[None], as_tensor(mask)[None])


def record(model: MemoryAugmentedNetwork, batch: Batch, item: int = 0) -> Trace:
    """Record the Trace of ``batch`` item ``item``, targets, mask and bit errors included.

    For an NTM the heads' initial weightings go into ``metadata["initial_weights"]``
    (``{"read": (R,N), "write": (Hw,N)}`` lists), so step 0 can be explained too.
    """
    trace = _record_trace(model, batch.inputs, batch.targets, batch.mask, item=item)
    metadata = dict(trace.metadata)
    if batch.mask is not None and float(batch.mask[item].sum()) == 0:
        metadata.pop("bit_errors", None)  # nothing scored: no bit errors to speak of
    if trace.content_weights is not None and trace.memory_size <= MAX_SLOTS_IN_METADATA:
        with torch.no_grad():
            state = model.access.initial_state(1, "cpu")
        metadata["initial_weights"] = {
            "read": state.read_weights[0].tolist(),
            "write": state.write_weights[0].tolist(),
        }
    return trace.replace(metadata=metadata)


# ---------------------------------------------------------------------------------------
# Training in the background
# ---------------------------------------------------------------------------------------
class TrainingQueue:
    """At most ``slots`` trainings run at once; the others wait, first come first served.

    On a shared server (a class on one laptop) every visitor may start a training; two
    processes' worth of torch on two cores slow each other down many times over, so they take
    turns. ``slots`` defaults to ``$MANN_TRAINING_SLOTS``, else 1.
    """

    def __init__(self, slots: int | None = None) -> None:
        if slots is None:
            slots = int(os.environ.get("MANN_TRAINING_SLOTS", "1"))
        _check_int("slots", slots, 1)
        self.slots = slots
        self._changed = threading.Condition()
        self._waiting: list[BackgroundTraining] = []
        self._running: set[BackgroundTraining] = set()

    def enter(self, run: BackgroundTraining) -> bool:
        """Wait (in ``run``'s thread) for a free slot; False if the run was stopped or
        abandoned while it waited."""
        with self._changed:
            self._waiting.append(run)
            while not run.should_stop():
                if len(self._running) < self.slots and self._waiting[0] is run:
                    self._waiting.remove(run)
                    self._running.add(run)
                    return True
                self._changed.wait(timeout=0.5)  # also notices an abandoned run in time
            self._waiting.remove(run)
            self._changed.notify_all()
            return False

    def leave(self, run: BackgroundTraining) -> None:
        with self._changed:
            self._running.discard(run)
            self._changed.notify_all()

    def position(self, run: BackgroundTraining) -> int | None:
        """``run``'s place in the queue, 1 for the next to start; None when not waiting."""
        with self._changed:
            return self._waiting.index(run) + 1 if run in self._waiting else None

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()


TRAINING_QUEUE = TrainingQueue()


class BackgroundTraining:
    """``mann.train.train`` in a daemon thread, so a page stays usable while it runs.

    ``poll()`` returns every progress report so far; ``stop()`` asks the loop to end after the
    current step; ``save(path)`` writes the trained model as a checkpoint (once it has ended).
    The model is trained in place and is ``self.model`` throughout. Runs take turns through
    ``queue`` (``TRAINING_QUEUE`` by default); ``queue_position`` says where one waits. With
    ``abandon_after`` seconds, a run stops (or leaves the queue) once no ``heartbeat()`` came
    for that long: the visitor who started it has gone.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config,
        queue: TrainingQueue | None = None,
        abandon_after: float | None = None,
    ) -> None:
        from mann.train import TrainConfig

        if not isinstance(train_config, TrainConfig):
            raise ValueError(
                f"train_config must be a TrainConfig, got {type(train_config).__name__}"
            )
        model_config.validate()
        train_config.validate()
        check_fits_config(model_config, train_config.make_task())
        self.model_config = model_config
        self.train_config = dataclasses.replace(train_config, out=None)
        self.model = build_model(model_config)
        self.history: list = []
        self.result = None
        self.error: BaseException | None = None
        self.queue = TRAINING_QUEUE if queue is None else queue
        self.abandon_after = abandon_after
        self.abandoned = False
        self._last_heartbeat = time.monotonic()
        self._reports: queue_module.Queue = queue_module.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mann-training", daemon=True)

    def start(self) -> BackgroundTraining:
        self._thread.start()
        return self

    def _run(self) -> None:
        from mann.train import train

        if not self.queue.enter(self):
            return  # stopped or abandoned before its turn: nothing ran
        try:
            self.result = train(
                self.model_config, self.train_config, on_progress=self._reports.put,
                should_stop=self.should_stop, model=self.model,
            )
        except BaseException as error:  # reported to the page, never lost in the thread
            self.error = error
        finally:
            self.queue.leave(self)

    def heartbeat(self) -> None:
        """The visitor is still here (the page calls this while it shows the run)."""
        self._last_heartbeat = time.monotonic()

    def should_stop(self) -> bool:
        """Stop asked for, or no heartbeat for ``abandon_after`` seconds."""
        if self.abandon_after is not None and not self.abandoned:
            self.abandoned = time.monotonic() - self._last_heartbeat > self.abandon_after
        return self._stop.is_set() or self.abandoned

    @property
    def queue_position(self) -> int | None:
        """Where the run waits for its turn (1: next); None once it runs or has ended."""
        return self.queue.position(self)

    def poll(self) -> list:
        """Every ``mann.train.Progress`` report so far, oldest first."""
        while True:
            try:
                self.history.append(self._reports.get_nowait())
            except queue_module.Empty:
                return self.history

    def stop(self) -> None:
        self._stop.set()
        self.queue.wake()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def finished(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    @property
    def state(self) -> str:
        """"queued", "running", "failed", "stopped" (also: abandoned, or never ran) or
        "finished"."""
        if self.running:
            return "queued" if self.queue_position is not None else "running"
        if self.error is not None:
            return "failed"
        if self.result is None or self.result.stopped:
            return "stopped"
        return "finished"

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the trained model as checkpoint ``path``, with the metadata the trainer writes;
        an existing checkpoint of that name is never replaced unless ``overwrite``.

        Raises:
            ValueError: the run is still going or failed.
            FileExistsError: the checkpoint exists (and not ``overwrite``).
        """
        if not self.finished or self.result is None:
            raise ValueError("training must have finished (or been stopped) before saving")
        from mann.train import command_line

        task = self.train_config.make_task()
        out = dataclasses.replace(self.train_config, out=str(path))
        return save(
            self.model, path, overwrite=overwrite, task=task.name,
            task_options=dataclasses.asdict(task),
            train_config=out.to_dict(), command=command_line(self.model_config, out),
            metrics=self.result.metrics, torch_version=torch.__version__,
        )


def check_fits_config(config: ModelConfig, task: Task) -> None:
    """Raise ValueError unless a model config's sizes are those of ``task``."""
    if (config.input_size, config.output_size) != (task.input_size, task.output_size):
        raise ValueError(
            f"input_size={config.input_size} and output_size={config.output_size} must be "
            f"{task.input_size} and {task.output_size} for task {task.name!r}"
        )


def checkpoint_name_error(name: str, directory: str | os.PathLike | None = None) -> str | None:
    """Why ``name`` cannot name a new checkpoint file (in ``directory``, when given: the name
    must be free there), or None if it can."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    if not name:
        return "name must not be empty"
    if len(name) > 64:
        return f"name must be at most 64 characters, got {len(name)}"
    if not set(name) <= allowed or name.startswith("-"):
        return f"name must use only letters, digits, '-' and '_' (not first '-'), got {name!r}"
    if directory is not None and (Path(directory) / f"{name}{WEIGHTS_SUFFIX}").exists():
        shipped = " (a shipped model)" if name in SHIPPED else ""
        return (f"a checkpoint named {name!r}{shipped} exists already; it is never replaced "
                "from the app: choose another name")
    return None


# ---------------------------------------------------------------------------------------
# Generalisation
# ---------------------------------------------------------------------------------------
def parse_lengths(text: str, maximum: int = 200) -> list[int]:
    """``"10, 20,40"`` -> ``[10, 20, 40]``; ValueError naming what is wrong."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise ValueError("lengths must list at least one length, e.g. 10,20,40")
    lengths = []
    for part in parts:
        if not part.isdigit() or not 1 <= int(part) <= maximum:
            raise ValueError(f"lengths must be whole numbers from 1 to {maximum}, got {part!r}")
        lengths.append(int(part))
    return sorted(set(lengths))


def generalisation_frame(
    models: Mapping[str, MemoryAugmentedNetwork],
    task: Task,
    lengths: list[int],
    sequences: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """``mann.evaluate.generalisation`` for every model, stacked with a ``model`` column."""
    from mann.evaluate import generalisation

    frames = []
    for name, model in models.items():
        check_fits(model, task)
        longest = task.with_lengths(max(lengths), max(lengths)).max_steps
        if longest > MAX_INPUT_STEPS:
            raise ValueError(
                f"length {max(lengths)} makes {longest} steps for task {task.name!r}; "
                f"at most {MAX_INPUT_STEPS} steps are evaluated here"
            )
        frame = generalisation(model, task, lengths, sequences=sequences, seed=seed)
        frame.insert(0, "model", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# The ways a model runs, for warm_kernels: each compiles kernels the others need not.
RUN_MODES = ("evaluate", "record", "train")


def warm_kernels(
    configs: list[ModelConfig] | None = None, modes: tuple[str, ...] = RUN_MODES
) -> list[str]:
    """Run each model configuration (by default each architecture's ``untrained_config`` for
    copy) on a tiny batch the ``modes`` ways (a subset of ``RUN_MODES``), so that numba
    compiles their fused kernels now rather than at first use.

    numba compiles a kernel on its first call and caches it on disk. On a fresh machine that
    first call is slow (``python bench/first_run.py``: about 9 s for the NTM, 12 s for the DNC,
    25 s for SAM and 41 s for SDNC, whose whole-sequence kernels are large, imports included);
    once cached, all four take about 3 s. The defaults go NTM, DNC, SAM, SDNC, so the cheap
    ones are ready first. Returns the architectures warmed (none without numba, which the
    models then do without).
    """
    from mann.fused.runtime import HAVE_NUMBA

    unknown = sorted(set(modes) - set(RUN_MODES))
    if unknown:
        raise ValueError(f"modes must be among {RUN_MODES}, got {unknown}")
    if not HAVE_NUMBA:
        return []
    if configs is None:
        configs = [untrained_config(arch, make_task("copy")) for arch in UNTRAINED_SIZES]
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the caller's random state is not this function's to move
        for config in configs:
            model = build_model(config)
            inputs = torch.rand(2, 3, config.input_size, generator=generator)
            with torch.no_grad():
                if "evaluate" in modes:
                    model(inputs)
                if "record" in modes:
                    model(inputs, record=True)
            if "train" in modes:
                logits, _ = model.train()(inputs)
                logits.sum().backward()
    return [config.arch for config in configs]


__all__ = [
    "MAX_INPUT_STEPS", "MAX_UPLOAD_BYTES", "RUN_MODES", "SHIPPED", "TASKS", "BackgroundTraining",
    "CheckpointError", "available_architectures", "check_fits", "check_fits_config",
    "checkpoint_name_error", "describe", "edited_input", "generalisation_frame", "length_label",
    "list_checkpoints", "load_upload", "parse_lengths", "record", "sample_input", "task_of",
    "training_lengths", "untrained_config", "untrained_model", "warm_kernels",
]
