"""Tests for mann.trace.Trace: .npz round trip without pickles, the long DataFrame, validation.

Traces here are built from random arrays of the documented shapes, so the checks do not
depend on a model; one test records a real run and round-trips it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from mann import ModelConfig, Trace, build_model
from mann.trace import ARRAY_FIELDS, AXES

T, N, W, R, X, Y = 5, 6, 3, 2, 4, 3


def dnc_trace(rng: np.random.Generator, **changes) -> Trace:
    values = dict(
        arch="dnc",
        inputs=rng.random((T, X)),
        outputs=rng.random((T, Y)),
        targets=rng.integers(0, 2, (T, Y)).astype(np.float32),
        mask=np.array([0, 0, 1, 1, 1], dtype=np.float32),
        memory=rng.normal(size=(T, N, W)),
        read_weights=rng.random((T, R, N)),
        write_weights=rng.random((T, 1, N)),
        read_vectors=rng.normal(size=(T, R, W)),
        usage=rng.random((T, N)),
        precedence=rng.random((T, N)),
        link=rng.random((T, N, N)),
        allocation=rng.random((T, N)),
        write_content_weights=rng.random((T, N)),
        read_content_weights=rng.random((T, R, N)),
        forward_weights=rng.random((T, R, N)),
        backward_weights=rng.random((T, R, N)),
        read_modes=rng.random((T, R, 3)),
        free_gates=rng.random((T, R)),
        allocation_gate=rng.random(T),
        write_gate=rng.random(T),
        metadata={"config": {"arch": "dnc", "memory_size": N}, "bit_errors": 2.0,
                  "note": "ünïcode ok"},
    )
    values.update(changes)
    return Trace(**values)


def ntm_trace(rng: np.random.Generator) -> Trace:
    H, S = R + 1, 3
    return Trace(
        arch="ntm",
        inputs=rng.random((T, X)),
        outputs=rng.random((T, Y)),
        memory=rng.normal(size=(T, N, W)),
        read_weights=rng.random((T, R, N)),
        write_weights=rng.random((T, 1, N)),
        read_vectors=rng.normal(size=(T, R, W)),
        content_weights=rng.random((T, H, N)),
        interpolation_gate=rng.random((T, H)),
        shift=rng.random((T, H, S)),
        sharpening=1 + rng.random((T, H)),
        key_strength=rng.random((T, H)),
    )


def assert_traces_equal(first: Trace, second: Trace) -> None:
    assert first.arch == second.arch
    assert first.metadata == second.metadata
    assert first.available() == second.available()
    for name in ARRAY_FIELDS:
        a, b = getattr(first, name), getattr(second, name)
        if a is None:
            assert b is None, name
        else:
            assert b.dtype == np.float32, name
            np.testing.assert_array_equal(a, b, err_msg=name)


# ---------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------
def test_arrays_become_float32_and_sizes_are_read_from_them(rng):
    trace = dnc_trace(rng, inputs=rng.integers(0, 2, (T, X)))  # ints and float64 in
    for name in trace.available():
        assert getattr(trace, name).dtype == np.float32, name
    assert (trace.steps, trace.memory_size, trace.word_size) == (T, N, W)
    assert (trace.read_heads, trace.write_heads) == (R, 1)


def test_available_lists_exactly_the_fields_present(rng):
    dnc, ntm = dnc_trace(rng), ntm_trace(rng)
    assert "link" in dnc.available() and "content_weights" not in dnc.available()
    assert "shift" in ntm.available() and "usage" not in ntm.available()
    for trace in (dnc, ntm):
        assert trace.available() == [n for n in ARRAY_FIELDS if getattr(trace, n) is not None]


@pytest.mark.parametrize(
    ("field", "shape"),
    [("memory", (T, N)), ("link", (T, N, N, 1)), ("allocation_gate", (T, 1)), ("inputs", (X,))],
)
def test_wrong_rank_is_refused_naming_the_field(rng, field, shape):
    with pytest.raises(ValueError, match=field) as error:
        dnc_trace(rng, **{field: np.zeros(shape)})
    assert str(shape) in str(error.value)


@pytest.mark.parametrize("field", ["usage", "read_vectors", "write_gate", "inputs"])
def test_a_different_number_of_time_steps_is_refused(rng, field):
    current = getattr(dnc_trace(rng), field)
    longer = np.zeros((T + 1,) + current.shape[1:])
    with pytest.raises(ValueError, match="time steps") as error:
        dnc_trace(rng, **{field: longer})
    # Which field is "the odd one" depends on the order they are checked in; both counts show.
    assert str(T) in str(error.value) and str(T + 1) in str(error.value)


def test_replace_validates_and_leaves_the_original_alone(rng):
    trace = dnc_trace(rng)
    masked = trace.replace(mask=np.ones(T))
    assert masked.mask.dtype == np.float32 and masked.mask.sum() == T
    assert trace.mask.sum() == 3
    with pytest.raises(ValueError, match="mask"):
        trace.replace(mask=np.ones(T + 2))


# ---------------------------------------------------------------------------------------
# .npz round trip
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [dnc_trace, ntm_trace])
def test_save_and_load_round_trip(tmp_path, rng, make):
    trace = make(rng)
    path = tmp_path / "trace.npz"
    trace.save(path)
    assert_traces_equal(Trace.load(path), trace)
    # Plain numpy can read every entry without allowing pickles, and none is an object array.
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == set(trace.available()) | {"__header__"}
        for name in data.files:
            assert data[name].dtype != object


def test_load_reads_an_in_memory_file(tmp_path, rng):
    trace = dnc_trace(rng)
    trace.save(tmp_path / "trace.npz")
    payload = (tmp_path / "trace.npz").read_bytes()
    assert_traces_equal(Trace.load(io.BytesIO(payload)), trace)


def test_bytes_round_trip(rng):
    trace = dnc_trace(rng)
    payload = trace.to_bytes()
    assert payload[:2] == b"PK"  # an .npz is a zip archive
    assert_traces_equal(Trace.load(io.BytesIO(payload)), trace)


def test_a_recorded_run_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="dnc", input_size=X, output_size=Y, hidden_size=8,
                                    memory_size=N, word_size=W, read_heads=R))
    inputs = torch.randint(0, 2, (2, T, X)).float()
    _, _, trace = model(inputs, record=True, trace_item=1)
    trace.save(tmp_path / "run.npz")
    loaded = Trace.load(tmp_path / "run.npz")
    assert_traces_equal(loaded, trace)
    assert loaded.metadata["config"] == model.config.to_dict()


def test_loading_an_npz_that_is_not_a_trace_is_a_value_error(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, memory=np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="trace"):
        Trace.load(path)


# ---------------------------------------------------------------------------------------
# The long DataFrame
# ---------------------------------------------------------------------------------------
def test_to_frame_has_one_row_per_number_and_rebuilds_every_array(rng):
    trace = dnc_trace(rng)
    frame = trace.to_frame()
    assert list(frame.columns) == ["signal", "step", "head", "slot", "index", "value"]
    assert len(frame) == sum(getattr(trace, name).size for name in trace.available())
    assert set(frame["signal"]) == set(trace.available())
    for name in trace.available():
        array = getattr(trace, name)
        rows = frame[frame["signal"] == name]
        rebuilt = np.full(array.shape, np.nan, dtype=np.float32)
        columns = {"head": rows["head"].to_numpy(), "slot": rows["slot"].to_numpy(),
                   "index": rows["index"].to_numpy()}
        position = [rows["step"].to_numpy()]
        for axis in AXES[name]:
            column = axis if axis in ("head", "slot") else "index"
            position.append(columns[column])
            columns[column] = None  # each column serves one axis at most
        for column, values in columns.items():
            if values is not None:
                assert (values == -1).all(), (name, column)  # absent axes are -1
        rebuilt[tuple(position)] = rows["value"].to_numpy()
        np.testing.assert_array_equal(rebuilt, array, err_msg=name)  # no gap, no clash


def test_to_frame_values_at_known_positions(rng):
    trace = dnc_trace(rng)
    frame = trace.to_frame(["link", "read_weights", "allocation_gate"])
    assert set(frame["signal"]) == {"link", "read_weights", "allocation_gate"}
    assert len(frame) == T * N * N + T * R * N + T

    def value(signal, step, head=-1, slot=-1, index=-1):
        rows = frame[(frame.signal == signal) & (frame.step == step) & (frame["head"] == head)
                     & (frame.slot == slot) & (frame["index"] == index)]
        assert len(rows) == 1
        return rows["value"].iloc[0]

    assert value("link", 3, slot=4, index=1) == trace.link[3, 4, 1]  # index = slot written from
    assert value("read_weights", 2, head=1, slot=5) == trace.read_weights[2, 1, 5]
    assert value("allocation_gate", 4) == trace.allocation_gate[4]


def test_to_frame_skips_fields_the_trace_lacks(rng):
    frame = ntm_trace(rng).to_frame(["shift", "usage"])
    assert set(frame["signal"]) == {"shift"}
    assert len(frame) == T * (R + 1) * 3


def test_to_frame_refuses_an_unknown_field_name(rng):
    with pytest.raises(ValueError, match="memroy"):
        dnc_trace(rng).to_frame(["memroy"])
