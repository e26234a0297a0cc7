"""Generalisation tables: scores computed right, reproducible, and the evaluate command."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mann
from mann.evaluate import COLUMNS, generalisation, generalisation_frame, markdown_table
from mann.tasks import make_task
from tests.helpers import tiny_config, tiny_model

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def always_one(model, logit: float = 3.0):
    """Make the model answer probability sigmoid(logit) > 0.5 for every bit, whatever it reads."""
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.fill_(logit)
    return model


def test_scores_equal_an_independent_count():
    # A model that always answers 1 gets wrong exactly the target bits that are 0.
    task = make_task("copy", bits=4)
    model = always_one(tiny_model())
    frame = generalisation(model, task, [3, 5], sequences=30, seed=7, batch_size=8)

    for row, length in zip(frame.itertuples(), [3, 5], strict=True):
        generator = torch.Generator().manual_seed(7)
        zeros, costs = [], []
        for count in (8, 8, 8, 6):  # the same batches generalisation draws
            batch = task.with_lengths(length, length).sample(count, generator)
            scored = batch.mask.unsqueeze(-1).expand_as(batch.targets) > 0
            for item in range(count):
                targets = batch.targets[item][scored[item]]
                zeros.append(int((targets == 0).sum()))
                # BCE of logit 3 against each target bit, in bits.
                per_bit = F.softplus(torch.where(targets > 0, -3.0, 3.0))
                costs.append(float(per_bit.sum()) / math.log(2))
        assert row.length == length and row.sequences == 30
        assert row.mean_bit_errors == pytest.approx(sum(zeros) / 30)
        assert row.max_bit_errors == max(zeros)
        assert row.perfect_fraction == pytest.approx(sum(z == 0 for z in zeros) / 30)
        assert row.cost_bits == pytest.approx(sum(costs) / 30, rel=1e-5)
    # About half of the 4 * length scored bits are 0.
    assert frame.loc[1, "mean_bit_errors"] == pytest.approx(10, abs=2)


def test_each_length_is_independent_of_the_others():
    task = make_task("copy", bits=4)
    model = tiny_model()
    both = generalisation(model, task, [6, 2], sequences=20, seed=3)
    alone = generalisation(model, task, [2], sequences=20, seed=3)
    assert list(both["length"]) == [6, 2]
    assert both.iloc[1].equals(alone.iloc[0])


def test_seed_decides_the_sequences():
    task = make_task("copy", bits=4)
    model = tiny_model()
    first = generalisation(model, task, [8], sequences=40, seed=1)
    again = generalisation(model, task, [8], sequences=40, seed=1)
    other = generalisation(model, task, [8], sequences=40, seed=2)
    assert first.equals(again)
    assert first.loc[0, "cost_bits"] != other.loc[0, "cost_bits"]


def test_model_mode_and_gradients_are_left_alone():
    model = tiny_model("dnc")
    model.train()
    generalisation(model, make_task("copy", bits=4), [2], sequences=4)
    assert model.training
    assert all(parameter.grad is None for parameter in model.parameters())


def test_lengths_are_what_the_task_calls_length():
    # For associative recall the "length" is the number of items.
    task = make_task("associative_recall", bits=3, item_length=2)
    model = tiny_model(task=task)
    frame = generalisation(model, task, [2, 5], sequences=5)
    assert list(frame.columns) == list(COLUMNS)
    assert list(frame["length"]) == [2, 5]
    assert ((frame["perfect_fraction"] >= 0) & (frame["perfect_fraction"] <= 1)).all()


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"lengths": []}, "lengths must name at least one length"),
        ({"lengths": [3, 0]}, "lengths must be integers >= 1, got 0"),
        ({"lengths": [2.5]}, "lengths must be integers >= 1, got 2.5"),
        ({"sequences": 0}, "sequences must be an integer >= 1, got 0"),
        ({"batch_size": -1}, "batch_size must be an integer >= 1, got -1"),
        ({"seed": -2}, "seed must be an integer >= 0, got -2"),
    ],
)
def test_bad_arguments_are_refused(arguments, message):
    values = dict(lengths=[2], sequences=4)
    values.update(arguments)
    with pytest.raises(ValueError, match=message):
        generalisation(tiny_model(), make_task("copy", bits=4), **values)


def test_sizes_must_match_the_task():
    with pytest.raises(ValueError, match=r"does not fit task 'copy' \(inputs 9"):
        generalisation(tiny_model(), make_task("copy"), [2])


def test_markdown_table():
    frame = generalisation(always_one(tiny_model()), make_task("copy", bits=4), [2], sequences=5)
    lines = markdown_table(frame).splitlines()
    assert lines[0].startswith("| length | sequences | bit errors / sequence |")
    assert lines[1].startswith("|---:|")
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[:3] == ["2", "5", f"{frame.loc[0, 'mean_bit_errors']:.3f}"]


# --------------------------------------------------------------------------- command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "mann", *args], capture_output=True, text=True, timeout=120,
        env=environment, cwd=REPO,
    )


@pytest.mark.slow
def test_cli_train_then_evaluate(tmp_path):
    out = str(tmp_path / "tiny")
    trained = run_cli(
        "train", "--arch", "dnc", "--task", "copy", "--hidden-size", "10", "--memory-size",
        "12", "--word-size", "4", "--task-option", "bits=4", "--max-length", "3", "--steps",
        "3", "--quiet", "--out", out,
    )
    assert trained.returncode == 0, trained.stderr

    evaluated = run_cli("evaluate", out, "--lengths", "2,5", "--sequences", "30", "--seed", "4")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "dnc on copy (trained on lengths 1-3)" in evaluated.stdout
    rows = [line for line in evaluated.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| length |")
    # The table holds what generalisation computes for the stored model and task.
    expected = generalisation(mann.load(out), make_task("copy", bits=4, max_length=3),
                              [2, 5], sequences=30, seed=4)
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["2", "5"]
    for line, mean in zip(rows[1:], expected["mean_bit_errors"], strict=True):
        assert line.split("|")[3].strip() == f"{mean:.3f}"


def test_cli_evaluate_reports_a_bad_checkpoint(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    result = run_cli("evaluate", str(tmp_path / "broken"), "--lengths", "2")
    assert result.returncode == 2
    assert "broken.safetensors" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("evaluate", str(tmp_path / "broken"), "--lengths", "2,x")
    assert result.returncode == 2 and "comma-separated integers" in result.stderr


def test_generalisation_frame_stacks_models():
    torch.manual_seed(0)
    models = {"a": mann.build_model(tiny_config("ntm")), "b": mann.build_model(tiny_config("dnc"))}
    copy = make_task("copy", bits=4, max_length=5)
    frame = generalisation_frame(models, copy, [2, 4], sequences=10, seed=0)
    assert list(frame["model"]) == ["a", "a", "b", "b"]
    assert list(frame["length"]) == [2, 4, 2, 4]
    assert (frame["mean_bit_errors"] >= 0).all()
    with pytest.raises(ValueError, match="does not fit task"):
        generalisation_frame(models, make_task("associative_recall"), [2])


def test_the_optimal_cost_is_the_tasks_predictor_on_the_same_sequences():
    from mann.tasks.ngrams import optimal_cost_bits

    ngrams = make_task("ngrams", min_length=30, max_length=30)
    model = tiny_model("lstm", task=ngrams)
    frame = generalisation(model, ngrams, [30], sequences=7, seed=4, batch_size=3)
    generator = torch.Generator().manual_seed(4)
    fixed = ngrams.with_lengths(30, 30)
    expected = torch.cat([optimal_cost_bits(fixed.sample(count, generator)) for count in (3, 3, 1)])
    assert frame["optimal_cost_bits"].iloc[0] == pytest.approx(float(expected.mean()))
    assert "optimal cost (bits)" in markdown_table(frame)
    copy = generalisation(tiny_model(), make_task("copy", bits=4), [2], sequences=3)
    assert math.isnan(copy["optimal_cost_bits"].iloc[0])
    assert "optimal" not in markdown_table(copy)
