"""mann.inputs: one input sequence (sampled or edited by hand) and its recorded trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mann
from mann.inputs import edited_input, record, sample_input
from mann.tasks import make_task
from tests.helpers import tiny_config

torch.set_num_threads(1)

COPY = make_task("copy", bits=4, min_length=1, max_length=5)


def test_sample_input_has_the_asked_length_and_seed():
    batch = sample_input(COPY, 4, seed=7)
    assert batch.inputs.shape == (1, 9, 5) and float(batch.mask.sum()) == 4
    again = sample_input(COPY, 4, seed=7)
    assert torch.equal(batch.inputs, again.inputs)
    assert not torch.equal(batch.inputs, sample_input(COPY, 4, seed=8).inputs)
    with pytest.raises(ValueError, match="length must be an integer >= 1, got 0"):
        sample_input(COPY, 0, seed=0)
    with pytest.raises(ValueError, match=r"length 300 makes 601 steps .* at most 400"):
        sample_input(COPY, 300, seed=0)
    with pytest.raises(ValueError, match="seed"):
        sample_input(COPY, 3, seed=-1)


def test_edited_copy_input_recomputes_the_targets():
    batch = sample_input(COPY, 3, seed=1)
    inputs = batch.inputs[0].numpy().copy()
    inputs[0, :4] = [1, 0, 1, 0]
    edited = edited_input(COPY, inputs)
    assert torch.equal(edited.inputs[0], torch.from_numpy(inputs))
    np.testing.assert_array_equal(edited.targets[0, 4].numpy(), [1, 0, 1, 0])
    np.testing.assert_array_equal(edited.targets[0, 5:].numpy(), inputs[1:3, :4])
    assert torch.equal(edited.mask, batch.mask)


def test_edited_inputs_are_checked():
    inputs = sample_input(COPY, 3, seed=1).inputs[0].numpy().copy()
    no_delimiter = inputs.copy()
    no_delimiter[3, 4] = 0
    with pytest.raises(ValueError, match="exactly one delimiter"):
        edited_input(COPY, no_delimiter)
    with pytest.raises(ValueError, match=r"inputs must be \(steps, 5\)"):
        edited_input(COPY, inputs[:, :3])
    with pytest.raises(ValueError, match="need 7 steps"):
        edited_input(COPY, inputs[:5])
    nan = inputs.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        edited_input(COPY, nan)
    # Another task: the input is kept, nothing is scored.
    task = make_task("associative_recall")
    other = sample_input(task, 2, seed=0).inputs[0].numpy()
    batch = edited_input(task, other)
    assert float(batch.mask.sum()) == 0 and float(batch.targets.abs().sum()) == 0


def test_record_stores_the_ntm_initial_weightings_and_bit_errors():
    torch.manual_seed(0)
    model = mann.build_model(tiny_config("ntm"))
    batch = sample_input(COPY, 3, seed=2)
    trace = record(model, batch)
    state = model.access.initial_state(1, "cpu")
    np.testing.assert_allclose(trace.metadata["initial_weights"]["read"],
                               state.read_weights[0].detach().numpy(), rtol=1e-6)
    logits, _ = model(batch.inputs)
    expected = float(((logits > 0).float() != batch.targets).float().sum(-1).mul(batch.mask).sum())
    assert trace.metadata["bit_errors"] == expected
    unscored = edited_input(make_task("associative_recall"),
                                 sample_input(make_task("associative_recall"), 2, 0)
                                 .inputs[0].numpy())
    dnc = mann.build_model(tiny_config("dnc", make_task("associative_recall")))
    assert "bit_errors" not in record(dnc, unscored).metadata
    assert "initial_weights" not in record(dnc, unscored).metadata
