"""One input sequence and its trace: a task's sample by length and seed, or an input edited by
hand, recorded with everything the app's pages show. Plain Python, no Streamlit.

- ``sample_input(task, length, seed)`` / ``edited_input(task, inputs)``: one input sequence;
- ``record(model, batch)``: its Trace, with what the Explain page needs in its metadata;
- ``length_label``, ``training_lengths``, ``parse_lengths``: lengths as the pages speak of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mann.model import MemoryAugmentedNetwork
from mann.model import record_trace as _record_trace
from mann.tasks import Batch
from mann.tasks.base import Task
from mann.trace import Trace

# The longest input the app records (T).
MAX_INPUT_STEPS = 400
# Initial weightings go into a trace's metadata (JSON) only for memories this small.
MAX_SLOTS_IN_METADATA = 4096


def length_label(task: Task) -> str:
    """What "length" means for ``task`` (what its ``with_lengths`` sets)."""
    return {
        "associative_recall": "items",
        "priority_sort": "input vectors",
        "adding": "numbers",
        "argmax": "numbers",
        "multi_copy": "round length",
    }.get(task.name, "sequence length")


def training_lengths(task: Task) -> tuple[int, int]:
    """The length range ``task`` was made with (its ``with_lengths`` bounds)."""
    for low, high in (("min_length", "max_length"), ("min_items", "max_items"),
                      ("min_inputs", "num_inputs")):
        if hasattr(task, high):
            return int(getattr(task, low) or getattr(task, high)), int(getattr(task, high))
    return 1, int(task.max_steps)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def sample_input(task: Task, length: int, seed: int) -> Batch:
    """One sequence of exactly ``length`` (what the task's ``with_lengths`` sets), seeded.

    Raises:
        ValueError: a length the task rejects, or one whose sequence would be longer than
            ``MAX_INPUT_STEPS`` steps; a negative seed.
    """
    _check_int("length", length, 1)
    _check_int("seed", seed, 0)
    fixed = task.with_lengths(int(length), int(length))
    if fixed.max_steps > MAX_INPUT_STEPS:
        raise ValueError(
            f"length {length} makes {fixed.max_steps} steps for task {task.name!r}; "
            f"the app records at most {MAX_INPUT_STEPS} steps"
        )
    return fixed.sample(1, torch.Generator().manual_seed(int(seed)))


def edited_input(task: Task, inputs: np.ndarray) -> Batch:
    """A one-item batch from hand-edited inputs (T, X).

    For copy, the targets follow from the inputs (the vectors before the delimiter, written
    back after it), so they are recomputed; for other tasks the targets are unknown and the
    batch holds all-zero targets with mask 0 (nothing is scored).

    Raises:
        ValueError: inputs of the wrong width, empty, not finite, or (copy) without exactly
            one delimiter with room for the answer after it.
    """
    inputs = np.array(inputs, dtype=np.float32)  # a copy: the caller's array stays its own
    if inputs.ndim != 2 or inputs.shape[1] != task.input_size or inputs.shape[0] < 1:
        raise ValueError(
            f"inputs must be (steps, {task.input_size}) for task {task.name!r}, "
            f"got shape {inputs.shape}"
        )
    if inputs.shape[0] > MAX_INPUT_STEPS:
        raise ValueError(
            f"inputs have {inputs.shape[0]} steps; the app records at most {MAX_INPUT_STEPS}"
        )
    if not np.isfinite(inputs).all():
        raise ValueError("inputs must be finite numbers (no NaN or empty cells)")
    steps = inputs.shape[0]
    targets = np.zeros((steps, task.output_size), dtype=np.float32)
    mask = np.zeros(steps, dtype=np.float32)
    if task.name == "copy":
        bits = task.bits
        delimiters = np.flatnonzero(inputs[:, bits] > 0.5)
        if len(delimiters) != 1:
            raise ValueError(
                f"copy inputs need exactly one delimiter (a 1 in channel {bits}), "
                f"found {len(delimiters)}"
            )
        length = int(delimiters[0])
        if steps < 2 * length + 1:
            raise ValueError(
                f"copy inputs with the delimiter at step {length} need {2 * length + 1} steps "
                f"to hold the answer, got {steps}"
            )
        targets[length + 1 : 2 * length + 1] = (inputs[:length, :bits] > 0.5)
        mask[length + 1 : 2 * length + 1] = 1.0
    as_tensor = torch.from_numpy
    return Batch(as_tensor(inputs)[None], as_tensor(targets)[None], as_tensor(mask)[None])


def record(model: MemoryAugmentedNetwork, batch: Batch, item: int = 0) -> Trace:
    """Record the Trace of ``batch`` item ``item``, targets, mask and bit errors included.

    For an NTM the heads' initial weightings go into ``metadata["initial_weights"]``
    (``{"read": (R,N), "write": (Hw,N)}`` lists), so step 0 can be explained too.
    """
    trace = _record_trace(model, batch.inputs, batch.targets, batch.mask, item=item)
    metadata = dict(trace.metadata)
    if batch.mask is not None and float(batch.mask[item].sum()) == 0:
        metadata.pop("bit_errors", None)  # nothing scored: no bit errors to speak of
    if trace.content_weights is not None and trace.memory_size <= MAX_SLOTS_IN_METADATA:
        with torch.no_grad():
            state = model.access.initial_state(1, "cpu")
        metadata["initial_weights"] = {
            "read": state.read_weights[0].tolist(),
            "write": state.write_weights[0].tolist(),
        }
    return trace.replace(metadata=metadata)


def parse_lengths(text: str, maximum: int = 200) -> list[int]:
    """``"10, 20,40"`` -> ``[10, 20, 40]``; ValueError naming what is wrong."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise ValueError("lengths must list at least one length, e.g. 10,20,40")
    lengths = []
    for part in parts:
        if not part.isdigit() or not 1 <= int(part) <= maximum:
            raise ValueError(f"lengths must be whole numbers from 1 to {maximum}, got {part!r}")
        lengths.append(int(part))
    return sorted(set(lengths))
