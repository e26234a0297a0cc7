"""The whole-sequence LSTM+NTM/DNC node (mann/fused/sequence.py) against the model's step loop.

The step loop (the "reference" backend) is itself held to ``mann.addressing`` by
test_fused_ntm.py, test_fused_dnc.py and test_fused_link.py; here the sequence path must equal
it in logits, the returned state, and the gradient of every parameter, of the inputs and of the
initial state, including gradients that reach the returned state from a later call.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import mann
from mann import ModelConfig, ModelState, build_model
from mann.access.dnc import DNCState
from mann.access.ntm import NTMState
from mann.fused import dnc as fused_dnc
from mann.fused import link as fused_link
from mann.fused import runtime, sequence

pytestmark = pytest.mark.skipif(not runtime.HAVE_NUMBA, reason="the fused kernels need numba")


def dnc_config(**changes) -> ModelConfig:
    values = dict(arch="dnc", input_size=5, output_size=4, hidden_size=7, num_layers=2,
                  memory_size=8, word_size=6, read_heads=3)  # fmt: skip
    values.update(changes)
    return ModelConfig(**values)


def random_state(model, batch: int, dtype, seed: int) -> ModelState:
    """A mid-sequence state (not the zeros of the first step), every tensor a leaf."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    N, W, R, H = config.memory_size, config.word_size, config.read_heads, config.hidden_size

    def uniform(*shape, scale=1.0):
        return scale * torch.rand(*shape, generator=generator, dtype=dtype)

    if config.arch == "ntm":
        access = NTMState(
            memory=uniform(batch, N, W) - 0.5,
            read_weights=torch.softmax(uniform(batch, R, N, scale=4.0), -1),
            write_weights=torch.softmax(uniform(batch, config.write_heads, N, scale=4.0), -1),
        )
    link = uniform(batch, N, N, scale=1.0 / N) * (1 - torch.eye(N, dtype=dtype))
    access = access if config.arch == "ntm" else DNCState(
        memory=uniform(batch, N, W) - 0.5,
        usage=uniform(batch, N),
        link=link,
        precedence=uniform(batch, N, scale=1.0 / N),
        read_weights=torch.softmax(uniform(batch, R, N, scale=4.0), -1),
        write_weights=torch.softmax(uniform(batch, 1, N, scale=4.0), -1),
    )
    per_layer = {"lstm": 2, "gru": 1, "feedforward": 0}[config.controller]
    controller = tuple(uniform(batch, H) - 0.5 for _ in range(per_layer * config.num_layers))
    state = ModelState(controller, access, uniform(batch, R, W) - 0.5)
    for tensor in (*state.controller, *state.access, state.read_vectors):
        tensor.requires_grad_()
    return state


def flat(state: ModelState) -> list[torch.Tensor]:
    return [*state.controller, *state.access, state.read_vectors]


def run_both(model, inputs, state, loss_of):
    """Logits, returned state and gradients from the sequence path and the step loop."""
    results = []
    # Not the NTM's learned initial state: the state given here replaces it.
    used = [p for name, p in model.named_parameters() if not name.startswith("access.")]
    leaves = [inputs, *used, *flat(state)]
    for backend in ("fused", "reference"):
        with mann.backend(backend):
            logits, new_state = model(inputs, state)
            gradients = torch.autograd.grad(loss_of(model, logits, new_state), leaves)
        results.append((logits.detach(), [t.detach() for t in flat(new_state)], gradients))
    return results


def loss_through_state(model, logits, state):
    # Every kind of use: the logits, the returned state directly, and a second call from it.
    later, _ = model(torch.ones(logits.shape[0], 2, model.config.input_size, dtype=logits.dtype),
                     state)  # fmt: skip
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view(logits.shape)
    return (
        (weights * logits).sum()
        + sum((index + 1) * value.sum() for index, value in enumerate(flat(state)))
        + (later**2).sum()
    )


def loss_of_logits(model, logits, state):
    return (logits**2).sum()


@pytest.mark.parametrize("loss_of", [loss_through_state, loss_of_logits], ids=["state", "logits"])
@pytest.mark.parametrize(
    "arch, dtype, layers, read_heads, slots, batch, clip, controller",
    [
        ("dnc", torch.float64, 2, 3, 8, 3, 20.0, "lstm"),
        ("dnc", torch.float64, 1, 1, 8, 2, 20.0, "lstm"),
        ("dnc", torch.float64, 2, 2, 8, 3, 1.0, "lstm"),  # interface, logits clipped; weights x8
        ("dnc", torch.float64, 3, 2, 128, 2, 20.0, "lstm"),  # B N² = 2^15: the link's BLAS path
        ("dnc", torch.float32, 2, 4, 64, 16, 20.0, "lstm"),
        ("dnc", torch.float64, 2, 2, 8, 3, 20.0, "gru"),
        ("dnc", torch.float64, 1, 2, 8, 3, 1.0, "gru"),
        ("dnc", torch.float64, 2, 2, 8, 3, 20.0, "feedforward"),
        ("dnc", torch.float64, 1, 1, 8, 3, 1.0, "feedforward"),
        ("ntm", torch.float64, 1, 1, 8, 3, 20.0, "lstm"),
        ("ntm", torch.float64, 2, 2, 8, 3, 1.0, "lstm"),
        ("ntm", torch.float32, 1, 1, 128, 16, 20.0, "lstm"),
        ("ntm", torch.float64, 2, 2, 8, 3, 20.0, "gru"),
        ("ntm", torch.float64, 2, 1, 8, 3, 20.0, "feedforward"),
    ],
)
def test_the_sequence_equals_the_step_loop(
    arch, dtype, layers, read_heads, slots, batch, clip, controller, loss_of
):
    torch.manual_seed(0)
    model = build_model(
        dnc_config(arch=arch, num_layers=layers, read_heads=read_heads, memory_size=slots,
                   clip_value=clip, write_heads=2 if (arch, read_heads) == ("ntm", 2) else 1,
                   controller=controller)
    ).to(dtype)  # fmt: skip
    if clip < 20:
        with torch.no_grad():
            for parameter in (model.interface.weight, model.output.weight):
                parameter.mul_(8.0)
        clipped = model(torch.rand(batch, 9, 5, dtype=dtype))[0].abs() >= clip
        assert 0 < clipped.double().mean() < 1  # the clip bites somewhere, not everywhere
    inputs = torch.rand(batch, 9, 5, dtype=dtype, requires_grad=True)
    state = random_state(model, batch, dtype, seed=1)
    (logits, final, gradients), (expected_logits, expected_final, expected) = run_both(
        model, inputs, state, loss_of
    )
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(logits, expected_logits, **tolerance)
    for got, want in zip(final, expected_final, strict=True):
        torch.testing.assert_close(got, want, **tolerance)
    for got, want in zip(gradients, expected, strict=True):
        scale = want.abs().max().clamp_min(1.0)
        torch.testing.assert_close(got / scale, want / scale, **tolerance)
    # Inputs and parameters all get a gradient.
    assert all(gradient.abs().sum() > 0 for gradient in gradients[: -len(flat(state))])


def test_the_sequence_passes_gradcheck_through_inputs_and_state():
    # Parameters are covered above (equal to the step loop, which gradcheck covers in
    # test_model.py); here the node itself, outputs including the returned state.
    torch.manual_seed(0)
    model = build_model(dnc_config(hidden_size=3, memory_size=4, word_size=2, read_heads=2,
                                   input_size=2, output_size=2)).double()  # fmt: skip
    inputs = torch.rand(2, 3, 2, dtype=torch.float64, requires_grad=True)
    state = random_state(model, 2, torch.float64, seed=2)
    assert sequence.missing(model, inputs, state) is None

    def function(x, *values):
        access = DNCState(*values[4:10])
        logits, new = model(x, ModelState(tuple(values[:4]), access, values[10]))
        return logits, new.access.memory, new.access.link, new.access.usage, new.read_vectors

    assert torch.autograd.gradcheck(function, [inputs, *flat(state)])


@pytest.mark.parametrize(
    "changes, record, taken",
    [
        ({}, False, True),
        ({}, True, False),  # recording runs the reference composition
        ({"controller": "gru"}, False, True),
        ({"controller": "feedforward"}, False, True),
        ({"clip_value": 0.5}, False, False),  # a clip below 1 also clips h_t
        ({"arch": "ntm"}, False, True),
        ({"arch": "sam"}, False, True),
        ({"arch": "sdnc"}, False, True),
        ({"arch": "sdnc"}, True, False),
    ],
)
def test_which_models_take_the_sequence_path(monkeypatch, changes, record, taken):
    calls = []
    original = sequence.run
    monkeypatch.setattr(sequence, "run", lambda *args: calls.append(1) or original(*args))
    model = build_model(dnc_config(**changes))
    model(torch.rand(2, 3, 5), record=record)
    assert bool(calls) == taken


def test_the_large_link_path_is_taken_from_its_threshold(monkeypatch):
    taken = []
    original = fused_link._large_backward
    monkeypatch.setattr(
        fused_link, "_large_backward", lambda *args: taken.append(1) or original(*args)
    )
    for batch in (1, 2):  # B N² = 2^14, then 2^15
        model = build_model(dnc_config(memory_size=128, num_layers=1))
        model(torch.rand(batch, 3, 5))[0].sum().backward()
    assert len(taken) == 3  # three steps of the second model only


@pytest.mark.parametrize("batch, slots", [(2, 8), (2, 128)], ids=["small link", "large link"])
def test_a_finished_sequence_frees_what_it_saved(monkeypatch, batch, slots):
    # The node's saved data must die with the graph, by reference counting alone. When the
    # returned state shared tensors with it, the graph was a cycle that only a full garbage
    # collection frees, which training rarely triggers: a DNC 256 grew 210 MB a step.
    saved = []

    def data(values):  # the tensors and arrays in nested tuples
        for value in values:
            if isinstance(value, tuple):
                yield from data(value)
            elif isinstance(value, (torch.Tensor, np.ndarray)):
                yield value

    def watched(original):
        def keep_weak_references(*args):
            outputs, kept = original(*args)
            saved.extend(weakref.ref(value) for value in data((outputs, kept)))
            return outputs, kept

        return keep_weak_references

    monkeypatch.setattr(fused_link, "forward_pass", watched(fused_link.forward_pass))
    monkeypatch.setattr(fused_dnc, "read_forward", watched(fused_dnc.read_forward))
    monkeypatch.setattr(fused_dnc, "write_forward", watched(fused_dnc.write_forward))
    model = build_model(dnc_config(memory_size=slots, num_layers=1))
    gc.collect()
    gc.disable()
    try:
        logits, state = model(torch.rand(batch, 4, 5))
        (logits.sum() + state.access.link.sum() + state.access.memory.sum()).backward()
        assert saved and any(reference() is not None for reference in saved)
        del logits, state
        assert all(reference() is None for reference in saved)
    finally:
        gc.enable()


def test_a_second_derivative_through_the_sequence_is_refused():
    # The backward is hand-written; differentiating it again must fail loudly, not be wrong.
    model = build_model(dnc_config(num_layers=1))
    inputs = torch.rand(2, 3, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(model(inputs)[0].sum(), inputs, create_graph=True)
    # The first derivative comes back without a graph (or one that raises when used).
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()


def test_without_gradients_no_step_keeps_the_one_before(monkeypatch):
    # Evaluation (no_grad) needs no backward: each step's link and saved arrays must be freed
    # as the loop moves on, as the step loop frees them. Kept to the end, a DNC 256 at batch 64
    # over 161 steps peaked at 3.6 GB instead of 0.45.
    earlier = []
    original = sequence._DNCSteps.forward

    def forward(self, interface, state):
        read_vectors, new_state, saved = original(self, interface, state)
        # Step t-1's state_t-1 is this step's input, and the loop's last `saved` holds its
        # own inputs: what came out of step t-3 and before must be gone.
        kept = [reference for references in earlier[:-2] for reference in references]
        assert all(reference() is None for reference in kept), "an earlier step is still held"
        earlier.append([weakref.ref(t) for t in new_state])
        return read_vectors, new_state, saved

    monkeypatch.setattr(sequence._DNCSteps, "forward", forward)
    model = build_model(dnc_config(memory_size=128, num_layers=1))
    gc.disable()
    try:
        with torch.no_grad():
            model(torch.rand(2, 6, 5))
    finally:
        gc.enable()
    assert len(earlier) == 6
