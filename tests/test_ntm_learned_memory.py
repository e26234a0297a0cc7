"""The NTM's learned initial memory (``learned_memory``): what it changes, that the kernels and
the reference agree on it, and that it trains, saves, resizes and reaches the command line."""

from __future__ import annotations

import pytest
import torch

import mann
from mann import addressing, checkpoint
from mann.access.ntm import INITIAL_MEMORY_VALUE
from mann.tasks import make_task
from mann.train import TrainConfig, train
from tests.helpers import tiny_config, tiny_model

torch.set_num_threads(1)


def test_the_option_is_off_by_default_and_belongs_to_the_ntm():
    plain = tiny_model("ntm")
    assert mann.ModelConfig().learned_memory is False
    assert "access.initial_memory" not in plain.state_dict()  # older checkpoints load as before
    memory = plain.access.initial_state(2).memory
    assert torch.equal(memory, torch.full_like(memory, INITIAL_MEMORY_VALUE))
    with pytest.raises(ValueError, match="learned_memory is an NTM option; arch='dnc'"):
        tiny_config("dnc", learned_memory=True).validate()
    with pytest.raises(ValueError, match="masked_content is a DNC/NTM option; arch='sam'"):
        tiny_config("sam", masked_content=True).validate()
    with pytest.raises(ValueError, match="learned_memory must be True or False, got 1"):
        tiny_config("ntm", learned_memory=1).validate()


def test_each_sequence_starts_from_its_own_copy_of_the_learned_rows():
    model = tiny_model("ntm", learned_memory=True)
    rows = model.access.initial_memory
    assert rows.shape == (10, 4)
    state = model.access.initial_state(3)
    assert all(torch.equal(state.memory[b], rows) for b in range(3))
    before = rows.detach().clone()
    state.memory[0].add_(1.0)  # a copy: writing into one sequence's memory leaves the rest
    assert torch.equal(rows.detach(), before) and torch.equal(state.memory[1], rows)


def test_a_key_finds_a_learned_slot_before_anything_is_written():
    """Why the option exists: from a constant memory every slot looks alike to a content key,
    while distinct learned rows let a key pick one slot (e.g. by an item's priority)."""
    learned = tiny_model("ntm", learned_memory=True).access.initial_state(1).memory
    constant = tiny_model("ntm").access.initial_state(1).memory
    key = learned[:, 6:7].detach()  # (B=1, heads=1, W): slot 6's row as the key
    strength = torch.full((1, 1), 50.0)
    picked = addressing.content_weights(learned.detach(), key, strength)[0, 0]
    uniform = addressing.content_weights(constant, key, strength)[0, 0]
    assert int(picked.argmax()) == 6 and float(picked[6]) > 0.5
    torch.testing.assert_close(uniform, torch.full_like(uniform, 0.1))


def test_the_kernels_and_the_reference_agree_on_the_learned_memory_and_its_gradient():
    model = tiny_model("ntm", learned_memory=True, read_heads=2, write_heads=2).double()
    inputs = torch.randn(3, 9, 5, dtype=torch.float64)
    results = {}
    for backend in ("reference", "fused"):
        model.zero_grad()
        with mann.backend(backend):
            assert mann.backend_for(model) == backend
            logits, state = model(inputs)
        (logits.square().sum() + state.access.memory.sum()).backward()
        results[backend] = (logits.detach(), model.access.initial_memory.grad.clone())
    torch.testing.assert_close(results["fused"][0], results["reference"][0])
    torch.testing.assert_close(results["fused"][1], results["reference"][1])
    assert results["reference"][1].abs().max() > 0


def test_training_moves_the_initial_memory_and_the_checkpoint_keeps_it(tmp_path):
    task = make_task("copy", bits=3, max_length=3)
    config = tiny_config("ntm", task, learned_memory=True)
    result = train(config, TrainConfig(task="copy", task_options={"bits": 3, "max_length": 3},
                                       steps=5, lr=1e-2, out=str(tmp_path / "run")))  # fmt: skip
    torch.manual_seed(0)  # the untrained rows: tiny_model's initialisation
    untrained = mann.build_model(config).access.initial_memory.detach()
    trained = result.model.access.initial_memory.detach()
    assert not torch.equal(trained, untrained)
    loaded = mann.load(tmp_path / "run")
    assert loaded.config.learned_memory is True
    assert torch.equal(loaded.access.initial_memory.detach(), trained)
    assert "--learned-memory" in checkpoint.read_metadata(tmp_path / "run")["command"]


def test_resize_keeps_the_learned_rows_and_starts_new_slots_at_the_constant(tmp_path):
    model = tiny_model("ntm", learned_memory=True)
    checkpoint.save(model, tmp_path / "small")
    checkpoint.resize(tmp_path / "small", 16, tmp_path / "large")
    rows = mann.load(tmp_path / "large").access.initial_memory.detach()
    assert rows.shape == (16, 4)
    assert torch.equal(rows[:10], model.access.initial_memory.detach())
    assert torch.equal(rows[10:], torch.full((6, 4), INITIAL_MEMORY_VALUE))
    checkpoint.resize(tmp_path / "small", 6, tmp_path / "smaller")
    kept = mann.load(tmp_path / "smaller").access.initial_memory.detach()
    assert torch.equal(kept, model.access.initial_memory.detach()[:6])


def test_the_command_line_trains_with_it(tmp_path, capsys):
    from mann.__main__ import main

    code = main(["--threads", "1", "train", "--arch", "ntm", "--learned-memory", "--task",
                 "copy", "--task-option", "bits=3", "--max-length", "3", "--hidden-size", "8",
                 "--memory-size", "8", "--word-size", "4", "--steps", "2", "--quiet", "--out",
                 str(tmp_path / "cli")])  # fmt: skip
    assert code == 0
    assert mann.load(tmp_path / "cli").config.learned_memory is True
    assert main(["train", "--arch", "dnc", "--learned-memory", "--steps", "1", "--out",
                 str(tmp_path / "bad")]) != 0  # fmt: skip
    assert "learned_memory is an NTM option" in capsys.readouterr().err
    assert not list(tmp_path.glob("bad*"))
