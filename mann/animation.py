"""The scrub view as an animation for slides: one frame per step, GIF or MP4.

``save_animation(trace, "run.gif")`` draws, for every step, what the Inspect page shows:
memory (word × slot, blue negative to red positive), every head's weighting and the memory's
state rows (usage, precedence, allocation), the link matrix where there is one, and the
input / target / output strip with the step boxed in red. Frames are drawn with Pillow from
the Trace alone (no browser, nothing downloaded); an MP4 is encoded by the ffmpeg that the
``imageio-ffmpeg`` wheel carries. Colours keep one range for the whole run, as in the app.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mann.figures import MAX_LINK_SLOTS, MAX_SLOTS, pool_slots, slot_bin_size
from mann.trace import Trace

SIZE = (1280, 720)
BACKGROUND = (255, 255, 255)
TEXT = (40, 40, 40)
MARKER = (214, 39, 40)
# Colour maps as anchors, linearly interpolated: viridis for weightings, red-blue for memory.
VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]])
RED_BLUE = np.array([[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]])
GREYS = np.array([[255, 255, 255], [0, 0, 0]])


def _colours(values: np.ndarray, anchors: np.ndarray, low: float, high: float) -> np.ndarray:
    """values (...) -> RGB (..., 3) uint8 along the anchors, ``low`` to ``high``."""
    span = max(high - low, 1e-12)
    position = np.clip((values - low) / span, 0.0, 1.0) * (len(anchors) - 1)
    lower = np.floor(position).astype(int).clip(0, len(anchors) - 2)
    part = (position - lower)[..., None]
    return (anchors[lower] * (1 - part) + anchors[lower + 1] * part).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one size
        return ImageFont.load_default()


class _Layout:
    """Where the panels go in a frame of ``size``."""

    def __init__(self, trace: Trace, size: tuple[int, int]) -> None:
        width, height = size
        self.has_link = trace.link is not None and trace.link_positions is None
        self.left = 110
        self.right = width - 20 - (int(0.3 * width) if self.has_link else 0)
        self.header = 44
        rows = trace.read_heads + trace.write_heads + len(_state_rows(trace))
        self.memory_height = int(0.36 * height)
        self.weights_height = min(int(0.22 * height), 18 * max(rows, 1))
        self.strip_height = height - self.header - self.memory_height - self.weights_height - 70
        self.memory_top = self.header + 18
        self.weights_top = self.memory_top + self.memory_height + 18
        self.strip_top = self.weights_top + self.weights_height + 18


def _state_rows(trace: Trace) -> list[tuple[str, np.ndarray]]:
    rows = []
    for name in ("usage", "precedence", "allocation"):
        values = getattr(trace, name)
        if values is not None and trace.arch != "sam":
            rows.append((name, values))
    return rows


def _paste(frame: Image.Image, rgb: np.ndarray, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    if rgb.size == 0 or right <= left or bottom <= top:
        return
    image = Image.fromarray(rgb, "RGB").resize((right - left, bottom - top), Image.NEAREST)
    frame.paste(image, (left, top))


def render_frames(trace: Trace, size: tuple[int, int] = SIZE) -> list[Image.Image]:
    """One RGB image of ``size`` per step of ``trace``."""
    width, height = size
    if width < 320 or height < 240:
        raise ValueError(f"size must be at least 320×240, got {width}×{height}")
    layout = _Layout(trace, size)
    bin_size = slot_bin_size(trace.memory_size, MAX_SLOTS)
    memory = pool_slots(trace.memory, bin_size, "mean", axis=1)  # (T, bins, W)
    memory_range = float(np.abs(memory).max()) or 1.0
    rows = [(f"read {h}", trace.read_weights[:, h]) for h in range(trace.read_heads)]
    rows += [(f"write {h}", trace.write_weights[:, h]) for h in range(trace.write_heads)]
    rows += _state_rows(trace)
    weights = np.stack([pool_slots(values, bin_size, "sum") for _, values in rows], 1) if rows \
        else np.zeros((trace.steps, 0, memory.shape[1]))  # fmt: skip
    weight_top = float(weights.max()) if weights.size else 1.0
    strip_parts = [("input", trace.inputs)]
    if trace.targets is not None:
        masked = trace.targets * (trace.mask[:, None] if trace.mask is not None else 1.0)
        strip_parts.append(("target", masked))
    strip_parts.append(("output", trace.outputs))
    strip = np.concatenate([part.T for _, part in strip_parts], 0)  # (channels, T)
    strip_rgb = _colours(strip, GREYS, 0.0, 1.0)
    link = None
    if layout.has_link:
        link_bin = slot_bin_size(trace.memory_size, MAX_LINK_SLOTS)
        link = pool_slots(pool_slots(trace.link, link_bin, "sum", axis=1), link_bin, "sum", axis=2)
    small, large = _font(14), _font(18)
    errors = trace.metadata.get("bit_errors")
    frames = []
    for step in range(trace.steps):
        frame = Image.new("RGB", size, BACKGROUND)
        draw = ImageDraw.Draw(frame)
        title = f"{trace.arch.upper()}   step {step} of {trace.steps - 1}"
        if errors is not None:
            title += f"   ({errors:g} bit errors in this run)"
        draw.text((layout.left, 12), title, fill=TEXT, font=large)
        box = (layout.left, layout.memory_top, layout.right,
               layout.memory_top + layout.memory_height)  # fmt: skip
        _paste(frame, _colours(memory[step].T, RED_BLUE, -memory_range, memory_range), box)
        draw.text((10, layout.memory_top), "memory", fill=TEXT, font=small)
        draw.text((10, layout.memory_top + 18), f"{trace.memory_size} slots", fill=TEXT,
                  font=small)  # fmt: skip
        if rows:
            box = (layout.left, layout.weights_top, layout.right,
                   layout.weights_top + layout.weights_height)  # fmt: skip
            _paste(frame, _colours(weights[step], VIRIDIS, 0.0, weight_top), box)
            row_height = layout.weights_height / len(rows)
            for index, (name, _) in enumerate(rows):
                draw.text((10, layout.weights_top + index * row_height + row_height / 2 - 7),
                          name, fill=TEXT, font=small)  # fmt: skip
        box = (layout.left, layout.strip_top, layout.right,
               layout.strip_top + layout.strip_height)  # fmt: skip
        _paste(frame, strip_rgb, box)
        column = (layout.right - layout.left) / trace.steps
        x = layout.left + step * column
        draw.rectangle((x, layout.strip_top - 2, x + column, box[3] + 2), outline=MARKER,
                       width=3)  # fmt: skip
        offset = 0
        for name, part in strip_parts:
            part_height = layout.strip_height * part.shape[1] / strip.shape[0]
            draw.text((10, layout.strip_top + offset + part_height / 2 - 7), name, fill=TEXT,
                      font=small)  # fmt: skip
            offset += part_height
        if link is not None:
            side = min(size[0] - layout.right - 40, layout.strip_top - layout.memory_top)
            left = layout.right + 30
            top = layout.memory_top
            top_value = float(link.max()) or 1.0
            _paste(frame, _colours(link[step], VIRIDIS, 0.0, top_value),
                   (left, top, left + side, top + side))  # fmt: skip
            draw.text((left, top + side + 4), "link L[i, j]: i written after j", fill=TEXT,
                      font=small)  # fmt: skip
        frames.append(frame)
    return frames


def save_animation(
    trace: Trace, path: str | Path, fps: float = 4.0, size: tuple[int, int] = SIZE
) -> Path:
    """Write the scrub view of ``trace`` as an animated GIF or an MP4 (by ``path``'s suffix),
    one frame per step, ``fps`` frames a second, ``size`` pixels. Returns the path.

    Raises:
        ValueError: another suffix, or fps or size out of range.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"path must end in .gif or .mp4, got {path.name!r}")
    if not 0.5 <= fps <= 60:
        raise ValueError(f"fps must lie in [0.5, 60], got {fps}")
    frames = render_frames(trace, size)
    if suffix == ".gif":
        frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                       duration=int(round(1000 / fps)), optimize=False)  # fmt: skip
        return path
    import imageio.v2 as imageio

    # H.264 wants even sides; yuv420p plays everywhere.
    with imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p",
                            macro_block_size=2, ffmpeg_log_level="error") as writer:  # fmt: skip
        for frame in frames:
            writer.append_data(np.asarray(frame))
    return path
