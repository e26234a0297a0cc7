"""Shipped models against their bars, and the memory behaviour they were shipped to show: an
NTM walking its ring, a DNC freeing and re-allocating slots, an NTM reading each N-gram
context from one slot of its learned memory, a DNC with masked content lookups."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import mann
from mann import ModelConfig, analysis, checkpoint
from mann.evaluate import generalisation
from mann.patterns import patterns_frame
from mann.tasks import make_task

torch.set_num_threads(1)

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
MULTI_COPY = ("ntm-multi-copy", "dnc-multi-copy")
# A quarter of the bit errors of the LSTM baseline trained as many steps as both of
# ntm-pretrained-priority-sort's stages together (docs/models.md; bench/shipped_models.py).
PRETRAINED_SORT_BAR = 34.901 / 4


def shipped(name: str):
    path = CHECKPOINTS / name
    metadata = checkpoint.read_metadata(path)
    return mann.load(path), make_task(metadata["task"], **metadata["task_options"]), metadata


@pytest.mark.slow
@pytest.mark.parametrize("name", MULTI_COPY)
def test_multi_copy_models_meet_their_bar_with_ten_slots(name):
    model, task, metadata = shipped(name)
    assert model.config.memory_size <= 10
    assert "python -m mann train" in metadata["command"]
    six_rounds = task.with_rounds(6, 6)  # 30 items: three times the slots
    frame = generalisation(model, six_rounds, [5], sequences=1000, seed=0)
    assert float(frame["mean_bit_errors"].iloc[0]) <= 0.5


def test_the_ntm_walks_a_ring_and_the_dnc_reuses_freed_slots():
    models = {name: shipped(name)[0] for name in MULTI_COPY}
    task = shipped("dnc-multi-copy")[1]
    frame = patterns_frame(models, task, [5], sequences=50, seed=0, rounds=6).set_index("model")
    ntm, dnc = frame.loc["ntm-multi-copy"], frame.loc["dnc-multi-copy"]
    # 30 items in 10 slots: both write every slot several times over.
    assert ntm["slots_written"] == 10 and ntm["rewrites"] >= 20
    assert dnc["slots_written"] >= 9.5 and dnc["rewrites"] >= 20
    # The NTM mostly moves one slot per write; allocation hands the DNC slots anywhere.
    assert ntm["write_locality"] > 0.7
    assert dnc["write_locality"] < 0.4
    # The DNC frees what it reads and allocates fresh slots for the items.
    assert dnc["free_gates:scored"] > 0.9
    assert dnc["allocation_gate:unscored"] > 0.6


@pytest.mark.slow
def test_the_ntm_papers_picture_memory_copies_at_four_times_the_training_length():
    # All three trained on copies of 1-20 vectors.
    copy = make_task("copy")
    errors = {}
    for name in ("lstm-copy", "ntm-copy", "dnc-copy"):
        model, task, _ = shipped(name)
        assert (task.min_length, task.max_length) == (1, 20)
        frame = generalisation(model, copy, [20, 80], sequences=100, seed=3)
        errors[name] = frame.set_index("length")["mean_bit_errors"].to_dict()
    assert errors["ntm-copy"][80] <= 1.0 and errors["dnc-copy"][80] <= 1.0
    assert errors["ntm-copy"][20] <= 0.1 and errors["dnc-copy"][20] <= 0.1
    assert errors["lstm-copy"][80] > 100  # without memory it falls apart past 20
    assert shipped("lstm-copy")[0].config.arch == "lstm"


@pytest.mark.slow
def test_dynamic_ngrams_the_ntm_and_dnc_predict_near_the_optimum_and_the_lstm_does_not():
    costs = {}
    for name in ("ntm-ngrams", "dnc-ngrams", "lstm-ngrams"):
        model, task, _ = shipped(name)
        assert task.name == "ngrams"
        frame = generalisation(model, task, [200], sequences=200, seed=5)
        row = frame.iloc[0]
        costs[name] = row["cost_bits"] / row["optimal_cost_bits"] - 1.0
    for name in ("ntm-ngrams", "dnc-ngrams"):
        assert costs[name] <= 0.05, name  # within 5% of the Bayes-optimal predictor
        assert costs["lstm-ngrams"] > 2 * costs[name], name


def context_reads(model, task, sequences: int = 30) -> tuple[float, list[tuple[int, int]]]:
    """``analysis.context_reads`` over ``sequences`` N-gram sequences: the share of a
    context's reads in its commonest slot (pooled over contexts), and per sequence
    (different contexts, different read slots)."""
    batch = task.sample(sequences, torch.Generator().manual_seed(11))
    found = [analysis.context_reads(trace) for trace in mann.record_traces(model, batch)]
    shares = [share for reads in found for share in reads.one_slot_shares]
    return sum(shares) / len(shares), [(reads.contexts, reads.read_slots) for reads in found]


@pytest.mark.slow
def test_the_ntm_with_a_learned_memory_reads_each_context_from_one_slot():
    """Why the learned initial memory made the NTM near-optimal on N-grams: its slots differ
    from the start, so the context's content key finds the same slot every time it recurs."""
    model, task, _ = shipped("ntm-ngrams")
    assert model.config.learned_memory
    consistency, counts = context_reads(model, task)
    assert consistency > 0.95
    # A slot per context, and no more.
    assert all(contexts <= slots <= contexts + 2 for contexts, slots in counts)
    assert sum(contexts == slots for contexts, slots in counts) >= len(counts) // 2
    constant = mann.build_model(ModelConfig.from_dict({**model.config.to_dict(),
                                                       "learned_memory": False}))  # fmt: skip
    state = {k: v for k, v in model.state_dict().items() if k != "access.initial_memory"}
    constant.load_state_dict(state)  # the same weights from a constant memory
    assert context_reads(constant.eval(), task)[0] < 0.9


@pytest.mark.slow
def test_priority_sort_the_dnc_makes_under_a_quarter_of_the_lstms_errors():
    errors = {}
    for name in ("dnc-priority-sort", "lstm-priority-sort"):
        model, task, _ = shipped(name)
        assert (task.num_inputs, task.num_outputs) == (20, 16)
        frame = generalisation(model, task, [20], sequences=200, seed=5)
        errors[name] = float(frame["mean_bit_errors"].iloc[0])
    assert errors["dnc-priority-sort"] <= errors["lstm-priority-sort"] / 4
    assert errors["lstm-priority-sort"] > 20  # without memory it does not sort


@pytest.mark.slow
def test_priority_sort_the_ntm_places_by_priority_and_the_dnc_allocates_in_arrival_order():
    """The NTM paper's finding, reproduced: its NTM writes each item where its priority points
    and reads the answers by walking the slots; items of close priority share a slot, which
    is what keeps it above the DNC, whose allocation gives each item a slot of its own and
    whose reads jump to each answer by content."""
    ntm, task, _ = shipped("ntm-priority-sort")
    dnc, _, _ = shipped("dnc-priority-sort")
    lstm, _, _ = shipped("lstm-priority-sort")
    batch = task.sample(50, torch.Generator().manual_seed(1))
    frame = analysis.placement_frame({"ntm": mann.record_traces(ntm, batch),
                                      "dnc": mann.record_traces(dnc, batch)}).set_index("model")
    placed, allocated = frame.loc["ntm"], frame.loc["dnc"]
    assert placed["priority_fit"] < -0.7 and abs(allocated["priority_fit"]) < 0.2
    assert placed["read_steps"] > 0.95 and allocated["read_steps"] < 0.1
    assert placed["slots_written"] < 14 and allocated["slots_written"] == 20
    assert allocated["read_hits"] > 0.9
    errors = {name: float(generalisation(model, task, [20], sequences=200, seed=5)
                          ["mean_bit_errors"].iloc[0])
              for name, model in (("ntm", ntm), ("dnc", dnc), ("lstm", lstm))}  # fmt: skip
    assert errors["dnc"] < errors["ntm"] < 0.7 * errors["lstm"]


@pytest.mark.slow
def test_the_ntm_taught_recall_first_sorts_by_selection_within_its_bar():
    """The NTM architecture again, first trained on associative recall of single vectors, then
    on priority sort: it writes every item to a fresh slot in arrival order, as the DNC's
    allocation does, jumps to each answer by content, and meets the bar."""
    pretrained, task, metadata = shipped("ntm-pretrained-priority-sort")
    placing, _, _ = shipped("ntm-priority-sort")
    # The same architecture and sizes (without the learned initial memory), other training.
    assert pretrained.config == dataclasses.replace(placing.config, learned_memory=False)
    assert "--task associative_recall" in metadata["command"]
    assert "--init runs/" in metadata["command"]
    batch = task.sample(50, torch.Generator().manual_seed(1))
    found = analysis.placement_frame({"ntm": mann.record_traces(pretrained, batch)}).iloc[0]
    assert abs(found["priority_fit"]) < 0.3 and found["slots_written"] >= 18.5
    assert found["read_steps"] < 0.5 and found["read_hits"] > 0.75
    frame = generalisation(pretrained, task, [20], sequences=1000, seed=0)
    assert float(frame["mean_bit_errors"].iloc[0]) <= PRETRAINED_SORT_BAR


def test_what_if_takes_each_ntm_apart_by_how_it_sorts():
    """The searching NTM is offered the DNC's erase, and every answer comes one place early;
    the placing NTM is offered the held read heads instead."""
    from mann.inputs import record, sample_input
    from mann.whatif import presets, whatif

    pretrained, task, _ = shipped("ntm-pretrained-priority-sort")
    placing, _, _ = shipped("ntm-priority-sort")
    batch = sample_input(task, 20, 0)
    erase, keep = presets(record(pretrained, batch))
    assert erase.name == "NTM: erase the highest-priority vector before the answers"
    assert keep.name == "NTM: keep what it has answered (no write on the answer steps)"
    offered = [p.name for p in presets(record(placing, batch))]
    assert not any("erase" in name or "keep" in name for name in offered)
    assert any("hold the read heads" in name for name in offered)
    targets = batch.targets[0].numpy()[21:] > 0.5
    erased = whatif(pretrained, batch, erase.interventions)
    outputs = erased.intervened.outputs[21:] > 0.5
    early = [(outputs[j] != targets[j + 1]).sum() <= 2 for j in range(len(targets) - 1)]
    assert sum(early) >= 13 and erased.intervened.metadata["bit_errors"] > 40
    kept = whatif(pretrained, batch, keep.interventions)
    repeats = ((kept.intervened.outputs[21:] > 0.5) != targets[0]).sum(axis=1) <= 2
    assert repeats.sum() >= 14 and kept.intervened.metadata["bit_errors"] > 40


def test_the_sorting_lessons_sequence_shows_what_its_text_says():
    from mann.inputs import record, sample_input
    from ui.lessons import LESSONS

    (lesson,) = [lesson for lesson in LESSONS if lesson.key == "sorting"]
    view = lesson.steps[1].view
    ntm, task, _ = shipped("ntm-priority-sort")
    dnc, _, _ = shipped("dnc-priority-sort")
    batch = sample_input(task.with_lengths(view.length, view.length), view.length, view.seed)
    placed = analysis.priority_placement(record(ntm, batch))
    allocated = analysis.priority_placement(record(dnc, batch))
    assert placed.priority_fit < -0.9 and 9 <= placed.slots_written <= 14  # "about a dozen"
    assert placed.read_steps == 1.0  # the read walks the band
    assert allocated.slots_written == 20 and allocated.read_steps < 0.2  # fresh slots, jumps
    assert lesson.steps[3].view.step == view.length  # the delimiter: every vector written
    from mann.whatif import presets, whatif

    pretrained, _, _ = shipped("ntm-pretrained-priority-sort")
    searched = analysis.priority_placement(record(pretrained, batch))
    assert lesson.steps[4].view.model == "ntm-pretrained-priority-sort"
    assert searched.slots_written == 20 and searched.read_steps < 0.5  # fresh slots, jumps
    assert searched.read_hits == 1.0
    trace = record(pretrained, batch)
    answers = trace.mask > 0
    crossed = trace.write_weights[answers, 0].argmax(1) == trace.read_weights[answers, 0].argmax(1)
    assert crossed.mean() >= 0.8  # "overwrites the slot it has just read"
    last = lesson.steps[-1].view
    assert (last.model, last.seed, last.length) == ("dnc-priority-sort", view.seed, view.length)
    (keep,) = [p for p in presets(record(dnc, batch)) if p.name.startswith(last.preset)]
    kept = whatif(dnc, batch, keep.interventions)
    first = batch.targets[0, view.length + 1].numpy() > 0.5
    repeats = (kept.intervened.outputs[view.length + 1 :] > 0.5) != first
    assert repeats.sum(axis=1).max() <= 2  # "every answer then repeats the first"
    assert kept.intervened.metadata["bit_errors"] > 50


@pytest.mark.slow
def test_the_masked_content_dnc_recalls_and_is_the_plain_dnc_with_one_switch():
    masked, task, metadata = shipped("dnc-masked-associative-recall")
    plain, _, _ = shipped("dnc-associative-recall")
    assert masked.config.masked_content and not plain.config.masked_content
    assert "--masked-content" in metadata["command"]
    changed = {k for k, v in masked.config.to_dict().items() if plain.config.to_dict()[k] != v}
    assert changed == {"masked_content"}
    assert mann.backend_for(masked) == "reference"  # the kernels implement the plain DNC
    frame = generalisation(masked, task, [2, 4, 6], sequences=300, seed=5)
    assert (frame["mean_bit_errors"] <= 0.5).all()
    _, _, trace = masked(task.with_lengths(6, 6).sample(1, torch.Generator().manual_seed(0)).inputs,
                         record=True)  # fmt: skip
    masks = trace.read_masks  # the learned masks are recorded: strictly between 0 and 1
    assert masks is not None and ((masks > 0) & (masks < 1)).all()
