"""Tests for mann.tasks: each encoding is re-derived from the inputs with plain Python loops.

The checks never call a task's own helpers to build what they expect: they read the sequence
back out of ``inputs`` (delimiter positions, bits, counts, priorities) and rebuild targets and
mask from it, step by step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mann.tasks import (
    TASKS,
    AddingTask,
    ArgmaxTask,
    AssociativeRecallTask,
    Batch,
    CopyTask,
    MultiCopyTask,
    NGramsTask,
    PrioritySortTask,
    RepeatCopyTask,
    make_task,
)

torch.set_num_threads(1)

SEEDS = (0, 1, 2)

# Small settings of every task, with varied lengths so padding shows up.
SMALL_TASKS = {
    "copy": CopyTask(bits=4, min_length=1, max_length=6),
    "repeat_copy": RepeatCopyTask(bits=3, min_length=1, max_length=4, max_repeats=4),
    "associative_recall": AssociativeRecallTask(bits=3, item_length=2, min_items=2, max_items=5),
    "priority_sort": PrioritySortTask(bits=4, num_inputs=8, num_outputs=5, min_inputs=2),
    "adding": AddingTask(digits=4, min_length=1, max_length=7),
    "argmax": ArgmaxTask(digits=4, min_length=1, max_length=7),
    "multi_copy": MultiCopyTask(bits=3, min_length=1, max_length=4, min_rounds=1, max_rounds=4),
}


def sample(task, seed: int, batch_size: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch = task.sample(batch_size, torch.Generator().manual_seed(seed))
    return batch.inputs.numpy(), batch.targets.numpy(), batch.mask.numpy()


def only_step(column: np.ndarray) -> int:
    """The one step where a flag channel is 1 (and assert it is the only one)."""
    (steps,) = np.nonzero(column)
    assert len(steps) == 1, f"expected one flagged step, got {steps.tolist()}"
    assert column[steps[0]] == 1.0
    return int(steps[0])


def assert_padding_empty(inputs, targets, mask, used_steps: int) -> None:
    """Steps at and after ``used_steps`` are padding: zero everywhere, never scored."""
    assert not inputs[used_steps:].any()
    assert not targets[used_steps:].any()
    assert not mask[used_steps:].any()


# --- common to every task ------------------------------------------------------------------


def test_registry_has_the_eight_tasks():
    assert set(TASKS) == {
        "copy",
        "multi_copy",
        "ngrams",
        "repeat_copy",
        "associative_recall",
        "priority_sort",
        "adding",
        "argmax",
    }
    for name, task_class in TASKS.items():
        assert task_class.name == name
        assert isinstance(make_task(name), task_class)


@pytest.mark.parametrize("name", sorted(SMALL_TASKS))
def test_batch_shapes_dtypes_and_ranges(name):
    task = SMALL_TASKS[name]
    batch = task.sample(5, torch.Generator().manual_seed(0))
    assert isinstance(batch, Batch)
    batch_size, steps, _ = batch.inputs.shape
    assert batch.inputs.shape == (5, steps, task.input_size)
    assert batch.targets.shape == (5, steps, task.output_size)
    assert batch.mask.shape == (5, steps)
    for tensor in batch:
        assert tensor.dtype == torch.float32
    assert steps <= task.max_steps
    assert set(batch.mask.unique().tolist()) <= {0.0, 1.0}
    assert batch.targets.min() >= 0 and batch.targets.max() <= 1
    assert (batch.mask.sum(dim=1) > 0).all()


@pytest.mark.parametrize("name", sorted(SMALL_TASKS))
def test_same_seed_same_batch_other_seed_other_batch(name):
    task = SMALL_TASKS[name]
    first = task.sample(4, torch.Generator().manual_seed(7))
    again = task.sample(4, torch.Generator().manual_seed(7))
    other = task.sample(4, torch.Generator().manual_seed(8))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert first.inputs.shape != other.inputs.shape or not torch.equal(first.inputs, other.inputs)


@pytest.mark.parametrize("name", sorted(SMALL_TASKS))
def test_items_of_a_batch_are_drawn_independently(name):
    # Same length everywhere, so any two equal items would mean one item's data was shared.
    task = SMALL_TASKS[name].with_lengths(4, 4)
    inputs, _, _ = sample(task, seed=0, batch_size=8)
    distinct_items = {inputs[item].tobytes() for item in range(len(inputs))}
    assert len(distinct_items) == len(inputs)


@pytest.mark.parametrize("name", sorted(SMALL_TASKS))
def test_fixed_length_batches_have_max_steps(name):
    task = SMALL_TASKS[name]
    fixed = task.with_lengths(3, 3)
    if name == "repeat_copy":  # its T depends on the repeat count too
        fixed = fixed.with_repeats(2, 2)
    if name == "multi_copy":  # and this one's on the number of rounds
        fixed = fixed.with_rounds(3, 3)
    batch = fixed.sample(3, torch.Generator().manual_seed(0))
    assert batch.inputs.shape[1] == fixed.max_steps
    # with_lengths changes only the length range
    assert dataclasses.replace(fixed, **_length_fields(task)) == task


def _length_fields(task) -> dict:
    names = {
        AssociativeRecallTask: ("min_items", "max_items"),
        PrioritySortTask: ("min_inputs", "num_inputs"),
    }.get(type(task), ("min_length", "max_length"))
    fields = {name: getattr(task, name) for name in names}
    if isinstance(task, RepeatCopyTask):
        fields.update(min_repeats=task.min_repeats, max_repeats=task.max_repeats)
    if isinstance(task, MultiCopyTask):
        fields.update(min_rounds=task.min_rounds, max_rounds=task.max_rounds)
    return fields


@pytest.mark.parametrize("name", sorted(SMALL_TASKS))
def test_options_round_trip_through_make_task(name):
    task = SMALL_TASKS[name]
    assert make_task(name, **dataclasses.asdict(task)) == task


def test_make_task_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="known tasks: .*associative_recall.*copy"):
        make_task("reverse")
    with pytest.raises(ValueError, match="bitz.*bits"):
        make_task("copy", bitz=3)


@pytest.mark.parametrize("name", sorted(SMALL_TASKS))
def test_batch_size_must_be_positive(name):
    with pytest.raises(ValueError, match="batch_size"):
        SMALL_TASKS[name].sample(0, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name, options, parameter",
    [
        ("copy", {"bits": 0}, "bits"),
        ("copy", {"min_length": 0}, "min_length"),
        ("copy", {"min_length": 5, "max_length": 4}, "min_length"),
        ("copy", {"max_length": 2.5}, "max_length"),
        ("copy", {"bits": True}, "bits"),
        ("repeat_copy", {"min_repeats": 0}, "min_repeats"),
        ("repeat_copy", {"min_repeats": 3, "max_repeats": 2}, "max_repeats"),
        ("repeat_copy", {"repeat_scale": 0.0}, "repeat_scale"),
        ("repeat_copy", {"repeat_scale": float("nan")}, "repeat_scale"),
        ("associative_recall", {"item_length": 0}, "item_length"),
        ("associative_recall", {"min_items": 1}, "min_items"),
        ("associative_recall", {"bits": 1, "item_length": 1, "max_items": 3}, "max_items"),
        ("priority_sort", {"num_outputs": 0}, "num_outputs"),
        ("priority_sort", {"num_inputs": 4, "min_inputs": 5}, "min_inputs"),
        ("adding", {"digits": 1}, "digits"),
        ("adding", {"max_length": 10, "sum_bits": 3}, "sum_bits"),
        ("argmax", {"max_length": 10, "num_positions": 9}, "num_positions"),
        ("multi_copy", {"min_rounds": 0}, "min_rounds"),
        ("multi_copy", {"min_rounds": 4, "max_rounds": 3}, "min_rounds"),
        ("multi_copy", {"max_rounds": 2.0}, "max_rounds"),
        ("multi_copy", {"min_length": 0}, "min_length"),
    ],
)
def test_bad_options_name_the_parameter(name, options, parameter):
    with pytest.raises(ValueError, match=parameter):
        make_task(name, **options)


def test_with_lengths_validates_the_new_range():
    with pytest.raises(ValueError, match="min_length"):
        CopyTask().with_lengths(5, 2)
    with pytest.raises(ValueError, match="max_items"):
        AssociativeRecallTask(bits=1, item_length=2).with_lengths(2, 5)
    # The answer width is fixed at construction; a longer range must fit in it.
    with pytest.raises(ValueError, match="sum_bits"):
        AddingTask(digits=5, max_length=10).with_lengths(2, 20)
    with pytest.raises(ValueError, match="num_positions"):
        ArgmaxTask(max_length=10).with_lengths(2, 11)


# --- copy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_copy_encoding(seed):
    task = SMALL_TASKS["copy"]
    bits = task.bits
    inputs, targets, mask = sample(task, seed)
    lengths = []
    for item in range(len(inputs)):
        length = only_step(inputs[item, :, bits])
        lengths.append(length)
        assert task.min_length <= length <= task.max_length
        expected_targets = np.zeros_like(targets[item])
        expected_mask = np.zeros_like(mask[item])
        for step in range(length):
            assert set(inputs[item, step, :bits].tolist()) <= {0.0, 1.0}
            expected_targets[length + 1 + step] = inputs[item, step, :bits]
            expected_mask[length + 1 + step] = 1.0
        assert not inputs[item, length, :bits].any()
        assert not inputs[item, length + 1 :].any()
        np.testing.assert_array_equal(targets[item], expected_targets)
        np.testing.assert_array_equal(mask[item], expected_mask)
        assert_padding_empty(inputs[item], targets[item], mask[item], 2 * length + 1)
    assert inputs.shape[1] == 2 * max(lengths) + 1


def test_copy_batches_mix_lengths():
    inputs, _, _ = sample(SMALL_TASKS["copy"], seed=0, batch_size=16)
    lengths = {only_step(inputs[item, :, 4]) for item in range(16)}
    assert len(lengths) > 1


# --- multi copy ----------------------------------------------------------------------------


def read_rounds(bits: int, inputs: np.ndarray) -> list[tuple[int, int]]:
    """(start step, length) of each round, read from the delimiters alone: a round runs from
    the end of the one before to its delimiter, then as many answer steps follow. (A round
    may begin with an all-zero vector, so the vectors themselves cannot mark its start.)"""
    rounds, start = [], 0
    for delimiter in np.flatnonzero(inputs[:, bits]):
        length = int(delimiter) - start
        rounds.append((start, length))
        start = int(delimiter) + 1 + length
    return rounds


@pytest.mark.parametrize("seed", SEEDS)
def test_multi_copy_encoding(seed):
    task = SMALL_TASKS["multi_copy"]
    bits = task.bits
    inputs, targets, mask = sample(task, seed, batch_size=8)
    used = []
    for item in range(len(inputs)):
        rounds = read_rounds(bits, inputs[item])
        assert task.min_rounds <= len(rounds) <= task.max_rounds
        expected_targets = np.zeros_like(targets[item])
        expected_mask = np.zeros_like(mask[item])
        for start, length in rounds:
            assert task.min_length <= length <= task.max_length
            assert not inputs[item, start : start + length, bits].any()
            assert inputs[item, start + length].tolist() == [0.0] * bits + [1.0]
            answer = start + length + 1
            assert not inputs[item, answer : answer + length].any()
            expected_targets[answer : answer + length] = inputs[item, start : start + length, :bits]
            expected_mask[answer : answer + length] = 1.0
        end = rounds[-1][0] + 2 * rounds[-1][1] + 1
        used.append(end)
        assert end == sum(2 * length + 1 for _, length in rounds)
        np.testing.assert_array_equal(targets[item], expected_targets)
        np.testing.assert_array_equal(mask[item], expected_mask)
        assert_padding_empty(inputs[item], targets[item], mask[item], end)
    assert inputs.shape[1] == max(used)


def test_multi_copy_draws_rounds_and_round_lengths_independently():
    task = MultiCopyTask(bits=4, min_length=1, max_length=5, min_rounds=1, max_rounds=6)
    inputs, _, _ = sample(task, seed=0, batch_size=64)
    counts, lengths = set(), set()
    for item in range(len(inputs)):
        rounds = read_rounds(4, inputs[item])
        counts.add(len(rounds))
        lengths.update(length for _, length in rounds)
        if len(rounds) > 1:
            lengths.add(("mixed", len({length for _, length in rounds}) > 1))
    assert counts == set(range(1, 7))
    assert set(range(1, 6)) <= lengths
    assert ("mixed", True) in lengths  # rounds of one episode differ in length


def test_multi_copy_with_rounds_fixes_the_episode():
    task = MultiCopyTask().with_lengths(5, 5).with_rounds(6, 6)
    inputs, targets, mask = sample(task, seed=0, batch_size=4)
    assert inputs.shape == (4, 66, 9) and targets.shape == (4, 66, 8)
    assert (mask.sum(axis=1) == 30).all()
    assert task.max_steps == 66
    with pytest.raises(ValueError, match="min_rounds"):
        task.with_rounds(0, 3)


# --- dynamic n-grams -----------------------------------------------------------------------


def test_ngrams_encoding_predicts_each_next_bit_after_a_full_context():
    from mann.tasks.ngrams import CONTEXT_BITS

    task = NGramsTask(min_length=9, max_length=16)
    generator = torch.Generator().manual_seed(3)
    batch = task.sample(12, generator)
    inputs, targets, mask = (t.numpy() for t in batch)
    bits = task.sample_bits(12, torch.Generator().manual_seed(3))  # the same draws
    assert inputs.shape[1] == bits.shape[1] - 1 and inputs.shape[2] == 1
    lengths = []
    for item in range(12):
        scored = np.flatnonzero(mask[item])
        length = int(scored[-1]) + 2  # the last scored step predicts the last bit
        lengths.append(length)
        assert 9 <= length <= 16
        assert scored.tolist() == list(range(CONTEXT_BITS - 1, length - 1))
        np.testing.assert_array_equal(inputs[item, : length - 1, 0], bits[item, : length - 1])
        np.testing.assert_array_equal(targets[item, scored, 0], bits[item, scored + 1])
        assert not inputs[item, length - 1 :].any()  # padding
    assert len(set(lengths)) > 1
    assert set(np.unique(inputs).tolist()) <= {0.0, 1.0}


def test_ngrams_follow_a_beta_half_half_six_gram():
    # Long sequences: each context's empirical rate of 1s tracks its own probability, and
    # those probabilities spread as Beta(1/2, 1/2) does (mean 1/2, variance 1/8, U-shaped).
    from mann.tasks.ngrams import context_index

    bits = NGramsTask(min_length=3000, max_length=3000).sample_bits(
        40, torch.Generator().manual_seed(0)
    )
    contexts = context_index(bits)
    rates = []
    for item in range(40):
        for context in range(32):
            followed = bits[item][contexts[item] == context]
            if len(followed) >= 40:
                rates.append(float(followed.mean()))
    rates = np.array(rates)
    assert len(rates) > 600  # contexts after a near-certain bit are visited rarely
    assert abs(rates.mean() - 0.5) < 0.05
    assert abs(rates.var() - 0.125) < 0.02
    assert (rates < 0.1).mean() > 0.15 and (rates > 0.9).mean() > 0.15  # mass at the ends


def test_ngrams_optimal_predictor_on_a_hand_made_sequence():
    from mann.tasks.base import Batch
    from mann.tasks.ngrams import optimal_cost_bits, optimal_probabilities

    # x: five zeros, then 1, then five zeros again...: context 00000 is followed by 1, 0, 1.
    x = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    #    steps t predict x[t+1]; the first with a full context is t = 4 (predicting x[5]).
    inputs = torch.tensor(x[:-1], dtype=torch.float32).view(1, -1, 1)
    targets = torch.tensor(x[1:], dtype=torch.float32).view(1, -1, 1)
    mask = torch.zeros(1, len(x) - 1)
    mask[0, 4:] = 1.0
    targets = targets * mask.unsqueeze(-1)
    p = optimal_probabilities(inputs, targets, mask)[0].tolist()
    assert p[:4] == [0.5] * 4
    # t=4: context 00000 never seen: (0 + 1/2) / (0 + 1) = 1/2; then it is followed by 1.
    assert p[4] == pytest.approx(0.5)
    # t=5: context 00001 (x1..x5) new: 1/2. t=6: 00010 new, t=7: 00100, t=8: 01000, t=9: 10000.
    assert p[5:10] == pytest.approx([0.5] * 5)
    # t=10 predicts x[11]: context x6..x10 = 00000, seen once followed by 1: (1 + 1/2) / 2.
    assert p[10] == pytest.approx(0.75)
    expected = -(np.log2(0.5) * 6 + np.log2(0.75))  # t = 4..9 at 1/2, t = 10 at 3/4
    assert float(optimal_cost_bits(Batch(inputs, targets, mask))[0]) == pytest.approx(expected)


def test_ngrams_needs_room_for_a_context():
    with pytest.raises(ValueError, match="min_length"):
        NGramsTask(min_length=6, max_length=10)


# --- repeat copy ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_repeat_copy_encoding(seed):
    task = SMALL_TASKS["repeat_copy"]
    bits = task.bits
    inputs, targets, mask = sample(task, seed)
    for item in range(len(inputs)):
        length = only_step(inputs[item, :, bits])
        count_step = only_step(inputs[item, :, bits + 1] != 0)
        assert count_step == length + 1
        repeats = inputs[item, count_step, bits + 1] * task.max_repeats  # default scale
        assert abs(repeats - round(repeats)) < 1e-5
        repeats = round(repeats)
        assert task.min_repeats <= repeats <= task.max_repeats

        sequence = [inputs[item, step, :bits] for step in range(length)]
        expected_targets = np.zeros_like(targets[item])
        expected_mask = np.zeros_like(mask[item])
        step = length + 2
        for _ in range(repeats):
            for vector in sequence:
                expected_targets[step, :bits] = vector
                expected_mask[step] = 1.0
                step += 1
        expected_targets[step, bits] = 1.0  # end marker
        expected_mask[step] = 1.0
        np.testing.assert_array_equal(targets[item], expected_targets)
        np.testing.assert_array_equal(mask[item], expected_mask)
        assert not inputs[item, length + 2 :].any()
        assert_padding_empty(inputs[item], targets[item], mask[item], step + 1)

        # Read the other way: the end marker's step says how many copies the target holds.
        end_step = only_step(targets[item, :, bits])
        copies = (end_step - (length + 2)) / length
        assert copies == repeats


def test_repeat_count_scale_is_fixed_by_the_trained_task():
    trained = RepeatCopyTask(bits=2, max_length=2, max_repeats=10)
    assert trained.repeat_scale == 10.0
    beyond = trained.with_repeats(15, 15).with_lengths(1, 1)
    assert beyond.repeat_scale == 10.0
    inputs, targets, _ = sample(beyond, seed=0, batch_size=2)
    # 15 repeats read as 1.5 on the scale the model was trained on.
    np.testing.assert_allclose(inputs[:, 2, 3], 1.5)
    # L = 1: the answer starts at step 3 and its 15 copies end with the marker on step 18.
    assert (targets[:, 3 + 15, 2] == 1.0).all()
    assert not targets[:, : 3 + 15, 2].any()
    explicit = RepeatCopyTask(max_repeats=4, repeat_scale=20)
    assert explicit.repeat_scale == 20.0


# --- associative recall --------------------------------------------------------------------


def parse_recall(inputs: np.ndarray, bits: int, item_length: int):
    """Walk one sequence's inputs step by step: the list of items, the query and where the
    answer starts, or fail if the layout is not the documented one."""
    items = []
    step = 0
    while inputs[step, bits] == 1.0:
        assert not inputs[step, :bits].any() and inputs[step, bits + 1] == 0
        vectors = inputs[step + 1 : step + 1 + item_length]
        assert not vectors[:, bits:].any()
        items.append(vectors[:, :bits].copy())
        step += item_length + 1
    assert inputs[step, bits + 1] == 1.0 and not inputs[step, : bits + 1].any()
    query = inputs[step + 1 : step + 1 + item_length]
    assert not query[:, bits:].any()
    step += item_length + 1
    assert inputs[step, bits + 1] == 1.0 and not inputs[step, : bits + 1].any()
    return items, query[:, :bits], step + 1


@pytest.mark.parametrize("seed", SEEDS)
def test_associative_recall_target_is_the_item_after_the_query(seed):
    task = SMALL_TASKS["associative_recall"]
    bits, item_length = task.bits, task.item_length
    inputs, targets, mask = sample(task, seed, batch_size=8)
    for item in range(len(inputs)):
        items, query, answer_start = parse_recall(inputs[item], bits, item_length)
        assert task.min_items <= len(items) <= task.max_items
        assert answer_start == len(items) * (item_length + 1) + item_length + 2
        matches = [index for index, candidate in enumerate(items) if (candidate == query).all()]
        assert len(matches) == 1, "items are distinct, so the query matches exactly one"
        query_index = matches[0]
        assert query_index < len(items) - 1, "the last item is never queried"

        expected_targets = np.zeros_like(targets[item])
        expected_mask = np.zeros_like(mask[item])
        expected_targets[answer_start : answer_start + item_length] = items[query_index + 1]
        expected_mask[answer_start : answer_start + item_length] = 1.0
        np.testing.assert_array_equal(targets[item], expected_targets)
        np.testing.assert_array_equal(mask[item], expected_mask)
        total = (len(items) + 2) * (item_length + 1)
        assert not inputs[item, answer_start:total].any()
        assert_padding_empty(inputs[item], targets[item], mask[item], total)


def test_associative_recall_items_are_distinct_even_when_patterns_are_scarce():
    # 2 bits * 2 steps = 16 possible items, and every sequence holds 14 of them.
    task = AssociativeRecallTask(bits=2, item_length=2, min_items=14, max_items=14)
    inputs, _, _ = sample(task, seed=3, batch_size=4)
    for item in range(len(inputs)):
        items, _, _ = parse_recall(inputs[item], 2, 2)
        assert len({candidate.tobytes() for candidate in items}) == 14


def test_associative_recall_queries_cover_every_allowed_item():
    task = AssociativeRecallTask(bits=4, item_length=1, min_items=4, max_items=4)
    inputs, _, _ = sample(task, seed=0, batch_size=64)
    queried = set()
    for item in range(len(inputs)):
        items, query, _ = parse_recall(inputs[item], 4, 1)
        queried.add(next(i for i, c in enumerate(items) if (c == query).all()))
    assert queried == {0, 1, 2}


# --- priority sort -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_priority_sort_writes_whole_rows_in_priority_order(seed):
    task = SMALL_TASKS["priority_sort"]
    bits = task.bits
    inputs, targets, mask = sample(task, seed)
    for item in range(len(inputs)):
        length = only_step(inputs[item, :, bits + 1])
        assert task.min_inputs <= length <= task.num_inputs
        vectors = inputs[item, :length, :bits]
        priorities = inputs[item, :length, bits]
        assert set(np.unique(vectors).tolist()) <= {0.0, 1.0}
        assert (priorities >= -1).all() and (priorities <= 1).all()
        assert len(np.unique(priorities)) == length

        output_count = min(task.num_outputs, length)
        order = np.argsort(-priorities, kind="stable")[:output_count]
        expected_targets = np.zeros_like(targets[item])
        expected_mask = np.zeros_like(mask[item])
        expected_targets[length + 1 : length + 1 + output_count] = vectors[order]
        expected_mask[length + 1 : length + 1 + output_count] = 1.0
        np.testing.assert_array_equal(targets[item], expected_targets)
        np.testing.assert_array_equal(mask[item], expected_mask)
        assert not inputs[item, length, : bits + 1].any()
        assert not inputs[item, length + 1 :].any()
        assert_padding_empty(inputs[item], targets[item], mask[item], length + 1 + output_count)


def test_priority_sort_is_not_a_column_wise_sort():
    # With 8 bits per row, sorting each column on its own would build rows that are not inputs.
    task = PrioritySortTask(bits=8, num_inputs=20, num_outputs=16)
    inputs, targets, mask = sample(task, seed=5, batch_size=4)
    assert inputs.shape[1] == task.max_steps == 37
    for item in range(len(inputs)):
        input_rows = {row.tobytes() for row in inputs[item, :20, :8]}
        for step in np.nonzero(mask[item])[0]:
            assert targets[item, step].tobytes() in input_rows


# --- adding and argmax ---------------------------------------------------------------------


def parse_digits(inputs: np.ndarray, digits: int) -> list[int]:
    """The digit values one sequence shows, read from its one-hot steps up to the delimiter."""
    length = only_step(inputs[:, digits])
    values = []
    for step in range(length):
        one_hot = inputs[step, :digits]
        assert one_hot.sum() == 1.0 and set(one_hot.tolist()) <= {0.0, 1.0}
        values.append(int(np.nonzero(one_hot)[0][0]))
    assert not inputs[length, :digits].any()
    return values


@pytest.mark.parametrize("seed", SEEDS)
def test_adding_answers_the_sum_in_binary(seed):
    task = SMALL_TASKS["adding"]
    inputs, targets, mask = sample(task, seed)
    assert task.output_size == len(format(7 * 3, "b"))
    for item in range(len(inputs)):
        values = parse_digits(inputs[item], task.digits)
        length = len(values)
        assert task.min_length <= length <= task.max_length
        total = 0
        for value in values:
            total += value
        little_endian = format(total, f"0{task.output_size}b")[::-1]
        expected_targets = np.zeros_like(targets[item])
        expected_targets[length] = [float(bit) for bit in little_endian]
        expected_mask = np.zeros_like(mask[item])
        expected_mask[length] = 1.0
        np.testing.assert_array_equal(targets[item], expected_targets)
        np.testing.assert_array_equal(mask[item], expected_mask)
        assert_padding_empty(inputs[item], targets[item], mask[item], length + 1)


def test_adding_largest_sum_fits_its_bits():
    task = AddingTask(digits=5, min_length=10, max_length=10)
    assert task.sum_bits == 6  # 40 needs 6 bits
    wide = AddingTask(digits=5, max_length=10, sum_bits=9).with_lengths(100, 100)
    inputs, targets, mask = sample(wide, seed=0, batch_size=2)
    for item in range(2):
        values = parse_digits(inputs[item], 5)
        bits = targets[item, 100]
        assert sum(int(bit) << place for place, bit in enumerate(bits)) == sum(values)


@pytest.mark.parametrize("seed", SEEDS)
def test_argmax_answers_the_last_position_of_the_largest(seed):
    task = SMALL_TASKS["argmax"]
    inputs, targets, mask = sample(task, seed, batch_size=12)
    saw_a_tie = False
    for item in range(len(inputs)):
        values = parse_digits(inputs[item], task.digits)
        length = len(values)
        best_position = 0
        for position, value in enumerate(values):
            if value >= values[best_position]:
                best_position = position
        saw_a_tie |= values.count(max(values)) > 1
        expected_targets = np.zeros_like(targets[item])
        expected_targets[length, best_position] = 1.0
        expected_mask = np.zeros_like(mask[item])
        expected_mask[length] = 1.0
        np.testing.assert_array_equal(targets[item], expected_targets)
        np.testing.assert_array_equal(mask[item], expected_mask)
        assert_padding_empty(inputs[item], targets[item], mask[item], length + 1)
    assert saw_a_tie, "the tie rule went untested; pick another seed"
