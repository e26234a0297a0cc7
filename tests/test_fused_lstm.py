"""The LSTM cell as one autograd node (mann/fused/lstm.py) against the composed operations."""

from __future__ import annotations

import pytest
import torch

from mann import ModelConfig, build_model
from mann.fused import lstm as fused_lstm
from mann.fused import runtime

pytestmark = pytest.mark.skipif(not runtime.HAVE_NUMBA, reason="the fused kernels need numba")


def composed(gates, prev_cell):
    hidden, cell, _ = fused_lstm.cell_forward(gates, prev_cell)
    return hidden, cell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cell_and_its_gradients_equal_the_composed_operations(dtype):
    generator = torch.Generator().manual_seed(0)
    gates = (3.0 * torch.randn(5, 4 * 6, generator=generator, dtype=dtype)).requires_grad_()
    prev_cell = torch.randn(5, 6, generator=generator, dtype=dtype).requires_grad_()
    weights = torch.randn(2, 5, 6, generator=generator, dtype=dtype)
    results = []
    for cell_function in (fused_lstm.lstm_cell, composed):
        hidden, cell = cell_function(gates, prev_cell)
        loss = (weights[0] * hidden).sum() + (weights[1] * cell).sum()
        results.append((hidden, cell, *torch.autograd.grad(loss, (gates, prev_cell))))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)
    assert results[0][2].abs().sum() > 0 and results[0][3].abs().sum() > 0


def test_the_cell_passes_gradcheck_when_only_the_hidden_output_is_used():
    gates = torch.randn(3, 4 * 4, dtype=torch.float64, requires_grad=True)
    prev_cell = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, c: fused_lstm.lstm_cell(g, c)[0], (gates, prev_cell))
    assert torch.autograd.gradcheck(lambda g, c: fused_lstm.lstm_cell(g, c), (gates, prev_cell))


def test_an_lstm_model_takes_the_fused_cell(monkeypatch):
    calls = []
    kernel = fused_lstm._cell_backward
    monkeypatch.setattr(fused_lstm, "_cell_backward", lambda *a: calls.append(1) or kernel(*a))
    model = build_model(ModelConfig(arch="dnc", input_size=3, output_size=2, hidden_size=5,
                                    num_layers=2, memory_size=6, word_size=3))  # fmt: skip
    logits, _ = model(torch.rand(2, 4, 3))
    logits.sum().backward()
    assert len(calls) == 2 * 4  # every layer at every step
