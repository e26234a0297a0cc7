"""mann.background: training in a thread, with progress, stop, save and a queue of runs."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

import mann
from mann.background import BackgroundTraining, TrainingQueue
from mann.tasks import make_task
from mann.train import TrainConfig
from tests.helpers import tiny_config

torch.set_num_threads(1)

COPY = make_task("copy", bits=4, min_length=1, max_length=5)


def test_background_training_runs_reports_and_saves(tmp_path):
    config = TrainConfig(task="copy", task_options={"bits": 4, "max_length": 3}, steps=4,
                         batch_size=2, log_every=2, curriculum="none")
    task = config.make_task()
    run = BackgroundTraining(tiny_config("ntm", task), config).start()
    assert run.wait(timeout=60), "training did not finish"
    assert run.error is None and run.finished and not run.running
    assert [report.step for report in run.poll()] == [2, 4]
    path = run.save(tmp_path / "trained")
    loaded = mann.load(path)
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    metadata = mann.checkpoint.read_metadata(path)
    assert metadata["task"] == "copy" and metadata["metrics"]["step"] == 4
    assert "--out" in metadata["command"]


def test_background_training_stops_when_asked():
    config = TrainConfig(task="copy", task_options={"bits": 4, "max_length": 3}, steps=100_000,
                         batch_size=2, log_every=1)
    run = BackgroundTraining(tiny_config("ntm", config.make_task()), config)
    with pytest.raises(ValueError, match="finished"):
        run.save("never")
    run.start()
    deadline = time.monotonic() + 60
    while not run.poll() and time.monotonic() < deadline:  # until it has run a step
        time.sleep(0.01)
    run.stop()
    assert run.wait(timeout=60)
    assert run.result.stopped and run.result.step < 100_000
    assert run.state == "stopped"


def tiny_run(queue, steps: int, **options) -> BackgroundTraining:
    config = TrainConfig(task="copy", task_options={"bits": 4, "max_length": 3}, steps=steps,
                         batch_size=2, log_every=1, curriculum="none")
    return BackgroundTraining(tiny_config("ntm", config.make_task()), config, queue=queue,
                                   **options)


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_trainings_take_turns_and_a_stopped_or_abandoned_one_leaves_the_queue():
    turns = TrainingQueue(slots=1)
    first = tiny_run(turns, 100_000).start()
    wait_until(lambda: first.state == "running" and first.poll())
    second = tiny_run(turns, 5).start()
    third = tiny_run(turns, 5).start()
    fourth = tiny_run(turns, 5, abandon_after=0.5).start()  # its visitor never comes back
    wait_until(lambda: fourth.queue_position == 3)
    assert (second.queue_position, third.queue_position) == (1, 2)
    assert [run.state for run in (second, third, fourth)] == ["queued"] * 3
    second.stop()  # its visitor changed their mind
    assert second.wait(timeout=60) and second.state == "stopped" and second.result is None
    assert third.queue_position == 1
    fourth.wait(timeout=60)  # no heartbeat for 0.5 s: it leaves without having run
    assert fourth.abandoned and fourth.result is None and not fourth.poll()
    assert third.state == "queued"  # still waiting for the one running
    first.stop()
    assert first.wait(timeout=60) and first.result.stopped
    assert third.wait(timeout=60) and third.state == "finished" and third.result.step == 5


def test_training_runs_in_its_own_process_and_the_server_keeps_none_of_its_work():
    run = tiny_run(TrainingQueue(slots=1), 100_000).start()
    wait_until(lambda: run.poll())
    assert run.process_id is not None and run.process_id != os.getpid()
    os.kill(run.process_id, 0)  # alive while it trains
    initial = {name: value.clone() for name, value in run.model.state_dict().items()}
    run.stop()
    assert run.wait(timeout=60) and run.state == "stopped"
    with pytest.raises(ProcessLookupError):
        os.kill(run.process_id, 0)  # ended with the run
    trained = run.model.state_dict()
    assert any(not torch.equal(initial[name], trained[name]) for name in initial)


def test_a_training_process_that_dies_is_reported():
    run = tiny_run(TrainingQueue(slots=1), 100_000).start()
    wait_until(lambda: run.poll())
    os.kill(run.process_id, signal.SIGKILL)
    assert run.wait(timeout=60)
    assert run.state == "failed" and "ended unexpectedly" in str(run.error)


def test_a_running_training_whose_visitor_left_stops():
    run = tiny_run(TrainingQueue(slots=1), 100_000, abandon_after=0.5).start()
    wait_until(lambda: run.poll())
    run.heartbeat()
    assert run.wait(timeout=60), "it stops once no heartbeat came for 0.5 s"
    assert run.abandoned and run.result.stopped and run.result.step < 100_000


def test_background_training_rejects_a_model_that_does_not_fit_the_task():
    config = TrainConfig(task="associative_recall", steps=1)
    with pytest.raises(ValueError, match="input_size=5 and output_size=4 must be 8 and 6"):
        BackgroundTraining(tiny_config("ntm"), config)
