"""mann.figures: every drawn number is the trace's (or an independent recomputation of it)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from mann import ModelConfig, addressing, build_model, figures
from mann.inputs import record, sample_input
from mann.tasks import make_task
from mann.trace import Trace

torch.set_num_threads(1)

TASK = make_task("copy", bits=4, min_length=1, max_length=3)


def make_trace(arch: str, memory_size: int = 12, length: int = 3, seed: int = 0, **sizes):
    config = ModelConfig(
        arch=arch, input_size=TASK.input_size, output_size=TASK.output_size, hidden_size=16,
        memory_size=memory_size, word_size=sizes.pop("word_size", 5), **sizes,
    )
    torch.manual_seed(seed)
    model = build_model(config)
    return record(model, sample_input(TASK, length, seed))


@pytest.fixture(scope="module")
def ntm_trace() -> Trace:
    return make_trace("ntm", read_heads=2, write_heads=1)


@pytest.fixture(scope="module")
def dnc_trace() -> Trace:
    return make_trace("dnc", memory_size=10, read_heads=2)


def heatmap_named(figure, name: str):
    matches = [trace for trace in figure.data if trace.name == name]
    assert len(matches) == 1, f"expected one trace named {name!r}"
    return matches[0]


def frame_trace(figure, step: int, name: str):
    """The data that frame ``step`` gives the figure trace named ``name``."""
    index = [i for i, trace in enumerate(figure.data) if trace.name == name][0]
    frame = figure.frames[step]
    return frame.data[list(frame.traces).index(index)]


def sparse_trace(steps: int = 5, slots: int = 40, k: int = 3, rng=None) -> Trace:
    """A SAM/SDNC-shaped trace made of random numbers (sparse fields included)."""
    rng = rng or np.random.default_rng(0)
    positions = rng.integers(0, slots, size=(steps, 1, k)).astype(np.float32)
    read_weights = np.zeros((steps, 1, slots), np.float32)
    for t in range(steps):
        read_weights[t, 0, positions[t, 0].astype(int)] = 1.0 / k
    return Trace(
        arch="sdnc",
        inputs=rng.random((steps, 3), dtype=np.float32),
        outputs=rng.random((steps, 2), dtype=np.float32),
        memory=rng.standard_normal((steps, slots, 4)).astype(np.float32),
        read_weights=read_weights,
        write_weights=rng.random((steps, 1, slots), dtype=np.float32) / slots,
        read_vectors=rng.random((steps, 1, 4), dtype=np.float32),
        usage=rng.random((steps, slots), dtype=np.float32),
        read_positions=positions,
        least_used=rng.integers(0, slots, size=steps).astype(np.float32),
        link=rng.random((steps, k, k), dtype=np.float32),
        link_positions=positions[:, 0],
    )


# ---- pooling ---------------------------------------------------------------------------
def test_pool_slots_sums_and_averages_bins_including_a_short_last_bin(rng):
    values = rng.random((2, 7), dtype=np.float32)
    summed = figures.pool_slots(values, 3, "sum")
    averaged = figures.pool_slots(values, 3, "mean")
    np.testing.assert_allclose(summed[:, 0], values[:, :3].sum(1), rtol=1e-6)
    np.testing.assert_allclose(summed[:, 2], values[:, 6], rtol=1e-6)
    np.testing.assert_allclose(averaged[:, 1], values[:, 3:6].mean(1), rtol=1e-6)
    np.testing.assert_allclose(averaged[:, 2], values[:, 6], rtol=1e-6)  # one slot, its mean
    np.testing.assert_allclose(summed.sum(1), values.sum(1), rtol=1e-5)  # mass is kept
    assert figures.pool_slots(values, 1) is values


def test_pool_slots_and_bin_size_reject_bad_arguments():
    with pytest.raises(ValueError, match="how"):
        figures.pool_slots(np.zeros(4), 2, "max")
    with pytest.raises(ValueError, match="max_slots"):
        figures.slot_bin_size(10, 0)
    assert figures.slot_bin_size(300, 128) == 3
    assert figures.slot_bin_size(100, 128) == 1


# ---- the scrub figure ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_scrub_figure_frames_hold_the_trace_at_every_step(arch, ntm_trace, dnc_trace):
    trace = ntm_trace if arch == "ntm" else dnc_trace
    figure = figures.scrub_figure(trace)
    assert len(figure.frames) == trace.steps
    assert [frame.name for frame in figure.frames] == [str(t) for t in range(trace.steps)]
    steps = figure.layout.sliders[0].steps
    assert [list(step.args[0]) for step in steps] == [[str(t)] for t in range(trace.steps)]
    for t in range(trace.steps):
        np.testing.assert_array_equal(frame_trace(figure, t, "memory").z, trace.memory[t].T)
        weights = frame_trace(figure, t, "weightings").z
        np.testing.assert_array_equal(weights[: trace.write_heads], trace.write_weights[t])
        np.testing.assert_array_equal(
            weights[trace.write_heads : trace.write_heads + trace.read_heads],
            trace.read_weights[t],
        )
        box = frame_trace(figure, t, "current step")
        assert min(box.x) == t - 0.5 and max(box.x) == t + 0.5
    if arch == "dnc":
        labels = list(heatmap_named(figure, "weightings").y)
        assert labels[-3:] == ["usage", "precedence", "allocation"]
        weights = frame_trace(figure, 4, "weightings").z
        np.testing.assert_array_equal(weights[-3], trace.usage[4])
        np.testing.assert_array_equal(weights[-1], trace.allocation[4])
        for t in (0, trace.steps - 1):
            np.testing.assert_array_equal(frame_trace(figure, t, "link").z, trace.link[t])
    else:
        assert not [trace for trace in figure.data if trace.name == "link"]


def test_scrub_figure_starts_at_the_requested_step_and_draws_the_strip_once(dnc_trace):
    trace = dnc_trace
    figure = figures.scrub_figure(trace, step=3)
    np.testing.assert_array_equal(heatmap_named(figure, "memory").z, trace.memory[3].T)
    assert figure.layout.sliders[0].active == 3
    strip = heatmap_named(figure, "strip").z
    channels_in, channels_out = trace.inputs.shape[1], trace.outputs.shape[1]
    np.testing.assert_array_equal(strip[:channels_in], trace.inputs.T)
    scored = trace.mask > 0.5
    targets = strip[channels_in + 1 : channels_in + 1 + channels_out]
    np.testing.assert_array_equal(targets[:, scored], trace.targets.T[:, scored])
    assert np.isnan(targets[:, ~scored]).all()  # unscored steps have no target
    np.testing.assert_array_equal(strip[-channels_out:], trace.outputs.T)
    strip_index = [t.name for t in figure.data].index("strip")
    assert all(strip_index not in frame.traces for frame in figure.frames)


def test_step_figure_is_one_step_without_frames(ntm_trace):
    figure = figures.step_figure(ntm_trace, 5)
    assert not figure.frames and not figure.layout.sliders
    np.testing.assert_array_equal(heatmap_named(figure, "memory").z, ntm_trace.memory[5].T)
    with pytest.raises(ValueError, match="step must be in"):
        figures.step_figure(ntm_trace, ntm_trace.steps)
    with pytest.raises(ValueError, match="step must be an integer"):
        figures.scrub_figure(ntm_trace, step=1.5)


def test_large_memories_are_pooled_and_the_size_estimate_is_the_frames_size():
    trace = make_trace("dnc", memory_size=300, read_heads=1, length=2)
    figure = figures.scrub_figure(trace, max_slots=128, max_link_slots=64)
    memory = frame_trace(figure, 2, "memory")
    assert memory.z.shape == (trace.word_size, 100)
    np.testing.assert_allclose(
        memory.z, figures.pool_slots(trace.memory[2], 3, "mean", axis=0).T, rtol=1e-6
    )
    assert list(heatmap_named(figure, "memory").x[:3]) == [0, 3, 6]
    link = frame_trace(figure, 2, "link")
    assert link.z.shape == (60, 60)  # 300 slots in bins of 5
    np.testing.assert_allclose(link.z.sum(), trace.link[2].sum(), rtol=1e-4)
    carried = sum(
        np.size(item.z) if item.type == "heatmap" else 0
        for frame in figure.frames for item in frame.data
    )
    assert figures.animation_size(trace) == carried
    assert figures.fits_in_browser(trace, limit=carried)
    assert not figures.fits_in_browser(trace, limit=carried - 1)


def test_sparse_fields_are_marked_on_the_weightings(rng):
    trace = sparse_trace(rng=rng)
    figure = figures.scrub_figure(trace)
    for t in range(trace.steps):
        marks = frame_trace(figure, t, "read positions")
        assert sorted(marks.x) == sorted(trace.read_positions[t, 0].astype(int))
        assert set(marks.y) == {"read 0"}
        least = frame_trace(figure, t, "least used")
        assert list(least.x) == [int(trace.least_used[t])] and list(least.y) == ["usage"]
        link = frame_trace(figure, t, "link")
        np.testing.assert_array_equal(link.z, trace.link[t])
        first, second = trace.link_positions[t, :2].astype(int)
        assert link.text[0][1] == f"slot {first} after slot {second}"


def test_timeline_shows_every_heads_weighting_over_time(dnc_trace):
    figure = figures.timeline_figure(dnc_trace)
    np.testing.assert_array_equal(
        heatmap_named(figure, "write 0").z, dnc_trace.write_weights[:, 0].T
    )
    for head in range(dnc_trace.read_heads):
        np.testing.assert_array_equal(
            heatmap_named(figure, f"read {head}").z, dnc_trace.read_weights[:, head].T
        )
    assert list(heatmap_named(figure, "write 0").x) == list(range(dnc_trace.steps))


# ---- explain -------------------------------------------------------------------------------
def test_heads_are_listed_in_the_traces_order(ntm_trace, dnc_trace):
    assert figures.heads(ntm_trace) == ["read 0", "read 1", "write 0"]
    assert figures.heads(dnc_trace) == ["write 0", "read 0", "read 1"]
    with pytest.raises(ValueError, match="head must be one of"):
        figures.explanation(ntm_trace, 1, "read 7")


@pytest.mark.parametrize("head", ["read 0", "read 1", "write 0"])
@pytest.mark.parametrize("step", [0, 1, 4])
def test_ntm_stages_match_the_addressing_equations_and_the_recorded_weighting(
    ntm_trace, head, step
):
    trace = ntm_trace
    explained = figures.explanation(trace, step, head)
    kind, index = head.split()
    index = int(index)
    h = index if kind == "read" else trace.read_heads + index
    weights = trace.read_weights if kind == "read" else trace.write_weights
    if step == 0:
        previous = np.asarray(trace.metadata["initial_weights"][kind], np.float32)[index]
    else:
        previous = weights[step - 1, index]

    def tensor(values):
        return torch.as_tensor(np.asarray(values, np.float32)).reshape(1, 1, -1)

    gate = torch.tensor([[float(trace.interpolation_gate[step, h])]])
    gated = addressing.interpolate(tensor(trace.content_weights[step, h]), tensor(previous), gate)
    shifted = addressing.shift(gated, tensor(trace.shift[step, h]))
    sharpened = addressing.sharpen(shifted, torch.tensor([[float(trace.sharpening[step, h])]]))
    content, interpolated, shifted_stage, final = explained.stages
    np.testing.assert_array_equal(content.weights, trace.content_weights[step, h])
    np.testing.assert_allclose(interpolated.weights, gated.flatten().numpy(), atol=1e-6)
    np.testing.assert_allclose(interpolated.overlay, previous, atol=1e-7)
    np.testing.assert_allclose(shifted_stage.weights, shifted.flatten().numpy(), atol=1e-6)
    np.testing.assert_allclose(final.weights, sharpened.flatten().numpy(), atol=1e-5)
    np.testing.assert_allclose(final.weights, weights[step, index], atol=1e-5)
    assert explained.mismatch() < 1e-5
    assert explained.gates["g"] == pytest.approx(float(trace.interpolation_gate[step, h]))
    assert explained.gates["γ"] == pytest.approx(float(trace.sharpening[step, h]))


def test_ntm_step_zero_without_initial_weights_says_so(ntm_trace):
    bare = ntm_trace.replace(metadata={})
    explained = figures.explanation(bare, 0, "read 0")
    assert "not recorded" in explained.note
    np.testing.assert_array_equal(explained.stages[1].overlay, 0.0)


def test_dnc_write_stages_mix_allocation_and_content_by_the_gates(dnc_trace):
    trace, step = dnc_trace, 3
    explained = figures.explanation(trace, step, "write 0")
    titles = [stage.title for stage in explained.stages]
    assert titles[0].startswith("0 usage") and "g^w" in titles[-1]
    g_a, g_w = float(trace.allocation_gate[step]), float(trace.write_gate[step])
    mixed = g_a * trace.allocation[step] + (1 - g_a) * trace.write_content_weights[step]
    np.testing.assert_allclose(explained.stages[3].weights, mixed, rtol=1e-6)
    np.testing.assert_allclose(explained.stages[-1].weights, trace.write_weights[step, 0],
                               atol=1e-6)
    assert explained.gates == {"g^a": pytest.approx(g_a), "g^w": pytest.approx(g_w),
                               "β^w": pytest.approx(float(trace.write_strength[step]))}


def test_dnc_read_stages_mix_backward_content_forward_by_the_read_modes(dnc_trace):
    trace, step = dnc_trace, 5
    explained = figures.explanation(trace, step, "read 1")
    backward, content, forward, final = explained.stages
    np.testing.assert_array_equal(backward.weights, trace.backward_weights[step, 1])
    np.testing.assert_array_equal(forward.weights, trace.forward_weights[step, 1])
    np.testing.assert_array_equal(content.weights, trace.read_content_weights[step, 1])
    np.testing.assert_allclose(final.weights, trace.read_weights[step, 1], atol=1e-6)
    assert explained.gates["π forward"] == pytest.approx(float(trace.read_modes[step, 1, 2]))
    assert explained.gates["free gate f"] == pytest.approx(float(trace.free_gates[step, 1]))


def test_a_trace_without_intermediates_gets_its_weighting_and_a_note(rng):
    trace = sparse_trace(rng=rng)
    explained = figures.explanation(trace, 2, "read 0")
    assert len(explained.stages) == 1
    np.testing.assert_array_equal(explained.stages[0].weights, trace.read_weights[2, 0])
    assert "records no intermediate" in explained.note and "looked at slots" in explained.note


def test_explain_figure_draws_one_bar_chart_per_stage(ntm_trace):
    explained = figures.explanation(ntm_trace, 2, "write 0")
    figure = figures.explain_figure(explained)
    bars = [trace for trace in figure.data if trace.type == "bar"]
    assert len(bars) == len(explained.stages)
    for bar, stage in zip(bars, explained.stages, strict=True):
        np.testing.assert_array_equal(bar.y, stage.weights)
    overlays = [trace for trace in figure.data if trace.type == "scatter"]
    np.testing.assert_array_equal(overlays[0].y, explained.stages[1].overlay)


# ---- compare, curves, export -----------------------------------------------------------------
def test_compare_figure_has_a_row_per_model_moving_together(ntm_trace, dnc_trace):
    figure = figures.compare_figure([ntm_trace, dnc_trace], ["the ntm", "the dnc"])
    assert len(figure.frames) == ntm_trace.steps
    memories = [i for i, trace in enumerate(figure.data) if trace.name == "memory"]
    assert len(memories) == 2
    frame = figure.frames[4]
    for index, trace in zip(memories, (ntm_trace, dnc_trace), strict=True):
        np.testing.assert_array_equal(frame.data[list(frame.traces).index(index)].z,
                                      trace.memory[4].T)
    titles = [annotation.text for annotation in figure.layout.annotations]
    errors = ntm_trace.metadata["bit_errors"]
    assert any("the ntm" in title and f"{errors:g} bit errors" in title for title in titles)


def test_compare_figure_rejects_what_it_cannot_draw(ntm_trace):
    shorter = make_trace("ntm", length=2)
    with pytest.raises(ValueError, match="same number of steps"):
        figures.compare_figure([ntm_trace, shorter], ["a", "b"])
    with pytest.raises(ValueError, match="1 to 4"):
        figures.compare_figure([ntm_trace] * 5, list("abcde"))
    with pytest.raises(ValueError, match="names"):
        figures.compare_figure([ntm_trace, ntm_trace], ["only one"])


def test_generalisation_figure_draws_a_line_per_model():
    frame = pd.DataFrame({
        "model": ["a", "a", "b", "b"], "length": [20, 10, 10, 20],
        "mean_bit_errors": [2.0, 0.5, 1.0, 3.0],
    })
    figure = figures.generalisation_figure(frame, trained_up_to=10)
    lines = {trace.name: trace for trace in figure.data}
    assert list(lines["a"].x) == [10, 20] and list(lines["a"].y) == [0.5, 2.0]
    assert list(lines["b"].y) == [1.0, 3.0]
    assert figure.layout.shapes[0].x0 == 10
    with pytest.raises(ValueError, match="missing"):
        figures.generalisation_figure(frame.drop(columns="model"))


def test_training_figure_plots_bits_and_bit_errors():
    history = [{"step": s, "bits": 10.0 / s, "bit_errors": 5.0 / s} for s in (1, 2, 4)]
    figure = figures.training_figure(history)
    bits, errors = figure.data
    assert list(bits.x) == [1, 2, 4]
    assert list(bits.y) == [10.0, 5.0, 2.5] and list(errors.y) == [5.0, 2.5, 1.25]


def test_figure_html_embeds_plotly_and_the_frames(ntm_trace):
    html = figures.figure_html(figures.scrub_figure(ntm_trace))
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert not re.search(r"<script[^>]*src=", html)  # nothing fetched: works offline
    assert "Plotly.newPlot" in html and "addFrames" in html
    assert len(html) > 3_000_000  # plotly.js itself is inside


def test_interesting_step_is_in_the_middle_of_the_answer(dnc_trace):
    scored = np.flatnonzero(dnc_trace.mask > 0.5)
    assert figures.interesting_step(dnc_trace) == scored[len(scored) // 2]
    assert figures.interesting_step(dnc_trace.replace(mask=None)) == dnc_trace.steps // 2


def test_a_masked_dnc_explains_each_heads_content_mask(dnc_trace):
    masked = make_trace("dnc", memory_size=10, read_heads=2, masked_content=True)
    for head, mask in (("read 1", masked.read_masks[2, 1]), ("write 0", masked.write_mask[2])):
        explained = figures.explanation(masked, 2, head)
        np.testing.assert_array_equal(explained.content_mask, mask)
        (bar,) = figures.content_mask_figure(explained).data
        np.testing.assert_array_equal(bar.y, mask)
        assert len(bar.x) == 5  # one bar per position of the word
    plain = figures.explanation(dnc_trace, 2, "read 0")
    assert plain.content_mask is None
    with pytest.raises(ValueError, match="has no content mask"):
        figures.content_mask_figure(plain)


@pytest.mark.parametrize("arch", ["sam", "sdnc"])
def test_sparse_memories_are_explained_and_marked(arch):
    pytest.importorskip(f"mann.access.{arch}")
    trace = make_trace(arch, memory_size=16, read_heads=1, sparse_reads=3)
    for step in (2, 5):
        write = figures.explanation(trace, step, "write 0")
        assert write.stages[1].title.startswith("1 least used slot")
        np.testing.assert_allclose(write.stages[-1].weights, trace.write_weights[step, 0],
                                   atol=1e-6)
        read = figures.explanation(trace, step, "read 0")
        assert read.mismatch() < 1e-6
        if arch == "sdnc":
            assert np.count_nonzero(read.stages[-1].weights) <= 3
    figure = figures.scrub_figure(trace)
    marks = frame_trace(figure, 4, "read positions")
    assert sorted(marks.x) == sorted(trace.read_positions[4, 0].astype(int))


def test_for_screen_sets_the_height_scales_every_text_and_keeps_the_data(dnc_trace):
    plain = figures.scrub_figure(dnc_trace, step=2)
    fitted = figures.for_screen(figures.scrub_figure(dnc_trace, step=2), height=560,
                                text_scale=1.5, title=False)  # fmt: skip
    assert fitted.layout.height == 560
    assert not fitted.layout.title.text
    assert fitted.layout.font.size == 18
    assert {a.font.size for a in fitted.layout.annotations} == {18}
    assert fitted.layout.sliders[0].currentvalue.font.size == round(13 * 1.5)
    assert fitted.layout.margin.l > plain.layout.margin.l
    # Panels below others give up room at their top for the larger text, titles moving along.
    for name in ("yaxis", "yaxis3", "yaxis4"):
        low, top = plain.layout[name].domain
        new_low, new_top = fitted.layout[name].domain
        assert new_low == low and (new_top < top if top < 0.99 else new_top == top)
    titles = {a.text: a.y for a in fitted.layout.annotations}
    assert titles[next(t for t in titles if t.startswith("weightings"))] == (
        fitted.layout.yaxis3.domain[1]
    )
    for before, after in zip(plain.frames, fitted.frames, strict=True):
        np.testing.assert_array_equal(before.data[0].z, after.data[0].z)


def test_for_screen_leaves_an_unscaled_figure_alone_and_refuses_bad_sizes(dnc_trace):
    figure = figures.timeline_figure(dnc_trace)
    before = figure.to_plotly_json()
    assert figures.for_screen(figure).to_plotly_json() == before
    with pytest.raises(ValueError, match="text_scale must be positive"):
        figures.for_screen(figure, text_scale=0)
    with pytest.raises(ValueError, match="height must be at least 100"):
        figures.for_screen(figure, height=40)


def test_training_figure_redrawn_into_itself_shows_the_new_history():
    history = [dict(step=s, bits=10.0 / (s + 1), bit_errors=float(s % 3)) for s in range(5)]
    figure = figures.training_figure(history[:2])
    redrawn = figures.training_figure(history, into=figure)
    assert redrawn is figure
    fresh = figures.training_figure(history)
    for mine, theirs in zip(redrawn.data, fresh.data, strict=True):
        assert list(mine.x) == list(theirs.x) and list(mine.y) == list(theirs.y)
    assert redrawn.layout == fresh.layout
