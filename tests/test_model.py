"""Tests for mann.model: every architecture with every controller, one and two layers.

Architectures come from ``mann.model.ARCHITECTURES``; one whose access module does not import
yet is skipped, so SAM and SDNC are covered as soon as they land. For each: output shapes,
batch items independent, streaming equals one call, recording changes nothing, the Trace's
shapes and contents, finite gradients; then the configurations and inputs that must be refused.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from mann import ModelConfig, ModelState, Trace, build_model, record_trace
from mann.model import ARCHITECTURES

CONTROLLERS = ("lstm", "gru", "feedforward")
BATCH, STEPS, INPUT_SIZE, OUTPUT_SIZE = 3, 7, 5, 4

# Which memory a step's reads see: the NTM reads M_{t-1} (before its write), the DNC M_t.
READS_MEMORY = {"ntm": "before", "dnc": "after"}


def require_arch(arch: str) -> None:
    module = "none" if arch == "lstm" else arch  # the memory-less baseline's access
    try:
        importlib.import_module(f"mann.access.{module}")
    except ImportError:
        pytest.skip(f"mann.access.{module} does not import yet")


def small_config(arch: str, controller: str = "lstm", num_layers: int = 1, **changes):
    values = dict(
        arch=arch, input_size=INPUT_SIZE, output_size=OUTPUT_SIZE, controller=controller,
        hidden_size=12, num_layers=num_layers, memory_size=8, word_size=4, read_heads=2,
        write_heads=1, shift_range=3, sparse_reads=4, temporal_reads=4,
    )
    values.update(changes)
    return ModelConfig(**values)


def make_inputs(seed: int, batch: int = BATCH, steps: int = STEPS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Binary inputs, like the tasks'.
    return torch.randint(0, 2, (batch, steps, INPUT_SIZE), generator=generator).float()


@pytest.fixture(
    params=[
        (arch, controller, layers)
        for arch in ARCHITECTURES
        for controller in CONTROLLERS
        for layers in (1, 2)
    ],
    ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}layer",
)
def model(request):
    arch, controller, layers = request.param
    require_arch(arch)
    torch.manual_seed(0)
    return build_model(small_config(arch, controller, layers))


@pytest.fixture(params=ARCHITECTURES)
def arch_model(request):
    """One model per architecture (LSTM controller) for the arch-level checks."""
    require_arch(request.param)
    torch.manual_seed(0)
    return build_model(small_config(request.param, write_heads=2 if request.param == "ntm" else 1))


def assert_states_equal(first, second, atol: float = 0.0) -> None:
    flat_first = [*first.controller, *first.access, first.read_vectors]
    flat_second = [*second.controller, *second.access, second.read_vectors]
    assert len(flat_first) == len(flat_second)
    for a, b in zip(flat_first, flat_second, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------
# Per architecture × controller × layers
# ---------------------------------------------------------------------------------------
def test_output_and_state_shapes(model):
    config = model.config
    logits, state = model(make_inputs(0))
    assert logits.shape == (BATCH, STEPS, OUTPUT_SIZE)
    assert isinstance(state, ModelState)
    access = model.access
    assert state.read_vectors.shape == (BATCH, access.read_heads, config.word_size)
    if config.arch == "lstm":  # no memory: no reads, no access state
        assert access.read_heads == 0 and tuple(state.access) == ()
    else:
        assert state.access.memory.shape == (BATCH, config.memory_size, config.word_size)
    expected_controller = {"lstm": 2, "gru": 1, "feedforward": 0}[config.controller]
    assert len(state.controller) == expected_controller * config.num_layers
    for value in state.controller:
        assert value.shape == (BATCH, config.hidden_size)
    assert torch.isfinite(logits).all()


def test_batch_items_are_independent(model):
    inputs = make_inputs(1)
    changed = inputs.clone()
    changed[1] = 1.0 - changed[1]  # a different sequence for item 1 only
    logits, _ = model(inputs)
    logits_changed, _ = model(changed)
    torch.testing.assert_close(logits_changed[0], logits[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits_changed[2], logits[2], atol=1e-6, rtol=0)
    assert (logits_changed[1] - logits[1]).abs().max() > 1e-4


def test_streaming_in_two_halves_equals_one_call(model):
    inputs = make_inputs(2)
    whole, whole_state = model(inputs)
    first, state = model(inputs[:, :3])
    second, streamed_state = model(inputs[:, 3:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=0)
    assert_states_equal(streamed_state, whole_state, atol=1e-5)


def test_recording_changes_nothing(model):
    # Without recording, NTM and DNC take the fused kernels (mann.fused): the same equations
    # in another order of float operations, so equal up to float32 rounding.
    inputs = make_inputs(3)
    logits, state = model(inputs)
    recorded, recorded_state, trace = model(inputs, record=True)
    torch.testing.assert_close(recorded, logits, atol=1e-5, rtol=0)
    assert_states_equal(recorded_state, state, atol=1e-5)
    assert isinstance(trace, Trace)


def test_gradients_are_finite_and_reach_every_parameter(model):
    inputs = make_inputs(4)
    targets = make_inputs(5)[..., :OUTPUT_SIZE]
    logits, _ = model(inputs)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    total = sum(float(p.grad.abs().sum()) for p in model.parameters())
    assert total > 0


# ---------------------------------------------------------------------------------------
# The Trace a run records
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("item", [0, 2])
def test_trace_shapes_and_contents(arch_model, item):
    model, config = arch_model, arch_model.config
    inputs = make_inputs(6)
    initial = model.initial_state(BATCH)
    logits, state, trace = model(inputs, record=True, trace_item=item)
    if config.arch == "lstm":
        # No memory: the trace shows the controller's state (h, c per unit) in its place.
        H = config.hidden_size
        assert trace.memory.shape == (STEPS, H, 2 * config.num_layers)
        assert trace.read_weights.shape == trace.write_weights.shape == (STEPS, 0, H)
        np.testing.assert_array_equal(
            trace.memory[-1], torch.stack(state.controller, -1)[item].detach().numpy()
        )
        np.testing.assert_allclose(trace.outputs, torch.sigmoid(logits[item]).detach().numpy(),
                                   atol=1e-6)  # fmt: skip
        return
    N, W, R, Hw = config.memory_size, config.word_size, model.access.read_heads, \
        model.access.write_heads
    assert trace.arch == config.arch
    assert trace.inputs.shape == (STEPS, INPUT_SIZE)
    assert trace.outputs.shape == (STEPS, OUTPUT_SIZE)
    assert trace.memory.shape == (STEPS, N, W)
    assert trace.read_weights.shape == (STEPS, R, N)
    assert trace.write_weights.shape == (STEPS, Hw, N)
    assert trace.read_vectors.shape == (STEPS, R, W)
    for name in trace.available():
        assert getattr(trace, name).dtype == np.float32, name

    # The trace is item `item`'s: its inputs, its probabilities, its final memory and reads.
    np.testing.assert_array_equal(trace.inputs, inputs[item].numpy())
    np.testing.assert_allclose(trace.outputs, torch.sigmoid(logits[item]).detach().numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(trace.memory[-1], state.access.memory[item].detach().numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(trace.read_vectors[-1], state.read_vectors[item].detach().numpy(),
                               atol=1e-6)

    # Read vectors are the read weightings applied to the memory the step read.
    before = np.concatenate([initial.access.memory[item].detach().numpy()[None],
                             trace.memory[:-1]])
    from_before = np.einsum("trn,tnw->trw", trace.read_weights, before)
    from_after = np.einsum("trn,tnw->trw", trace.read_weights, trace.memory)
    reads = READS_MEMORY.get(config.arch)
    if reads == "before":
        np.testing.assert_allclose(trace.read_vectors, from_before, atol=1e-5)
    elif reads == "after":
        np.testing.assert_allclose(trace.read_vectors, from_after, atol=1e-5)
    else:  # an architecture this file does not know yet: one of the two must hold
        assert np.allclose(trace.read_vectors, from_before, atol=1e-5) or np.allclose(
            trace.read_vectors, from_after, atol=1e-5
        )
    assert not np.allclose(trace.memory[-1], before[0])  # the run did write

    for name in ("read_weights", "write_weights"):
        weights = getattr(trace, name)
        assert weights.min() >= 0 and weights.sum(-1).max() <= 1 + 1e-5, name


def test_trace_item_selects_the_batch_item(arch_model):
    inputs = make_inputs(7)
    _, _, trace_0 = arch_model(inputs, record=True, trace_item=0)
    _, _, trace_1 = arch_model(inputs, record=True, trace_item=1)
    alone, _, trace_alone = arch_model(inputs[1:2], record=True)
    for name in trace_1.available():
        got, expected = getattr(trace_1, name), getattr(trace_alone, name)
        if name in ("read_positions", "link_positions"):
            # A set of slot indices: the order among equally near slots is the index's choice.
            got, expected = np.sort(got, axis=-1), np.sort(expected, axis=-1)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    assert not np.array_equal(trace_0.inputs, trace_1.inputs)
    assert not np.allclose(trace_0.memory, trace_1.memory)


def test_ntm_trace_fields(rng):
    require_arch("ntm")
    model = build_model(small_config("ntm", read_heads=2, write_heads=2, shift_range=5))
    _, _, trace = model(make_inputs(8), record=True)
    H = 4  # read heads then write heads
    assert trace.content_weights.shape == (STEPS, H, 8)
    assert trace.interpolation_gate.shape == (STEPS, H)
    assert trace.shift.shape == (STEPS, H, 5)
    assert trace.sharpening.shape == (STEPS, H)
    assert trace.key_strength.shape == (STEPS, H)
    np.testing.assert_allclose(trace.content_weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(trace.shift.sum(-1), 1.0, atol=1e-5)
    assert (trace.sharpening >= 1).all() and (trace.key_strength >= 0).all()
    assert ((trace.interpolation_gate >= 0) & (trace.interpolation_gate <= 1)).all()
    for name in ("usage", "link", "allocation", "read_modes", "precedence"):
        assert getattr(trace, name) is None, name
    # The heads' final weightings, read heads first then write heads, as documented.
    np.testing.assert_allclose(trace.read_weights.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(trace.write_weights.sum(-1), 1.0, atol=1e-5)


def test_dnc_trace_fields_explain_the_weightings():
    require_arch("dnc")
    model = build_model(small_config("dnc", read_heads=3))
    _, _, trace = model(make_inputs(9, steps=9), record=True, trace_item=1)
    T, N, R = 9, 8, 3
    shapes = dict(
        usage=(T, N), precedence=(T, N), link=(T, N, N), allocation=(T, N),
        write_content_weights=(T, N), read_content_weights=(T, R, N), forward_weights=(T, R, N),
        backward_weights=(T, R, N), read_modes=(T, R, 3), free_gates=(T, R),
        allocation_gate=(T,), write_gate=(T,),
    )
    for name, shape in shapes.items():
        assert getattr(trace, name).shape == shape, name
    for name in ("content_weights", "shift", "sharpening", "interpolation_gate"):
        assert getattr(trace, name) is None, name
    # w^w = g^w [g^a a + (1 - g^a) c^w]
    gates_a, gates_w = trace.allocation_gate[:, None], trace.write_gate[:, None]
    expected_write = gates_w * (gates_a * trace.allocation
                                + (1 - gates_a) * trace.write_content_weights)
    np.testing.assert_allclose(trace.write_weights[:, 0], expected_write, atol=1e-6)
    # w^r = π[0] b + π[1] c + π[2] f
    modes = trace.read_modes[..., None]
    expected_read = (modes[:, :, 0] * trace.backward_weights
                     + modes[:, :, 1] * trace.read_content_weights
                     + modes[:, :, 2] * trace.forward_weights)
    np.testing.assert_allclose(trace.read_weights, expected_read, atol=1e-6)
    # f = L_t w^r_{t-1}, b = L_tᵀ w^r_{t-1}, with w^r_0 = 0
    prev_reads = np.concatenate([np.zeros((1, R, N), np.float32), trace.read_weights[:-1]])
    np.testing.assert_allclose(trace.forward_weights,
                               np.einsum("tij,trj->tri", trace.link, prev_reads), atol=1e-6)
    np.testing.assert_allclose(trace.backward_weights,
                               np.einsum("tji,trj->tri", trace.link, prev_reads), atol=1e-6)
    # p_t = (1 - Σ w^w_t) p_{t-1} + w^w_t, p_0 = 0
    prev_prec = np.concatenate([np.zeros((1, N), np.float32), trace.precedence[:-1]])
    write = trace.write_weights[:, 0]
    np.testing.assert_allclose(trace.precedence,
                               (1 - write.sum(-1, keepdims=True)) * prev_prec + write, atol=1e-6)
    assert (np.diagonal(trace.link, axis1=1, axis2=2) == 0).all()
    assert ((trace.usage >= 0) & (trace.usage <= 1)).all()
    np.testing.assert_allclose(trace.read_modes.sum(-1), 1.0, atol=1e-6)


def test_record_trace_stores_targets_mask_and_bit_errors(arch_model):
    inputs = make_inputs(10)
    targets = make_inputs(11)[..., :OUTPUT_SIZE]
    mask = torch.zeros(BATCH, STEPS)
    mask[:, 3:] = 1.0
    arch_model.train()
    trace = record_trace(arch_model, inputs, targets, mask, item=2)
    assert arch_model.training  # the mode it was in is restored
    np.testing.assert_array_equal(trace.targets, targets[2].numpy())
    np.testing.assert_array_equal(trace.mask, mask[2].numpy())
    wrong = 0
    for t in range(STEPS):
        for y in range(OUTPUT_SIZE):
            if mask[2, t] and (trace.outputs[t, y] > 0.5) != (targets[2, t, y] > 0.5):
                wrong += 1
    assert trace.metadata["bit_errors"] == wrong
    assert trace.metadata["config"] == arch_model.config.to_dict()
    # Without targets there is nothing to score.
    assert "bit_errors" not in record_trace(arch_model, inputs).metadata


# ---------------------------------------------------------------------------------------
# Configurations and inputs that must be refused
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "name", "value"),
    [
        (dict(word_size=0), "word_size", "0"),
        (dict(read_heads=0), "read_heads", "0"),
        (dict(memory_size=-3), "memory_size", "-3"),
        (dict(hidden_size=0), "hidden_size", "0"),
        (dict(num_layers=0), "num_layers", "0"),
        (dict(shift_range=4), "shift_range", "4"),
        (dict(arch="transformer"), "arch", "transformer"),
        (dict(controller="attention"), "controller", "attention"),
        (dict(arch="dnc", write_heads=2), "write_heads", "2"),
        (dict(arch="ntm", shift_range=9, memory_size=8), "shift_range", "9"),
        (dict(clip_value=-1.0), "clip_value", "-1.0"),
    ],
)
def test_impossible_configs_raise_value_error_naming_the_parameter(changes, name, value):
    config = small_config(**{"arch": "ntm", **changes})
    with pytest.raises(ValueError, match=name) as error:
        build_model(config)
    assert value in str(error.value)
    with pytest.raises(ValueError, match=name):
        ModelConfig.from_dict(config.to_dict())


def test_config_round_trips_through_a_dict():
    config = small_config("dnc", controller="gru", num_layers=2)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "memroy_size": 4})


@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_bad_inputs_raise_value_error(arch):
    model = build_model(small_config(arch))
    with pytest.raises(ValueError, match=r"input_size") as error:
        model(torch.zeros(2, 3, INPUT_SIZE + 1))
    assert str(INPUT_SIZE + 1) in str(error.value)
    with pytest.raises(ValueError, match=r"inputs.*\(5, 3\)|inputs.*shape"):
        model(torch.zeros(5, 3))  # no time axis
    with pytest.raises(ValueError, match="inputs"):
        model(torch.zeros(1, 2, 3, INPUT_SIZE))
    with pytest.raises(ValueError, match="trace_item"):
        model(torch.zeros(2, 3, INPUT_SIZE), record=True, trace_item=2)


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_controller_outputs_stay_inside_the_unit_interval(controller):
    # The model skips clipping h_t when clip_value >= 1 because every controller's output
    # lies in (-1, 1); a controller that broke this would need the clamp back.
    from mann.controller import build_controller

    torch.manual_seed(3)
    cell = build_controller(controller, 5, 6, 7, 2)
    state = cell.initial_state(4)
    inputs = 100.0 * torch.randn(20, 4, 5)
    projected = cell.project_inputs(inputs.transpose(0, 1)).unbind(1)
    for t in range(20):
        hidden, state = cell(projected[t], 100.0 * torch.randn(4, 6), state)
        assert hidden.abs().max() <= 1.0
        assert all(part.abs().max() <= 1.0 for part in state[::2] if controller == "lstm")


def test_a_clip_below_one_clips_the_controller_output():
    model = build_model(ModelConfig(arch="ntm", input_size=3, output_size=2, hidden_size=6,
                                    memory_size=8, word_size=4, clip_value=0.05))
    hiddens, interfaces = [], []
    model.controller.register_forward_hook(
        lambda module, args, output: hiddens.append(output[0].detach())
    )
    step = model.access.step
    model.access.step = lambda interface, *rest, **options: (
        interfaces.append(interface.detach()) or step(interface, *rest, **options)
    )
    model(100.0 * torch.randn(2, 5, 3))
    assert len(hiddens) == len(interfaces) == 5
    assert max(float(h.abs().max()) for h in hiddens) > 0.5  # the clip has work to do
    for hidden, interface in zip(hiddens, interfaces, strict=True):
        clipped = model.interface(hidden.clamp(-0.05, 0.05)).clamp(-0.05, 0.05)
        torch.testing.assert_close(interface, clipped)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_double_precision_model_runs_in_double_throughout(arch):
    model = build_model(ModelConfig(arch=arch, input_size=3, output_size=2, hidden_size=6,
                                    memory_size=8, word_size=4, read_heads=2, sparse_reads=2,
                                    temporal_reads=2)).double()  # fmt: skip
    inputs = torch.rand(2, 5, 3, dtype=torch.float64)
    logits, state = model(inputs)
    assert logits.dtype == torch.float64
    floating = [t for t in (*state.controller, *state.access, state.read_vectors)
                if isinstance(t, torch.Tensor) and t.is_floating_point()]  # fmt: skip
    assert floating and all(t.dtype == torch.float64 for t in floating)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float64
               for p in model.parameters() if p.requires_grad)  # fmt: skip


@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_gradcheck_of_a_whole_model_in_double(arch):
    # Through the fused kernels (record=False): the whole sequence, every input.
    model = build_model(ModelConfig(arch=arch, input_size=3, output_size=2, hidden_size=4,
                                    memory_size=5, word_size=3, read_heads=2)).double()  # fmt: skip
    inputs = torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: model(x)[0], (inputs,))
