"""Checkpoints: exact round trips, atomic writes, no pickle, and one clear error per bad file."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save as serialise_tensors

import mann
from mann import checkpoint
from mann.checkpoint import CheckpointError

torch.set_num_threads(1)


def available_archs() -> list[str]:
    """The architectures whose access module imports in this checkout (sam/sdnc land later)."""
    archs = []
    for arch in ("ntm", "dnc", "sam", "sdnc"):
        try:
            importlib.import_module(f"mann.access.{arch}")
        except ImportError:
            continue
        archs.append(arch)
    return archs


def tiny_config(arch: str = "ntm", **changes) -> mann.ModelConfig:
    values = dict(
        arch=arch, input_size=5, output_size=4, hidden_size=12, memory_size=10, word_size=6,
        read_heads=2, sparse_reads=3, temporal_reads=4,
    )
    values.update(changes)
    return mann.ModelConfig(**values)


def tiny_model(arch: str = "ntm", seed: int = 0, **changes) -> mann.MemoryAugmentedNetwork:
    torch.manual_seed(seed)
    return mann.build_model(tiny_config(arch, **changes))


def sample_inputs(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, 7, 5, generator=generator)


def write_raw(path, tensors: dict, metadata: dict) -> None:
    """A safetensors file with our header key but arbitrary (possibly wrong) content."""
    metadata = dict(metadata)
    data, _ = checkpoint._serialise(tensors, metadata)
    path.write_bytes(data)


def version_1(config: dict) -> dict:
    return {"format_version": 1, "config": config}


def model_tensors(model) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("arch", available_archs())
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    model = tiny_model(arch, seed=3)
    inputs = sample_inputs()
    written = mann.save(model, tmp_path / "model", task="copy", note="hello")
    loaded = mann.load(tmp_path / "model")

    assert written == tmp_path / "model.safetensors"
    assert loaded.config == model.config
    assert not loaded.training
    model.eval()
    with torch.no_grad():
        expected, _ = model(inputs)
        actual, _ = loaded(inputs)
    assert torch.equal(expected, actual)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


@pytest.mark.parametrize("suffix", ["", ".safetensors", ".json"])
def test_path_with_or_without_suffix_names_the_same_checkpoint(tmp_path, suffix):
    model = tiny_model()
    mann.save(model, str(tmp_path / "run") + suffix)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json", "run.safetensors"]
    for name in ("run", "run.json", "run.safetensors"):
        assert mann.load(tmp_path / name).config == model.config


def test_metadata_is_in_the_header_and_in_the_json_file(tmp_path):
    model = tiny_model("dnc")
    mann.save(
        model, tmp_path / "m", task="copy", task_options={"max_length": 5}, metrics={"loss": 0.5}
    )
    header = checkpoint.read_metadata(tmp_path / "m")
    beside = json.loads((tmp_path / "m.json").read_text())

    assert header == beside
    assert header["format_version"] == checkpoint.FORMAT_VERSION
    assert header["config"] == model.config.to_dict()
    assert header["task"] == "copy"
    assert header["task_options"] == {"max_length": 5}
    assert header["metrics"] == {"loss": 0.5}
    # The single .safetensors file is self-contained: without the JSON it still loads.
    (tmp_path / "m.json").unlink()
    assert mann.load(tmp_path / "m").config == model.config
    assert checkpoint.read_metadata(tmp_path / "m.safetensors")["task"] == "copy"


def test_saving_again_replaces_the_checkpoint(tmp_path):
    first, second = tiny_model(seed=1), tiny_model(seed=2)
    mann.save(first, tmp_path / "m")
    mann.save(second, tmp_path / "m")
    loaded = mann.load(tmp_path / "m")
    assert torch.equal(loaded.output.weight, second.output.weight)
    assert not torch.equal(loaded.output.weight, first.output.weight)


def test_save_creates_missing_directories(tmp_path):
    mann.save(tiny_model(), tmp_path / "a" / "b" / "m")
    assert (tmp_path / "a" / "b" / "m.safetensors").is_file()


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"task": object()}, "'task' must be JSON-serialisable"),
        ({"metrics": {"loss": float("nan")}}, "'metrics' must be JSON-serialisable"),
        ({"config": {}}, "'config' is written by save itself"),
        ({"format_version": 3}, "'format_version' is written by save itself"),
    ],
)
def test_save_rejects_bad_metadata(tmp_path, metadata, message):
    with pytest.raises(ValueError, match=message):
        mann.save(tiny_model(), tmp_path / "m", **metadata)
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="model must be a mann MemoryAugmentedNetwork"):
        mann.save(torch.nn.Linear(2, 2), tmp_path / "m")


# --------------------------------------------------------------------------- bad files


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.safetensors: file is missing"):
        mann.load(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="file is missing"):
        checkpoint.read_metadata(tmp_path / "nothing.json")


def test_checkpoint_error_is_a_value_error_with_the_path():
    error = CheckpointError("a/b.safetensors", "file is missing")
    assert isinstance(error, ValueError)
    assert str(error) == "checkpoint a/b.safetensors: file is missing"
    assert error.path.name == "b.safetensors"


@pytest.mark.parametrize("keep", [0, 5, 40, -1])
def test_truncated_checkpoint_is_reported(tmp_path, keep):
    mann.save(tiny_model(), tmp_path / "m")
    file = tmp_path / "m.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:keep] if keep >= 0 else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="m.safetensors: truncated"):
        mann.load(tmp_path / "m")


def test_flipped_weight_bit_is_found_by_the_checksum(tmp_path):
    mann.save(tiny_model(), tmp_path / "m")
    file = tmp_path / "m.safetensors"
    data = bytearray(file.read_bytes())
    data[-10] ^= 0x01  # inside the last tensor
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: the tensor bytes do not match"):
        mann.load(tmp_path / "m")


def test_garbage_header_is_corrupted(tmp_path):
    file = tmp_path / "m.safetensors"
    file.write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 16)
    with pytest.raises(CheckpointError, match="corrupted: its header is not valid JSON"):
        mann.load(file)
    file.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupted"):
        mann.load(file)


def test_safetensors_file_without_mann_metadata_is_refused(tmp_path):
    file = tmp_path / "other.safetensors"
    file.write_bytes(serialise_tensors({"weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="not a mann checkpoint"):
        mann.load(file)


def test_newer_format_version_is_refused(tmp_path):
    model = tiny_model()
    write_raw(
        tmp_path / "m.safetensors",
        model_tensors(model),
        {"format_version": checkpoint.FORMAT_VERSION + 1, "config": model.config.to_dict()},
    )
    with pytest.raises(CheckpointError, match="format_version 2 is newer than this mann reads"):
        mann.load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="newer"):
        checkpoint.read_metadata(tmp_path / "m")


def test_unknown_arch_is_refused(tmp_path):
    model = tiny_model()
    config = dict(model.config.to_dict(), arch="transformer")
    write_raw(tmp_path / "m.safetensors", model_tensors(model), version_1(config))
    with pytest.raises(CheckpointError, match="m.safetensors: unknown arch 'transformer'"):
        mann.load(tmp_path / "m")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": -3}, "bad config: hidden_size must be an integer >= 1"),
        ({"colour": "red"}, "bad config: unknown ModelConfig fields"),
        ({"shift_range": 2}, "bad config: shift_range must be odd"),
    ],
)
def test_bad_config_is_refused(tmp_path, change, message):
    model = tiny_model()
    config = dict(model.config.to_dict(), **change)
    write_raw(tmp_path / "m.safetensors", model_tensors(model), version_1(config))
    with pytest.raises(CheckpointError, match=message):
        mann.load(tmp_path / "m")


def test_arch_without_its_module_is_reported(tmp_path, monkeypatch):
    # As for sam/sdnc in a checkout that predates them: the config is valid, the module absent.
    mann.save(tiny_model(), tmp_path / "m")

    def module_missing(config):
        raise ModuleNotFoundError(f"No module named 'mann.access.{config.arch}'")

    monkeypatch.setattr(checkpoint, "build_model", module_missing)
    with pytest.raises(CheckpointError, match="m.safetensors: arch 'ntm' is not available"):
        mann.load(tmp_path / "m")


def test_wrong_shapes_are_listed(tmp_path):
    small = tiny_model(hidden_size=12)
    large = tiny_model(hidden_size=16)
    write_raw(
        tmp_path / "m.safetensors",
        model_tensors(small),
        {"format_version": 1, "config": large.config.to_dict()},
    )
    expected = r"output\.weight has shape \(4, 24\), the config needs \(4, 28\)"
    with pytest.raises(CheckpointError, match=expected):
        mann.load(tmp_path / "m")


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    model = tiny_model()
    tensors = model_tensors(model)
    del tensors["output.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    write_raw(tmp_path / "m.safetensors", tensors, version_1(model.config.to_dict()))
    with pytest.raises(CheckpointError) as caught:
        mann.load(tmp_path / "m")
    message = str(caught.value)
    assert "m.safetensors" in message
    assert "missing tensors output.bias" in message
    assert "unexpected tensors extra.weight" in message


def test_non_finite_weights_are_refused(tmp_path):
    model = tiny_model()
    tensors = model_tensors(model)
    tensors["output.bias"][0] = float("nan")
    write_raw(tmp_path / "m.safetensors", tensors, version_1(model.config.to_dict()))
    with pytest.raises(CheckpointError, match="output.bias holds NaN"):
        mann.load(tmp_path / "m")


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    old, new = tiny_model(seed=1), tiny_model(seed=2)
    mann.save(old, tmp_path / "m", version="old")
    before = sorted(path.name for path in tmp_path.iterdir())

    def interrupted_replace(source, target):
        raise failure

    monkeypatch.setattr(checkpoint.os, "replace", interrupted_replace)
    with pytest.raises(type(failure)):
        mann.save(new, tmp_path / "m", version="new")
    monkeypatch.undo()

    # No temporary file is left behind, and nothing else looks like a checkpoint.
    assert sorted(path.name for path in tmp_path.iterdir()) == before
    loaded = mann.load(tmp_path / "m")
    assert torch.equal(loaded.output.weight, old.output.weight)
    assert checkpoint.read_metadata(tmp_path / "m")["version"] == "old"


def test_temporary_file_is_never_taken_for_the_checkpoint(tmp_path, monkeypatch):
    # A kill between writing and renaming (simulated: the rename never happens) leaves at most
    # a hidden .tmp file, never a file with the checkpoint's name.
    mann.save(tiny_model(seed=1), tmp_path / "m")
    names = []
    monkeypatch.setattr(checkpoint.os, "replace", lambda source, target: names.append(source))
    mann.save(tiny_model(seed=2), tmp_path / "m")
    monkeypatch.undo()
    assert names, "save must write through a temporary file"
    for temporary in names:
        name = os.path.basename(temporary)
        assert name.startswith(".") and name.endswith(".tmp")
        assert checkpoint.checkpoint_stem(temporary).name == name  # not a checkpoint name
    loaded = mann.load(tmp_path / "m")
    assert torch.equal(loaded.output.weight, tiny_model(seed=1).output.weight)


# --------------------------------------------------------------------------- no pickle


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model = tiny_model("dnc")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(sample_inputs())[0].sum().backward()
    optimizer.step()
    mann.save(model, tmp_path / "m")
    checkpoint.save_training_state(
        tmp_path / "m", model, optimizer, {"torch": torch.get_rng_state()}, {"step": 1}
    )

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a checkpoint must not unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = mann.load(tmp_path / "m")
    checkpoint.read_metadata(tmp_path / "m")
    checkpoint.load_training_state(tmp_path / "m")
    assert torch.equal(loaded.output.weight, model.output.weight)


# --------------------------------------------------------------------------- training state


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.RMSprop])
def test_training_state_round_trip(tmp_path, optimizer_class):
    model = tiny_model("ntm", seed=4)
    options = {"lr": 0.01, "momentum": 0.5} if optimizer_class is torch.optim.RMSprop else {}
    optimizer = optimizer_class(model.parameters(), **options)
    for _ in range(2):
        optimizer.zero_grad()
        model(sample_inputs())[0].pow(2).mean().backward()
        optimizer.step()
    generator = torch.Generator().manual_seed(9)
    torch.rand(3, generator=generator)
    written = checkpoint.save_training_state(
        tmp_path / "run.safetensors", model, optimizer,
        {"torch": torch.get_rng_state(), "task": generator.get_state()},
        {"step": 2, "curriculum": {"max_length": 4}},
    )
    assert written == tmp_path / "run.train.safetensors"

    loaded, optimizer_state, random_states, state = checkpoint.load_training_state(tmp_path / "run")
    assert state == {"step": 2, "curriculum": {"max_length": 4}}
    assert loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    restored = optimizer_class(loaded.parameters(), **options)
    restored.load_state_dict(optimizer_state)
    expected = optimizer.state_dict()
    actual = restored.state_dict()
    assert actual["param_groups"] == expected["param_groups"]
    for index, values in expected["state"].items():
        for key, value in values.items():
            assert torch.equal(actual["state"][index][key], value), (index, key)
    restored_generator = torch.Generator()
    restored_generator.set_state(random_states["task"])
    assert torch.equal(
        torch.rand(5, generator=restored_generator), torch.rand(5, generator=generator)
    )


def test_missing_training_state_names_its_file(tmp_path):
    mann.save(tiny_model(), tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"m\.train\.safetensors: file is missing"):
        checkpoint.load_training_state(tmp_path / "m")


def test_file_names():
    assert checkpoint.weights_path("a/b.json").as_posix() == "a/b.safetensors"
    assert checkpoint.metadata_path("a/b.safetensors").as_posix() == "a/b.json"
    assert checkpoint.training_state_path("a/b").as_posix() == "a/b.train.safetensors"
    assert checkpoint.checkpoint_stem("a/b.train.safetensors").as_posix() == "a/b"
    assert checkpoint.checkpoint_stem("a/v1.2").as_posix() == "a/v1.2"


# ---------------------------------------------------------------------------------------
# Resizing the memory of a DNC, SAM or SDNC
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [a for a in available_archs() if a != "ntm"])
def test_resize_keeps_the_weights_and_says_how_it_was_made(tmp_path, arch):
    model = tiny_model(arch)
    checkpoint.save(model, tmp_path / "small", task="copy", command="python -m mann train x",
                    metrics={"step": 3})  # fmt: skip
    target = checkpoint.resize(tmp_path / "small", 24, tmp_path / "large")
    assert target == tmp_path / "large.safetensors"
    resized = mann.load(tmp_path / "large")
    assert resized.config.memory_size == 24
    assert resized.config.to_dict() == {**model.config.to_dict(), "memory_size": 24}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resized.state_dict()[name]), name
    metadata = checkpoint.read_metadata(tmp_path / "large")
    assert metadata["resized_from"] == {"memory_size": 10}
    assert metadata["task"] == "copy" and metadata["metrics"] == {"step": 3}
    assert metadata["command"] == (
        f"python -m mann train x && python -m mann resize {tmp_path / 'small'} "
        f"--memory-size 24 --out {tmp_path / 'large'}"
    )
    logits, state = resized(sample_inputs())  # it runs, with the larger memory
    assert torch.isfinite(logits).all() and state.access.memory.shape[1] == 24


def test_resize_gives_an_ntm_more_slots_and_keeps_its_initial_weighting(tmp_path):
    model = tiny_model("ntm")
    checkpoint.save(model, tmp_path / "small")
    checkpoint.resize(tmp_path / "small", 32, tmp_path / "large")
    resized = mann.load(tmp_path / "large")
    before = model.access.initial_state(1).read_weights[0].detach()
    after = resized.access.initial_state(1).read_weights[0].detach()
    assert after.shape[-1] == 32
    torch.testing.assert_close(after[:, : before.shape[-1]], before, rtol=1e-12, atol=1e-15)
    assert float(after[:, before.shape[-1] :].max()) < 1e-15  # the new slots start unweighted
    for name, tensor in model.state_dict().items():  # every other weight as it was
        if name != "access.initial_weight_logits":
            assert torch.equal(tensor, resized.state_dict()[name]), name
    logits, state = resized(sample_inputs())
    assert torch.isfinite(logits).all() and state.access.memory.shape[1] == 32


def test_resize_refuses_a_model_without_memory_and_impossible_sizes(tmp_path):
    lstm = mann.build_model(mann.ModelConfig(arch="lstm", input_size=5, output_size=4,
                                             hidden_size=8))  # fmt: skip
    checkpoint.save(lstm, tmp_path / "lstm")
    with pytest.raises(ValueError, match="cannot resize an 'lstm' model: it has no memory"):
        checkpoint.resize(tmp_path / "lstm", 20, tmp_path / "out")
    if "sdnc" in available_archs():
        checkpoint.save(tiny_model("sdnc"), tmp_path / "sdnc")
        with pytest.raises(ValueError, match="sparse_reads must be at most memory_size=2"):
            checkpoint.resize(tmp_path / "sdnc", 2, tmp_path / "out")
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.resize(tmp_path / "absent", 20, tmp_path / "out")
    assert not list(tmp_path.glob("out*"))


def test_resize_from_the_command_line(tmp_path, capsys):
    from mann.__main__ import main

    checkpoint.save(tiny_model("dnc"), tmp_path / "small")
    arguments = ["resize", str(tmp_path / "small"), "--memory-size", "16", "--out"]
    assert main([*arguments, str(tmp_path / "large")]) == 0
    assert "memory_size 16" in capsys.readouterr().out
    assert mann.load(tmp_path / "large").config.memory_size == 16
    assert main(["resize", str(tmp_path / "small"), "--memory-size", "0", "--out", "x"]) == 2
    assert "memory_size must be an integer >= 1, got 0" in capsys.readouterr().err


def test_save_without_overwrite_never_replaces_a_checkpoint(tmp_path):
    first, second = tiny_model("dnc", seed=1), tiny_model("dnc", seed=2)
    checkpoint.save(first, tmp_path / "kept", note="first")
    before = (tmp_path / "kept.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="kept.safetensors exists; it is not replaced"):
        checkpoint.save(second, tmp_path / "kept", overwrite=False, note="second")
    assert (tmp_path / "kept.safetensors").read_bytes() == before
    assert checkpoint.read_metadata(tmp_path / "kept")["note"] == "first"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    checkpoint.save(second, tmp_path / "new", overwrite=False)  # a free name is fine
    checkpoint.save(second, tmp_path / "kept", note="third")  # the library default replaces
    assert checkpoint.read_metadata(tmp_path / "kept")["note"] == "third"
