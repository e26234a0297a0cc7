"""Tests for mann.compat.dnc: the ``dnc`` 1.1.0 package's DNC, SAM and SDNC on this library's
memories.

What 1.1.0's users rely on: constructors, return structures and shapes (all three classes,
RNN/GRU/LSTM controllers, one and several layers, batch first or time first), state
carried across calls with one backward through them, the debug dict, parameter names, and
``install()``. What the layer must not change: with the same weights a compat model computes
what the equivalent ``mann`` model computes, and writes and reads what the interface asks
(planted through 1.1.0's interface rows). Where the real package is importable
(PYTHONPATH=/work/dnc-pkg), its structures and parameter names are compared with these.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import mann
import mann.compat.dnc as compat
from mann.compat.dnc import DNC, SAM, SDNC
from mann.compat.dnc import util as compat_util
from mann.compat.dnc.adapters import CARRIED_KEY

BATCH, STEPS, INPUT, HIDDEN = 3, 6, 5, 12
# Small memories: every class, with its own keys.
SIZES = {
    DNC: dict(nr_cells=8, cell_size=4, read_heads=2),
    SAM: dict(nr_cells=16, cell_size=4, read_heads=2, sparse_reads=3),
    SDNC: dict(nr_cells=16, cell_size=4, read_heads=2, sparse_reads=3, temporal_reads=2),
}
DICT_KEYS = {
    DNC: {"memory", "link_matrix", "precedence", "read_weights", "write_weights", "usage_vector"},
    SAM: {"memory", "visible_memory", "read_weights", "write_weights", "read_vectors",
          "least_used_mem", "usage", "read_positions"},
}  # fmt: skip
DICT_KEYS[SDNC] = DICT_KEYS[SAM] | {"link_matrix", "rev_link_matrix", "precedence"}
CLASSES = (DNC, SAM, SDNC)


def make(cls, **changes):
    return cls(INPUT, HIDDEN, **{**SIZES[cls], **changes})


def inputs(seed: int = 0, batch: int = BATCH, steps: int = STEPS, batch_first=True):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (batch, steps, INPUT), generator=generator).float()
    return x if batch_first else x.transpose(0, 1)


def memory_dicts(memory_hidden, share_memory: bool) -> list[dict]:
    return [memory_hidden] if share_memory else list(memory_hidden)


def expected_dict_shapes(cls, batch: int) -> dict:
    sizes = SIZES[cls]
    N, W, R = sizes["nr_cells"], sizes["cell_size"], sizes["read_heads"]
    if cls is DNC:
        return {"memory": (batch, N, W), "link_matrix": (batch, 1, N, N),
                "precedence": (batch, 1, N), "read_weights": (batch, R, N),
                "write_weights": (batch, 1, N), "usage_vector": (batch, N)}  # fmt: skip
    K = sizes["sparse_reads"]
    links = sizes.get("temporal_reads", 0)
    visible = R * K + 2 * links + 1  # 1.1.0's c
    shapes = {"memory": (batch, N, W), "visible_memory": (batch, visible, W),
              "read_weights": (batch, N), "write_weights": (batch, N),
              "read_vectors": (batch, R, W), "least_used_mem": (batch, 1), "usage": (batch, N),
              "read_positions": (batch, visible)}  # fmt: skip
    if cls is SDNC:
        shapes.update(link_matrix=(batch, N, 2 * links), rev_link_matrix=(batch, N, 2 * links),
                      precedence=(batch, 2 * links))  # fmt: skip
    return shapes


def set_interface_bias(memory, values: dict[str, float | torch.Tensor]) -> None:
    """Zero a memory's interface weights and set the bias rows of named fields, addressed as
    1.1.0 lays them out (``memory.fields``, 1.1.0's order)."""
    with torch.no_grad():
        for linear in memory._linears():
            linear.weight.zero_()
            linear.bias.zero_()
        start = 0
        for field in memory.fields:
            if field.name in values:
                value = torch.as_tensor(values[field.name], dtype=torch.float32)
                if memory.independent_linears:
                    getattr(memory, field.transform).bias.copy_(value.expand(field.size))
                else:
                    memory.interface_weights.bias[start : start + field.size] = value
            start += field.size


# ---------------------------------------------------------------------------------------
# Structures and shapes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("rnn_type", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers,share_memory,batch_first", [(1, True, True), (2, False, False),
                                                             (2, True, True)])  # fmt: skip
def test_output_and_state_structures(cls, rnn_type, layers, share_memory, batch_first):
    hidden_layers = 2
    model = make(cls, rnn_type=rnn_type, num_layers=layers, num_hidden_layers=hidden_layers,
                 share_memory=share_memory, batch_first=batch_first)  # fmt: skip
    x = inputs(batch_first=batch_first)
    output, (controller_hidden, memory_hidden, last_read) = model(x)

    assert output.shape == x.shape  # output size = input size, laid out as the input
    assert isinstance(controller_hidden, list) and len(controller_hidden) == layers
    for state in controller_hidden:
        parts = state if rnn_type == "lstm" else (state,)
        assert len(parts) == (2 if rnn_type == "lstm" else 1)
        for part in parts:
            assert part.shape == (hidden_layers, BATCH, HIDDEN)
    if share_memory:
        assert isinstance(memory_hidden, dict)
    else:
        assert isinstance(memory_hidden, list) and len(memory_hidden) == layers
    for hidden in memory_dicts(memory_hidden, share_memory):
        shapes = {k: tuple(v.shape) for k, v in hidden.items() if k != CARRIED_KEY}
        assert shapes == expected_dict_shapes(cls, BATCH)
    assert last_read.shape == (BATCH, SIZES[cls]["read_heads"] * SIZES[cls]["cell_size"])
    assert torch.isfinite(output).all()
    output.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_debug_dict_has_one_row_per_step_and_layer_of_batch_item_zero(cls):
    model = make(cls, num_layers=2, share_memory=False, debug=True)
    output, (_, memory_hidden, _), debug = model(inputs())
    shapes = expected_dict_shapes(cls, 1)
    assert set(debug) == DICT_KEYS[cls]
    for key, array in debug.items():
        assert isinstance(array, np.ndarray)
        assert array.shape == (STEPS * 2, int(np.prod(shapes[key])))  # (time · layer, size)
    # Rows are time-major, layers within a step: the last row is the top layer's last step.
    last = memory_hidden[1]
    for key in DICT_KEYS[cls]:
        np.testing.assert_allclose(debug[key][-1], last[key][0].detach().numpy().reshape(-1),
                                   rtol=0, atol=1e-6)  # fmt: skip
    layer_0 = memory_hidden[0]["memory"][0].detach().numpy().reshape(-1)
    np.testing.assert_allclose(debug["memory"][-2], layer_0, atol=1e-6)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_without_memory_the_reads_are_none_and_the_memory_unchanged(cls):
    model = make(cls, num_layers=2, debug=True)
    _, (chx, memory_hidden, _) = model(inputs(0))[:2]
    output, (_, after, last_read), debug = model(inputs(1), (chx, memory_hidden, None),
                                                 pass_through_memory=False)  # fmt: skip
    assert last_read is None
    assert output.shape == (BATCH, STEPS, INPUT)
    for key in DICT_KEYS[cls]:
        torch.testing.assert_close(after[key], memory_hidden[key], rtol=0, atol=0)
    assert debug["memory"].shape[0] == STEPS * 2


def test_packed_sequences_come_back_packed_and_match_the_padded_run():
    model = make(DNC, batch_first=False)
    x = inputs(batch_first=False)
    lengths = torch.tensor([STEPS, 2, 4])
    output, _ = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
    padded, returned_lengths = pad_packed_sequence(output)
    full, _ = model(x)
    assert torch.equal(returned_lengths, lengths)
    for item, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(padded[:length, item], full[:length, item])


# ---------------------------------------------------------------------------------------
# The same computation as this library's model
# ---------------------------------------------------------------------------------------
def copy_controller(model: mann.MemoryAugmentedNetwork, rnn: torch.nn.RNNBase, kind: str):
    """Put a one-layer torch LSTM/GRU's weights into a mann controller (gate order i,f,o,g
    against torch's i,f,g,o for the LSTM; the input weight split into input and reads)."""
    controller = model.controller
    H = rnn.hidden_size
    if kind == "lstm":
        rows = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H),
                          torch.arange(2 * H, 3 * H)])  # fmt: skip
    else:
        rows = torch.arange(3 * H)
    with torch.no_grad():
        controller.input_weight.copy_(rnn.weight_ih_l0[rows, :INPUT])
        controller.read_weight.copy_(rnn.weight_ih_l0[rows, INPUT:])
        controller.hidden_weight[0].copy_(rnn.weight_hh_l0[rows])
        if kind == "lstm":
            controller.bias[0].copy_((rnn.bias_ih_l0 + rnn.bias_hh_l0)[rows])
        else:
            controller.bias[0].copy_(rnn.bias_ih_l0)
            controller.hidden_bias[0].copy_(rnn.bias_hh_l0)


@pytest.mark.parametrize("cls,arch", [(DNC, "dnc"), (SAM, "sam"), (SDNC, "sdnc")],
                         ids=["dnc", "sam", "sdnc"])  # fmt: skip
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_same_weights_give_the_mann_models_outputs_and_state(cls, arch, kind):
    sizes = SIZES[cls]
    compat_model = make(cls, rnn_type=kind, num_hidden_layers=1)
    config = mann.ModelConfig(
        arch=arch, input_size=INPUT, output_size=INPUT, controller=kind, hidden_size=HIDDEN,
        memory_size=sizes["nr_cells"], word_size=sizes["cell_size"],
        read_heads=sizes["read_heads"], sparse_reads=sizes.get("sparse_reads", 4),
        temporal_reads=sizes.get("temporal_reads", 8),
    )  # fmt: skip
    model = mann.build_model(config)
    copy_controller(model, getattr(compat_model, f"{kind}_layer_0"), kind)
    memory = compat_model.memories[0]
    with torch.no_grad():
        weight_t, bias = memory.interface_projection()  # the access module's layout
        model.interface.weight.copy_(weight_t.t())
        model.interface.bias.copy_(bias)
        model.output.load_state_dict(compat_model.output.state_dict())
    x = inputs(steps=8)
    with mann.backend("reference"):
        expected, state = model(x)
    output, (_, memory_hidden, last_read) = compat_model(x)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last_read, state.read_vectors.flatten(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(memory_hidden["memory"], state.access.memory.detach(),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_the_controller_steps_as_torchs_modules_stacked_as_in_1_1_0():
    """Without the memory the network is 1.1.0's stack of torch RNNs fed [x ; r] and
    [h ; r], r the last read passed in: checked against the modules' own calls."""
    for kind, nonlinearity in (("lstm", "tanh"), ("gru", "tanh"), ("rnn", "relu")):
        model = make(DNC, rnn_type=kind, nonlinearity=nonlinearity, num_layers=2,
                     num_hidden_layers=3)  # fmt: skip
        x = inputs()
        last_read = torch.randn(BATCH, model.read_vectors_size)
        output, (controller_hidden, _, _) = model(x, (None, None, last_read),
                                                  pass_through_memory=False)  # fmt: skip
        below = torch.cat([x, last_read.unsqueeze(1).expand(-1, STEPS, -1)], -1)
        for layer, rnn in enumerate(model.rnns):
            hidden, state = rnn(below)
            below = torch.cat([hidden, last_read.unsqueeze(1).expand(-1, STEPS, -1)], -1)
            for ours, theirs in zip(
                controller_hidden[layer] if kind == "lstm" else (controller_hidden[layer],),
                state if kind == "lstm" else (state,), strict=True,
            ):  # fmt: skip
                torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(output, model.output(below).clamp(-20, 20), rtol=1e-5,
                                   atol=1e-6)  # fmt: skip


def test_the_fused_and_reference_dnc_steps_agree():
    model = make(DNC, num_layers=2)
    x = inputs()
    with mann.backend("reference"):
        expected, _ = model(x)
        expected.sum().backward()
    reference_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with mann.backend("auto"):
        output, _ = model(x)
        output.sum().backward()
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    for grad, reference in zip((p.grad for p in model.parameters()), reference_grads,
                               strict=True):  # fmt: skip
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Writing and reading through 1.1.0's interface rows
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("independent_linears", [False, True])
def test_dnc_writes_the_planted_vector_and_reads_it_back_by_content(independent_linears):
    model = make(DNC, independent_linears=independent_linears)
    memory = model.memories[0]
    pattern = torch.tensor([3.0, -1.0, 2.0, 0.5])
    R = model.read_heads
    content_mode = torch.tensor([0.0, 0.0, 20.0]).repeat(R)  # 1.1.0: (backward, forward, content)
    set_interface_bias(memory, {
        "write_vector": pattern, "write_key": pattern, "write_strength": 20.0,
        "erase": 20.0, "allocation_gate": 20.0, "write_gate": 20.0, "free_gates": -20.0,
        "read_keys": pattern.repeat(R), "read_strengths": 20.0, "read_modes": content_mode,
    })  # fmt: skip
    _, (_, hidden, last_read) = model(inputs(steps=1))
    # Slot 0 is allocated first (all slots free, the lowest wins), then read by content.
    torch.testing.assert_close(hidden["memory"][:, 0], pattern.expand(BATCH, -1), atol=1e-4,
                               rtol=1e-4)  # fmt: skip
    assert hidden["memory"][:, 1:].abs().max() < 1e-4
    reads = last_read.view(BATCH, R, -1)
    # The allocation's ε leaves a 1e-6 copy of the pattern in slot 1, as close by cosine: the
    # heads read both, so the read is the pattern's direction with weight on those two slots.
    assert (hidden["read_weights"][:, :, :2].sum(-1) > 0.9999).all()
    assert (hidden["read_weights"][:, :, 0] > 0.5).all()
    torch.testing.assert_close(reads, torch.einsum("brn,bnw->brw", hidden["read_weights"],
                                                   hidden["memory"]))  # fmt: skip
    cosine = torch.nn.functional.cosine_similarity(reads, pattern.expand_as(reads), dim=-1)
    assert (cosine > 0.9999).all()
    assert hidden["write_weights"][:, 0, 0].min() > 0.999
    # The next step sees slot 0 used and allocates another, slot 0 keeping the pattern.
    _, (_, after, _) = model(inputs(steps=1), (None, hidden, None))
    torch.testing.assert_close(after["usage_vector"][:, 0], torch.ones(BATCH), atol=1e-4,
                               rtol=0)  # fmt: skip
    weight, slot = after["write_weights"][:, 0].max(-1)
    assert (weight > 0.999).all() and slot.ne(0).all()
    for item in range(BATCH):
        torch.testing.assert_close(after["memory"][item, slot[item]], pattern, atol=1e-4,
                                   rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(after["memory"][:, 0], pattern.expand(BATCH, -1), atol=1e-4,
                               rtol=1e-4)  # fmt: skip


def test_dnc_follows_the_temporal_link_forward():
    """A link planted in the dict (slot 1 written right after slot 0) and a head on slot 0:
    reading in forward mode, 1.1.0's second read-mode row, reaches slot 1."""
    model = make(DNC, read_heads=1)
    memory = model.memories[0]
    hidden = memory.export(memory.initial_carry(BATCH, "cpu", torch.float32))
    read_weights = torch.zeros(BATCH, 1, 8)
    read_weights[:, 0, 0] = 1.0
    planted = torch.zeros(BATCH, 8, 4)
    planted[:, 1] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    link = torch.zeros(BATCH, 1, 8, 8)
    link[:, 0, 1, 0] = 1.0
    hidden.update(memory=planted, link_matrix=link, read_weights=read_weights)
    set_interface_bias(memory, {"read_modes": torch.tensor([0.0, 20.0, 0.0]),
                                "write_gate": -20.0, "free_gates": -20.0})  # no write lands
    _, (_, after, last_read) = model(inputs(steps=1), (None, hidden, None))
    torch.testing.assert_close(after["read_weights"][:, 0, 1], torch.ones(BATCH), atol=1e-4,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(last_read, planted[:, 1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("cls", [SAM, SDNC], ids=lambda c: c.__name__)
def test_sparse_memories_write_the_least_used_slot_and_read_it_back(cls):
    model = make(cls)
    memory = model.memories[0]
    pattern = torch.tensor([1.0, 2.0, -1.0, 0.5])
    R = model.read_heads
    values = {"write_vector": pattern, "write_gate": 20.0, "interpolation_gate": -20.0,
              "read_keys": pattern.repeat(R), "read_strengths": 20.0}  # fmt: skip
    if cls is SDNC:
        values["read_modes"] = torch.tensor([0.0, 20.0, 0.0]).repeat(R)  # content
    set_interface_bias(memory, values)
    _, (_, hidden, last_read) = model(inputs(steps=1))
    torch.testing.assert_close(hidden["memory"][:, 0], pattern.expand(BATCH, -1), atol=1e-4,
                               rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(last_read, pattern.repeat(R).expand(BATCH, -1), atol=1e-3,
                               rtol=1e-3)  # fmt: skip
    assert torch.equal(hidden["read_positions"][:, 0], torch.zeros(BATCH, dtype=torch.long))
    assert hidden["write_weights"][:, 0].min() > 0.999
    assert hidden["read_weights"][:, 0].min() > 0.999 * R  # summed over the heads
    assert hidden["least_used_mem"].ne(0).all()  # slot 0 is used now: the next write goes on
    if cls is SDNC:  # the precedence follows the write (1.1.0 fed it the read weights)
        links = model.memories[0].access.temporal_reads
        precedence = hidden["precedence"]
        assert precedence[:, 0].min() > 0.999 and precedence[:, links].eq(0).all()


# ---------------------------------------------------------------------------------------
# State across calls
# ---------------------------------------------------------------------------------------
def detached(value):
    """What a 1.1.0 training script does between calls (``v.detach()`` where a tensor)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {key: detached(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(detached(item) for item in value)
    return value


def snapshot(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items() if k != CARRIED_KEY}
    if isinstance(value, (list, tuple)):
        return [snapshot(v) for v in value]
    return value


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("share_memory", [True, False])
def test_chained_calls_equal_one_call_with_one_backward_through_them(cls, share_memory):
    model = make(cls, num_layers=2, share_memory=share_memory)
    x = inputs(steps=8).requires_grad_()
    full, (_, _, full_read) = model(x)
    first, hidden = model(x[:, :4])
    before = snapshot(hidden)
    second, (_, _, last_read) = model(x[:, 4:], hidden)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=0, atol=1e-6)
    torch.testing.assert_close(last_read, full_read, rtol=0, atol=1e-6)
    assert_same(snapshot(hidden), before)  # the state passed in is left as it was
    # The same state again continues the same way (a state is a value).
    again, _ = model(x[:, 4:], hidden)
    torch.testing.assert_close(again, second, rtol=0, atol=0)
    # One backward through both calls reaches the first call's inputs from the second's loss.
    second.sum().backward()
    assert x.grad[:, :4].abs().sum() > 0


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_detached_state_continues_the_same_values_without_the_old_graph(cls):
    model = make(cls)
    x = inputs(steps=8).requires_grad_()
    _, hidden = model(x[:, :4])
    expected, _ = model(x[:, 4:], hidden)
    output, _ = model(x[:, 4:], detached(hidden))
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    output.sum().backward()
    assert x.grad[:, :4].eq(0).all()  # the graph of the first call is not reached


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_dict_without_the_carried_state_is_rebuilt_from_its_keys(cls):
    model = make(cls)
    x = inputs(steps=8)
    _, (chx, hidden, read) = model(x[:, :5])
    expected, _ = model(x[:, 5:], (chx, hidden, read))
    visible = {k: v.clone() for k, v in hidden.items() if k != CARRIED_KEY}  # e.g. from disk
    output, _ = model(x[:, 5:], (chx, visible, read))
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [SAM, SDNC], ids=lambda c: c.__name__)
def test_an_edited_sparse_dict_runs_as_edited(cls):
    """Changing the visible memory in place is what the next call sees."""
    model = make(cls)
    x = inputs(steps=8)
    _, (chx, hidden, read) = model(x[:, :5])
    edited = copy.copy(hidden)
    edited["memory"] = hidden["memory"].clone()
    hidden["memory"].zero_()  # the exported tensor itself, edited in place
    zeroed, _ = model(x[:, 5:], (chx, hidden, read))
    cleared = {k: v for k, v in hidden.items() if k != CARRIED_KEY}
    expected, _ = model(x[:, 5:], (chx, cleared, read))
    torch.testing.assert_close(zeroed, expected, rtol=0, atol=0)
    unchanged, _ = model(x[:, 5:], (chx, edited, read))
    assert not torch.allclose(unchanged, zeroed)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_reset_experience_starts_from_empty_memory(cls):
    model = make(cls)
    _, (_, hidden, _) = model(inputs(0))
    fresh, _ = model(inputs(1))
    reset, _ = model(inputs(1), (None, hidden, None), reset_experience=True)
    torch.testing.assert_close(reset, fresh, rtol=0, atol=0)


def test_the_controller_state_starts_at_zero_and_is_not_redrawn():
    model = make(DNC)
    x = inputs()
    first, _ = model(x)
    second, _ = model(x)
    assert torch.equal(first, second)  # 1.1.0 drew a random initial h on every call
    zeros = torch.zeros(model.num_hidden_layers, BATCH, HIDDEN)
    explicit, _ = model(x, ([(zeros, zeros)], None, None))
    assert torch.equal(explicit, first)


def test_reads_are_fed_back_to_the_controller():
    """1.1.0 fed every step the read vectors passed in; here step t sees r_{t-1}."""
    model = make(DNC)
    x = inputs()
    output, _ = model(x)
    model_without = copy.deepcopy(model)
    with torch.no_grad():  # cut the controller off from the reads
        model_without.lstm_layer_0.weight_ih_l0[:, INPUT:] = 0.0
    blind, _ = model_without(x)
    torch.testing.assert_close(blind[:, 0], output[:, 0])  # r_0 = 0: the first step agrees
    assert not torch.allclose(blind[:, 1:], output[:, 1:])


def test_state_follows_the_models_dtype():
    model = make(DNC).double()
    _, (chx, hidden, read) = model(inputs().double())
    assert hidden["memory"].dtype == torch.float64 and read.dtype == torch.float64
    assert chx[0][0].dtype == torch.float64


# ---------------------------------------------------------------------------------------
# Parameter names and loading
# ---------------------------------------------------------------------------------------
def test_parameter_names_are_1_1_0s():
    model = DNC(INPUT, HIDDEN, rnn_type="gru", num_layers=2, num_hidden_layers=2,
                share_memory=False, independent_linears=True)  # fmt: skip
    names = set(model.state_dict())
    for layer in range(2):
        for depth in range(2):
            assert f"gru_layer_{layer}.weight_ih_l{depth}" in names
        for transform in ("read_keys", "read_strengths", "write_key", "write_strength",
                          "erase_vector", "write_vector", "free_gates", "allocation_gate",
                          "write_gate", "read_modes"):  # fmt: skip
            assert f"rnn_layer_memory_{layer}.{transform}_transform.weight" in names
    assert {"output.weight", "output.bias"} <= names
    shared = set(DNC(INPUT, HIDDEN).state_dict())
    assert {"rnn_layer_memory_shared.interface_weights.weight",
            "rnn_layer_memory_shared.interface_weights.bias"} <= shared  # fmt: skip
    assert not any("library_rows" in name or "access" in name for name in names | shared)


def test_a_state_dict_round_trips_and_a_mismatch_names_its_keys():
    model, other = make(SAM), make(SAM)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(inputs())[0], model(inputs())[0])
    foreign = model.state_dict()
    key = "rnn_layer_memory_shared.interface_weights.weight"
    R, W, K = 2, 4, 3
    foreign[key] = torch.zeros(R * W + W + R * K + 1 + 1, HIDDEN)  # 1.1.0's SAM interface
    with pytest.raises(RuntimeError, match="interface_weights.weight") as error:
        other.load_state_dict(foreign)
    assert "'_memory_' not in k" in str(error.value)
    with pytest.raises(RuntimeError, match="lstm_layer_1.weight_ih_l0: in the state_dict"):
        make(DNC).load_state_dict(make(DNC, num_layers=2).state_dict())


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
def test_bidirectional_warns_that_it_is_ignored():
    with pytest.warns(UserWarning, match="bidirectional=True is ignored"):
        model = make(DNC, bidirectional=True)
    assert model(inputs())[0].shape == (BATCH, STEPS, INPUT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_gpu_without_cuda_is_a_clear_error(cls):
    with pytest.raises(ValueError, match="gpu_id=0"):
        make(cls, gpu_id=0)
    with pytest.raises(ValueError, match="gpu_id=1"):
        compat_util.cuda(np.zeros(3), gpu_id=1)


def test_an_unknown_rnn_type_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"\['lstm', 'gru', 'rnn'\].*'transformer'"):
        make(DNC, rnn_type="transformer")
    assert make(DNC, rnn_type="GRU")(inputs())[0].shape == (BATCH, STEPS, INPUT)


def test_wrong_inputs_and_states_are_named():
    model = make(DNC)
    with pytest.raises(ValueError, match="input has width 3"):
        model(torch.zeros(BATCH, STEPS, 3))
    with pytest.raises(ValueError, match="last_read must have shape"):
        model(inputs(), (None, None, torch.zeros(BATCH, 5)))
    with pytest.raises(ValueError, match="no 'usage_vector' entry"):
        model(inputs(), (None, {"memory": torch.zeros(BATCH, 8, 4)}, None))
    hidden = dict(model(inputs())[1][1], link_matrix=torch.zeros(BATCH, 8, 8))
    with pytest.raises(ValueError, match=r"'link_matrix' must have shape \(3, 1, 8, 8\)"):
        model(inputs(), (None, hidden, None))
    with pytest.raises(ValueError, match="controller states must have shape"):
        model(inputs(), ([(torch.zeros(1, BATCH, HIDDEN),) * 2], None, None))


# ---------------------------------------------------------------------------------------
# dnc.util and install()
# ---------------------------------------------------------------------------------------
def test_util_helpers():
    tensor = compat_util.cuda(np.ones((2, 3), dtype=np.float64), grad=True)
    assert tensor.dtype == torch.float32 and tensor.requires_grad and tensor.is_leaf
    assert compat_util.cudalong(np.array([1, 2])).dtype == torch.int64
    assert compat_util.cudavec(np.ones(4, dtype=np.float32)).shape == (4,)
    memory, keys = torch.randn(2, 5, 3), torch.randn(2, 4, 3)
    expected = torch.nn.functional.cosine_similarity(keys.unsqueeze(2), memory.unsqueeze(1), -1)
    torch.testing.assert_close(compat_util.θ(memory, keys), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compat_util.σ(keys, 1).sum(1), torch.ones(2, 3))
    assert compat_util.δ == 1e-6


@pytest.fixture
def restored_dnc_modules():
    saved = {name: module for name, module in sys.modules.items()
             if name == "dnc" or name.startswith("dnc.")}  # fmt: skip
    yield
    compat.uninstall()
    for name in [n for n in sys.modules if n == "dnc" or n.startswith("dnc.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_install_makes_import_dnc_the_compat_layer(restored_dnc_modules):
    compat.install()
    import dnc
    import dnc.dnc
    import dnc.sam
    import dnc.sdnc
    import dnc.util
    from dnc import DNC as ImportedDNC
    from dnc import SAM as ImportedSAM
    from dnc import SDNC as ImportedSDNC
    from dnc.util import cuda

    assert dnc is compat
    assert (ImportedDNC, ImportedSAM, ImportedSDNC) == (DNC, SAM, SDNC)
    assert dnc.dnc.DNC is DNC and dnc.sam.SAM is SAM and dnc.sdnc.SDNC is SDNC
    assert cuda is compat_util.cuda
    assert importlib.import_module("dnc.sdnc") is sys.modules["mann.compat.dnc.sdnc"]
    compat.uninstall()
    assert sys.modules.get("dnc") is not compat


# ---------------------------------------------------------------------------------------
# Against the real package, where it is importable
# ---------------------------------------------------------------------------------------
@pytest.fixture
def real_dnc(restored_dnc_modules):
    """The real dnc 1.1.0 package (not a dependency: PYTHONPATH=/work/dnc-pkg), else skip."""
    for name in [n for n in sys.modules if n == "dnc" or n.startswith("dnc.")]:
        del sys.modules[name]
    try:
        version = importlib.metadata.version("dnc")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            package = importlib.import_module("dnc")
    except (ImportError, importlib.metadata.PackageNotFoundError):
        pytest.skip("the dnc package is not importable")
    if version != "1.1.0" or package is compat:
        pytest.skip(f"dnc {version} is not the 1.1.0 package")
    return package


def structure(value):
    """Types and shapes of a nested return value, the carried state left out."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, np.ndarray):
        return ("array", value.shape, str(value.dtype))
    if isinstance(value, dict):
        return {k: structure(v) for k, v in value.items() if k != CARRIED_KEY}
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [structure(v) for v in value]
    return value


@pytest.mark.parametrize("options", [
    dict(),
    dict(rnn_type="gru", num_layers=2, share_memory=False, batch_first=False),
    dict(rnn_type="rnn", num_layers=2, independent_linears=True, debug=True),
], ids=["lstm", "gru-unshared-time-first", "rnn-independent-debug"])  # fmt: skip
def test_structures_and_parameters_match_the_real_package(real_dnc, options):
    torch.manual_seed(0)
    theirs = real_dnc.DNC(INPUT, HIDDEN, **SIZES[DNC], **options)
    ours = DNC(INPUT, HIDDEN, **SIZES[DNC], **options)
    their_parameters = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == their_parameters
    ours.load_state_dict(theirs.state_dict())  # a 1.1.0 DNC's weights load unchanged
    x = inputs(batch_first=options.get("batch_first", True))
    assert structure(ours(x)) == structure(theirs(x))
    # Fed back, the state continues in both.
    hidden = ours(x)[1]
    assert structure(ours(x, hidden)) == structure(theirs(x, theirs(x)[1]))


@pytest.mark.parametrize("name", ["SAM", "SDNC"])
def test_sparse_parameter_names_match_the_real_package_but_the_memory_interface(real_dnc, name):
    sizes = {k: v for k, v in SIZES[getattr(compat, name)].items()}
    theirs = getattr(real_dnc, name)(INPUT, HIDDEN, **sizes)
    ours = getattr(compat, name)(INPUT, HIDDEN, **sizes)
    their_state = theirs.state_dict()
    outside_memory = {k for k in their_state if "_memory_" not in k}
    assert outside_memory == {k for k in ours.state_dict() if "_memory_" not in k}
    with pytest.raises(RuntimeError, match="rnn_layer_memory_shared.interface_weights.weight"):
        ours.load_state_dict(their_state)
    ours.load_state_dict({k: v for k, v in their_state.items() if "_memory_" not in k},
                         strict=False)  # the controller and output layer carry over
    torch.testing.assert_close(ours.output.weight, theirs.output.weight)
