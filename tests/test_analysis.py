"""Tests for mann.analysis: every metric on hand-made traces whose values follow from the
definitions (ties, wrap-around, inactive steps, nothing written), and record_traces against
one recorded trace per item."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mann
from mann.analysis import (
    context_reads,
    episode_metrics,
    gate_activity,
    markdown_table,
    memory_metrics,
    metrics_frame,
    placement_frame,
    priority_placement,
    slot_write_counts,
    unwrap,
    write_jumps,
)
from mann.tasks import make_task
from mann.trace import Trace

torch.set_num_threads(1)


def one_hot(slots: int, foci, scale: float = 1.0) -> np.ndarray:
    """(T,1,N) weightings with ``scale`` on each step's slot; None gives an all-zero step."""
    weights = np.zeros((len(foci), 1, slots), dtype=np.float32)
    for step, slot in enumerate(foci):
        if slot is not None:
            weights[step, 0, slot] = scale
    return weights


def make_trace(write_weights, read_weights=None, arch="ntm", **fields) -> Trace:
    steps, _, slots = write_weights.shape
    if read_weights is None:
        read_weights = np.zeros((steps, 1, slots), dtype=np.float32)
    return Trace(
        arch=arch,
        inputs=np.zeros((steps, 2), dtype=np.float32),
        outputs=np.zeros((steps, 1), dtype=np.float32),
        memory=np.zeros((steps, slots, 3), dtype=np.float32),
        read_weights=read_weights,
        write_weights=write_weights,
        read_vectors=np.zeros((steps, 1, 3), dtype=np.float32),
        **fields,
    )


def test_a_ring_walk_that_wraps_is_all_local_and_rewrites_once_around():
    slots = 5
    foci = [0, 1, 2, 3, 4, 0, 1]  # 4 -> 0 crosses the end of the ring: distance 1
    metrics = memory_metrics(make_trace(one_hot(slots, foci)))
    assert metrics["writes"] == 7
    assert metrics["slots_written"] == 5
    assert metrics["rewrites"] == 2
    assert metrics["write_locality"] == 1.0
    assert metrics["write_sharpness"] == 1.0
    assert list(write_jumps(make_trace(one_hot(slots, foci)))) == [1, 1, 1, 1, 1, 1]
    assert list(slot_write_counts(make_trace(one_hot(slots, foci)))) == [2, 2, 1, 1, 1]


def test_locality_counts_only_circular_distance_one():
    slots = 8
    # pairs: 0->7 (wrap, 1), 7->7 (0), 7->5 (2), 5->1 (4), 1->2 (1)
    trace = make_trace(one_hot(slots, [0, 7, 7, 5, 1, 2]))
    assert memory_metrics(trace)["write_locality"] == pytest.approx(2 / 5)
    assert list(write_jumps(trace)) == [-1, 0, -2, 4, 1]  # 4 is N/2: kept positive


def test_ties_focus_on_the_lowest_slot_and_halve_the_sharpness():
    weights = np.zeros((2, 1, 4), dtype=np.float32)
    weights[0, 0, [1, 3]] = 0.5  # a tie between slots 1 and 3
    weights[1, 0, [2, 3]] = [0.25, 0.75]
    metrics = memory_metrics(make_trace(weights))
    assert metrics["writes"] == 2
    assert list(slot_write_counts(make_trace(weights))) == [0, 1, 0, 1]  # foci 1 and 3
    assert metrics["write_locality"] == 0.0  # 1 -> 3 is distance 2
    assert metrics["write_sharpness"] == pytest.approx((0.5 + 0.75) / 2)


def test_a_write_summing_to_half_is_active_and_less_is_not():
    weights = np.zeros((3, 1, 4), dtype=np.float32)
    weights[0, 0, 0] = 0.5  # exactly the threshold: active
    weights[1, 0, 1] = 0.49  # below: not a write
    weights[2, 0, [1, 2]] = [0.2, 0.4]  # sum 0.6: active, focus 2, sharpness 2/3
    metrics = memory_metrics(make_trace(weights))
    assert metrics["writes"] == 2
    assert metrics["slots_written"] == 2
    assert metrics["write_locality"] == 0.0  # 0 -> 2
    assert metrics["write_sharpness"] == pytest.approx((1.0 + 0.4 / 0.6) / 2)


def test_no_active_write_or_read_gives_nan_not_an_error():
    trace = make_trace(one_hot(6, [None, None, None], scale=0.0))
    metrics = memory_metrics(trace)
    assert (metrics["writes"], metrics["slots_written"], metrics["rewrites"]) == (0, 0, 0)
    for name in ("write_locality", "write_sharpness", "read_sharpness", "read_write_lag"):
        assert math.isnan(metrics[name]), name
    assert list(slot_write_counts(trace)) == [0] * 6
    assert len(write_jumps(trace)) == 0


def test_one_write_has_no_locality_but_a_sharpness():
    metrics = memory_metrics(make_trace(one_hot(4, [None, 2, None], scale=0.8)))
    assert metrics["writes"] == 1
    assert math.isnan(metrics["write_locality"])
    assert metrics["write_sharpness"] == 1.0


def test_read_write_lag_uses_the_latest_write_at_or_before_the_read():
    slots = 8
    #        step: 0  1     2  3     4  5  6
    writes = [3, None, 3, None, 5, None, None]
    reads = [3, 3, None, 7, None, 3, 5]
    trace = make_trace(one_hot(slots, writes), one_hot(slots, reads))
    # read at 0 of slot 3: written at 0 -> lag 0; at 1: written at 0 -> 1; slot 7 at 3:
    # never written, left out; slot 3 at 5: the rewrite at 2 -> 3; slot 5 at 6: written at 4 -> 2
    assert memory_metrics(trace)["read_write_lag"] == pytest.approx((0 + 1 + 3 + 2) / 4)
    assert memory_metrics(trace)["read_sharpness"] == 1.0


def test_a_read_before_any_write_of_its_slot_has_no_lag():
    trace = make_trace(one_hot(4, [None, 1]), one_hot(4, [1, None]))
    assert math.isnan(memory_metrics(trace)["read_write_lag"])


def test_heads_are_chosen_and_checked():
    write = np.concatenate([one_hot(5, [0, 1, 2]), one_hot(5, [4, 2, 0])], axis=1)  # 2 heads
    trace = make_trace(write)
    assert memory_metrics(trace, write_head=0)["write_locality"] == 1.0
    assert memory_metrics(trace, write_head=1)["write_locality"] == 0.0
    with pytest.raises(ValueError, match=r"write_head must be an integer in \[0, 1\]"):
        memory_metrics(trace, write_head=2)
    with pytest.raises(ValueError, match="read_head"):
        memory_metrics(trace, read_head=1)


def dnc_trace(mask=None) -> Trace:
    steps = 4
    return make_trace(
        one_hot(4, [0, 1, 2, 3]),
        arch="dnc",
        mask=mask,
        write_gate=np.array([1.0, 1.0, 0.0, 0.5], dtype=np.float32),
        allocation_gate=np.array([0.8, 0.6, 0.2, 0.0], dtype=np.float32),
        free_gates=np.array([[0.0], [0.0], [1.0], [0.5]], dtype=np.float32),
        read_modes=np.tile(np.array([0.1, 0.2, 0.7], dtype=np.float32), (steps, 1, 1)),
    )


def test_gate_activity_splits_scored_from_unscored_steps():
    activity = gate_activity(dnc_trace(mask=np.array([0, 0, 1, 1], dtype=np.float32)))
    assert activity["write_gate:unscored"] == pytest.approx(1.0)
    assert activity["write_gate:scored"] == pytest.approx(0.25)
    assert activity["allocation_gate:unscored"] == pytest.approx(0.7)
    assert activity["allocation_gate:scored"] == pytest.approx(0.1)
    assert activity["free_gates:unscored"] == pytest.approx(0.0)
    assert activity["free_gates:scored"] == pytest.approx(0.75)
    assert activity["read_mode_forward:scored"] == pytest.approx(0.7)
    assert activity["read_mode_backward:unscored"] == pytest.approx(0.1)


def test_gate_activity_without_a_mask_or_gates():
    activity = gate_activity(dnc_trace(mask=None))
    assert math.isnan(activity["write_gate:scored"])  # no scored steps: undefined
    assert activity["write_gate:unscored"] == pytest.approx(0.625)
    assert gate_activity(make_trace(one_hot(4, [0, 1]))) == {}  # an NTM has no gates


def test_metrics_frame_gives_mean_and_std_per_model_skipping_undefined_values():
    ring = make_trace(one_hot(4, [0, 1, 2, 3]), metadata={"bit_errors": 2.0})
    jumpy = make_trace(one_hot(4, [0, 2, 0, 2]), metadata={"bit_errors": 0.0})
    empty = make_trace(one_hot(4, [None] * 4), metadata={"bit_errors": 4.0})
    frame = metrics_frame({"a": [ring, jumpy], "b": [empty, ring]})
    a = frame.set_index("model").loc["a"]
    assert a["episodes"] == 2
    assert a["write_locality"] == pytest.approx(0.5)  # 1 and 0
    assert a["write_locality_std"] == pytest.approx(0.5)
    assert a["bit_errors"] == pytest.approx(1.0)
    b = frame.set_index("model").loc["b"]
    assert b["write_locality"] == pytest.approx(1.0)  # the empty episode's NaN is skipped
    assert b["writes"] == pytest.approx(2.0)  # 0 and 4 count
    per_episode = episode_metrics({"a": [ring, jumpy]})
    assert list(per_episode["episode"]) == [0, 1]
    assert "write_gate:scored" not in per_episode.columns  # NTM-like traces have no gates
    table = markdown_table(frame)
    assert table.splitlines()[2].startswith("| a | 2 | 1 ± 1 |")


# ---- record_traces: one pass over the batch gives each item's trace ----------------------


@pytest.mark.parametrize("arch", ["ntm", "dnc", "sam", "sdnc"])
def test_record_traces_equals_recording_each_item(arch):
    task = make_task("multi_copy", bits=4, max_length=3, max_rounds=3)
    torch.manual_seed(0)
    model = mann.build_model(
        mann.ModelConfig(arch=arch, input_size=task.input_size, output_size=task.output_size,
                         hidden_size=16, memory_size=12, word_size=6)
    )  # fmt: skip
    batch = task.sample(5, torch.Generator().manual_seed(3))
    traces = mann.record_traces(model, batch)
    assert len(traces) == 5
    for item, trace in enumerate(traces):
        single = mann.record_trace(model, batch.inputs, batch.targets, batch.mask, item=item)
        steps = trace.steps
        # the trace stops at the item's last step: its last scored step
        assert steps == int(np.flatnonzero(batch.mask[item].numpy())[-1]) + 1
        assert single.steps >= steps
        for name in single.available():
            np.testing.assert_allclose(
                getattr(trace, name), getattr(single, name)[:steps], rtol=1e-5, atol=1e-6,
                err_msg=name,
            )
        assert trace.metadata["bit_errors"] == single.metadata["bit_errors"]


# ---- python -m mann patterns ------------------------------------------------------------


def run_cli(*args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repository = Path(__file__).resolve().parent.parent
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repository))
    return subprocess.run([sys.executable, "-m", "mann", *args], capture_output=True, text=True,
                          timeout=180, env=environment, cwd=repository)  # fmt: skip


def save_small(directory, name: str, arch: str, task_name: str = "multi_copy", **options):
    task = make_task(task_name, **options)
    torch.manual_seed(len(name))
    model = mann.build_model(mann.ModelConfig(
        arch=arch, input_size=task.input_size, output_size=task.output_size, hidden_size=12,
        memory_size=8, word_size=4,
    ))  # fmt: skip
    import dataclasses

    mann.save(model, directory / name, task=task_name, task_options=dataclasses.asdict(task))
    return model, task


@pytest.mark.slow
def test_cli_patterns_prints_the_metrics_of_each_model_and_writes_the_csv(tmp_path):
    import pandas as pd

    from mann.patterns import patterns_frame

    ntm, task = save_small(tmp_path, "a-ntm", "ntm", bits=4)
    dnc, _ = save_small(tmp_path, "a-dnc", "dnc", bits=4)
    result = run_cli("patterns", str(tmp_path / "a-ntm"), str(tmp_path / "a-dnc"), "--lengths",
                     "2,3", "--rounds", "4", "--sequences", "20", "--seed", "1", "--csv",
                     str(tmp_path / "out.csv"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| a-")]
    assert [row.split("|")[1:3] for row in rows[:4]] == [
        [" a-ntm ", " 2 "], [" a-dnc ", " 2 "], [" a-ntm ", " 3 "], [" a-dnc ", " 3 "],
    ]
    expected = patterns_frame({"a-ntm": ntm, "a-dnc": dnc}, task, [2, 3], sequences=20, seed=1,
                              rounds=4)  # fmt: skip
    written = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(written["rewrites"], expected["rewrites"])
    np.testing.assert_allclose(written["write_locality"], expected["write_locality"])
    assert "gate activity" in result.stdout  # the DNC has gates
    assert np.isnan(written.loc[written["model"] == "a-ntm", "write_gate:scored"]).all()


@pytest.mark.slow
def test_cli_patterns_on_priority_sort_prints_where_items_were_placed(tmp_path):
    import pandas as pd

    from mann.patterns import collect_traces, fixed_task

    ntm, task = save_small(tmp_path, "p-ntm", "ntm", task_name="priority_sort", bits=3,
                           num_inputs=6, num_outputs=4)  # fmt: skip
    result = run_cli("patterns", str(tmp_path / "p-ntm"), "--sequences", "10", "--csv",
                     str(tmp_path / "out.csv"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "priority sort: write slot against priority" in result.stdout
    assert "placement:priority_fit" in result.stdout and "placement:read_hits" in result.stdout
    traces = collect_traces({"p-ntm": ntm}, fixed_task(task, 6), 10, seed=0)
    expected = placement_frame(traces)
    written = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(written["placement:slots_written"], expected["slots_written"])
    np.testing.assert_allclose(written["placement:read_hits"], expected["read_hits"])


@pytest.mark.slow
def test_cli_patterns_names_what_does_not_fit(tmp_path):
    save_small(tmp_path, "multi", "dnc", bits=4)
    save_small(tmp_path, "recall", "dnc", task_name="associative_recall", bits=4)
    result = run_cli("patterns", str(tmp_path / "multi"), str(tmp_path / "recall"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model 'recall'" in result.stderr and "does not fit task 'multi_copy'" in result.stderr
    result = run_cli("patterns", str(tmp_path / "multi"), "--rounds", "0")
    assert result.returncode == 2 and "rounds must be an integer >= 1" in result.stderr
    result = run_cli("patterns", str(tmp_path / "recall"), "--rounds", "3")
    assert result.returncode == 2 and "task 'associative_recall' has no rounds" in result.stderr
    result = run_cli("patterns", str(tmp_path / "multi"), "--lengths", "9")
    assert result.returncode == 0, result.stderr  # longer rounds than trained: allowed
    result = run_cli("patterns", str(tmp_path / "multi"), "--sequences", "0")
    assert result.returncode == 2 and "sequences must be an integer >= 1" in result.stderr


def test_context_reads_groups_steps_by_their_last_bits():
    # Contexts of 2 bits over the inputs 0 1 1 0 1 1 0: steps 1..6 end 01, 11, 10, 01, 11, 10.
    bits = np.array([0, 1, 1, 0, 1, 1, 0], dtype=np.float32)
    reads = one_hot(4, [0, 1, 2, 3, 1, 0, 3])  # context 01 -> 1, 1; 11 -> 2, 0; 10 -> 3, 3
    trace = make_trace(one_hot(4, [0] * 7), reads).replace(
        inputs=np.stack([bits, np.zeros_like(bits)], axis=1))
    found = context_reads(trace, context_bits=2)
    assert (found.contexts, found.read_slots) == (3, 4)
    assert sorted(found.one_slot_shares) == [0.5, 1.0, 1.0]


def priority_sort_trace(priorities, write_foci, read_foci, slots=8) -> Trace:
    """A one-bit priority sort (channels: bit, priority, delimiter): the inputs, the
    delimiter, then one scored step per read focus."""
    items, answers = len(priorities), len(read_foci)
    steps = items + 1 + answers
    inputs = np.zeros((steps, 3), dtype=np.float32)
    inputs[:items, 1] = priorities
    inputs[items, 2] = 1.0
    mask = np.zeros(steps, dtype=np.float32)
    mask[items + 1 :] = 1.0
    writes = one_hot(slots, [*write_foci, None, *([None] * answers)])
    reads = one_hot(slots, [None] * (items + 1) + list(read_foci))
    return make_trace(writes, reads).replace(inputs=inputs, mask=mask)


def test_unwrap_keeps_a_band_across_the_end_of_the_ring_together():
    assert unwrap(np.array([7, 0, 1, 2]), 8).tolist() == [0, 1, 2, 3]
    assert unwrap(np.array([2, 4, 3]), 8).tolist() == [0, 2, 1]


def test_priority_placement_tells_placing_by_priority_from_arrival_order():
    priorities = [0.5, -0.5, 0.9, 0.0]  # answered in the order items 2, 0, 3
    # Placed by priority in a band across slot 7 -> 0, read back by walking it.
    placed = priority_placement(priority_sort_trace(priorities, [0, 2, 7, 1], [7, 0, 1]))
    assert placed.priority_fit < -0.99 and placed.items == 4 and placed.slots_written == 4
    assert (placed.read_steps, placed.read_hits) == (1.0, 1.0)
    # Slots in arrival order, the answers found wherever they are.
    arrival = priority_placement(priority_sort_trace(priorities, [0, 1, 2, 3], [2, 0, 3]))
    expected = np.corrcoef(priorities, [0, 1, 2, 3])[0, 1]
    assert arrival.priority_fit == pytest.approx(expected) and abs(expected) < 0.5
    assert (arrival.read_steps, arrival.read_hits) == (0.0, 1.0)
    # Two items in one slot; the last answer read from the wrong slot.
    crowded = priority_placement(priority_sort_trace(priorities, [0, 1, 0, 2], [0, 0, 1]))
    assert crowded.slots_written == 3
    assert crowded.read_hits == pytest.approx(2 / 3)


def test_priority_placement_measures_the_read_head_that_answers():
    """Of two read heads the one landing on the answers' slots is measured, unless asked."""
    priorities = [0.5, -0.5, 0.9, 0.0]  # answered in the order items 2, 0, 3
    trace = priority_sort_trace(priorities, [0, 2, 7, 1], [3, 6, 4])  # head 0: misses, jumps
    answering = priority_sort_trace(priorities, [0, 2, 7, 1], [7, 0, 1]).read_weights
    trace = trace.replace(read_weights=np.concatenate([trace.read_weights, answering], axis=1),
                          read_vectors=np.repeat(trace.read_vectors, 2, axis=1))  # fmt: skip
    found = priority_placement(trace)
    assert (found.read_head, found.read_hits, found.read_steps) == (1, 1.0, 1.0)
    asked = priority_placement(trace, read_head=0)
    assert (asked.read_head, asked.read_hits, asked.read_steps) == (0, 0.0, 0.0)
    frame = placement_frame({"two heads": [trace]})
    assert frame["read_hits"][0] == 1.0 and "read_head" not in frame.columns


def test_placement_frame_averages_each_model_and_leaves_out_undefined_fits():
    priorities = [0.5, -0.5, 0.9, 0.0]
    placed = priority_sort_trace(priorities, [0, 2, 7, 1], [7, 0, 1])
    arrival = priority_sort_trace(priorities, [0, 1, 2, 3], [2, 0, 3])
    one_slot = priority_sort_trace(priorities, [5, 5, 5, 5], [5, 5, 5])  # no fit: one slot
    frame = placement_frame({"a": [placed, arrival], "b": [one_slot]})
    assert list(frame["model"]) == ["a", "b"]
    fits = [priority_placement(t).priority_fit for t in (placed, arrival)]
    assert frame["priority_fit"][0] == pytest.approx(np.mean(fits))
    assert math.isnan(frame["priority_fit"][1])
    assert frame["slots_written"].tolist() == [4.0, 1.0]
    assert frame["read_steps"].tolist() == [0.5, 1.0]
    assert frame["read_hits"].tolist() == [1.0, 1.0]  # the right slot, though it holds four
