"""Interventions (mann.Intervention) and What if (mann.whatif): a replaced quantity changes
exactly what it should, an unchanged one changes nothing bit for bit, and every bad
intervention is refused with an error naming what is valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mann
from mann import analysis, figures
from mann.inputs import record, sample_input
from mann.intervention import FIELDS, Intervention, intervention_fields
from mann.tasks import make_task
from mann.trace import Trace
from mann.whatif import copy_items, knob_interventions, presets, sort_answers, whatif

torch.set_num_threads(1)

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
COPY = make_task("copy", bits=4, max_length=6)


def small_model(arch: str, **sizes) -> mann.MemoryAugmentedNetwork:
    torch.manual_seed(0)
    config = mann.ModelConfig(
        arch=arch, input_size=COPY.input_size, output_size=COPY.output_size, hidden_size=16,
        memory_size=sizes.pop("memory_size", 12), word_size=5, read_heads=2, **sizes,
    )  # fmt: skip
    return mann.build_model(config).eval()


def copy_batch(length: int = 5, batch_size: int = 1, seed: int = 0):
    return COPY.with_lengths(length, length).sample(batch_size, torch.Generator().manual_seed(seed))


def run(model, inputs, interventions=None):
    with torch.no_grad():
        return model(inputs, record=True, interventions=interventions)


ARCHS = ("ntm", "dnc", "sam", "sdnc")


@pytest.mark.parametrize("arch", ["dnc", "sam", "sdnc"])
def test_a_write_gate_held_at_zero_leaves_memory_at_its_initial_value(arch):
    model = small_model(arch)
    batch = copy_batch(batch_size=3)
    steps = batch.inputs.shape[1]
    _, _, trace = run(model, batch.inputs, [Intervention(range(0, steps), "write_gate", 0.0)])
    assert trace.memory.shape[0] == steps
    np.testing.assert_array_equal(trace.memory, 0.0)  # DNC, SAM and SDNC start from zeros
    np.testing.assert_array_equal(trace.write_gate, 0.0)
    _, _, untouched = run(model, batch.inputs)
    assert np.abs(untouched.memory).max() > 0, "without it the model does write"


def recorded_value(trace: Trace, field: str, step: int) -> np.ndarray:
    """What the model computed for ``field`` at ``step``, as the trace has it."""
    if field == "memory":  # replaced at the start of the step: M_{t-1}
        return trace.memory[step - 1]
    return getattr(trace, field)[step]


@pytest.mark.parametrize("arch", ARCHS)
def test_an_intervention_equal_to_what_the_model_computed_changes_nothing(arch):
    model = small_model(arch)
    batch = copy_batch()
    logits, _, trace = run(model, batch.inputs)
    step = 4
    fields = [f for f in FIELDS[arch] if getattr(trace, f, None) is not None]
    assert "read_vectors" in fields and len(fields) >= 2
    for field in fields:
        value = recorded_value(trace, field, step)
        if arch in ("sam", "sdnc") and field == "write_gate":
            value = trace.write_gate[step]
        same_logits, _, same = run(model, batch.inputs, [Intervention(step, field, value)])
        assert torch.equal(logits, same_logits), field
        for name in trace.available():
            np.testing.assert_array_equal(getattr(same, name), getattr(trace, name),
                                          err_msg=f"{field} changed {name}")  # fmt: skip


def test_every_dnc_and_ntm_field_takes_effect_at_its_step_and_not_before():
    for arch in ("ntm", "dnc"):
        model = small_model(arch)
        batch = copy_batch()
        logits, _, trace = run(model, batch.inputs)
        sizes = intervention_fields(model)
        for field, shape in sizes.items():
            value = np.full(shape, 0.37)
            if field in ("read_modes", "shift"):
                value = np.full(shape, 1.0 / shape[-1])
            if field in ("sharpening", "write_strength", "read_strengths", "key_strength"):
                value = np.full(shape, 7.0)
            changed, _, _ = run(model, batch.inputs, [Intervention(3, field, value)])
            assert torch.equal(changed[:, :3], logits[:, :3]), f"{arch} {field} acted early"
            assert not torch.equal(changed, logits), f"{arch} {field} changed nothing"


def test_an_intervention_applies_to_every_item_and_never_to_the_parameters():
    model = small_model("dnc")
    batch = copy_batch(batch_size=4)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    plain, _ = model(batch.inputs)  # the fused path
    with torch.no_grad():
        _, _, untouched = model(batch.inputs, record=True, trace_item=2)
        changed, _, trace = model(batch.inputs, record=True, trace_item=2,
                                  interventions=[Intervention(1, "memory", 1.5, slot=3)])
    np.testing.assert_array_equal(trace.memory[0], untouched.memory[0])  # M_0: before it
    # Step 1 starts from M_0 with row 3 all 1.5, then erases and writes a little.
    np.testing.assert_allclose(trace.memory[1, 3], 1.5, atol=0.5)
    assert not np.allclose(untouched.memory[1, 3], 1.5, atol=0.5)
    for item in range(4):  # every item of the batch got it
        assert torch.allclose(changed[item, :1], plain[item, :1].detach(), atol=1e-5)
        assert not torch.allclose(changed[item, 1:], plain[item, 1:].detach())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    again, _ = model(batch.inputs)
    assert torch.equal(plain, again), "nothing cached was touched"


def test_the_memory_replacement_is_what_the_step_reads():
    model = small_model("ntm")
    batch = copy_batch()
    _, _, trace = run(model, batch.inputs, [Intervention(2, "memory", 0.25)])
    # The NTM reads M_{t-1} before writing: at step 2 every read vector is 0.25 per element.
    np.testing.assert_allclose(trace.read_vectors[2], 0.25, rtol=1e-6)


def test_a_cut_link_row_reads_nothing_forward_from_it():
    model = small_model("dnc")
    batch = copy_batch()
    _, _, trace = run(model, batch.inputs, [Intervention(range(0, 11), "link", 0.0)])
    np.testing.assert_array_equal(trace.link, 0.0)
    np.testing.assert_array_equal(trace.forward_weights, 0.0)
    np.testing.assert_array_equal(trace.backward_weights, 0.0)


def test_interventions_are_kept_in_the_trace_and_survive_saving(tmp_path):
    model = small_model("dnc")
    batch = copy_batch()
    listed = [Intervention(range(2, 5), "read_modes", [0.0, 1.0, 0.0], head=1),
              Intervention(3, "usage", 1.0, slot=4)]  # fmt: skip
    _, _, trace = run(model, batch.inputs, listed)
    trace.save(tmp_path / "run.npz")
    loaded = Trace.load(tmp_path / "run.npz")
    assert [Intervention.from_dict(v) for v in loaded.metadata["interventions"]] == [
        Intervention(range(2, 5), "read_modes", [0.0, 1.0, 0.0], head=1),
        Intervention(3, "usage", 1.0, slot=4),
    ]
    np.testing.assert_array_equal(loaded.read_modes[2:5, 1], [[0.0, 1.0, 0.0]] * 3)
    np.testing.assert_array_equal(loaded.usage[3, 4], 1.0)


@pytest.mark.parametrize(
    "intervention, message",
    [
        (Intervention(2, "shift", 0.0), "field 'shift' is not one dnc can replace; its fields are"),
        (Intervention(11, "write_gate", 0.0), r"step must lie in \[0, 10\]"),
        (Intervention(-1, "write_gate", 0.0), r"step must lie in \[0, 10\]"),
        (Intervention(range(3, 3), "write_gate", 0.0), "non-empty range"),
        (Intervention(2.5, "write_gate", 0.0), "step must be an int or a range"),
        (Intervention(2, "free_gates", 0.0, head=2), r"head must be in \[0, 1\]"),
        (Intervention(2, "free_gates", 0.0, head=True), "head must be an integer"),
        (Intervention(2, "write_gate", 0.0, head=0), "field 'write_gate' has no heads"),
        (Intervention(2, "usage", 0.0, slot=12), r"slot must be in \[0, 11\]"),
        (Intervention(2, "read_modes", 0.0, slot=1), "has no slot axis"),
        (Intervention(2, "memory", [1.0, 2.0], slot=1), r"shape \(5,\) \(word 5\), got shape"),
        (Intervention(2, "read_modes", [0.0, 1.0, 0.0]), r"shape \(2, 3\)"),
        (Intervention(2, "write_gate", float("nan")), "must be finite"),
        (Intervention(2, "write_gate", "zero"), "must be a number or an array"),
    ],
)
def test_a_bad_intervention_is_refused_naming_what_is_valid(intervention, message):
    model = small_model("dnc")
    batch = copy_batch()
    with pytest.raises(ValueError, match=message):
        model(batch.inputs, interventions=[intervention])


def test_fields_are_listed_per_architecture_with_their_shapes():
    assert intervention_fields("ntm")["shift"] == ("head", "offset")
    assert intervention_fields(small_model("ntm"))["shift"] == (3, 3)  # 2 reads + 1 write
    assert intervention_fields(small_model("dnc"))["link"] == (12, 12)
    assert set(intervention_fields("sdnc")) > {"read_modes", "write_gate", "read_vectors"}
    assert intervention_fields("lstm") == {}  # no memory, nothing to replace
    with pytest.raises(ValueError, match="arch must be one of"):
        intervention_fields("gru")


# ---- the shipped models: the presets change exactly the outputs a user would predict ------


def shipped(name: str):
    return mann.load(CHECKPOINTS / name)


def test_erasing_the_slot_ntm_copy_wrote_item_k_to_changes_only_item_k():
    model = shipped("ntm-copy")
    task = make_task("copy")
    for seed, k in ((0, 3), (1, 10)):
        batch = sample_input(task, 20, seed)
        trace = record(model, batch)
        slot = int(trace.write_weights[k, 0].argmax())
        result = whatif(model, batch, [Intervention(20, "memory", 0.0, slot=slot)])
        assert result.original.metadata["bit_errors"] == 0
        assert result.steps_with_changed_bits == [20 + 1 + k]  # item k's answer, no other
        assert result.intervened_errors[21 + k] > 0


def test_the_presets_do_what_they_predict_on_the_shipped_copy_models():
    task = make_task("copy")
    batch = sample_input(task, 12, 0)
    ntm, dnc = shipped("ntm-copy"), shipped("dnc-copy")
    ntm_presets = {p.name: p for p in presets(record(ntm, batch))}
    erase = ntm_presets["NTM: erase the slot that holds item 3 before it is read back"]
    items = copy_items(record(ntm, batch))
    assert whatif(ntm, batch, erase.interventions).steps_with_changed_bits == [items[2][1]]

    dnc_presets = {p.name: p for p in presets(record(dnc, batch))}
    closed = whatif(dnc, batch, dnc_presets["DNC: close the write gate while it stores item 3"]
                    .interventions)  # fmt: skip
    # Item 3 is never written: reading forward, its turn (step 15) answers item 4.
    assert closed.steps_with_changed_bits[0] == items[2][1]
    np.testing.assert_array_equal(closed.intervened.outputs[items[2][1]] > 0.5,
                                  batch.inputs[0, 3, :8].numpy() > 0.5)  # fmt: skip
    content = whatif(dnc, batch, dnc_presets["DNC: read by content only during the output"]
                     .interventions)  # fmt: skip
    assert content.intervened.metadata["bit_errors"] > 10
    assert set(content.steps_with_changed_bits) <= {output for _, output in items}


def test_forgetting_ntm_ngrams_learned_memory_worsens_its_predictions():
    copy_trace = record(shipped("ntm-copy"), sample_input(make_task("copy"), 8, 0))
    assert not [p for p in presets(copy_trace) if "learned" in p.name]  # a constant memory
    model, task = shipped("ntm-ngrams"), make_task("ngrams")
    before = after = 0.0
    for seed in range(4):
        batch = sample_input(task, 200, seed)
        (forget,) = presets(record(model, batch))
        assert forget.name == "NTM: forget the learned initial memory"
        result = whatif(model, batch, forget.interventions)
        assert result.first_divergence == 0 and result.first_changed_bit is not None
        before += result.original.metadata["bit_errors"]
        after += result.intervened.metadata["bit_errors"]
    assert after > before + 10  # over four sequences of 200 bits


def test_sort_answers_reads_a_priority_sort_run_and_nothing_else():
    task = make_task("priority_sort", bits=3, num_inputs=5, num_outputs=3)
    batch = sample_input(task, 5, 2)
    trace = record(shipped("dnc-priority-sort"), sample_input(make_task("priority_sort"), 20, 2))
    delimiter, answered = sort_answers(trace)
    priorities = trace.inputs[:20, -2]
    assert delimiter == 20 and answered == np.argsort(-priorities)[:16].tolist()
    from mann.catalog import untrained_model

    small = record(untrained_model("ntm", task), batch)  # what it answers does not matter
    assert sort_answers(small)[0] == 5 and len(sort_answers(small)[1]) == 3
    shuffled = small.replace(targets=small.targets[[0, 1, 2, 3, 4, 5, 7, 6, 8]])  # out of order
    assert sort_answers(shuffled) is None
    assert sort_answers(record(shipped("dnc-copy"), sample_input(make_task("copy"), 8, 0))) is None


def test_priority_sort_presets_take_apart_each_models_way_of_sorting():
    task = make_task("priority_sort")
    batch = sample_input(task, 20, 0)
    targets = batch.targets[0, 21:].numpy() > 0.5
    dnc = shipped("dnc-priority-sort")
    found = {p.name: p for p in presets(record(dnc, batch))}
    assert set(found) == {"DNC: erase the highest-priority vector before the answers",
                          "DNC: keep what it has answered (write gate 0 on the answer steps)"}
    erased = whatif(dnc, batch, found["DNC: erase the highest-priority vector before the "
                                       "answers"].interventions)  # fmt: skip
    answers = erased.intervened.outputs[21:] > 0.5
    # A content lookup of the highest priority left: every answer comes one place early.
    assert (answers[:-1] != targets[1:]).sum() <= 3
    assert erased.intervened.metadata["bit_errors"] > 30
    kept = whatif(dnc, batch, found["DNC: keep what it has answered (write gate 0 on the answer "
                                    "steps)"].interventions)  # fmt: skip
    # Nothing is overwritten: the first answer repeats.
    assert ((kept.intervened.outputs[21:] > 0.5) != targets[0]).sum(axis=1).max() <= 2
    assert kept.intervened.metadata["bit_errors"] > 30

    ntm = shipped("ntm-priority-sort")
    trace = record(ntm, batch)
    (hold,) = [p for p in presets(trace) if "hold the read heads" in p.name]
    held = whatif(ntm, batch, hold.interventions)
    foci = held.intervened.read_weights[21:, 0].argmax(axis=1)
    assert len(set(foci.tolist())) == 1 and len(set(trace.read_weights[21:, 0].argmax(1))) > 5
    assert held.intervened.metadata["bit_errors"] > held.original.metadata["bit_errors"] + 15
    (forget,) = [p for p in presets(trace) if "forget" in p.name]  # its learned memory
    forgot = whatif(ntm, batch, forget.interventions)
    crowded = analysis.priority_placement(forgot.intervened).slots_written
    assert crowded < analysis.priority_placement(trace).slots_written


def test_whatif_with_nothing_replaced_changes_nothing():
    model = shipped("dnc-copy")
    batch = sample_input(make_task("copy"), 8, 0)
    trace = record(model, batch)
    result = whatif(model, batch, [Intervention(4, "allocation_gate", trace.allocation_gate[4])])
    assert result.first_divergence is None and result.first_changed_bit is None
    assert not result.changed_bits.any() and not result.memory_difference.any()
    np.testing.assert_array_equal(result.original_errors, result.intervened_errors)


# ---- Explain's knobs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ntm-copy", "dnc-copy"])
def test_knobs_at_the_recorded_values_reproduce_the_recorded_weighting(name):
    trace = record(shipped(name), sample_input(make_task("copy"), 10, 1))
    for head in figures.heads(trace):
        for step in (2, 15):
            plain = figures.explanation(trace, step, head)
            turned = figures.explanation(trace, step, head, plain.knobs)
            assert plain.mismatch() <= plain.tolerance
            for a, b in zip(plain.stages, turned.stages, strict=True):
                np.testing.assert_array_equal(a.weights, b.weights)


@pytest.mark.parametrize("name", ["ntm-copy", "dnc-copy"])
def test_turned_knobs_predict_the_rerun_with_them_as_interventions(name):
    model = shipped(name)
    batch = sample_input(make_task("copy"), 10, 1)
    trace = record(model, batch)
    for head in figures.heads(trace):
        step = 13
        recorded = figures.explanation(trace, step, head).knobs
        knobs = dict(recorded)
        for key in ("β", "β^w", "β^r"):
            if key in knobs:
                knobs[key] = knobs[key] * 0.5 + 1.0
        if "g^w" in knobs:
            knobs["g^w"] = 0.3
        if "π" in knobs:
            knobs["π"] = [0.2, 0.5, 0.3]
        if "s" in knobs:
            knobs["s"] = [0.5, 0.5, 0.0]
        predicted = figures.explanation(trace, step, head, knobs).stages[-1].weights
        interventions = knob_interventions(trace.arch, trace.read_heads, step, head, knobs,
                                           recorded)  # fmt: skip
        assert interventions
        rerun = whatif(model, batch, interventions).intervened
        kind, index = head.split()
        weights = (rerun.read_weights if kind == "read" else rerun.write_weights)[step, int(index)]
        np.testing.assert_allclose(predicted, weights, atol=2e-5, err_msg=head)


def test_bad_knobs_name_the_knob():
    trace = record(shipped("dnc-copy"), sample_input(make_task("copy"), 6, 0))
    with pytest.raises(ValueError, match="unknown knobs"):
        figures.explanation(trace, 8, "read 0", {"γ": 2.0})
    with pytest.raises(ValueError, match="'π' must be >= 0 and sum to 1"):
        figures.explanation(trace, 8, "read 0", {"π": [0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match="'g\\^w' must lie in"):
        figures.explanation(trace, 8, "write 0", {"g^w": 1.5})


@pytest.mark.parametrize("arch", ["sam", "sdnc"])
def test_a_sparse_memory_replaced_mid_run_leaves_the_earlier_record_intact(arch):
    model = small_model(arch)
    batch = copy_batch()
    _, _, untouched = run(model, batch.inputs)
    _, _, trace = run(model, batch.inputs, [Intervention(4, "memory", 0.5)])
    # The steps before keep their memory (their slot store is not the replaced one's) ...
    np.testing.assert_array_equal(trace.memory[:4], untouched.memory[:4])
    np.testing.assert_array_equal(trace.usage[:4], untouched.usage[:4])
    # ... and step 4 starts from 0.5 everywhere: the rows it did not write still hold it.
    written = trace.write_weights[4, 0] > 0
    assert written.any() and not written.all()
    np.testing.assert_array_equal(trace.memory[4][~written], 0.5)
