"""Animations for slides (mann.animation): the files decode to one frame per step at the size
asked for, and the frames show the run step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mann
from mann.figures import save_animation
from mann.inputs import record, sample_input
from mann.tasks import make_task

torch.set_num_threads(1)
TASK = make_task("copy", bits=4, max_length=6)


def trace_of(arch: str):
    torch.manual_seed(0)
    model = mann.build_model(mann.ModelConfig(arch=arch, input_size=5, output_size=4,
                                              hidden_size=12, memory_size=16, word_size=5))
    return record(model, sample_input(TASK, 5, 0))


@pytest.mark.parametrize("arch", ["ntm", "dnc", "lstm"])
def test_a_gif_has_a_frame_per_step_at_1280_by_720(arch, tmp_path):
    trace = trace_of(arch)
    path = save_animation(trace, tmp_path / "run.gif", fps=5)
    with Image.open(path) as gif:
        assert gif.size == (1280, 720)
        assert gif.n_frames == trace.steps == 11
        assert gif.info["duration"] == 200
        frames = []
        for index in (0, 5):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
    assert (frames[0] != frames[1]).any()  # the step box and the memory moved on
    red = (frames[1][..., 0] > 180) & (frames[1][..., 1] < 80) & (frames[1][..., 2] < 80)
    assert red.any(), "the step is boxed in red"


def test_an_mp4_decodes_to_a_frame_per_step(tmp_path):
    import imageio.v2 as imageio

    trace = trace_of("dnc")
    path = save_animation(trace, tmp_path / "run.mp4", size=(640, 360))
    reader = imageio.get_reader(path)
    frames = [frame for frame in reader]
    reader.close()
    assert len(frames) == trace.steps
    assert frames[0].shape == (360, 640, 3)


def test_bad_animation_requests_are_refused(tmp_path):
    trace = trace_of("ntm")
    with pytest.raises(ValueError, match=r"path must end in \.gif or \.mp4"):
        save_animation(trace, tmp_path / "run.avi")
    with pytest.raises(ValueError, match="fps must lie in"):
        save_animation(trace, tmp_path / "run.gif", fps=0)
    with pytest.raises(ValueError, match="size must be at least 320×240"):
        save_animation(trace, tmp_path / "run.gif", size=(100, 100))
    assert not list(tmp_path.iterdir())
