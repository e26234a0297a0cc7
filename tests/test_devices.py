"""Devices (mann.devices): the names --device, mann.load and train take; a model anywhere but
the CPU runs the pure-torch reference there (the fused kernels take CPU tensors only); SAM's
and SDNC's index follows the memory. The CUDA tests need a GPU and skip without one; the rest
run on the CPU, and those about a missing GPU skip where there is one."""

from __future__ import annotations

import copy

import pytest
import torch

import mann
from mann import checkpoint
from mann.__main__ import main
from mann.access import index as knn
from mann.backends import BackendError
from mann.devices import device_of, resolve_device
from mann.evaluate import generalisation
from mann.model import ARCHITECTURES, IMPROVEMENTS
from mann.tasks import make_task
from mann.train import TrainConfig, train
from tests.helpers import tiny_config, tiny_model

torch.set_num_threads(1)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
without_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="about a machine without GPU")
TASK = make_task("copy", bits=4, max_length=4)


def random_inputs(batch: int = 3, steps: int = 7, width: int = 5, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (batch, steps, width), generator=generator).float()


def outputs_and_gradients(model, inputs: torch.Tensor):
    """(logits, final state, every parameter's gradient by name) of one forward and backward."""
    model.zero_grad()
    logits, state = model(inputs)
    (logits * torch.linspace(-1, 1, logits.shape[-1], device=logits.device)).sum().backward()
    gradients = {name: p.grad.detach().cpu() for name, p in model.named_parameters()}
    return logits.detach().cpu(), state, gradients


def tiny_train_config(**changes) -> TrainConfig:
    values = dict(task="copy", task_options={"bits": 4, "max_length": 4}, steps=4, batch_size=3,
                  seed=2, log_every=1, checkpoint_every=100)  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


# --------------------------------------------------------------------------- names


def test_device_names():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("tpu", "mps", "gpu", "", "cuda:x"):
        with pytest.raises(ValueError, match="device must be cpu, cuda, cuda:N or auto"):
            resolve_device(name)
    with pytest.raises(ValueError, match="cuda:99 is not available"):
        resolve_device("cuda:99")


@without_gpu
def test_cuda_without_a_gpu_is_refused_with_what_to_use_instead(tmp_path, capsys):
    with pytest.raises(ValueError, match="sees no CUDA GPU here; use cpu, or auto"):
        resolve_device("cuda")
    mann.save(tiny_model("dnc", TASK), tmp_path / "tiny", task="copy", task_options={})
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        mann.load(tmp_path / "tiny", device="cuda")
    for command in (
        ["evaluate", str(tmp_path / "tiny"), "--lengths", "2", "--sequences", "4"],
        ["train", "--arch", "ntm", "--steps", "1", "--quiet", "--out", str(tmp_path / "run")],
    ):
        assert main([*command, "--device", "cuda"]) == 2
        error = capsys.readouterr().err
        assert "--device cuda: cuda is not available" in error and "Traceback" not in error
    assert not (tmp_path / "run.safetensors").exists()


def test_load_puts_the_model_on_the_device(tmp_path):
    model = tiny_model("dnc", TASK)
    mann.save(model, tmp_path / "tiny")
    for name in ("cpu", "auto"):
        loaded = mann.load(tmp_path / "tiny", device=name)
        assert device_of(loaded) == resolve_device(name)
        assert {p.device for p in loaded.parameters()} == {resolve_device(name)}
        assert not loaded.training
        for key, tensor in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key].cpu(), tensor), key
    with pytest.raises(ValueError, match="device must be"):
        mann.load(tmp_path / "tiny", device="tpu")


def test_a_run_of_one_process_records_its_world_and_device(tmp_path):
    config = tiny_config("ntm", TASK)
    result = train(config, tiny_train_config(out=str(tmp_path / "run")), device="cpu")
    metadata = checkpoint.read_metadata(tmp_path / "run")
    assert metadata["world_size"] == 1 and metadata["device"] == "cpu"
    assert checkpoint.read_training_metadata(tmp_path / "run")["training"]["world_size"] == 1
    # The command that reproduces it is the plain one: no launcher, no --device.
    assert result.command.startswith("python -m mann train --arch ntm")
    assert "--device" not in result.command


# --------------------------------------------------------------------------- off the CPU


@pytest.mark.parametrize(
    "arch, changes",
    [("ntm", {}), ("ntm", {"controller": "gru"}), ("dnc", {}),
     ("dnc", {"controller": "feedforward"}), ("dnc", {name: True for name in IMPROVEMENTS}),
     ("lstm", {})],
)  # fmt: skip
def test_off_the_cpu_a_model_runs_the_reference_and_makes_its_tensors_there(arch, changes):
    """On PyTorch's meta device (shapes, no values) an elementwise operation between a meta
    tensor and a CPU tensor made on the way fails, as it would on a GPU: so this checks that
    the dispatch leaves the kernels and that the reference makes its tensors on the inputs'
    device, without a GPU. (A matrix product with a CPU operand passes on meta: no full
    substitute for the CUDA tests below. SAM and SDNC read values, to search their index,
    and cannot run on meta.)"""
    model = tiny_model(arch, **changes)
    inputs = random_inputs()
    if arch != "lstm" and not changes.get("masked_content"):
        assert mann.backend_for(model, inputs) == "fused"  # on the CPU
    model = model.to("meta")
    inputs = inputs.to("meta")
    assert mann.backend_for(model, inputs) == "reference"
    if arch != "lstm" and not changes.get("masked_content"):
        with mann.backend("fused"), pytest.raises(BackendError, match="CPU float32"):
            model(inputs)
    logits, state = model(inputs)
    assert logits.device.type == "meta" and logits.shape == (3, 7, 4)
    assert all(tensor.device.type == "meta" for tensor in state.controller)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())


def test_the_index_follows_the_memory_off_the_cpu():
    # "auto" searches by torch where the memory is; a faiss index named works on a CPU copy.
    for slots in (100, knn.EXACT_LIMIT + 1):
        assert knn.resolve_index_kind("auto", slots, torch.float32, "cuda") == "exact"
        assert knn.resolve_index_kind("auto", slots, torch.float32, "cuda:1") == "exact"
    if knn.faiss is not None:
        for kind in ("faiss-exact", "faiss-ivf"):
            assert knn.resolve_index_kind(kind, 100, torch.float32, "cuda") == kind
        with pytest.raises(ValueError, match="it needs float32"):
            knn.resolve_index_kind("faiss-exact", 100, torch.float64, "cuda")


# --------------------------------------------------------------------------- on a GPU


@cuda
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_on_a_gpu_a_model_computes_what_it_computes_on_the_cpu(arch):
    model = tiny_model(arch, memory_size=16)
    inputs = random_inputs()
    with mann.backend("reference"):
        expected_logits, _, expected_gradients = outputs_and_gradients(model, inputs)
    on_gpu = copy.deepcopy(model).to("cuda")
    assert mann.backend_for(on_gpu, inputs.cuda()) == "reference"
    logits, _, gradients = outputs_and_gradients(on_gpu, inputs.cuda())
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)
    for name, gradient in expected_gradients.items():
        torch.testing.assert_close(gradients[name], gradient, rtol=1e-3, atol=1e-5, msg=name)


@cuda
@pytest.mark.parametrize("arch", ["sam", "sdnc"])
@pytest.mark.parametrize("kind", ["auto", "exact", "faiss-exact", "faiss-ivf"])
def test_on_a_gpu_the_sparse_memories_read_the_slots_the_cpu_reads(arch, kind):
    if kind.startswith("faiss") and knn.faiss is None:
        pytest.skip("needs faiss-cpu")
    model = tiny_model(arch, memory_size=32, read_heads=2)
    model.access.index = kind
    inputs = random_inputs(steps=12)
    with mann.backend("reference"):
        expected_logits, expected_state, _ = outputs_and_gradients(model, inputs)
    on_gpu = copy.deepcopy(model).to("cuda")
    logits, state, _ = outputs_and_gradients(on_gpu, inputs.cuda())
    assert state.access.memory.device.type == "cuda"
    assert torch.equal(state.access.read_positions.cpu(), expected_state.access.read_positions)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)


@cuda
def test_training_on_a_gpu_follows_training_on_the_cpu(tmp_path, capsys):
    config = tiny_config("dnc", TASK)
    with mann.backend("reference"):
        on_cpu = train(config, tiny_train_config())
    on_gpu = train(config, tiny_train_config(out=str(tmp_path / "gpu")), device="cuda")
    assert device_of(on_gpu.model).type == "cuda"
    for name, tensor in on_cpu.model.state_dict().items():
        torch.testing.assert_close(on_gpu.model.state_dict()[name].cpu(), tensor, rtol=1e-3,
                                   atol=1e-5, msg=name)  # fmt: skip
    metadata = checkpoint.read_metadata(tmp_path / "gpu")
    assert metadata["device"] == "cuda" and "--device cuda" in metadata["command"]
    loaded = mann.load(tmp_path / "gpu", device="cuda")
    assert device_of(loaded).type == "cuda"
    expected = generalisation(mann.load(tmp_path / "gpu"), TASK, [3], sequences=20, seed=1)
    assert main(["evaluate", str(tmp_path / "gpu"), "--lengths", "3", "--sequences", "20",
                 "--seed", "1", "--device", "cuda"]) == 0  # fmt: skip
    assert f"| {expected.loc[0, 'mean_bit_errors']:.3f} |" in capsys.readouterr().out
