"""The LSTM cell's backward as one kernel (``mann.controller.lstm_cell``'s equations).

Composed, a cell is nine autograd nodes per layer and time step (two slices, σ, a split, two
tanh, two products, an addcmul), and at a controller's size the autograd engine's work per
node costs more than the arithmetic. Here the forward is the same torch operations, run
without recording, and the backward is one numba kernel: every derivative comes from the
saved activations (σ' = σ(1 - σ), tanh' = 1 - tanh²), so it needs no transcendental
function and vectorises.

Gates are ordered i, f, o, g (input, forget, output, candidate), as the controller's.
"""

from __future__ import annotations

import torch

from mann.controller import lstm_cell as _reference_cell
from mann.fused.runtime import HAVE_NUMBA, njit, usable

if HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _cell_backward(grad_hidden, grad_cell, gates, candidate, cell_tanh, prev_cell,
                       grad_gates, grad_prev_cell):  # fmt: skip
        # gates (B,3H) = σ of i, f, o; candidate g, cell_tanh tanh(c_t), prev_cell c_{t-1}
        # (B,H). Fills dL/d(pre-activation gates) (B,4H) and dL/dc_{t-1} (B,H).
        batch, size = prev_cell.shape
        for b in range(batch):
            for j in range(size):
                i, f, o = gates[b, j], gates[b, size + j], gates[b, 2 * size + j]
                g, tanh_cell = candidate[b, j], cell_tanh[b, j]
                grad_output = grad_hidden[b, j] * tanh_cell
                cell = grad_cell[b, j] + grad_hidden[b, j] * o * (1.0 - tanh_cell * tanh_cell)
                grad_gates[b, j] = cell * g * i * (1.0 - i)
                grad_gates[b, size + j] = cell * prev_cell[b, j] * f * (1.0 - f)
                grad_gates[b, 2 * size + j] = grad_output * o * (1.0 - o)
                grad_gates[b, 3 * size + j] = cell * i * (1.0 - g * g)
                grad_prev_cell[b, j] = cell * f


def cell_forward(gates: torch.Tensor, prev_cell: torch.Tensor):
    """``mann.controller.lstm_cell``: (h_t, c_t) and the activations the backward needs."""
    return _reference_cell(gates, prev_cell)


class _LSTMCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, prev_cell):
        hidden, cell, (sigmoids, candidate, cell_tanh) = cell_forward(gates, prev_cell)
        ctx.save_for_backward(sigmoids, candidate, cell_tanh, prev_cell)
        return hidden, cell

    @staticmethod
    def backward(ctx, grad_hidden, grad_cell):
        return cell_backward(ctx.saved_tensors, grad_hidden, grad_cell)


def cell_backward(saved, grad_hidden: torch.Tensor, grad_cell: torch.Tensor):
    """dL/d(pre-activation gates) (B,4H) and dL/dc_{t-1} (B,H) from ``saved`` = (σ of i, f, o,
    g, tanh(c_t), c_{t-1}) (``cell_forward``'s activations and the previous cell) and the
    gradients of h_t and c_t. Needs numba."""
    sigmoids, candidate, cell_tanh, prev_cell = saved
    grad_gates = torch.empty(prev_cell.shape[0], 4 * prev_cell.shape[1], dtype=prev_cell.dtype)
    grad_prev_cell = torch.empty_like(prev_cell)
    _cell_backward(
        grad_hidden.contiguous().numpy(), grad_cell.contiguous().numpy(),
        sigmoids.numpy(), candidate.numpy(), cell_tanh.numpy(),
        prev_cell.contiguous().numpy(), grad_gates.numpy(), grad_prev_cell.numpy(),
    )  # fmt: skip
    return grad_gates, grad_prev_cell


def lstm_cell(gates: torch.Tensor, prev_cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h_t, c_t) from pre-activation gates (B,4H) and c_{t-1} (B,H): one autograd node where
    the kernel is usable (CPU, float32/64, numba), else the composed operations."""
    if usable(gates, prev_cell):
        return _LSTMCell.apply(gates, prev_cell)
    hidden, cell, _ = _reference_cell(gates, prev_cell)
    return hidden, cell
