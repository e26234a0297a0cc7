"""The trainer: one config object, one loop, checkpoints you can resume exactly.

``train(model_config, train_config)`` builds the model and the task, then repeats:
sample a batch from the task's (curriculum's) length range, BCE-with-logits on the scored
steps only (``mann.metrics.masked_bce``, nats per sequence), backward, clip the gradient
norm, optimizer step. Use it from Python (the app runs it in a background thread, with
``on_progress`` and ``should_stop``) or from the command line (``python -m mann train``).

Safety:
- A step whose loss or gradient norm is not finite is skipped: the optimizer never sees it,
  so it never reaches the weights. Skipped steps are counted, logged and reported.
- With ``out`` set, metrics go to ``OUT.csv`` (one row per ``log_every`` steps: step,
  sequences, loss, bits, bit_errors, seconds, skipped, max_length; loss/bits/bit_errors are
  means per sequence over the steps since the previous row), checkpoints to
  ``OUT.safetensors`` + ``OUT.json`` every ``checkpoint_every`` steps and at the end, and
  what ``resume`` needs to ``OUT.train.safetensors`` (see ``mann.checkpoint``).
- With ``keep_best``, every ``checkpoint_every`` steps the model is scored on
  ``validation_size`` sequences over the task's full range (drawn once, from their own seed,
  so training's random stream is untouched) and, when its bit errors per sequence are the
  lowest so far, saved to ``OUT-best`` (``best_path``). Long runs on hard tasks (associative
  recall) can reach a solution and later lose it; this keeps the solution.
- Ctrl-C in the main thread asks the loop to stop at the end of the current step; it saves
  and returns with ``stopped=True``. A second Ctrl-C raises KeyboardInterrupt at once.
- A resumed run continues exactly where the saved one stopped: weights, optimizer state,
  step and sequence counts, the torch and task random generators and the curriculum are all
  restored, so on the CPU its losses equal those of an uninterrupted run.

The length curriculum (``curriculum="length"``): training starts on the shortest lengths of
the task's range, ``min_length .. min_length + curriculum_start - 1``, and widens the range by
``curriculum_increment`` whenever the mean bit errors per sequence of the last
``curriculum_window`` training batches fall below ``curriculum_threshold``; every new window
starts after the widening. Lengths are always drawn uniformly from ``min_length`` up to the
current maximum, so the short sequences already learned keep being rehearsed. Once the range
is the task's full range the curriculum has no further effect. "Length" is whatever the task's
``with_lengths`` sets: sequence length for copy and repeat copy, number of items for
associative recall, number of inputs for priority sort.

Several processes (``torchrun --nproc-per-node N -m mann train ...``; ``mann.distributed``,
docs/distributed.md): when a ``torch.distributed`` process group is running with more than one
process, ``train`` trains the model wrapped in ``DistributedDataParallel``. Every rank draws
``batch_size`` sequences per step from its own generator (seed ``batch_seed(seed, rank)``; rank
0's is the run's seed) and DDP averages the gradients in backward, so a step equals one
process's step on the ranks' batches concatenated. Clipping and the skip decision follow the
averaged gradient, and the loss, bit errors and the curriculum's statistic are averaged over
the ranks by one all-reduce per step, so every rank decides alike. Rank 0 alone validates and
writes the CSV and checkpoints; the training state holds every rank's random generators, so a
resumed run continues exactly, given the same world size (``world_size`` in the checkpoint).
``sequences`` counts every rank's. ``device`` ("cuda", "auto"; ``mann.devices``) trains on a
GPU, through the pure-torch reference; batches are drawn on the CPU and moved there.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shlex
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mann import checkpoint
from mann.devices import resolve_device
from mann.distributed import World, batch_seed, launcher
from mann.metrics import bit_errors, masked_bce
from mann.model import MEMORY_OPTIONS, MemoryAugmentedNetwork, ModelConfig, build_model
from mann.tasks import TASKS, make_task
from mann.tasks.base import Task

OPTIMIZERS = ("rmsprop", "adam")
LR_DECAYS = ("none", "cosine")
LR_FLOOR = 0.01  # the cosine schedule ends at this fraction of lr
CURRICULA = ("none", "length")
CSV_COLUMNS = (
    "step",
    "sequences",
    "loss",
    "bits",
    "bit_errors",
    "seconds",
    "skipped",
    "max_length",
)
# The config fields a ``python -m mann train`` command sets with ``--flag VALUE`` (besides
# --arch, --task, --task-option, --keep-best and --out; input and output sizes follow the task).
MODEL_FLAGS = (
    "controller", "hidden_size", "num_layers", "memory_size", "word_size", "read_heads",
    "write_heads", "shift_range", "sparse_reads", "temporal_reads", "clip_value",
)  # fmt: skip
# Switches: ``--masked-content`` etc. with no value, given when on (``MEMORY_OPTIONS``).
SWITCH_FLAGS = tuple(MEMORY_OPTIONS)
TRAIN_FLAGS = (
    "steps", "batch_size", "lr", "lr_decay", "optimizer", "momentum", "clip", "seed",
    "curriculum", "curriculum_start", "curriculum_increment", "curriculum_threshold",
    "curriculum_window", "checkpoint_every", "log_every",
)  # fmt: skip
VALIDATION_SEED_OFFSET = 1_000_003  # keeps validation sequences apart from training's
# Train-config fields a resumed run may change; any other difference would change the run.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "out")


@dataclass
class TrainConfig:
    """How to train: the task, the optimizer, the curriculum, where to save.

    The defaults are the recommended settings. On copy (lengths 1-20, one thread) they took
    both an NTM (LSTM 100, 128x20) and a DNC (LSTM 100, 64x20, one read head) under 0.1 bit
    errors per sequence after about 5,600 sequences (350 steps, 10-15 s). In short NTM runs,
    Adam at lr 1e-3 or 3e-3 was several times slower, and without the curriculum training
    took about four times as long and its loss spiked. bench/convergence.py measures this.
    """

    task: str = "copy"
    task_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-2
    lr_decay: str = "none"  # "cosine": anneal to LR_FLOOR * lr over the run
    optimizer: str = "adam"
    momentum: float = 0.9  # RMSprop's momentum; Adam's β1
    clip: float | None = 10.0  # largest gradient norm; None: no clipping (still checked finite)
    seed: int = 0
    curriculum: str = "length"
    curriculum_start: int = 4  # lengths in the first range
    curriculum_increment: int = 2  # lengths added at each widening
    curriculum_threshold: float = 0.5  # bit errors per sequence that allow a widening
    curriculum_window: int = 20  # training batches averaged for that decision
    checkpoint_every: int = 500
    log_every: int = 10
    out: str | None = None  # checkpoint path without suffix; None: save nothing
    # Every checkpoint_every steps, score the model on validation_size fixed sequences over
    # the task's full range and keep the best weights at OUT-best (needs out).
    keep_best: bool = False
    validation_size: int = 500
    # A checkpoint whose weights start the run (fine-tuning, e.g. on longer sequences); the
    # optimizer, schedule and curriculum start afresh. Its memory_size may differ (DNC, SAM,
    # SDNC have no N-sized parameter); every other model setting must match.
    init: str | None = None

    def validate(self) -> TrainConfig:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        if not isinstance(self.task_options, dict) or not all(
            isinstance(key, str) for key in self.task_options
        ):
            raise ValueError(
                f"task_options must be a dict of option name to value, got {self.task_options!r}"
            )
        for name in (
            "steps",
            "batch_size",
            "curriculum_start",
            "curriculum_increment",
            "curriculum_window",
            "checkpoint_every",
            "log_every",
            "validation_size",
        ):
            _require_int(name, getattr(self, name), 1)
        _require_int("seed", self.seed, 0)
        if not _is_number(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {list(LR_DECAYS)}, got {self.lr_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if self.clip is not None and (not _is_number(self.clip) or self.clip <= 0):
            raise ValueError(f"clip must be a finite number > 0 or None, got {self.clip!r}")
        if self.curriculum not in CURRICULA:
            raise ValueError(
                f"curriculum must be one of {list(CURRICULA)}, got {self.curriculum!r}"
            )
        if not _is_number(self.curriculum_threshold) or self.curriculum_threshold < 0:
            raise ValueError(
                f"curriculum_threshold must be a finite number >= 0, "
                f"got {self.curriculum_threshold!r}"
            )
        if self.out is not None and not isinstance(self.out, (str, Path)):
            raise ValueError(f"out must be a path (str) or None, got {self.out!r}")
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"keep_best must be True or False, got {self.keep_best!r}")
        if self.keep_best and self.out is None:
            raise ValueError("keep_best=True needs out, the path beside which OUT-best is kept")
        if self.init is not None and not isinstance(self.init, (str, Path)):
            raise ValueError(f"init must be a checkpoint path (str) or None, got {self.init!r}")
        return self

    def make_task(self) -> Task:
        """The task with its full length range, as the options describe it."""
        return make_task(self.task, **self.task_options)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["out"] = None if self.out is None else str(self.out)
        values["init"] = None if self.init is None else str(self.init)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values).validate()


@dataclass(frozen=True)
class Progress:
    """What ``on_progress`` receives every ``log_every`` steps and at the end.

    ``loss`` (nats), ``bits`` (cost in bits) and ``bit_errors`` are per sequence, averaged over
    the steps since the previous report that were not skipped (NaN if all were).
    """

    step: int
    steps: int
    sequences: int
    loss: float
    bits: float
    bit_errors: float
    seconds: float
    fraction: float
    skipped_steps: int
    min_length: int
    max_length: int


@dataclass
class TrainResult:
    """What ``train`` returns: the trained model and where it got to."""

    model: MemoryAugmentedNetwork
    step: int
    sequences: int
    seconds: float
    skipped_steps: int
    stopped: bool  # True if should_stop or Ctrl-C ended the run before ``steps``
    metrics: dict[str, Any]  # the last report's loss, bits, bit_errors and the counters
    losses: list[float]  # loss of every step this call ran (NaN where skipped)
    history: list[Progress]  # every report this call made
    command: str  # the command line that reproduces this run from scratch
    checkpoint: Path | None  # the weights file written last, if ``out`` was set


class LengthCurriculum:
    """Widen the task's length range as the current range is learned (see the module doc)."""

    def __init__(self, config: TrainConfig, task: Task) -> None:
        self.min_length = task.min_length
        self.final_max_length = task.max_length
        self.max_length = min(self.final_max_length, self.min_length + config.curriculum_start - 1)
        self.threshold = config.curriculum_threshold
        self.increment = config.curriculum_increment
        self.window = config.curriculum_window
        self.recent: list[float] = []

    def observe(self, mean_bit_errors: float) -> None:
        """Record one training batch's bit errors per sequence; widen when learned."""
        if self.max_length >= self.final_max_length:
            return
        self.recent.append(mean_bit_errors)
        self.recent = self.recent[-self.window :]
        if len(self.recent) == self.window and sum(self.recent) / self.window < self.threshold:
            self.max_length = min(self.final_max_length, self.max_length + self.increment)
            self.recent = []

    def task(self, task: Task) -> Task:
        return task.with_lengths(self.min_length, self.max_length)

    def state_dict(self) -> dict:
        return {"max_length": self.max_length, "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.max_length = int(state["max_length"])
        self.recent = [float(value) for value in state["recent"]]


class NoCurriculum:
    """The task's full range from the first step."""

    def __init__(self, config: TrainConfig, task: Task) -> None:
        self.min_length = task.min_length
        self.max_length = task.max_length

    def observe(self, mean_bit_errors: float) -> None:
        pass

    def task(self, task: Task) -> Task:
        return task

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


CURRICULUM_CLASSES = {"none": NoCurriculum, "length": LengthCurriculum}


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    model: MemoryAugmentedNetwork | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train a model on a task; see the module docstring for what is saved where.

    Args:
        model_config: the model; its input and output sizes must match the task's.
        train_config: the task, optimizer, curriculum, schedule and output path.
        on_progress: called with a ``Progress`` every ``log_every`` steps and at the end.
        should_stop: polled before every step; returning True saves and returns early.
        resume: continue from ``train_config.out``'s training state instead of starting
            afresh; the configs must equal the saved ones except for steps,
            checkpoint_every and log_every.
        model: train this model (in place) instead of a new one built from
            ``model_config``; its config must equal ``model_config``. Lets a caller watch
            or evaluate the model from ``on_progress``. Not with ``resume``.
        device: where the model trains ("cpu", "cuda", "cuda:N" or "auto";
            ``resolve_device``); default the CPU. Batches are drawn on the CPU and moved
            there. With a process group of several processes running (torchrun), "cuda"
            means this process's GPU (``torch.cuda.current_device()``).

    With a ``torch.distributed`` process group of more than one process, every process calls
    ``train`` with the same configs: see the module docstring. ``on_progress`` and
    ``should_stop`` run on every rank; a stop asked for on any rank stops all of them at the
    end of that step.

    Raises:
        ValueError: a bad config, sizes that do not match the task, resume without out, a
            resume with another world size, or a device that is not available.
        CheckpointError: resume from a missing or damaged training state.
    """
    if not isinstance(model_config, ModelConfig):
        raise ValueError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise ValueError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    model_config.validate()
    train_config.validate()
    task = train_config.make_task()
    _check_sizes(model_config, task)
    if resume and train_config.out is None:
        raise ValueError("resume=True needs train_config.out, the checkpoint to resume from")

    if model is not None:
        if resume:
            raise ValueError("pass either model or resume=True, not both")
        if not isinstance(model, MemoryAugmentedNetwork) or model.config != model_config:
            raise ValueError("model must be a MemoryAugmentedNetwork whose config is model_config")
    device = resolve_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    world = World.current()
    # Saturated softmaxes underflow into subnormal floats, which x86 computes ~100x slower.
    torch.set_flush_denormal(True)
    torch.manual_seed(train_config.seed)
    generator = torch.Generator().manual_seed(batch_seed(train_config.seed, world.rank))
    curriculum = CURRICULUM_CLASSES[train_config.curriculum](train_config, task)
    counters = {"step": 0, "sequences": 0, "seconds": 0.0, "skipped_steps": 0}
    if resume:
        model, optimizer_state, random_states, saved = checkpoint.load_training_state(
            train_config.out
        )
        _check_resumable(train_config.out, model_config, train_config, saved, world.size)
        model.to(device)
        optimizer = _make_optimizer(train_config, model)
        optimizer.load_state_dict(optimizer_state)
        torch.set_rng_state(random_states[world.state_name("torch")])
        generator.set_state(random_states[world.state_name("task")])
        curriculum.load_state_dict(saved["curriculum"])
        counters.update({key: saved[key] for key in counters})
        counters["best"] = saved.get("best")
    else:
        if model is None:
            model = build_model(model_config)
            if train_config.init is not None:
                load_initial_weights(model, train_config.init)
        model.to(device)
        optimizer = _make_optimizer(train_config, model)
    model.train()

    run = _Run(
        model, optimizer, generator, curriculum, task, model_config, train_config, counters,
        world=world, device=device,
    )  # fmt: skip
    if train_config.out is not None and world.rank == 0:
        run.start_csv(keep_through_step=counters["step"] if resume else None)
    # Under torchrun a Ctrl-C reaches every process twice (from the terminal and from
    # torchrun), so there the second one must not abort the step the first one ends.
    with _StopOnCtrlC(second_raises=world.size == 1) as interrupted:
        return run.loop(on_progress, should_stop, interrupted)


def command_line(
    model_config: ModelConfig,
    train_config: TrainConfig,
    world_size: int = 1,
    device: str | torch.device = "cpu",
) -> str:
    """The ``python -m mann train ...`` command that reproduces a run from scratch: for a run
    of ``world_size`` processes ``torchrun --nproc-per-node N -m mann train ...`` (on one
    machine: the ranks, not the machines, decide the batches), with ``--device cuda`` for a
    run on a GPU."""
    parts = [*launcher(world_size), "train"]
    config = model_config.to_dict()
    parts += ["--arch", config["arch"], "--task", train_config.task]
    for name in MODEL_FLAGS:
        parts += [_flag(name), str(config[name])]
    parts += [_flag(name) for name in SWITCH_FLAGS if config.get(name)]
    for key, value in train_config.task_options.items():
        parts += ["--task-option", f"{key}={_option_text(value)}"]
    train_values = train_config.to_dict()
    for name in TRAIN_FLAGS:
        value = train_values[name]
        parts += [_flag(name), "none" if value is None else str(value)]
    if train_config.keep_best:
        parts += ["--keep-best", "--validation-size", str(train_config.validation_size)]
    if train_config.init is not None:
        parts += ["--init", str(checkpoint.checkpoint_stem(train_config.init))]
    if torch.device(device).type != "cpu":
        parts += ["--device", torch.device(device).type]
    if train_config.out is not None:
        parts += ["--out", str(train_config.out)]
    command = shlex.join(parts)
    if train_config.init is not None:
        # From scratch means first making the checkpoint the run starts from.
        made_init = _readable_metadata(train_config.init).get("command")
        if made_init:
            command = f"{made_init} && {command}"
    return command


def load_initial_weights(model: MemoryAugmentedNetwork, path: str | Path) -> None:
    """Copy the weights of checkpoint ``path`` into ``model`` (``TrainConfig.init``).

    Raises:
        CheckpointError: ``path`` is missing or damaged.
        ValueError: its model differs from ``model`` in anything but memory_size (and that
            only for architectures without N-sized parameters).
    """
    loaded = checkpoint.load(path)
    source = loaded.config.to_dict()
    target = model.config.to_dict()
    allowed = ("memory_size",) if target["arch"] in checkpoint.SIZE_FREE_ARCHITECTURES else ()
    differing = [k for k in target if k not in allowed and source.get(k) != target[k]]
    if differing:
        details = ", ".join(f"{k} {source.get(k)!r} (this run: {target[k]!r})" for k in differing)
        raise ValueError(f"init checkpoint {path} has a different model: {details}")
    model.load_state_dict(loaded.state_dict(), strict=True)


def _readable_metadata(path: str | Path) -> dict:
    try:
        return checkpoint.read_metadata(path)
    except checkpoint.CheckpointError:
        return {}


def best_path(out: str | Path) -> Path:
    """``OUT-best``: where ``keep_best`` keeps the best validated weights of run ``out``."""
    stem = checkpoint.checkpoint_stem(out)
    return stem.with_name(stem.name + "-best")


def validation_batch(train_config: TrainConfig, device: torch.device | str = "cpu"):
    """The fixed sequences ``keep_best`` scores: the task's full range, their own seed."""
    generator = torch.Generator().manual_seed(VALIDATION_SEED_OFFSET + train_config.seed)
    batch = train_config.make_task().sample(train_config.validation_size, generator)
    return type(batch)(*(tensor.to(device) for tensor in batch))


def csv_path(out: str | Path) -> Path:
    """``OUT.csv``: the metrics of the run saving to checkpoint ``out``."""
    stem = checkpoint.checkpoint_stem(out)
    return stem.with_name(stem.name + ".csv")


# --------------------------------------------------------------------------- the loop


class _Run:
    """The state of one training run, and the loop that advances it."""

    def __init__(
        self, model, optimizer, generator, curriculum, task, model_config, train_config, counters,
        world: World | None = None, device: torch.device | None = None,
    ) -> None:  # fmt: skip
        self.world = world or World()
        self.device = device or torch.device("cpu")
        self.model = model
        # What a step calls: with several processes DDP's wrapper, which averages gradients
        # in backward; validation and saving use the model itself (nothing collective).
        self.network = model
        if self.world.size > 1:
            device_ids = None if self.device.type == "cpu" else [self.device]
            self.network = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.optimizer = optimizer
        self.generator = generator
        self.curriculum = curriculum
        self.task = task
        self.model_config = model_config
        self.config = train_config
        self.step = counters["step"]
        self.sequences = counters["sequences"]
        self.seconds_before = float(counters["seconds"])
        self.skipped_steps = counters["skipped_steps"]
        self.best = counters.get("best")  # {"step", "bit_errors"} of OUT-best, or None
        validates = train_config.keep_best and self.world.rank == 0
        self.validation = validation_batch(train_config, self.device) if validates else None
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.command = command_line(model_config, train_config, self.world.size, self.device)
        writes = train_config.out is not None and self.world.rank == 0
        self.csv_path = csv_path(train_config.out) if writes else None
        # Nothing new to save until a step runs (a resumed run starts from a saved step).
        self.last_saved_step = self.step
        self.last_progress: Progress | None = None
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def loop(self, on_progress, should_stop, interrupted) -> TrainResult:
        config = self.config
        losses: list[float] = []
        history: list[Progress] = []
        interval = _Interval()
        stopped = False
        while self.step < config.steps:
            stop_asked = interrupted.is_set() or (should_stop is not None and should_stop())
            if stop_asked and self.world.size == 1:
                stopped = True
                break
            # With several processes the ranks agree on a stop in the step's all-reduce.
            loss, bits, errors, ok, stopped = self.train_step(stop_asked)
            losses.append(loss)
            interval.add(loss, bits, errors, ok)
            if self.step % config.log_every == 0 or self.step == config.steps:
                history.append(self.report(interval, on_progress))
                interval = _Interval()
            if config.out is not None and self.step % config.checkpoint_every == 0:
                self.keep_if_best()
                self.save()
            if stopped:
                break
        if interval.steps or not history:
            history.append(self.report(interval, on_progress))
        if config.out is not None and self.last_saved_step != self.step:
            self.keep_if_best()
            self.save()
        return TrainResult(
            model=self.model,
            step=self.step,
            sequences=self.sequences,
            seconds=self.seconds,
            skipped_steps=self.skipped_steps,
            stopped=stopped,
            metrics=self.metrics(),
            losses=losses,
            history=history,
            command=self.command,
            checkpoint=None if config.out is None else checkpoint.weights_path(config.out),
        )

    def train_step(self, stop_asked: bool = False) -> tuple[float, float, float, bool, bool]:
        """One optimizer step on a fresh batch; returns (loss, bits, bit errors, applied,
        stop). With several processes the loss and bit errors are the means over the ranks
        and ``stop`` is whether any rank asked to stop; alone, ``stop`` is False."""
        batch = self.curriculum.task(self.task).sample(self.config.batch_size, self.generator)
        inputs, targets, mask = (tensor.to(self.device) for tensor in batch)
        self.optimizer.zero_grad(set_to_none=True)
        logits, _ = self.network(inputs)
        loss = masked_bce(logits, targets, mask)
        stop = False
        if self.world.size == 1:
            applied = bool(torch.isfinite(loss))
            if applied:
                loss.backward()
            loss_value = float(loss.detach())
            errors = float(bit_errors(logits.detach(), targets, mask).mean())
        else:
            # Every rank runs backward, whatever its loss: DDP averages the gradients inside
            # it, and a rank that skipped it would leave the others waiting.
            loss.backward()
            loss_value, errors, bad_losses, stops = self.world.sum(
                float(loss.detach()) / self.world.size,
                float(bit_errors(logits.detach(), targets, mask).mean()) / self.world.size,
                float(not torch.isfinite(loss)),
                float(stop_asked),
            )
            applied, stop = bad_losses == 0, stops > 0
        if applied:
            # After DDP's averaging every rank holds the same gradient: the same norm, the
            # same clip, the same decision to skip.
            grads = [p.grad for p in self.parameters if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
            applied = bool(torch.isfinite(norm))
            if applied and self.config.clip is not None:
                torch.nn.utils.clip_grads_with_norm_(self.parameters, self.config.clip, norm)
        if applied:
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.config, self.step)
            self.optimizer.step()
        else:
            # A non-finite loss or gradient never reaches the weights or the optimizer state.
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
        self.step += 1
        self.sequences += self.config.batch_size * self.world.size
        if applied:
            self.curriculum.observe(errors)
        return loss_value, loss_value / math.log(2.0), errors, applied, stop

    def report(self, interval: _Interval, on_progress) -> Progress:
        loss, bits, errors = interval.means()
        progress = Progress(
            step=self.step,
            steps=self.config.steps,
            sequences=self.sequences,
            loss=loss,
            bits=bits,
            bit_errors=errors,
            seconds=self.seconds,
            fraction=min(1.0, self.step / self.config.steps),
            skipped_steps=self.skipped_steps,
            min_length=self.curriculum.min_length,
            max_length=self.curriculum.max_length,
        )
        self.last_progress = progress
        if self.csv_path is not None and interval.steps:
            self.append_csv(progress)
        if on_progress is not None:
            on_progress(progress)
        return progress

    def metrics(self) -> dict[str, Any]:
        progress = self.last_progress
        values: dict[str, Any] = {
            "step": self.step,
            "sequences": self.sequences,
            "seconds": round(self.seconds, 3),
            "skipped_steps": self.skipped_steps,
            "lengths": [self.curriculum.min_length, self.curriculum.max_length],
        }
        for name in ("loss", "bits", "bit_errors"):
            value = getattr(progress, name) if progress is not None else math.nan
            values[name] = value if math.isfinite(value) else None
        if self.best is not None:
            values["best"] = dict(self.best)
        return values

    @torch.no_grad()
    def validation_errors(self) -> float:
        """Mean bit errors per sequence on the fixed validation sequences."""
        batch = self.validation
        was_training = self.model.training
        self.model.eval()
        try:
            logits, _ = self.model(batch.inputs)
        finally:
            self.model.train(was_training)
        return float(bit_errors(logits, batch.targets, batch.mask).mean())

    def keep_if_best(self) -> None:
        """With keep_best: save the weights to OUT-best if they validate best so far (rank 0
        alone; the other ranks go on to their next collective and wait there)."""
        if self.validation is None:
            return
        errors = self.validation_errors()
        if self.best is not None and not errors < self.best["bit_errors"]:
            return
        self.best = {"step": self.step, "bit_errors": errors}
        metrics = dict(
            self.metrics(),
            validation_bit_errors=errors,
            validation_sequences=self.config.validation_size,
        )
        checkpoint.save(
            self.model,
            best_path(self.config.out),
            task=self.task.name,
            task_options=dataclasses.asdict(self.task),
            train_config=self.config.to_dict(),
            command=self.command,
            metrics=metrics,
            selected=f"the best of the run's validations, at step {self.step}",
            world_size=self.world.size,
            device=self.device.type,
            torch_version=torch.__version__,
        )

    def save(self) -> None:
        """Write the checkpoint and the training state (rank 0; every rank must call it, as
        it gathers the ranks' random generators). A SIGTERM that arrives meanwhile takes
        effect once both files are written (``_FinishSavingFirst``)."""
        with _FinishSavingFirst():
            random_states = self.random_states()
            self.last_saved_step = self.step
            if self.world.rank == 0:
                self.write(random_states)

    def write(self, random_states: dict[str, torch.Tensor]) -> None:
        out = self.config.out
        metrics = self.metrics()
        checkpoint.save(
            self.model,
            out,
            task=self.task.name,
            task_options=dataclasses.asdict(self.task),
            train_config=self.config.to_dict(),
            command=self.command,
            metrics=metrics,
            world_size=self.world.size,
            device=self.device.type,
            torch_version=torch.__version__,
        )
        checkpoint.save_training_state(
            out,
            self.model,
            self.optimizer,
            random_states,
            {
                "model_config": self.model_config.to_dict(),
                "train_config": self.config.to_dict(),
                "world_size": self.world.size,
                "step": self.step,
                "sequences": self.sequences,
                "seconds": metrics["seconds"],
                "skipped_steps": self.skipped_steps,
                "curriculum": self.curriculum.state_dict(),
                "best": self.best,
            },
        )

    def random_states(self) -> dict[str, torch.Tensor]:
        """The random generators' states of every rank, named as ``World.state_name`` reads
        them back (alone: ``torch`` and ``task``)."""
        states = {"torch": torch.get_rng_state(), "task": self.generator.get_state()}
        if self.world.size == 1:
            return states
        gathered = {}
        for name, state in states.items():
            for rank, rank_state in enumerate(self.world.gather(state)):
                gathered[World(rank, self.world.size).state_name(name)] = rank_state
        return gathered

    def start_csv(self, keep_through_step: int | None) -> None:
        """Start ``OUT.csv`` afresh, or (resuming) keep only rows up to the resumed step."""
        path = self.csv_path
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if keep_through_step is not None and path.exists():
            with path.open(newline="") as handle:
                rows = [
                    row
                    for row in csv.DictReader(handle)
                    if _row_step(row) is not None and _row_step(row) <= keep_through_step
                ]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        checkpoint.write_atomically(path, text.getvalue().encode("utf-8"))

    def append_csv(self, progress: Progress) -> None:
        row = {
            "step": progress.step,
            "sequences": progress.sequences,
            "loss": f"{progress.loss:.6g}",
            "bits": f"{progress.bits:.6g}",
            "bit_errors": f"{progress.bit_errors:.6g}",
            "seconds": f"{progress.seconds:.3f}",
            "skipped": progress.skipped_steps,
            "max_length": progress.max_length,
        }
        with self.csv_path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=CSV_COLUMNS).writerow(row)


class _Interval:
    """Sums over the steps since the last report (skipped steps excluded)."""

    def __init__(self) -> None:
        self.steps = 0
        self.applied = 0
        self.loss = self.bits = self.errors = 0.0

    def add(self, loss: float, bits: float, errors: float, applied: bool) -> None:
        self.steps += 1
        if applied:
            self.applied += 1
            self.loss += loss
            self.bits += bits
            self.errors += errors

    def means(self) -> tuple[float, float, float]:
        if not self.applied:
            return math.nan, math.nan, math.nan
        return self.loss / self.applied, self.bits / self.applied, self.errors / self.applied


class _StopOnCtrlC:
    """While training in the main thread, the first Ctrl-C sets a flag (the loop stops and saves
    at the end of the step); a second one raises KeyboardInterrupt as usual, unless
    ``second_raises`` is False (then every Ctrl-C only sets the flag)."""

    def __init__(self, second_raises: bool = True) -> None:
        self.second_raises = second_raises

    def __enter__(self) -> threading.Event:
        self.flag = threading.Event()
        self.installed = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if self.installed:
            signal.signal(signal.SIGINT, self._handle)
        return self.flag

    def _handle(self, signum, frame) -> None:
        self.flag.set()
        if self.second_raises:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc_info) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)


class _FinishSavingFirst:
    """In the main thread, hold a SIGTERM back until the block ends, then let it act as it
    would have. The weights and the training state are two files, each replaced atomically;
    a termination between the two would leave the weights of one step beside the training
    state of an earlier one. torchrun sends SIGTERM to the other processes when one of them
    dies, and rank 0 may be between the two writes then."""

    def __enter__(self) -> None:
        self.received: int | None = None
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self.previous = signal.signal(signal.SIGTERM, self._hold)

    def _hold(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc_info) -> None:
        if not self.installed:
            return
        # None: a handler installed outside Python; the default is the closest we can restore.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)
        if self.received is not None:
            signal.raise_signal(self.received)


# --------------------------------------------------------------------------- helpers


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based): a function of the step alone, so a
    resumed run follows the same schedule. A late low rate sharpens the learned addressing,
    which is what lets a copy model generalise to sequences longer than it saw."""
    if config.lr_decay == "none":
        return config.lr
    progress = min(step / max(config.steps - 1, 1), 1.0)
    scale = LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * scale


def _make_optimizer(config: TrainConfig, model: MemoryAugmentedNetwork) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.momentum, 0.999))
    return torch.optim.RMSprop(model.parameters(), lr=config.lr, momentum=config.momentum)


def _check_sizes(model_config: ModelConfig, task: Task) -> None:
    if model_config.input_size != task.input_size:
        raise ValueError(
            f"input_size={model_config.input_size} does not match task {task.name!r}, "
            f"whose inputs are {task.input_size} wide"
        )
    if model_config.output_size != task.output_size:
        raise ValueError(
            f"output_size={model_config.output_size} does not match task {task.name!r}, "
            f"whose targets are {task.output_size} wide"
        )


def _check_resumable(
    out, model_config: ModelConfig, train_config: TrainConfig, saved, world_size: int = 1
) -> None:
    saved_world_size = saved.get("world_size", 1)  # older states: one process
    if saved_world_size != world_size:
        resume = shlex.join([*launcher(saved_world_size), "train", "--out", str(out), "--resume"])
        raise ValueError(
            f"cannot resume {checkpoint.training_state_path(out)} with world_size {world_size}: "
            f"it was trained with world_size {saved_world_size}, and each rank's batches and "
            f"random state belong to its rank; resume with {resume}, or start a new run from "
            f"its weights with --init"
        )
    differences = []
    # A field added since the state was saved had its default then (e.g. a new memory option):
    # from_dict fills it in.
    saved_model = ModelConfig.from_dict(saved["model_config"]).to_dict()
    saved_train = TrainConfig.from_dict(saved["train_config"]).to_dict()
    for name, value in model_config.to_dict().items():
        if saved_model.get(name) != value:
            differences.append(f"{name}: saved {saved_model.get(name)!r}, now {value!r}")
    for name, value in train_config.to_dict().items():
        if name not in RESUMABLE_CHANGES and saved_train.get(name) != value:
            differences.append(f"{name}: saved {saved_train.get(name)!r}, now {value!r}")
    if differences:
        raise ValueError(
            f"cannot resume {checkpoint.training_state_path(out)} with a different config "
            f"(only {', '.join(RESUMABLE_CHANGES)} may change): " + "; ".join(differences)
        )


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _row_step(row: dict) -> int | None:
    try:
        return int(row.get("step", ""))
    except ValueError:
        return None
