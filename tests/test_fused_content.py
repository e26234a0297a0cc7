"""The shared content-addressing kernel (mann/fused/content.py) against its definition,
``addressing.content_weights``: the weights, and the gradients of memory, keys and strengths
against torch's autograd of the equation, in both memory layouts (rows for the NTM and the
sparse reads, columns for the DNC), compiled with either caller's flags (the DNC's and NTM's
reassociating ``FASTMATH``, the sparse reads' none); zero rows and a zero key included;
and the hand-written backward under gradcheck.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mann import addressing
from mann.fused import runtime

pytestmark = pytest.mark.skipif(not runtime.HAVE_NUMBA, reason="the fused kernels need numba")

if runtime.HAVE_NUMBA:
    from mann.fused.content import (
        columns_and_norms,
        content_columns,
        content_columns_backward,
        content_rows,
        content_rows_backward,
        norms_of_rows,
    )
    from mann.fused.dnc import FASTMATH
    from mann.fused.runtime import njit

    def compiled(fastmath):
        """Batch drivers of the kernel in both layouts, compiled with ``fastmath`` as a
        caller would be: memory (B,N,W), keys (B,H,W), strengths (B,H)."""

        @njit(fastmath=fastmath, error_model="numpy")
        def rows_forward(memory, keys, strengths, norms, key_norms, weights, similarity):
            for b in range(memory.shape[0]):
                norms_of_rows(memory[b], norms[b])
                for h in range(keys.shape[1]):
                    key_norms[b, h] = content_rows(memory[b], norms[b], keys[b, h],
                                                   strengths[b, h], weights[b, h],
                                                   similarity[b, h])  # fmt: skip

        @njit(fastmath=fastmath, error_model="numpy")
        def rows_backward(memory, keys, strengths, norms, key_norms, weights, similarity,
                          grad_weights, grad_memory, grad_keys, grad_strengths):  # fmt: skip
            scratch = np.empty((2, memory.shape[1]))
            for b in range(memory.shape[0]):
                for h in range(keys.shape[1]):
                    grad_strengths[b, h] = content_rows_backward(
                        memory[b], norms[b], keys[b, h], key_norms[b, h], strengths[b, h],
                        weights[b, h], similarity[b, h], grad_weights[b, h], grad_memory[b],
                        grad_keys[b, h], scratch,
                    )  # fmt: skip

        @njit(fastmath=fastmath, error_model="numpy")
        def columns_forward(memory, keys, strengths, norms, key_norms, weights, similarity):
            columns = np.empty((memory.shape[2], memory.shape[1]))
            for b in range(memory.shape[0]):
                columns_and_norms(memory[b], columns, norms[b])
                for h in range(keys.shape[1]):
                    key_norms[b, h] = content_columns(columns, norms[b], keys[b, h],
                                                      strengths[b, h], weights[b, h],
                                                      similarity[b, h])  # fmt: skip

        @njit(fastmath=fastmath, error_model="numpy")
        def columns_backward(memory, keys, strengths, norms, key_norms, weights, similarity,
                             grad_weights, grad_memory, grad_keys, grad_strengths):  # fmt: skip
            batch, slots, width = memory.shape
            columns, grad_columns = np.empty((width, slots)), np.empty((width, slots))
            scratch = np.empty((2, slots))
            for b in range(batch):
                columns_and_norms(memory[b], columns, norms[b])
                grad_columns[:] = 0.0
                for h in range(keys.shape[1]):
                    grad_strengths[b, h] = content_columns_backward(
                        columns, norms[b], keys[b, h], key_norms[b, h], strengths[b, h],
                        weights[b, h], similarity[b, h], grad_weights[b, h], grad_columns,
                        grad_keys[b, h], scratch,
                    )  # fmt: skip
                grad_memory[b] += grad_columns.T

        return {"rows": (rows_forward, rows_backward),
                "columns": (columns_forward, columns_backward)}  # fmt: skip

    KERNELS = {"fastmath": compiled(FASTMATH), "strict": compiled(False)}


class _Content(torch.autograd.Function):
    """The kernel as an autograd Function: (memory, keys, strengths) -> weights (B,H,N)."""

    @staticmethod
    def forward(ctx, memory, keys, strengths, layout, flags):
        forward, ctx.backward = KERNELS[flags][layout]
        batch, slots, _ = memory.shape
        heads = keys.shape[1]
        arrays = [t.detach().contiguous().numpy() for t in (memory, keys, strengths)]
        norms = np.empty((batch, slots))  # float64, as the kernels keep them
        key_norms = np.empty((batch, heads))
        weights = np.empty((batch, heads, slots), dtype=arrays[0].dtype)
        similarity = np.empty((batch, heads, slots), dtype=arrays[0].dtype)
        forward(*arrays, norms, key_norms, weights, similarity)
        ctx.arrays = (*arrays, norms, key_norms, weights, similarity)
        return torch.from_numpy(weights)

    @staticmethod
    def backward(ctx, grad_weights):
        memory, keys, strengths = ctx.arrays[:3]
        grads = np.zeros_like(memory), np.zeros_like(keys), np.empty_like(strengths)
        ctx.backward(*ctx.arrays, grad_weights.contiguous().numpy(), *grads)
        return (*(torch.from_numpy(grad) for grad in grads), None, None)


def random_inputs(seed: int, dtype: torch.dtype, zeros: bool):
    generator = torch.Generator().manual_seed(seed)
    batch, slots, heads, width = 2, 7, 3, 5
    memory = torch.randn(batch, slots, width, generator=generator, dtype=torch.float64)
    keys = torch.randn(batch, heads, width, generator=generator, dtype=torch.float64)
    strengths = 1.0 + 4.0 * torch.rand(batch, heads, generator=generator, dtype=torch.float64)
    if zeros:  # never-written slots (|M[i]| = 0) and a zero key (|k| = 0)
        memory[:, ::3] = 0.0
        keys[1, 2] = 0.0
    return tuple(t.to(dtype) for t in (memory, keys, strengths))


def weights_and_gradients(content, memory, keys, strengths, seed: int):
    leaves = [t.clone().requires_grad_() for t in (memory, keys, strengths)]
    weights = content(*leaves)
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn(weights.shape, generator=generator, dtype=torch.float64)
    loss = (weights * probe.to(weights.dtype)).sum()
    return weights.detach(), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("flags", ["fastmath", "strict"])
@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("zeros", [False, True])
def test_weights_and_gradients_equal_autograd_of_the_equation(flags, layout, dtype, zeros):
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else {}
    for seed in range(3):
        inputs = random_inputs(seed, dtype, zeros)
        weights, grads = weights_and_gradients(
            lambda *t: _Content.apply(*t, layout, flags), *inputs, seed
        )
        expected_weights, expected_grads = weights_and_gradients(
            addressing.content_weights, *inputs, seed
        )
        torch.testing.assert_close(weights, expected_weights, **tolerance)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
        for got, expected, name in zip(grads, expected_grads, ("memory", "keys", "strengths"),
                                       strict=True):  # fmt: skip
            assert torch.isfinite(got).all(), name
            torch.testing.assert_close(got, expected, **tolerance, msg=name)


@pytest.mark.parametrize("flags", ["fastmath", "strict"])
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_the_backward_passes_gradcheck(layout, flags):
    memory, keys, strengths = random_inputs(5, torch.float64, zeros=False)
    inputs = tuple(t.requires_grad_() for t in (memory, keys, strengths))
    assert torch.autograd.gradcheck(lambda *t: _Content.apply(*t, layout, flags), inputs)


def test_all_zero_memory_gives_uniform_weights_and_no_nan():
    memory = torch.zeros(2, 6, 4, dtype=torch.float64)
    _, keys, strengths = random_inputs(2, torch.float64, zeros=False)
    keys = keys[..., :4].contiguous()
    for layout in ("rows", "columns"):
        weights, grads = weights_and_gradients(
            lambda *t, layout=layout: _Content.apply(*t, layout, "fastmath"),
            memory, keys, strengths, seed=0,
        )  # fmt: skip
        torch.testing.assert_close(weights, torch.full_like(weights, 1 / 6))
        assert all(torch.isfinite(grad).all() for grad in grads)
