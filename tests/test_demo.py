"""mann.demo: the library side of the app (models, inputs, uploads, background training)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import mann
from mann import demo
from mann.checkpoint import CheckpointError
from mann.fused.runtime import HAVE_NUMBA
from mann.tasks import make_task
from mann.train import TrainConfig

torch.set_num_threads(1)

COPY = make_task("copy", bits=4, min_length=1, max_length=5)


def tiny_config(arch: str = "ntm", task=COPY) -> mann.ModelConfig:
    return mann.ModelConfig(
        arch=arch, input_size=task.input_size, output_size=task.output_size, hidden_size=8,
        memory_size=8, word_size=4, read_heads=1,
    )


def test_list_checkpoints_puts_shipped_ones_first_and_skips_training_states(tmp_path):
    for name in ("zeta", "dnc-copy", "alpha", "ntm-copy", "ntm-copy.train", ".hidden"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"x")
    (tmp_path / "notes.json").write_text("{}")
    assert demo.list_checkpoints(tmp_path) == ["ntm-copy", "dnc-copy", "alpha", "zeta"]
    assert demo.list_checkpoints(tmp_path / "missing") == []


def test_untrained_models_are_sized_for_the_task_and_repeatable():
    task = make_task("associative_recall")
    first = demo.untrained_model("dnc", task, seed=3)
    second = demo.untrained_model("dnc", task, seed=3)
    other = demo.untrained_model("dnc", task, seed=4)
    assert (first.config.input_size, first.config.output_size) == (8, 6)
    weights = [dict(model.named_parameters())["output.weight"] for model in (first, second, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    with pytest.raises(ValueError, match="arch must be one of"):
        demo.untrained_model("gru", task)


def test_sample_input_has_the_asked_length_and_seed():
    batch = demo.sample_input(COPY, 4, seed=7)
    assert batch.inputs.shape == (1, 9, 5) and float(batch.mask.sum()) == 4
    again = demo.sample_input(COPY, 4, seed=7)
    assert torch.equal(batch.inputs, again.inputs)
    assert not torch.equal(batch.inputs, demo.sample_input(COPY, 4, seed=8).inputs)
    with pytest.raises(ValueError, match="length must be an integer >= 1, got 0"):
        demo.sample_input(COPY, 0, seed=0)
    with pytest.raises(ValueError, match=r"length 300 makes 601 steps .* at most 400"):
        demo.sample_input(COPY, 300, seed=0)
    with pytest.raises(ValueError, match="seed"):
        demo.sample_input(COPY, 3, seed=-1)


def test_edited_copy_input_recomputes_the_targets():
    batch = demo.sample_input(COPY, 3, seed=1)
    inputs = batch.inputs[0].numpy().copy()
    inputs[0, :4] = [1, 0, 1, 0]
    edited = demo.edited_input(COPY, inputs)
    assert torch.equal(edited.inputs[0], torch.from_numpy(inputs))
    np.testing.assert_array_equal(edited.targets[0, 4].numpy(), [1, 0, 1, 0])
    np.testing.assert_array_equal(edited.targets[0, 5:].numpy(), inputs[1:3, :4])
    assert torch.equal(edited.mask, batch.mask)


def test_edited_inputs_are_checked():
    inputs = demo.sample_input(COPY, 3, seed=1).inputs[0].numpy().copy()
    no_delimiter = inputs.copy()
    no_delimiter[3, 4] = 0
    with pytest.raises(ValueError, match="exactly one delimiter"):
        demo.edited_input(COPY, no_delimiter)
    with pytest.raises(ValueError, match=r"inputs must be \(steps, 5\)"):
        demo.edited_input(COPY, inputs[:, :3])
    with pytest.raises(ValueError, match="need 7 steps"):
        demo.edited_input(COPY, inputs[:5])
    nan = inputs.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        demo.edited_input(COPY, nan)
    # Another task: the input is kept, nothing is scored.
    task = make_task("associative_recall")
    other = demo.sample_input(task, 2, seed=0).inputs[0].numpy()
    batch = demo.edited_input(task, other)
    assert float(batch.mask.sum()) == 0 and float(batch.targets.abs().sum()) == 0


def test_record_stores_the_ntm_initial_weightings_and_bit_errors():
    torch.manual_seed(0)
    model = mann.build_model(tiny_config("ntm"))
    batch = demo.sample_input(COPY, 3, seed=2)
    trace = demo.record(model, batch)
    state = model.access.initial_state(1, "cpu")
    np.testing.assert_allclose(trace.metadata["initial_weights"]["read"],
                               state.read_weights[0].detach().numpy(), rtol=1e-6)
    logits, _ = model(batch.inputs)
    expected = float(((logits > 0).float() != batch.targets).float().sum(-1).mul(batch.mask).sum())
    assert trace.metadata["bit_errors"] == expected
    unscored = demo.edited_input(make_task("associative_recall"),
                                 demo.sample_input(make_task("associative_recall"), 2, 0)
                                 .inputs[0].numpy())
    dnc = mann.build_model(tiny_config("dnc", make_task("associative_recall")))
    assert "bit_errors" not in demo.record(dnc, unscored).metadata
    assert "initial_weights" not in demo.record(dnc, unscored).metadata


def test_load_upload_accepts_a_checkpoint_and_rejects_everything_else(tmp_path):
    torch.manual_seed(0)
    model = mann.build_model(tiny_config("dnc"))
    path = mann.save(model, tmp_path / "mine", task="copy", task_options={"bits": 4})
    data = path.read_bytes()
    loaded, metadata = demo.load_upload("mine.safetensors", data)
    assert metadata["task_options"] == {"bits": 4}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    with pytest.raises(ValueError, match=r"at most 0 MB"):
        demo.load_upload("mine.safetensors", data, max_bytes=100)
    with pytest.raises(ValueError, match="is not a checkpoint"):
        demo.load_upload("mine.json", data)
    with pytest.raises(CheckpointError, match="mine.safetensors"):
        demo.load_upload("mine.safetensors", b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated|corrupted"):
        demo.load_upload("mine.safetensors", data[: len(data) // 2])


def test_task_of_reads_the_checkpoint_metadata():
    task = demo.task_of({"task": "repeat_copy", "task_options": {"bits": 3, "max_repeats": 4}})
    assert task.name == "repeat_copy" and task.bits == 3 and task.max_repeats == 4
    assert demo.task_of({}).name == "copy"


def test_background_training_runs_reports_and_saves(tmp_path):
    config = TrainConfig(task="copy", task_options={"bits": 4, "max_length": 3}, steps=4,
                         batch_size=2, log_every=2, curriculum="none")
    task = config.make_task()
    run = demo.BackgroundTraining(tiny_config("ntm", task), config).start()
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
    run = demo.BackgroundTraining(tiny_config("ntm", config.make_task()), config)
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


def tiny_run(queue, steps: int, **options) -> demo.BackgroundTraining:
    config = TrainConfig(task="copy", task_options={"bits": 4, "max_length": 3}, steps=steps,
                         batch_size=2, log_every=1, curriculum="none")
    return demo.BackgroundTraining(tiny_config("ntm", config.make_task()), config, queue=queue,
                                   **options)


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_trainings_take_turns_and_a_stopped_or_abandoned_one_leaves_the_queue():
    turns = demo.TrainingQueue(slots=1)
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


def test_a_running_training_whose_visitor_left_stops():
    run = tiny_run(demo.TrainingQueue(slots=1), 100_000, abandon_after=0.5).start()
    wait_until(lambda: run.poll())
    run.heartbeat()
    assert run.wait(timeout=60), "it stops once no heartbeat came for 0.5 s"
    assert run.abandoned and run.result.stopped and run.result.step < 100_000


def test_background_training_rejects_a_model_that_does_not_fit_the_task():
    config = TrainConfig(task="associative_recall", steps=1)
    with pytest.raises(ValueError, match="input_size=5 and output_size=4 must be 8 and 6"):
        demo.BackgroundTraining(tiny_config("ntm"), config)


def test_parse_lengths_and_checkpoint_names():
    assert demo.parse_lengths(" 20, 10,10 ;40") == [10, 20, 40]
    for text in ("", "10,abc", "0", "1000"):
        with pytest.raises(ValueError, match="lengths"):
            demo.parse_lengths(text, maximum=200)
    assert demo.checkpoint_name_error("my-ntm_2") is None
    assert "letters" in demo.checkpoint_name_error("../etc/passwd")
    assert "empty" in demo.checkpoint_name_error("")


def test_generalisation_frame_stacks_models():
    torch.manual_seed(0)
    models = {"a": mann.build_model(tiny_config("ntm")), "b": mann.build_model(tiny_config("dnc"))}
    frame = demo.generalisation_frame(models, COPY, [2, 4], sequences=10, seed=0)
    assert list(frame["model"]) == ["a", "a", "b", "b"]
    assert list(frame["length"]) == [2, 4, 2, 4]
    assert (frame["mean_bit_errors"] >= 0).all()
    with pytest.raises(ValueError, match="does not fit task"):
        demo.generalisation_frame(models, make_task("associative_recall"), [2])


@pytest.mark.skipif(not HAVE_NUMBA, reason="the kernels are numba's")
def test_warm_kernels_fills_numba_disk_cache_for_the_architectures_and_modes_asked(tmp_path):
    # A fresh cache directory stands for a fresh machine: what the warm-up compiles there is
    # what the app's pages then load instead of compiling.
    def warmed(modes: tuple[str, ...], cache) -> set[str]:
        code = ("import mann; from mann.demo import warm_kernels; "
                f"print(warm_kernels([mann.ModelConfig(arch='ntm')], {modes!r}))")
        environment = dict(os.environ, NUMBA_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
        result = subprocess.run([sys.executable, "-c", code], env=environment,
                                capture_output=True, text=True, timeout=300, check=True)
        assert result.stdout.strip() == "['ntm']"
        return {path.name.split("-")[0] for path in cache.rglob("*.nbi")}

    evaluated = warmed(("evaluate",), tmp_path / "evaluate")
    assert "ntm._ntm_forward" in evaluated and "ntm._ntm_backward" not in evaluated
    trained = warmed(("evaluate", "train"), tmp_path / "train")
    assert "ntm._ntm_backward" in trained, sorted(trained)
    assert not any(name.startswith(("sparse_step.", "sdnc.")) for name in trained)


def test_warm_kernels_names_an_unknown_mode():
    with pytest.raises(ValueError, match="modes must be among"):
        demo.warm_kernels([], ("evaluate", "serve"))
