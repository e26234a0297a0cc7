"""Training on several processes: torchrun starts two CPU processes (gloo, one thread each).

Every rank ends with the same parameters, equal to those of one process trained on the ranks'
batches concatenated; a resumed run of two processes continues the same loss curve; a rank
that dies ends the run and leaves the last checkpoint whole; a resume with another number of
processes is refused. The CUDA tests need a GPU (two for NCCL) and skip without.

This file is also the worker torchrun runs (``python tests/test_distributed.py ARGS``): it
calls ``mann.__main__.main(ARGS)`` after installing what the tests ask for through two
variables that only this file reads: ``MANN_TEST_DUMP`` (a directory where each rank writes
its final parameters and the statistics its curriculum observed) and ``MANN_TEST_FAULT``
(``RANK:STEP:kill`` or ``RANK:STEP:raise``: that rank dies by SIGKILL, or raises, as it
starts that step).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mann
from mann import checkpoint
from mann.distributed import batch_seed
from mann.metrics import bit_errors, masked_bce
from mann.tasks.base import Batch
from mann.train import LengthCurriculum, TrainConfig, train

# Every test here starts processes (about 5 s per torchrun on two busy cores).
pytestmark = pytest.mark.slow
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
DUMP_VARIABLE = "MANN_TEST_DUMP"
FAULT_VARIABLE = "MANN_TEST_FAULT"
WORLD_SIZE = 2
STEPS = 6
# A small copy task whose curriculum widens every two steps, so its state changes mid-run.
MODEL_FLAGS = ["--hidden-size", "12", "--memory-size", "8", "--word-size", "5"]
TASK_FLAGS = [
    "--task", "copy", "--task-option", "bits=3", "--min-length", "1", "--max-length", "6",
    "--batch-size", "4", "--seed", "5", "--lr", "0.01", "--curriculum-start", "1",
    "--curriculum-increment", "1", "--curriculum-threshold", "1e9", "--curriculum-window", "2",
    "--log-every", "1", "--checkpoint-every", "3", "--quiet",
]  # fmt: skip


def train_flags(arch: str, out: Path, steps: int = STEPS) -> list[str]:
    return ["train", "--arch", arch, *MODEL_FLAGS, *TASK_FLAGS, "--steps", str(steps),
            "--out", str(out)]  # fmt: skip


def torchrun(*arguments: str, environment: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGUMENTS`` (a free port, one thread each)."""
    variables = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(environment or {}))
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(WORLD_SIZE), *arguments],
        capture_output=True, text=True, timeout=300, env=variables, cwd=REPO,
    )  # fmt: skip


def worker(*arguments: str, environment: dict | None = None) -> subprocess.CompletedProcess:
    """torchrun running this file as the worker: ``main(ARGUMENTS)`` per process."""
    return torchrun(__file__, "--threads", "1", *arguments, environment=environment)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two-process runs of an NTM and a DNC (every rank's parameters and curriculum
    statistics dumped), and the NTM's run stopped at step 3, for the resume test."""
    directory = tmp_path_factory.mktemp("ddp")
    for arch in ("ntm", "dnc"):
        (directory / arch).mkdir()
        done = worker(
            *train_flags(arch, directory / arch / "run"),
            environment={DUMP_VARIABLE: str(directory / arch)},
        )
        assert done.returncode == 0, done.stderr
    done = torchrun("-m", "mann", "--threads", "1", *train_flags("ntm", directory / "cut", 3))
    assert done.returncode == 0, done.stderr
    return directory


# --------------------------------------------------------------------------- the reference


def concatenated(batches: list[Batch]) -> Batch:
    """The ranks' batches as one, the shorter padded at the end (unscored steps: the models
    are causal, so padding after a sequence changes none of its scored outputs)."""
    steps = max(batch.inputs.shape[1] for batch in batches)

    def padded(tensor: torch.Tensor) -> torch.Tensor:
        missing = steps - tensor.shape[1]
        return torch.nn.functional.pad(tensor, (0, 0) * (tensor.dim() - 2) + (0, missing))

    return Batch(*(torch.cat([padded(getattr(b, name)) for b in batches])
                   for name in Batch._fields))  # fmt: skip


def one_process_on_the_ranks_batches(model_config, train_config: TrainConfig):
    """One model trained by hand on every rank's batches at once: the generators each rank
    draws from, one Adam step per step on the mean loss of all sequences, the gradient norm
    clipped, the curriculum fed the mean bit errors of all sequences. Returns (model, the
    statistics the curriculum observed)."""
    torch.manual_seed(train_config.seed)
    model = mann.build_model(model_config)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train_config.lr, betas=(train_config.momentum, 0.999)
    )
    task = train_config.make_task()
    curriculum = LengthCurriculum(train_config, task)
    generators = [torch.Generator().manual_seed(batch_seed(train_config.seed, rank))
                  for rank in range(WORLD_SIZE)]  # fmt: skip
    observed = []
    for _ in range(train_config.steps):
        ranks_task = curriculum.task(task)
        batch = concatenated([ranks_task.sample(train_config.batch_size, g) for g in generators])
        optimizer.zero_grad()
        logits, _ = model(batch.inputs)
        masked_bce(logits, batch.targets, batch.mask).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.clip)
        optimizer.step()
        errors = float(bit_errors(logits.detach(), batch.targets, batch.mask).mean())
        observed.append(errors)
        curriculum.observe(errors)
    return model, observed


def saved_configs(out: Path):
    metadata = checkpoint.read_training_metadata(out)["training"]
    return (
        mann.ModelConfig.from_dict(metadata["model_config"]),
        TrainConfig.from_dict(metadata["train_config"]),
    )


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_every_rank_holds_the_same_parameters_as_the_checkpoint(runs, arch):
    ranks = [load_file(runs / arch / f"rank{rank}.safetensors") for rank in range(WORLD_SIZE)]
    saved = mann.load(runs / arch / "run").state_dict()
    assert set(ranks[0]) == set(saved)
    for name, tensor in saved.items():
        for rank in range(WORLD_SIZE):
            assert torch.equal(ranks[rank][name], tensor), (rank, name)
    # ... and the curriculum of every rank saw the same statistic at every step.
    statistics = [json.loads((runs / arch / f"rank{rank}.json").read_text())
                  for rank in range(WORLD_SIZE)]  # fmt: skip
    assert len(statistics[0]) == STEPS
    assert statistics[1] == statistics[0]


@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_two_processes_train_as_one_on_their_batches_concatenated(runs, arch):
    model_config, train_config = saved_configs(runs / arch / "run")
    model, observed = one_process_on_the_ranks_batches(model_config, train_config)
    trained = mann.load(runs / arch / "run").state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((runs / arch / "rank0.json").read_text()) == pytest.approx(observed)
    # The checkpoint records the world size; the metrics count every rank's sequences.
    metadata = checkpoint.read_metadata(runs / arch / "run")
    assert metadata["world_size"] == WORLD_SIZE
    assert metadata["metrics"]["sequences"] == STEPS * WORLD_SIZE * train_config.batch_size
    assert metadata["command"].startswith(f"torchrun --nproc-per-node {WORLD_SIZE} -m mann train")
    rows = read_csv(runs / arch / "run.csv")
    assert [int(row["sequences"]) for row in rows] == [
        step * WORLD_SIZE * train_config.batch_size for step in range(1, STEPS + 1)
    ]


def test_a_resumed_run_of_two_processes_continues_the_same_loss_curve(runs):
    cut = runs / "cut"
    assert checkpoint.read_metadata(cut)["metrics"]["step"] == 3
    resumed = torchrun("-m", "mann", "--threads", "1", "train", "--out", str(cut), "--resume",
                       "--steps", str(STEPS), "--quiet")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    whole_rows, cut_rows = read_csv(runs / "ntm" / "run.csv"), read_csv(runs / "cut.csv")
    assert [row["step"] for row in cut_rows] == [str(step) for step in range(1, STEPS + 1)]
    for expected, actual in zip(whole_rows, cut_rows, strict=True):
        for column in ("step", "sequences", "loss", "bits", "bit_errors", "max_length"):
            assert expected[column] == actual[column], (expected["step"], column)
    whole = mann.load(runs / "ntm" / "run").state_dict()
    for name, tensor in mann.load(cut).state_dict().items():
        assert torch.equal(tensor, whole[name]), name


def test_a_resume_with_another_world_size_is_refused(runs, capsys):
    model_config, train_config = saved_configs(runs / "ntm" / "run")
    with pytest.raises(ValueError, match=r"with world_size 1: it was trained with world_size 2"):
        train(model_config, train_config, resume=True)
    from mann.__main__ import main

    assert main(["train", "--out", str(runs / "ntm" / "run"), "--resume", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "world_size 2" in error and "torchrun --nproc-per-node 2" in error
    assert "Traceback" not in error


@pytest.mark.parametrize("fault", ["kill", "raise"])
def test_a_rank_that_dies_ends_the_run_and_leaves_the_last_checkpoint(tmp_path, fault):
    out = tmp_path / "run"
    # Checkpoints at steps 2 and 4; rank 1 dies as it starts step 5.
    flags = train_flags("ntm", out, steps=50)
    flags[flags.index("--checkpoint-every") + 1] = "2"
    died = worker(*flags, environment={FAULT_VARIABLE: f"1:5:{fault}"})
    assert died.returncode != 0
    # torchrun's summary names the rank that failed first, and how; rank 0 says that the run
    # ended, which checkpoint is left and how to resume it.
    assert "rank: 1" in died.stderr, died.stderr
    assert ("Signal 9" in died.stderr) if fault == "kill" else ("injected fault" in died.stderr)
    resume = f"torchrun --nproc-per-node {WORLD_SIZE} -m mann train --out {out} --resume"
    assert f"error (rank 0 of {WORLD_SIZE}): the run ended: " in died.stderr, died.stderr
    assert f"The last checkpoint, {out} at step 4, is whole; continue with: {resume}" in (
        died.stderr
    )
    # The last checkpoint and the training state are whole, of the same step, and resumable.
    assert checkpoint.read_metadata(out)["metrics"]["step"] == 4
    model, _, random_states, state = checkpoint.load_training_state(out)
    assert state["step"] == 4 and state["world_size"] == WORLD_SIZE
    assert {"task", "task.rank1", "torch", "torch.rank1"} <= set(random_states)
    saved = mann.load(out).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert [row["step"] for row in read_csv(tmp_path / "run.csv")][-1] in {"4", "5"}


@pytest.mark.skipif(torch.cuda.device_count() < WORLD_SIZE, reason="needs two CUDA GPUs")
def test_two_gpus_train_as_one_process_on_their_batches_concatenated(tmp_path):
    out = tmp_path / "run"
    done = torchrun("-m", "mann", "train", "--device", "cuda", *train_flags("dnc", out)[1:])
    assert done.returncode == 0, done.stderr
    assert checkpoint.read_metadata(out)["device"] == "cuda"
    model_config, train_config = saved_configs(out)
    model, _ = one_process_on_the_ranks_batches(model_config, train_config)
    trained = mann.load(out).state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-3, atol=1e-4, msg=name)


# --------------------------------------------------------------------------- the worker


def _install_test_hooks() -> None:
    """What MANN_TEST_DUMP and MANN_TEST_FAULT ask for (see the module docstring)."""
    import mann.__main__ as command_line
    import mann.train as train_module

    rank = int(os.environ["RANK"])
    dump = os.environ.get(DUMP_VARIABLE)
    if dump:
        observed = []
        real_observe = train_module.LengthCurriculum.observe
        real_train = command_line.train

        def observe_and_note(self, mean_bit_errors):
            observed.append(mean_bit_errors)
            return real_observe(self, mean_bit_errors)

        def train_and_dump(*arguments, **options):
            result = real_train(*arguments, **options)
            tensors = {name: tensor.detach().clone().contiguous()
                       for name, tensor in result.model.state_dict().items()}  # fmt: skip
            save_file(tensors, str(Path(dump) / f"rank{rank}.safetensors"))
            (Path(dump) / f"rank{rank}.json").write_text(json.dumps(observed))
            return result

        train_module.LengthCurriculum.observe = observe_and_note
        command_line.train = train_and_dump
    fault = os.environ.get(FAULT_VARIABLE)
    if fault:
        fault_rank, fault_step, kind = fault.split(":")
        real_step = train_module._Run.train_step

        def step_or_fail(self, *arguments):
            if rank == int(fault_rank) and self.step + 1 == int(fault_step):
                if kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected fault on rank {rank} at step {fault_step}")
            return real_step(self, *arguments)

        train_module._Run.train_step = step_or_fail


if __name__ == "__main__":
    from mann.__main__ import main

    _install_test_hooks()
    sys.exit(main(sys.argv[1:]))
