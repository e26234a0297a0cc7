"""The recurrent controllers against torch's own cells, an independent statement of the equations.

The step loop and the whole-sequence node (mann/fused/sequence.py) share the controllers'
cell code (``gru_cell``, ``mann.fused.lstm``), so their agreement cannot catch an error in
it; torch.nn.GRUCell and torch.nn.LSTMCell can. A layer's input is [x_t; r_{t-1}].
"""

from __future__ import annotations

import torch

from mann.controller import GRUController, LSTMController

INPUT, READS, HIDDEN, BATCH = 5, 3, 7, 4


def inputs_and_reads():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, INPUT, generator=generator, dtype=torch.float64)
    reads = torch.randn(BATCH, READS, generator=generator, dtype=torch.float64)
    hidden = torch.randn(BATCH, HIDDEN, generator=generator, dtype=torch.float64)
    cell = torch.randn(BATCH, HIDDEN, generator=generator, dtype=torch.float64)
    return x, reads, hidden, cell


def test_the_gru_controller_is_torchs_gru_cell():
    torch.manual_seed(1)
    controller = GRUController(INPUT, READS, HIDDEN).double()
    x, reads, hidden, _ = inputs_and_reads()
    got, _ = controller(controller.project_inputs(x)[:, 0], reads, (hidden,))

    reference = torch.nn.GRUCell(INPUT + READS, HIDDEN).double()  # gates r, z, n, as ours
    with torch.no_grad():
        reference.weight_ih.copy_(torch.cat([controller.input_weight, controller.read_weight], 1))
        reference.bias_ih.copy_(controller.bias[0])
        reference.weight_hh.copy_(controller.hidden_weight[0])
        reference.bias_hh.copy_(controller.hidden_bias[0])
    torch.testing.assert_close(got, reference(torch.cat([x[:, 0], reads], 1), hidden))


def test_the_lstm_controller_is_torchs_lstm_cell():
    torch.manual_seed(1)
    controller = LSTMController(INPUT, READS, HIDDEN).double()
    x, reads, hidden, cell = inputs_and_reads()
    projected = controller.project_inputs(x)[:, 0]
    got_hidden, (_, got_cell) = controller(projected, reads, (hidden, cell))

    # torch orders the gates i, f, g, o; ours i, f, o, g. One bias here, so torch's second is 0.
    def torch_order(rows):
        i, f, o, g = rows.chunk(4, 0)
        return torch.cat([i, f, g, o], 0)

    reference = torch.nn.LSTMCell(INPUT + READS, HIDDEN).double()
    with torch.no_grad():
        weight_ih = torch.cat([controller.input_weight, controller.read_weight], 1)
        reference.weight_ih.copy_(torch_order(weight_ih))
        reference.bias_ih.copy_(torch_order(controller.bias[0]))
        reference.weight_hh.copy_(torch_order(controller.hidden_weight[0]))
        reference.bias_hh.zero_()
    expected_hidden, expected_cell = reference(torch.cat([x[:, 0], reads], 1), (hidden, cell))
    torch.testing.assert_close(got_hidden, expected_hidden)
    torch.testing.assert_close(got_cell, expected_cell)
