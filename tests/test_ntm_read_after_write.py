"""The NTM's order within a step (``read_after_write``): by default read heads read M_{t-1}
and the write makes M_t; with the option the write comes first and read heads address and read
M_t, as the DNC's do. What it changes; that only the reference runs it, that it trains and
that the command line keeps it are tested with masked content's, in
test_ntm_masked_content.py."""

from __future__ import annotations

import pytest
import torch

import mann
from mann.access.ntm import NTMAccess
from tests.helpers import tiny_config, tiny_model

torch.set_num_threads(1)

WORD = 4


class Forced:
    """A step's edits (``mann.intervention.StepEdits``' call) replacing named quantities."""

    def __init__(self, **values: torch.Tensor) -> None:
        self.values = values

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return self.values[name].expand_as(tensor).clone() if name in self.values else tensor


def one_hot(slot: int, slots: int = 6) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor([[slot]]), slots).float()  # (B=1, H=1, N)


def write_then_look_up(read_after_write: bool, **forced: torch.Tensor):
    """One step of a 6-slot NTM whose write head wipes slot 2 and writes ``new`` there, while
    the read head looks ``new`` up by content (β 50, no gate, no shift, no sharpening)."""
    torch.manual_seed(0)
    access = NTMAccess(memory_size=6, word_size=WORD, read_after_write=read_after_write)
    new = torch.tensor([1.0, -1.0, 2.0, 0.5])
    memory = torch.randn(1, 6, WORD)
    memory[0, 2] = -new  # before the write, slot 2 is the word least like the key
    state = access.initial_state(1)._replace(memory=memory)
    interface = torch.zeros(1, access.interface_size)
    interface[0, :WORD] = new  # the read head's key: the first field of the first head
    interface[0, -2 * WORD:-WORD] = 50.0  # erase logits: wipe the written slot
    interface[0, -WORD:] = new  # the add vector
    edits = Forced(
        key_strength=torch.full((1, 2), 50.0),
        interpolation_gate=torch.ones(1, 2),
        shift=torch.tensor([[[0.0, 1.0, 0.0]]]),
        sharpening=torch.ones(1, 2),
        write_weights=one_hot(2),
        **forced,
    )
    with torch.no_grad():
        read_vectors, new_state, record = access.step(interface, state, edit=edits)
    return memory, read_vectors[0, 0], new_state, record


def test_the_option_is_off_by_default_and_belongs_to_the_ntm():
    assert mann.ModelConfig().read_after_write is False
    assert tiny_model("ntm").access.read_after_write is False
    with pytest.raises(ValueError, match="read_after_write is an NTM option; arch='dnc'"):
        tiny_config("dnc", read_after_write=True).validate()
    with pytest.raises(ValueError, match="read_after_write must be True or False, got 'yes'"):
        tiny_config("ntm", read_after_write="yes").validate()


def test_reads_see_this_steps_write_only_with_the_option():
    before, read, state, _ = write_then_look_up(read_after_write=True)
    torch.testing.assert_close(state.memory[0, 2], torch.tensor([1.0, -1.0, 2.0, 0.5]))
    assert float(state.read_weights[0, 0, 2]) > 0.99  # the key found the word just written
    torch.testing.assert_close(read, state.memory[0, 2], atol=1e-3, rtol=0)

    before_plain, read_plain, state_plain, _ = write_then_look_up(read_after_write=False)
    torch.testing.assert_close(state_plain.memory, state.memory)  # the same write either way
    assert float(state_plain.read_weights[0, 0, 2]) < 0.01  # M_{t-1}'s slot 2 was -key
    weights = state_plain.read_weights[0, 0]
    torch.testing.assert_close(read_plain, weights @ before_plain[0])


def test_forced_read_weights_read_the_new_or_the_old_memory():
    """The same read weighting reads M_t with the option and M_{t-1} without it."""
    on_slot_2 = {"read_weights": one_hot(2)}
    _, read, state, record = write_then_look_up(True, **on_slot_2)
    before, read_plain, _, _ = write_then_look_up(False, **on_slot_2)
    torch.testing.assert_close(read, state.memory[0, 2])
    torch.testing.assert_close(read_plain, before[0, 2])
    # The record keeps the usual layout: content weights of the read heads, then the writes.
    assert record.content_weights.shape == (1, 2, 6)
    assert float(record.content_weights[0, 0, 2]) > 0.99


def test_it_changes_the_output():
    inputs = torch.randn(2, 6, 5)
    plain, model = tiny_model("ntm"), tiny_model("ntm", read_after_write=True)
    assert not torch.allclose(model(inputs)[0], plain(inputs)[0])  # same weights, other order
