"""The trainer: exact resume, skipped non-finite steps, progress, curriculum, and its CLI."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mann
import mann.train as train_module
from mann import checkpoint
from mann.__main__ import build_parser, configs_from_args
from mann.evaluate import generalisation
from mann.tasks import make_task
from mann.train import LengthCurriculum, TrainConfig, _make_optimizer, train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

TASK_OPTIONS = {"bits": 3, "min_length": 1, "max_length": 6}


def tiny_model_config(arch: str = "ntm", **changes) -> mann.ModelConfig:
    values = dict(
        arch=arch, input_size=4, output_size=3, hidden_size=12, memory_size=8, word_size=5,
        read_heads=1,
    )
    values.update(changes)
    return mann.ModelConfig(**values)


def tiny_train_config(**changes) -> TrainConfig:
    values = dict(
        task="copy", task_options=dict(TASK_OPTIONS), steps=8, batch_size=4, lr=0.01,
        seed=5, log_every=1, checkpoint_every=100,
        # Widen every 2 steps whatever the errors, so the curriculum state changes mid-run.
        curriculum="length", curriculum_start=1, curriculum_increment=1,
        curriculum_threshold=1e9, curriculum_window=2,
    )
    values.update(changes)
    return TrainConfig(**values)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "mann", *args], capture_output=True, text=True, timeout=timeout,
        env=environment, cwd=REPO,
    )


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("arch, optimizer", [("ntm", "adam"), ("dnc", "rmsprop")])
def test_resumed_run_continues_the_same_loss_curve(tmp_path, arch, optimizer):
    model_config = tiny_model_config(arch)
    whole = train(model_config, tiny_train_config(optimizer=optimizer, out=str(tmp_path / "whole")))

    # The same run killed at step 5, two steps after its last periodic checkpoint (step 3).
    class Killed(Exception):
        pass

    def kill_at_step_5(progress):
        if progress.step == 5:
            raise Killed

    config = tiny_train_config(optimizer=optimizer, checkpoint_every=3, out=str(tmp_path / "cut"))
    with pytest.raises(Killed):
        train(model_config, config, on_progress=kill_at_step_5)
    assert checkpoint.read_training_metadata(tmp_path / "cut")["training"]["step"] == 3
    resumed = train(model_config, config, resume=True)

    assert resumed.step == whole.step == 8
    assert resumed.losses == whole.losses[3:]
    assert resumed.sequences == whole.sequences
    for name, tensor in parameters(whole.model).items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    # The CSV holds one row per step, the rows written after the checkpoint replaced.
    whole_rows, cut_rows = read_csv(tmp_path / "whole.csv"), read_csv(tmp_path / "cut.csv")
    assert [row["step"] for row in cut_rows] == [str(step) for step in range(1, 9)]
    for expected, actual in zip(whole_rows, cut_rows, strict=True):
        for column in ("step", "sequences", "loss", "bits", "bit_errors", "max_length"):
            assert expected[column] == actual[column], column


def test_resume_can_extend_the_number_of_steps(tmp_path):
    model_config = tiny_model_config()
    whole = train(model_config, tiny_train_config(steps=6))
    first = train(model_config, tiny_train_config(steps=4, out=str(tmp_path / "run")))
    more = train(model_config, tiny_train_config(steps=6, out=str(tmp_path / "run")), resume=True)
    assert first.losses + more.losses == whole.losses
    assert checkpoint.read_metadata(tmp_path / "run")["metrics"]["step"] == 6


def test_resume_refuses_a_different_config(tmp_path):
    model_config = tiny_model_config()
    train(model_config, tiny_train_config(steps=2, out=str(tmp_path / "run")))
    with pytest.raises(ValueError, match=r"lr: saved 0.01, now 0.02"):
        train(model_config, tiny_train_config(lr=0.02, out=str(tmp_path / "run")), resume=True)
    with pytest.raises(ValueError, match=r"hidden_size: saved 12, now 14"):
        train(
            tiny_model_config(hidden_size=14), tiny_train_config(out=str(tmp_path / "run")),
            resume=True,
        )


def test_a_state_saved_before_a_field_existed_resumes_with_its_default(tmp_path):
    """A training state written before a config field was added (a new memory option, a new
    training option) lacks it; it had the field's default, so the run resumes."""
    model_config = tiny_model_config()
    train(model_config, tiny_train_config(steps=2, out=str(tmp_path / "run")))
    model, optimizer_state, random_states, state = checkpoint.load_training_state(tmp_path / "run")
    del state["model_config"]["read_after_write"], state["model_config"]["learned_memory"]
    del state["train_config"]["validation_size"]
    optimizer = _make_optimizer(tiny_train_config(), model)  # the run's own kind
    optimizer.load_state_dict(optimizer_state)
    checkpoint.save_training_state(tmp_path / "run", model, optimizer, random_states, state)
    more = train(model_config, tiny_train_config(steps=4, out=str(tmp_path / "run")), resume=True)
    assert len(more.losses) == 2
    with pytest.raises(ValueError, match=r"read_after_write: saved False, now True"):
        train(tiny_model_config(read_after_write=True),
              tiny_train_config(steps=6, out=str(tmp_path / "run")), resume=True)  # fmt: skip


def test_resume_without_a_saved_run_names_the_file(tmp_path):
    missing = r"none\.train\.safetensors: file is missing"
    with pytest.raises(checkpoint.CheckpointError, match=missing):
        train(tiny_model_config(), tiny_train_config(out=str(tmp_path / "none")), resume=True)
    with pytest.raises(ValueError, match="resume=True needs train_config.out"):
        train(tiny_model_config(), tiny_train_config(), resume=True)


# --------------------------------------------------------------------------- non-finite steps


def _train_recording_weights(model_config, train_config):
    """Train, keeping a copy of the weights before the first step and after every step
    (log_every must be 1); returns (result, weights, reports, optimizer)."""
    built = []
    real_build = train_module.build_model

    def build_and_remember(config):
        model = real_build(config)
        built.append(model)
        return model

    weights = []
    reports = []

    def remember(progress):
        reports.append(progress)
        weights.append(parameters(built[0]))

    initial, optimizers = [], []
    real_make = train_module._make_optimizer

    def make_optimizer(config, model):
        initial.append(parameters(model))
        optimizers.append(real_make(config, model))
        return optimizers[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "build_model", build_and_remember)
        patch.setattr(train_module, "_make_optimizer", make_optimizer)
        result = train(model_config, train_config, on_progress=remember)
    return result, initial + weights, reports, optimizers[0]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_never_reaches_the_weights(monkeypatch, bad):
    calls = []
    real_loss = train_module.masked_bce

    def loss_with_a_bad_third_step(logits, targets, mask):
        calls.append(1)
        loss = real_loss(logits, targets, mask)
        return loss * bad if len(calls) == 3 else loss

    monkeypatch.setattr(train_module, "masked_bce", loss_with_a_bad_third_step)
    result, weights, reports, optimizer = _train_recording_weights(
        tiny_model_config(), tiny_train_config(steps=5, optimizer="adam")
    )

    assert result.skipped_steps == 1
    assert not math.isfinite(result.losses[2])
    assert all(math.isfinite(loss) for index, loss in enumerate(result.losses) if index != 2)
    assert [report.skipped_steps for report in reports] == [0, 0, 1, 1, 1]
    # weights[k] is after step k: step 3 changed nothing, every other step changed something.
    for step in range(1, 6):
        same = all(torch.equal(weights[step][n], weights[step - 1][n]) for n in weights[step])
        assert same == (step == 3), step
    assert all(torch.isfinite(tensor).all() for tensor in weights[-1].values())
    # The optimizer never saw the skipped step either: Adam counted 4 steps, not 5.
    assert {float(state["step"]) for state in optimizer.state.values()} == {4.0}
    assert math.isnan(reports[2].loss)  # the report of a step with nothing applied


def test_a_non_finite_gradient_never_reaches_the_weights():
    backward_calls = []

    def poison_second_gradient(gradient):
        backward_calls.append(1)
        return gradient * math.nan if len(backward_calls) == 2 else gradient

    real_build = train_module.build_model

    def build_with_hook(config):
        model = real_build(config)
        model.output.weight.register_hook(poison_second_gradient)
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "build_model", build_with_hook)
        result, weights, reports, optimizer = _train_recording_weights(
            tiny_model_config(), tiny_train_config(steps=4, optimizer="adam")
        )

    assert result.skipped_steps == 1
    assert math.isfinite(result.losses[1])  # the loss was fine; its gradient was not
    for step in range(1, 5):
        same = all(torch.equal(weights[step][n], weights[step - 1][n]) for n in weights[step])
        assert same == (step == 2), step
    assert all(torch.isfinite(tensor).all() for tensor in weights[-1].values())
    assert {float(state["step"]) for state in optimizer.state.values()} == {3.0}


# --------------------------------------------------------------------------- progress, stop, save


def test_progress_reports(tmp_path):
    reports = []
    result = train(
        tiny_model_config(), tiny_train_config(steps=7, log_every=3), on_progress=reports.append
    )
    assert [report.step for report in reports] == [3, 6, 7]
    assert [report.sequences for report in reports] == [12, 24, 28]
    assert [report.fraction for report in reports] == [3 / 7, 6 / 7, 1.0]
    assert all(report.steps == 7 for report in reports)
    seconds = [report.seconds for report in reports]
    assert seconds == sorted(seconds) and seconds[0] > 0
    # Each report averages its interval's steps.
    assert reports[0].loss == pytest.approx(sum(result.losses[:3]) / 3)
    assert reports[2].loss == pytest.approx(result.losses[6])
    assert reports[2].bits == pytest.approx(reports[2].loss / math.log(2))
    assert result.history == reports
    assert not result.stopped and result.step == 7 and result.checkpoint is None


def test_should_stop_saves_a_loadable_checkpoint_with_its_command(tmp_path):
    polls = []

    def stop_on_fourth_poll():
        polls.append(1)
        return len(polls) >= 4

    model_config = tiny_model_config()
    train_config = tiny_train_config(steps=50, out=str(tmp_path / "run"))
    result = train(model_config, train_config, should_stop=stop_on_fourth_poll)

    assert result.stopped and result.step == 3
    assert result.checkpoint == tmp_path / "run.safetensors"
    model = mann.load(tmp_path / "run")
    for name, tensor in parameters(result.model).items():
        assert torch.equal(tensor, model.state_dict()[name])
    metadata = checkpoint.read_metadata(tmp_path / "run")
    assert metadata["task"] == "copy"
    assert metadata["task_options"] == {"bits": 3, "min_length": 1, "max_length": 6}
    assert metadata["metrics"]["step"] == 3
    assert metadata["metrics"]["sequences"] == 12
    assert metadata["metrics"]["loss"] == pytest.approx(result.losses[-1])
    assert metadata["train_config"] == train_config.to_dict()
    # The stored command, given to the command line, asks for exactly this run.
    parsed = build_parser().parse_args(metadata["command"].split()[3:])
    assert configs_from_args(parsed) == (model_config, train_config)


def test_periodic_checkpoints(tmp_path):
    saved_steps = []
    real_save = checkpoint.save

    def remember_save(model, path, **metadata):
        saved_steps.append(metadata["metrics"]["step"])
        return real_save(model, path, **metadata)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "save", remember_save)
        config = tiny_train_config(steps=7, checkpoint_every=3, out=str(tmp_path / "r"))
        train(tiny_model_config(), config)
    assert saved_steps == [3, 6, 7]


# --------------------------------------------------------------------------- keep best


def test_keep_best_keeps_the_weights_that_validated_best(tmp_path, monkeypatch):
    # Checkpoints at steps 3, 6 and the end (8); validation scores them 3, 1, 2 errors.
    scores = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(train_module._Run, "validation_errors", lambda self: next(scores))
    weights_at = {}
    config = tiny_train_config(checkpoint_every=3, keep_best=True, out=str(tmp_path / "run"))
    original_save = checkpoint.save
    saved_steps = {}

    def save_and_note(model, path, **metadata):
        saved_steps.setdefault(Path(path).name, []).append(metadata["metrics"]["step"])
        if Path(path).name == "run-best":
            weights_at[metadata["metrics"]["step"]] = parameters(model)
        return original_save(model, path, **metadata)

    monkeypatch.setattr(checkpoint, "save", save_and_note)
    result = train(tiny_model_config(), config)

    assert saved_steps["run-best"] == [3, 6]  # step 8 scored worse than step 6
    best = mann.load(tmp_path / "run-best")
    for name, tensor in weights_at[6].items():
        assert torch.equal(tensor, best.state_dict()[name]), name
    metadata = checkpoint.read_metadata(tmp_path / "run-best")
    assert metadata["metrics"]["validation_bit_errors"] == 1.0
    assert metadata["metrics"]["step"] == 6
    assert "step 6" in metadata["selected"]
    assert "--keep-best" in metadata["command"]
    assert result.metrics["best"] == {"step": 6, "bit_errors": 1.0}
    # The final weights differ from the best ones: the run went on training.
    final = mann.load(tmp_path / "run")
    assert any(
        not torch.equal(final.state_dict()[name], tensor) for name, tensor in weights_at[6].items()
    )


def test_validation_leaves_the_training_run_unchanged(tmp_path):
    plain = train(tiny_model_config(), tiny_train_config(checkpoint_every=3))
    validated = train(
        tiny_model_config(),
        tiny_train_config(checkpoint_every=3, keep_best=True, out=str(tmp_path / "v")),
    )
    assert validated.losses == plain.losses
    scored = checkpoint.read_metadata(tmp_path / "v-best")["metrics"]
    # The score is the bit errors of the saved weights on the fixed validation sequences.
    batch = train_module.validation_batch(tiny_train_config(keep_best=True, out="v"))
    model = mann.load(tmp_path / "v-best")
    with torch.no_grad():
        logits, _ = model(batch.inputs)
    expected = float(mann.metrics.bit_errors(logits, batch.targets, batch.mask).mean())
    assert scored["validation_bit_errors"] == pytest.approx(expected, abs=1e-6)
    assert scored["validation_sequences"] == 500


def test_a_resumed_run_remembers_its_best(tmp_path):
    config = tiny_train_config(checkpoint_every=3, keep_best=True, out=str(tmp_path / "whole"))
    whole = train(tiny_model_config(), config)

    class Killed(Exception):
        pass

    def kill_at_step_7(progress):
        if progress.step == 7:
            raise Killed

    cut = tiny_train_config(checkpoint_every=3, keep_best=True, out=str(tmp_path / "cut"))
    with pytest.raises(Killed):
        train(tiny_model_config(), cut, on_progress=kill_at_step_7)
    resumed = train(tiny_model_config(), cut, resume=True)
    assert resumed.metrics["best"] == whole.metrics["best"]


def test_a_given_model_is_trained_in_place():
    model_config = tiny_model_config()
    torch.manual_seed(5)  # the seed of tiny_train_config, as train() seeds before building
    model = mann.build_model(model_config)
    given = train(model_config, tiny_train_config(steps=3), model=model)
    built = train(model_config, tiny_train_config(steps=3))
    assert given.model is model
    assert given.losses == built.losses
    with pytest.raises(ValueError, match="whose config is model_config"):
        train(tiny_model_config(hidden_size=14), tiny_train_config(), model=model)
    with pytest.raises(ValueError, match="not both"):
        train(model_config, tiny_train_config(out="x"), model=model, resume=True)


def test_sizes_must_match_the_task():
    with pytest.raises(ValueError, match=r"input_size=9 does not match task 'copy'.* 4 wide"):
        train(tiny_model_config(input_size=9), tiny_train_config())
    with pytest.raises(ValueError, match=r"output_size=5 does not match"):
        train(tiny_model_config(output_size=5), tiny_train_config())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"task": "sorting"}, "task must be one of"),
        ({"task_options": [1]}, "task_options must be a dict"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"lr": math.nan}, "lr must be a finite number > 0"),
        ({"optimizer": "sgd"}, r"optimizer must be one of \['rmsprop', 'adam'\], got 'sgd'"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
        ({"clip": -1.0}, "clip must be a finite number > 0 or None, got -1.0"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"curriculum": "random"}, "curriculum must be one of"),
        ({"curriculum_threshold": -0.5}, "curriculum_threshold must be a finite number >= 0"),
        ({"curriculum_window": 0}, "curriculum_window must be an integer >= 1"),
        ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1"),
        ({"log_every": True}, "log_every must be an integer >= 1, got True"),
        ({"out": 3}, "out must be a path"),
        ({"keep_best": True}, "keep_best=True needs out"),
        ({"keep_best": 1, "out": "x"}, "keep_best must be True or False"),
        ({"validation_size": 0}, "validation_size must be an integer >= 1, got 0"),
    ],
)
def test_bad_train_config_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_train_config(**changes).validate()


def test_bad_task_option_is_refused():
    with pytest.raises(ValueError, match="unknown option"):
        train(tiny_model_config(), tiny_train_config(task_options={"colour": 1}))


def test_train_config_round_trips_through_a_dict():
    config = tiny_train_config(clip=None, out="a/b")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['speed'\]"):
        TrainConfig.from_dict(dict(config.to_dict(), speed=2))


# --------------------------------------------------------------------------- curriculum


def curriculum(**changes) -> LengthCurriculum:
    config = TrainConfig(
        curriculum_start=3, curriculum_increment=2, curriculum_threshold=0.5,
        curriculum_window=4, **changes,
    )
    return LengthCurriculum(config, make_task("copy", min_length=2, max_length=10))


def test_length_curriculum_widens_when_the_window_is_under_the_threshold():
    schedule = curriculum()
    assert (schedule.min_length, schedule.max_length) == (2, 4)
    for errors in (3.0, 0.1, 0.1, 0.1):  # mean 0.825: not yet
        schedule.observe(errors)
    assert schedule.max_length == 4
    schedule.observe(0.1)  # the last four average 0.1
    assert schedule.max_length == 6
    for _ in range(3):  # a new window starts after a widening
        schedule.observe(0.0)
    assert schedule.max_length == 6
    schedule.observe(0.0)
    assert schedule.max_length == 8
    for _ in range(8):
        schedule.observe(0.0)
    assert schedule.max_length == 10  # capped at the task's range
    task = schedule.task(make_task("copy", min_length=2, max_length=10))
    assert (task.min_length, task.max_length) == (2, 10)


def test_length_curriculum_state_round_trips():
    schedule = curriculum()
    for errors in (0.0, 0.0, 0.0, 0.0, 1.0, 2.0):
        schedule.observe(errors)
    copy = curriculum()
    copy.load_state_dict(schedule.state_dict())
    assert copy.state_dict() == schedule.state_dict() == {"max_length": 6, "recent": [1.0, 2.0]}


def test_curriculum_samples_only_the_current_range():
    reports = []
    train(
        tiny_model_config(),
        tiny_train_config(steps=6, curriculum_threshold=0.0, task_options=dict(TASK_OPTIONS)),
        on_progress=reports.append,
    )
    # Threshold 0 is never beaten (errors are never negative): the range stays 1..1.
    assert {(report.min_length, report.max_length) for report in reports} == {(1, 1)}


# --------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_loss_falls_on_a_short_copy_run():
    # The recommended TrainConfig defaults on a small NTM: copy of 1..8 eight-bit vectors.
    model_config = mann.ModelConfig(
        arch="ntm", input_size=9, output_size=8, hidden_size=32, memory_size=16, word_size=8
    )
    train_config = TrainConfig(
        task="copy", task_options={"max_length": 8}, steps=400, seed=0, log_every=10
    )
    result = train(model_config, train_config)
    first, last = result.history[0], result.history[-1]
    assert last.loss < 0.1 * first.loss
    assert last.max_length > first.max_length  # the curriculum widened the range
    frame = generalisation(result.model, make_task("copy"), [4], sequences=200, seed=1)
    # Chance is 16 wrong bits per sequence of four 8-bit vectors.
    assert frame.loc[0, "mean_bit_errors"] < 1.0


# --------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_train_then_resume(tmp_path):
    out = str(tmp_path / "cli")
    trained = run_cli(
        "train", "--arch", "ntm", "--task", "copy", "--hidden-size", "12", "--memory-size", "8",
        "--word-size", "5", "--task-option", "bits=3", "--max-length", "4", "--steps", "6",
        "--batch-size", "4", "--log-every", "2", "--out", out,
    )
    assert trained.returncode == 0, trained.stderr
    assert "saved" in trained.stdout and "step 6" in trained.stdout
    assert "bit_errors=" in trained.stderr and "6/6" in trained.stderr  # the tqdm bar
    # Before the bar: the kernels' compile, said, so a fresh machine's wait is not a silent hang.
    assert trained.stderr.index("preparing the ntm kernels") < trained.stderr.index("6/6")
    metadata = checkpoint.read_metadata(out)
    assert metadata["config"]["hidden_size"] == 12
    assert metadata["task_options"]["bits"] == 3 and metadata["task_options"]["max_length"] == 4
    assert [row["step"] for row in read_csv(tmp_path / "cli.csv")] == ["2", "4", "6"]

    # --resume takes every option from the saved run; only --steps changes here.
    resumed = run_cli("train", "--out", out, "--resume", "--steps", "8", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "preparing" not in resumed.stderr
    assert checkpoint.read_metadata(out)["metrics"]["step"] == 8
    assert checkpoint.read_metadata(out)["config"]["hidden_size"] == 12


def test_cli_reports_bad_options_without_a_traceback(tmp_path):
    result = run_cli("train", "--arch", "ntm", "--lr", "-1", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "error: lr must be a finite number > 0, got -1.0" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("train", "--task", "copy", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "--arch is required" in result.stderr


def test_cli_length_options_map_to_the_task_fields():
    parsed = build_parser().parse_args(
        ["train", "--arch", "dnc", "--task", "associative_recall", "--min-length", "3",
         "--max-length", "4", "--out", "x"]
    )
    model_config, train_config = configs_from_args(parsed)
    assert train_config.task_options == {"min_items": 3, "max_items": 4}
    task = train_config.make_task()
    assert model_config.input_size == task.input_size
    assert model_config.output_size == task.output_size


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "interrupted"
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "mann", "train", "--arch", "ntm", "--hidden-size", "12",
         "--memory-size", "8", "--word-size", "5", "--task-option", "bits=3",
         "--steps", "100000", "--batch-size", "2", "--log-every", "1", "--quiet",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=REPO,
        # A shell's background job (nohup ... &) ignores SIGINT, and a child inherits that:
        # give it the terminal's Ctrl-C whatever started the tests.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        metrics = tmp_path / "interrupted.csv"
        deadline = time.monotonic() + 90  # a guard against hanging, not a measurement
        while not (metrics.exists() and len(read_csv(metrics)) >= 3):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "continue with:" in stdout and "--resume" in stdout
    step = checkpoint.read_metadata(out)["metrics"]["step"]
    assert step >= 3
    assert checkpoint.read_training_metadata(out)["training"]["step"] == step
    mann.load(out)


# --------------------------------------------------------------------------- init (fine-tuning)


def test_init_starts_from_the_checkpoints_weights_and_chains_its_command(tmp_path):
    first = train(tiny_model_config("dnc"), tiny_train_config(out=str(tmp_path / "first")))
    # A larger memory for longer sequences: the DNC has no N-sized parameter.
    config = tiny_model_config("dnc", memory_size=16)
    model = mann.build_model(config)
    train_module.load_initial_weights(model, tmp_path / "first")
    for name, tensor in parameters(first.model).items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)

    second = train(
        config,
        tiny_train_config(init=str(tmp_path / "first"), out=str(tmp_path / "second"), steps=1,
                          lr=1e-12),
    )  # fmt: skip
    # One step at a negligible rate: the weights are still the first run's.
    for name, tensor in parameters(first.model).items():
        torch.testing.assert_close(second.model.state_dict()[name], tensor, rtol=0, atol=1e-9)
    command = checkpoint.read_metadata(tmp_path / "second")["command"]
    made_first, made_second = command.split(" && ")
    assert made_first == first.command
    assert "--init" in made_second and "--memory-size 16" in made_second


def test_init_refuses_a_checkpoint_of_another_model(tmp_path):
    train(tiny_model_config("dnc"), tiny_train_config(out=str(tmp_path / "dnc")))
    with pytest.raises(ValueError, match=r"word_size 5 \(this run: 6\)"):
        train(tiny_model_config("dnc", word_size=6),
              tiny_train_config(init=str(tmp_path / "dnc"), steps=1))  # fmt: skip
    train(tiny_model_config("ntm"), tiny_train_config(out=str(tmp_path / "ntm")))
    with pytest.raises(ValueError, match=r"memory_size 8 \(this run: 16\)"):
        train(tiny_model_config("ntm", memory_size=16),
              tiny_train_config(init=str(tmp_path / "ntm"), steps=1))  # fmt: skip
    with pytest.raises(checkpoint.CheckpointError, match="missing"):
        train(tiny_model_config("ntm"), tiny_train_config(init=str(tmp_path / "nope"), steps=1))


def test_cli_init_takes_the_checkpoints_model_and_task(tmp_path):
    train(tiny_model_config("sam", sparse_reads=2), tiny_train_config(out=str(tmp_path / "sam")))
    parsed = build_parser().parse_args(
        ["train", "--init", str(tmp_path / "sam"), "--memory-size", "32", "--max-length", "9",
         "--out", str(tmp_path / "longer")]
    )  # fmt: skip
    model_config, train_config = configs_from_args(parsed)
    assert model_config == tiny_model_config("sam", sparse_reads=2, memory_size=32)
    assert train_config.task == "copy" and train_config.init == str(tmp_path / "sam")
    assert train_config.task_options == {**TASK_OPTIONS, "max_length": 9}
