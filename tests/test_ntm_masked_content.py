"""The NTM's masked content lookup (``masked_content``, Csordás & Schmidhuber 2019 3.1): a mask
per head over the word picks what its key compares. What it changes, where it runs, what the
Trace and Explain show, and that it trains and saves."""

from __future__ import annotations

import pytest
import torch

import mann
from mann import figures
from mann.access.ntm import NTMAccess
from tests.helpers import tiny_config, tiny_model

torch.set_num_threads(1)

WORD = 4
# Two fields of two positions each: "what" (0, 1) and "rank" (2, 3).
RANK = torch.tensor([0.0, 0.0, 1.0, 1.0])


def look_up(access: NTMAccess, mask_logits: torch.Tensor | None):
    """One step whose read head looks up the key [1, 0, 1, 0] with β 50, no gate, no shift
    and no sharpening, over a memory where slot 1 matches the whole key best and slot 3 its
    rank field alone; ``mask_logits`` (W,) set every head's mask."""
    memory = torch.tensor([[[0.0, 1.0, 0.0, 1.0],
                            [1.0, 0.0, 0.7, 0.7],  # what matches; rank half-way
                            [0.0, 1.0, -1.0, 0.0],
                            [-1.0, 0.0, 1.0, 0.0]]])  # fmt: skip  # rank matches; what opposite
    state = access.initial_state(1)._replace(memory=memory)
    heads = access.read_heads + access.write_heads
    block = torch.zeros(heads, access.head_layout.total)
    layout = access.head_layout
    block[:, layout.offset("key") : layout.offset("key") + WORD] = torch.tensor([1.0, 0, 1, 0])
    block[:, layout.offset("key_strength")] = 50.0  # softplus(50) = 50
    block[:, layout.offset("interpolation_gate")] = 50.0  # g = 1: content alone
    block[:, layout.offset("shift") + 1] = 50.0  # all weight on offset 0
    block[:, layout.offset("sharpening")] = -50.0  # γ = 1
    if mask_logits is not None:
        block[:, layout.offset("mask") :] = mask_logits
    interface = torch.zeros(1, access.interface_size)
    interface[0, : heads * layout.total] = block.flatten()
    with torch.no_grad():
        return access.step(interface, state)


def test_the_option_belongs_to_the_ntm_and_the_dnc():
    assert mann.ModelConfig().masked_content is False
    assert tiny_model("ntm").access.masked_content is False
    assert tiny_model("ntm", masked_content=True).access.masked_content is True
    tiny_config("dnc", masked_content=True).validate()
    with pytest.raises(ValueError, match="masked_content is a DNC/NTM option; arch='sdnc'"):
        tiny_config("sdnc", masked_content=True).validate()
    plain, masked = NTMAccess(4, WORD), NTMAccess(4, WORD, masked_content=True)
    assert masked.head_layout.total == plain.head_layout.total + WORD  # the mask, per head
    assert masked.interface_size == plain.interface_size + 2 * WORD


def test_a_mask_on_one_field_finds_the_slot_that_matches_there():
    masked = NTMAccess(4, WORD, masked_content=True)
    on_rank = 100.0 * (2 * RANK - 1)  # σ: 1 on the rank field, 0 on the rest
    _, state, record = look_up(masked, on_rank)
    assert float(state.read_weights[0, 0, 3]) > 0.99  # the rank field alone decided
    torch.testing.assert_close(record.content_masks[0, 0], RANK)

    _, state_plain, record_plain = look_up(NTMAccess(4, WORD), None)
    assert int(state_plain.read_weights[0, 0].argmax()) == 1  # the whole word decided
    assert record_plain.content_masks is None


def test_an_all_ones_mask_is_the_plain_lookup():
    torch.manual_seed(0)
    masked, plain = NTMAccess(4, WORD, masked_content=True), NTMAccess(4, WORD)
    _, state, record = look_up(masked, torch.full((WORD,), 100.0))
    _, state_plain, record_plain = look_up(plain, None)
    torch.testing.assert_close(record.content_weights, record_plain.content_weights)
    torch.testing.assert_close(state.read_weights, state_plain.read_weights)
    torch.testing.assert_close(state.memory, state_plain.memory)


# The NTM's switches only the reference computes (``NTMAccess.reference_only``).
REFERENCE_ONLY = ["masked_content", "read_after_write"]


@pytest.mark.parametrize("switch", REFERENCE_ONLY)
def test_only_the_reference_runs_each_switch_and_every_parameter_learns(switch):
    model = tiny_model("ntm", **{switch: True})
    inputs = torch.randn(2, 6, 5)
    assert mann.backend_for(model, inputs) == "reference"
    with mann.backend("fused"), pytest.raises(mann.BackendError, match=switch):
        model(inputs)
    assert mann.backend_for(tiny_model("ntm"), inputs) == "fused"
    logits, _ = model(inputs)
    logits.square().sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_the_trace_records_the_masks_and_explain_shows_them():
    model = tiny_model("ntm", masked_content=True, read_heads=2)
    _, _, trace = model(torch.randn(1, 6, 5), record=True)
    heads = model.config.read_heads + model.config.write_heads
    assert trace.content_masks.shape == (6, heads, model.config.word_size)
    assert ((trace.content_masks > 0) & (trace.content_masks < 1)).all()
    explained = figures.explanation(trace, 3, "write 0")
    torch.testing.assert_close(
        torch.from_numpy(explained.content_mask), torch.from_numpy(trace.content_masks[3, 2])
    )
    assert explained.gates["content mask, mean"] == pytest.approx(
        float(trace.content_masks[3, 2].mean())
    )
    assert len(figures.content_mask_figure(explained).data[0].y) == model.config.word_size
    _, _, plain_trace = tiny_model("ntm")(torch.randn(1, 6, 5), record=True)
    assert plain_trace.content_masks is None
    assert figures.explanation(plain_trace, 3, "read 0").content_mask is None


@pytest.mark.parametrize("switch", REFERENCE_ONLY)
def test_each_reference_only_ntm_switch_trains_from_the_command_line_and_is_kept(tmp_path, switch):
    from mann.__main__ import main

    flag = "--" + switch.replace("_", "-")
    code = main(["--threads", "1", "train", "--arch", "ntm", flag, "--task", "copy",
                 "--task-option", "bits=3", "--max-length", "3", "--hidden-size", "8",
                 "--memory-size", "8", "--word-size", "4", "--steps", "2", "--quiet", "--out",
                 str(tmp_path / "cli")])  # fmt: skip
    assert code == 0
    loaded = mann.load(tmp_path / "cli")
    assert getattr(loaded.config, switch) is True and getattr(loaded.access, switch) is True
    assert flag in mann.checkpoint.read_metadata(tmp_path / "cli")["command"]
