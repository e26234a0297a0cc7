"""The whole-sequence node for SAM and SDNC (mann/fused/sequence.py ``_SparseSteps``, kernels in
mann/fused/sparse_step.py) against the model's step loop (the "reference" backend).

The step loop is itself held to ``mann.addressing`` (test_sparse.py, test_fused_sdnc.py,
test_fused_sparse.py). Here the node must give the same logits, the same returned state (the
in-place tables, the journal behind them, positions, precedence) and the same gradient for
every parameter, the inputs and the initial state, including gradients that reach the
returned state from a later call; and a state it returns must step, branch and roll back as
one the step loop returned.
"""

from __future__ import annotations

import pytest
import torch

import mann
from mann import ModelConfig, build_model
from mann.access import sam as sam_module
from mann.fused import runtime, sequence, sparse_step

pytestmark = pytest.mark.skipif(not runtime.HAVE_NUMBA, reason="the fused kernels need numba")


def config(arch: str, **changes) -> ModelConfig:
    values = dict(arch=arch, input_size=5, output_size=4, hidden_size=7, num_layers=2,
                  memory_size=16, word_size=6, read_heads=2, sparse_reads=3,
                  temporal_reads=4)  # fmt: skip
    values.update(changes)
    return ModelConfig(**values)


def inputs_for(model, batch: int, steps: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    dtype = model.output.weight.dtype
    size = (batch, steps, model.config.input_size)
    return torch.randint(0, 2, size, generator=generator).to(dtype).requires_grad_()


def differentiable(state) -> list[torch.Tensor]:
    return [*state.controller, state.access.read_weights, state.read_vectors]


def loss_through_state(model, logits, state):
    # The logits, the returned state directly, and a second call from it (its reads reach the
    # first call's memory through the memory gradient path).
    later, _ = model(torch.ones(logits.shape[0], 3, model.config.input_size, dtype=logits.dtype),
                     state)  # fmt: skip
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view(logits.shape)
    return (
        (weights * logits).sum()
        + sum((i + 1) * value.sum() for i, value in enumerate(differentiable(state)))
        + (later**2).sum()
    )


def run_both(model, inputs, loss_of=loss_through_state):
    """(logits, returned state, gradients of parameters and inputs) from the node and the loop."""
    results = []
    leaves = [inputs, *model.parameters()]
    for backend in ("fused", "reference"):
        with mann.backend(backend):
            logits, state = model(inputs)
            gradients = torch.autograd.grad(loss_of(model, logits, state), leaves,
                                            allow_unused=True)  # fmt: skip
        results.append((logits.detach(), state, gradients))
    return results


def assert_states_equal(first, second, tolerance: float) -> None:
    for name, a, b in zip(first.access._fields, first.access, second.access, strict=True):
        if name == "memory_gradient":
            assert a.shape == b.shape
        elif a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, rtol=0, atol=tolerance, msg=name)
        else:  # slots, last uses, steps: exactly
            assert torch.equal(a, b), name
    for a, b in zip(differentiable(first), differentiable(second), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=tolerance)


@pytest.mark.parametrize(
    "arch, dtype, batch, changes",
    [
        ("sdnc", torch.float64, 3, {}),
        ("sdnc", torch.float64, 1, {"read_heads": 1, "num_layers": 1}),
        ("sdnc", torch.float64, 4, {"controller": "gru", "clip_value": 1.0}),
        ("sdnc", torch.float64, 2, {"controller": "feedforward", "temporal_reads": 2}),
        ("sdnc", torch.float64, 2, {"memory_size": 64, "sparse_reads": 5, "read_heads": 3}),
        ("sdnc", torch.float32, 8, {"memory_size": 4096, "word_size": 8, "read_heads": 4,
                                    "sparse_reads": 4, "temporal_reads": 8}),  # faiss IVF
        ("sam", torch.float64, 3, {}),
        ("sam", torch.float64, 1, {"controller": "gru", "num_layers": 1}),
        ("sam", torch.float32, 8, {"memory_size": 4096, "word_size": 8, "read_heads": 4}),
    ],
)  # fmt: skip
def test_the_sequence_equals_the_step_loop(arch, dtype, batch, changes):
    torch.manual_seed(1)
    model = build_model(config(arch, **changes)).to(dtype)
    # float32 (the IVF index needs it): the kernels and torch's composition, the reference,
    # round differently in the last bit, and over a long run a near-tie in the selection of
    # the K largest read weights can go either way (for this seed, at step 13 of 14), after
    # which the runs read different slots. So 8 steps there; float64 runs compare 14.
    steps = 14 if dtype == torch.float64 else 8
    inputs = inputs_for(model, batch, steps, seed=2)
    (logits, state, gradients), (logits_ref, state_ref, gradients_ref) = run_both(model, inputs)
    tolerance = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(logits, logits_ref, rtol=0, atol=tolerance)
    assert_states_equal(state, state_ref, tolerance)
    assert int(state.access.steps) == inputs.shape[1]
    for gradient, reference in zip(gradients, gradients_ref, strict=True):
        assert gradient is not None and reference is not None
        scale = max(1.0, reference.abs().max().item())
        torch.testing.assert_close(gradient, reference, rtol=0, atol=tolerance * scale)
    # The memory path carries gradient: the controller's read weights see the reads.
    names = [name for name, _ in model.named_parameters()]
    assert gradients[1 + names.index("controller.read_weight")].abs().sum() > 0


def test_the_node_is_taken_and_the_loop_is_not_called(monkeypatch):
    steps = []
    monkeypatch.setattr(sam_module.SAMAccess, "step", lambda *a, **k: steps.append(1))
    model = build_model(config("sdnc"))
    logits, state = model(torch.rand(2, 5, 5))
    assert not steps and logits.shape == (2, 5, 4) and int(state.access.steps) == 5


@pytest.mark.parametrize("arch", ["sam", "sdnc"])
def test_streaming_in_two_calls_equals_one(arch):
    torch.manual_seed(3)
    model = build_model(config(arch)).double()
    inputs = inputs_for(model, 2, 12, seed=4)
    whole, whole_state = model(inputs)
    first, state = model(inputs[:, :5])
    second, final_state = model(inputs[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-12)
    assert_states_equal(final_state, whole_state, 1e-12)
    # Gradients of the second half reach the first half's parameters through memory.
    (gradient,) = torch.autograd.grad(second.pow(2).sum(), model.controller.read_weight)
    assert gradient.abs().sum() > 0


@pytest.mark.parametrize("arch", ["sam", "sdnc"])
def test_stepping_one_state_twice_branches_through_the_journal(arch):
    # The second call starts from a state whose tables the first call has since changed: it
    # must roll a copy back through the journal the node wrote, and get the same result.
    torch.manual_seed(5)
    model = build_model(config(arch)).double()
    _, state = model(inputs_for(model, 2, 6, seed=6))
    tables = model.access.tables_at(state.access)  # copies, as of the state's step
    inputs = inputs_for(model, 2, 8, seed=7)
    once, once_state = model(inputs, state)
    again, again_state = model(inputs, state)
    torch.testing.assert_close(again, once, rtol=0, atol=0)
    assert_states_equal(again_state, once_state, 0.0)
    # Rolled back through the journal the node wrote, the tables are the state's own again.
    for name, table in model.access.tables_at(state.access).items():
        assert torch.equal(table, tables[name]), name
    assert tables["memory"].abs().sum() > 0
    with mann.backend("reference"):
        reference, _ = model(inputs, state)
    torch.testing.assert_close(reference, once, rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["sam", "sdnc"])
def test_a_failure_mid_sequence_leaves_the_state_usable(arch, monkeypatch):
    torch.manual_seed(8)
    model = build_model(config(arch)).double()
    inputs = inputs_for(model, 2, 9, seed=9)
    _, state = model(inputs[:, :3])
    expected, expected_state = model(inputs, state)
    original, calls = sam_module.SlotStore.search, []

    def failing(store, *args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("index unavailable")
        return original(store, *args)

    monkeypatch.setattr(sam_module.SlotStore, "search", failing)
    with pytest.raises(RuntimeError, match="index unavailable"):
        model(inputs, state)
    monkeypatch.setattr(sam_module.SlotStore, "search", original)
    result, result_state = model(inputs, state)
    torch.testing.assert_close(result, expected, rtol=0, atol=0)
    assert_states_equal(result_state, expected_state, 0.0)


def test_links_the_kernel_leaves_to_torch_still_equal_the_loop():
    # K_L = 18: torch.topk sorts 17 entries, a path mann.fused.sdnc does not replay, so the
    # link kernel declines and the node takes the torch composition for the links.
    torch.manual_seed(10)
    model = build_model(config("sdnc", temporal_reads=18, memory_size=32)).double()
    inputs = inputs_for(model, 2, 10, seed=11)
    (logits, state, gradients), (logits_ref, state_ref, gradients_ref) = run_both(model, inputs)
    torch.testing.assert_close(logits, logits_ref, rtol=0, atol=1e-10)
    assert_states_equal(state, state_ref, 1e-10)
    assert (state.access.link_predecessor_weights > 0).sum() > 18  # links were made
    for gradient, reference in zip(gradients, gradients_ref, strict=True):
        torch.testing.assert_close(gradient, reference, rtol=0, atol=1e-9)


def test_without_gradients_nothing_is_kept_per_step(monkeypatch):
    kept = []
    original = sequence._SparseSteps.forward

    def watched(self, interface, state):
        result = original(self, interface, state)
        kept.append(result[2])
        return result

    monkeypatch.setattr(sequence._SparseSteps, "forward", watched)
    model = build_model(config("sdnc"))
    with torch.no_grad():
        model(torch.rand(2, 6, 5))
    assert len(kept) == 6  # made, then dropped: the node keeps them only for a backward


def test_the_read_selection_replays_torch_topk_on_ties():
    # Equal merged weights (two slots read alike) must be ordered as torch.topk orders them.
    values = torch.tensor([0.2, 0.5, 0.5, 0.1, 0.5, 0.0, 0.3, 0.5], dtype=torch.float64)
    for k in (1, 2, 3, 5):
        got = values.numpy().copy()
        order = torch.empty(values.shape[0], dtype=torch.int64).numpy()
        sparse_step._largest(got, order, k)
        expected = values.topk(k)
        assert order[:k].tolist() == expected.indices.tolist()
        assert got[:k].tolist() == expected.values.tolist()
