"""mann.catalog: the shipped and untrained models, uploads, checkpoint names, kernel warm-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import mann
from mann.catalog import (
    checkpoint_name_error,
    describe,
    list_checkpoints,
    load_upload,
    task_of,
    untrained_model,
    warm_kernels,
)
from mann.checkpoint import CheckpointError
from mann.fused.runtime import HAVE_NUMBA
from mann.inputs import parse_lengths
from mann.tasks import make_task
from tests.helpers import tiny_config, tiny_model

torch.set_num_threads(1)

COPY = make_task("copy", bits=4, min_length=1, max_length=5)


def test_list_checkpoints_puts_shipped_ones_first_and_skips_training_states(tmp_path):
    for name in ("zeta", "dnc-copy", "alpha", "ntm-copy", "ntm-copy.train", ".hidden"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"x")
    (tmp_path / "notes.json").write_text("{}")
    assert list_checkpoints(tmp_path) == ["ntm-copy", "dnc-copy", "alpha", "zeta"]
    assert list_checkpoints(tmp_path / "missing") == []


def test_untrained_models_are_sized_for_the_task_and_repeatable():
    task = make_task("associative_recall")
    first = untrained_model("dnc", task, seed=3)
    second = untrained_model("dnc", task, seed=3)
    other = untrained_model("dnc", task, seed=4)
    assert (first.config.input_size, first.config.output_size) == (8, 6)
    weights = [dict(model.named_parameters())["output.weight"] for model in (first, second, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    with pytest.raises(ValueError, match="arch must be one of"):
        untrained_model("gru", task)


def test_load_upload_accepts_a_checkpoint_and_rejects_everything_else(tmp_path):
    torch.manual_seed(0)
    model = mann.build_model(tiny_config("dnc"))
    path = mann.save(model, tmp_path / "mine", task="copy", task_options={"bits": 4})
    data = path.read_bytes()
    loaded, metadata = load_upload("mine.safetensors", data)
    assert metadata["task_options"] == {"bits": 4}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    with pytest.raises(ValueError, match=r"at most 0 MB"):
        load_upload("mine.safetensors", data, max_bytes=100)
    with pytest.raises(ValueError, match="is not a checkpoint"):
        load_upload("mine.json", data)
    with pytest.raises(CheckpointError, match="mine.safetensors"):
        load_upload("mine.safetensors", b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated|corrupted"):
        load_upload("mine.safetensors", data[: len(data) // 2])


def test_task_of_reads_the_checkpoint_metadata():
    task = task_of({"task": "repeat_copy", "task_options": {"bits": 3, "max_repeats": 4}})
    assert task.name == "repeat_copy" and task.bits == 3 and task.max_repeats == 4
    assert task_of({}).name == "copy"


def test_parse_lengths_and_checkpoint_names():
    assert parse_lengths(" 20, 10,10 ;40") == [10, 20, 40]
    for text in ("", "10,abc", "0", "1000"):
        with pytest.raises(ValueError, match="lengths"):
            parse_lengths(text, maximum=200)
    assert checkpoint_name_error("my-ntm_2") is None
    assert "letters" in checkpoint_name_error("../etc/passwd")
    assert "empty" in checkpoint_name_error("")


@pytest.mark.skipif(not HAVE_NUMBA, reason="the kernels are numba's")
def test_warm_kernels_fills_numba_disk_cache_for_the_architectures_and_modes_asked(tmp_path):
    # A fresh cache directory stands for a fresh machine: what the warm-up compiles there is
    # what the app's pages then load instead of compiling.
    def warmed(modes: tuple[str, ...], cache) -> set[str]:
        code = ("import mann; from mann.catalog import warm_kernels; "
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
        warm_kernels([], ("evaluate", "serve"))


def test_describe_names_the_options_a_model_has_switched_on():
    plain = describe(tiny_model("dnc"))
    assert plain.startswith("DNC: memory 10×4") and "masked" not in plain
    improved = describe(tiny_model("dnc", masked_content=True, link_sharpness=True))
    assert improved.endswith(", masked content, link sharpness")
    assert describe(tiny_model("ntm", learned_memory=True)).endswith(
        ", 1 write head, learned initial memory"
    )
