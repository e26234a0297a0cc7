"""Training in the background, taking turns: ``mann.train.train`` in a thread with progress,
stop and save, queued so that a shared server trains one model at a time. Plain Python, no
Streamlit.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_module
import threading
import time
from pathlib import Path

import torch

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
