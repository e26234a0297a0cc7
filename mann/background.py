"""Training in the background, taking turns: ``mann.train.train`` in a child process, watched
by a thread, with progress, stop and save, queued so that a shared server trains one model at a
time. Plain Python, no Streamlit.

A process, not a thread: training in the server's own process held its GIL and slowed every
page it served (``bench/classroom.py``: serving a new visitor's files took 0.28 s of CPU
instead of 0.16 s while a run trained beside them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue as queue_module
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mann.catalog import check_fits_config
from mann.checkpoint import save
from mann.model import ModelConfig, build_model


class TrainingQueue:
    """At most ``slots`` trainings run at once; the others wait, first come first served.

    On a shared server (a class on one laptop) every visitor may start a training; two
    processes' worth of torch on two cores slow each other down many times over, so they take
    turns. ``slots`` defaults to ``$MANN_TRAINING_SLOTS``, else 1.
    """

    def __init__(self, slots: int | None = None) -> None:
        if slots is None:
            slots = int(os.environ.get("MANN_TRAINING_SLOTS", "1"))
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an integer >= 1, got {slots!r}")
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


# How often the watching thread passes a stop on and looks for reports (seconds).
_WATCH_INTERVAL = 0.2


def _child_main(directory: str) -> None:
    """The child process: train from the parent's initial weights and settings in
    ``directory``, report each ``Progress`` as a JSON line on stdout, stop when the file
    ``stop`` appears, and leave the trained weights (safetensors, never a pickle) in
    ``directory``; the last line is the summary, or the error."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the reports

    def send(kind: str, value) -> None:
        protocol.write(json.dumps({"kind": kind, "value": value}) + "\n")

    torch.set_num_threads(1)  # one core per training slot (TrainingQueue)
    try:
        from mann.train import TrainConfig, train

        folder = Path(directory)
        settings = json.loads((folder / "settings.json").read_text())
        config = ModelConfig.from_dict(settings["model_config"])
        model = build_model(config)
        model.load_state_dict(load_file(folder / "initial.safetensors"))
        stop_file = folder / "stop"
        result = train(config, TrainConfig.from_dict(settings["train_config"]),
                       on_progress=lambda report: send("progress", dataclasses.asdict(report)),
                       should_stop=stop_file.exists, model=model)  # fmt: skip
        weights = {name: value.contiguous() for name, value in model.state_dict().items()}
        save_file(weights, folder / "trained.safetensors")
        send("done", {name: getattr(result, name) for name in (
            "step", "sequences", "seconds", "skipped_steps", "stopped", "metrics", "losses",
            "command")})  # fmt: skip
    except BaseException as error:  # the parent reports it; nothing is lost in the child
        send("error", f"{type(error).__name__}: {error}")


class BackgroundTraining:
    """``mann.train.train`` in a child process, so a page (and every other visitor's) stays
    usable while it runs.

    ``poll()`` returns every progress report so far; ``stop()`` asks the loop to end after the
    current step; ``save(path)`` writes the trained model as a checkpoint (once it has ended).
    ``self.model`` holds the initial weights while the run goes and the trained ones once it
    has ended. Runs take turns through ``queue`` (``TRAINING_QUEUE`` by default);
    ``queue_position`` says where one waits. With ``abandon_after`` seconds, a run stops (or
    leaves the queue) once no ``heartbeat()`` came for that long: the visitor who started it
    has gone.
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
        self.process_id: int | None = None  # the training process's, once it has started
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
        if not self.queue.enter(self):
            return  # stopped or abandoned before its turn: nothing ran
        try:
            with tempfile.TemporaryDirectory(prefix="mann-training-") as directory:
                self._train_in_process(directory)
        except BaseException as error:  # reported to the page, never lost in the thread
            self.error = error
        finally:
            self.queue.leave(self)

    def _train_in_process(self, directory: str) -> None:
        from mann.train import Progress, TrainResult

        folder = Path(directory)
        weights = {name: value.contiguous() for name, value in self.model.state_dict().items()}
        save_file(weights, folder / "initial.safetensors")
        (folder / "settings.json").write_text(json.dumps({
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
        }))  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, "-c", f"from mann.background import _child_main; "
             f"_child_main({str(folder)!r})"],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        self.process_id = child.pid
        lines: queue_module.Queue = queue_module.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in child.stdout],
                                  daemon=True)  # fmt: skip
        reader.start()
        summary, failure = None, None
        while summary is None and failure is None:
            if self.should_stop() and not (folder / "stop").exists():
                (folder / "stop").touch()
            try:
                message = json.loads(lines.get(timeout=_WATCH_INTERVAL))
            except queue_module.Empty:
                if child.poll() is None or reader.is_alive():
                    continue
                failure = f"the training process ended unexpectedly (exit code {child.poll()})"
                break
            if message["kind"] == "progress":
                self._reports.put(Progress(**message["value"]))
            elif message["kind"] == "done":
                summary = message["value"]
            else:
                failure = message["value"]
        child.wait(timeout=30)
        if failure is not None:
            raise RuntimeError(failure)
        self.model.load_state_dict(load_file(folder / "trained.safetensors"))
        self.result = TrainResult(model=self.model, history=list(self.poll()), checkpoint=None,
                                  **summary)  # fmt: skip

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
