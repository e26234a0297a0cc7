"""The DNC's improvements (Csordás & Schmidhuber 2019): each equation against an independent
numpy computation and in gradcheck, the step with each switched on, and the plain DNC (every
shipped checkpoint) unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mann
from mann import addressing
from mann.access.dnc import DNCAccess
from mann.backends import BackendError
from mann.tasks import make_task

torch.set_num_threads(1)
CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
EPSILON = addressing.EPSILON


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_masked_content_weights_compare_only_the_masked_part():
    rng = np.random.default_rng(0)
    memory, keys = rng.normal(size=(2, 6, 5)), rng.normal(size=(2, 3, 5))
    strengths, masks = 1 + rng.random((2, 3)) * 4, rng.random((2, 3, 5))
    masks[0, 0] = [1, 1, 0, 0, 0]  # head 0 of item 0 compares the first two columns only
    expected = np.empty((2, 3, 6))
    for b in range(2):
        for h in range(3):
            k = keys[b, h] * masks[b, h]
            m = memory[b] * masks[b, h]
            similarity = m @ k / (np.linalg.norm(k) * np.linalg.norm(m, axis=1) + EPSILON)
            expected[b, h] = softmax(strengths[b, h] * similarity)
    got = addressing.masked_content_weights(*(torch.from_numpy(x) for x in
                                              (memory, keys, strengths, masks)))  # fmt: skip
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # An all-ones mask is the plain content lookup.
    ones = torch.ones(2, 3, 5, dtype=torch.float64)
    plain = addressing.content_weights(*(torch.from_numpy(x) for x in (memory, keys, strengths)))
    torch.testing.assert_close(addressing.masked_content_weights(
        torch.from_numpy(memory), torch.from_numpy(keys), torch.from_numpy(strengths), ones),
        plain)  # fmt: skip
    # Rows that differ only outside the mask look the same to the masked key.
    memory[0, 1, :2], memory[0, 2, :2] = keys[0, 0, :2], keys[0, 0, :2]
    got = addressing.masked_content_weights(*(torch.from_numpy(x) for x in
                                              (memory, keys, strengths, masks)))  # fmt: skip
    assert got[0, 0, 1] == pytest.approx(float(got[0, 0, 2]))


def test_deallocation_scales_each_slot_by_its_retention():
    rng = np.random.default_rng(1)
    memory, prev_reads, free = rng.normal(size=(2, 5, 3)), rng.random((2, 2, 5)), rng.random((2, 2))
    retention = np.prod(1 - free[:, :, None] * prev_reads, axis=1)
    got = addressing.deallocate(torch.from_numpy(memory),
                                addressing.retention(torch.from_numpy(prev_reads),
                                                     torch.from_numpy(free)))  # fmt: skip
    np.testing.assert_allclose(got.numpy(), memory * retention[:, :, None], rtol=1e-12)


def test_sharpen_links_powers_and_renormalises_and_keeps_zeros():
    weights = torch.tensor([[[0.5, 0.3, 0.2, 0.0]], [[0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    exponents = torch.tensor([[3.0], [2.0]], dtype=torch.float64)
    got = addressing.sharpen_links(weights, exponents)
    powered = np.array([0.5, 0.3, 0.2, 0.0]) ** 3
    np.testing.assert_allclose(got[0, 0].numpy(), powered / (powered.sum() + EPSILON), rtol=1e-12)
    assert got[1].abs().sum() == 0  # nothing to follow stays nothing
    # s = 1 only renormalises.
    torch.testing.assert_close(addressing.sharpen_links(weights[:1], torch.ones(1, 1).double()),
                               weights[:1] / (1 + EPSILON))  # fmt: skip
    # No NaN in the gradient at a zero weight (d^s log d would be 0 * -inf).
    weights = weights.clone().requires_grad_()
    exponents = exponents.clone().requires_grad_()
    addressing.sharpen_links(weights, exponents).sum().backward()
    assert torch.isfinite(weights.grad).all() and torch.isfinite(exponents.grad).all()


def test_the_improvements_pass_gradcheck():
    generator = torch.Generator().manual_seed(2)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    assert torch.autograd.gradcheck(addressing.masked_content_weights,
                                    (rand(2, 4, 3) - 0.5, rand(2, 2, 3) - 0.5, 1 + rand(2, 2),
                                     rand(2, 2, 3)))  # fmt: skip
    assert torch.autograd.gradcheck(addressing.deallocate, (rand(2, 4, 3), rand(2, 4)))
    assert torch.autograd.gradcheck(addressing.sharpen_links, (0.1 + rand(2, 2, 4), 1 + rand(2, 2)))


def improved(**flags) -> mann.MemoryAugmentedNetwork:
    torch.manual_seed(0)
    return mann.build_model(mann.ModelConfig(arch="dnc", input_size=5, output_size=4,
                                             hidden_size=12, memory_size=8, word_size=4,
                                             read_heads=2, **flags))  # fmt: skip


@pytest.mark.parametrize("flag", ["masked_content", "deallocation", "link_sharpness"])
def test_each_improvement_changes_the_run_and_trains_by_the_reference(flag):
    plain, model = improved(), improved(**{flag: True})
    inputs = make_task("copy", bits=4, max_length=5).sample(2, torch.Generator().manual_seed(1))
    assert mann.backend_for(plain) == "fused" and mann.backend_for(model) == "reference"
    with pytest.raises(BackendError, match="the kernels implement the plain DNC"):
        with mann.backend("fused"):
            model(inputs.inputs)
    logits, _ = model(inputs.inputs)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    _, _, trace = model(inputs.inputs, record=True)
    fields = {"masked_content": ("read_masks", "write_mask"), "deallocation": (),
              "link_sharpness": ("forward_sharpness", "backward_sharpness")}[flag]  # fmt: skip
    for name in fields:
        assert getattr(trace, name) is not None, name
    if flag == "masked_content":
        assert trace.read_masks.shape == (trace.steps, 2, 4) and trace.write_mask.shape[1] == 4
        assert ((trace.read_masks > 0) & (trace.read_masks < 1)).all()
    if flag == "link_sharpness":
        assert (trace.forward_sharpness >= 1).all()


def test_deallocation_wipes_a_freed_slot_before_the_write():
    access = DNCAccess(memory_size=4, word_size=3, read_heads=1, deallocation=True)
    state = access.initial_state(1)
    memory = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [1.0, 1.0, 1.0]]])
    reads = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])  # slot 1 was read last step
    state = state._replace(memory=memory, read_weights=reads)
    interface = torch.zeros(1, access.interface_size)
    layout = access.layout
    interface[0, layout.slice("free_gates")] = 50.0  # free what was read
    interface[0, layout.slice("write_gate")] = -50.0  # and write nothing
    _, new_state, _ = access.step(interface, state)
    torch.testing.assert_close(new_state.memory[0, 1], torch.zeros(3))  # wiped
    torch.testing.assert_close(new_state.memory[0, [0, 2, 3]], memory[0, [0, 2, 3]])
    plain = DNCAccess(memory_size=4, word_size=3, read_heads=1)
    _, kept, _ = plain.step(interface, state)
    torch.testing.assert_close(kept.memory, memory)  # the plain DNC keeps stale data


def test_the_layout_matches_the_kernels_offsets():
    from mann.fused.runtime import HAVE_NUMBA

    if not HAVE_NUMBA:
        pytest.skip("numba")
    from mann.fused.dnc import _layout

    names = ("write_key", "write_vector", "read_strengths", "write_strength", "erase",
             "free_gates", "allocation_gate", "write_gate", "read_modes")  # fmt: skip
    for width, heads in ((4, 1), (20, 1), (6, 3)):
        layout = DNCAccess(8, width, heads, masked_content=True, link_sharpness=True).layout
        assert tuple(_layout(heads, width)) == tuple(layout.offset(name) for name in names)
        assert layout.offset("read_masks") == layout.offset("read_modes") + 3 * heads


def test_shipped_dnc_checkpoints_are_plain_dncs_and_still_solve_their_task():
    from mann.evaluate import generalisation

    for name in ("dnc-copy", "dnc-repeat-copy", "dnc-associative-recall", "dnc-multi-copy"):
        config = mann.checkpoint.read_metadata(CHECKPOINTS / name)["config"]
        assert not any(key in config for key in ("masked_content", "deallocation",
                                                  "link_sharpness"))  # saved before them
        model = mann.load(CHECKPOINTS / name)
        assert not model.access.improved
    model = mann.load(CHECKPOINTS / "dnc-copy")
    frame = generalisation(model, make_task("copy"), [20], sequences=50)
    assert float(frame["mean_bit_errors"].iloc[0]) == 0.0
