"""What if: one input run as recorded and with interventions, and what changed between them.

    from mann.whatif import whatif
    result = whatif(model, batch, [mann.Intervention(step=5, field="write_gate", value=0.0)])
    result.first_divergence, result.changed_bits.sum(), result.intervened_errors

Both runs take the step-by-step path with the same code, so an intervention whose value equals
what the model computed changes nothing, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mann.access.ntm import INITIAL_MEMORY_VALUE
from mann.analysis import priority_placement, sorted_inputs
from mann.intervention import Intervention, as_interventions
from mann.model import MemoryAugmentedNetwork
from mann.tasks.base import Batch
from mann.trace import Trace

# Outputs (probabilities) that differ by more than this have diverged.
DIVERGENCE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class WhatIf:
    """The two runs of ``whatif`` and their differences, per step (T steps, Y outputs)."""

    original: Trace
    intervened: Trace  # its metadata["interventions"] lists what was replaced
    output_difference: np.ndarray  # (T,) largest |Δ output probability| at each step
    changed_bits: np.ndarray  # (T,Y) bool: the answer bit flipped (scored steps only)
    original_errors: np.ndarray  # (T,) wrong bits per step (0 where not scored)
    intervened_errors: np.ndarray  # (T,)
    memory_difference: np.ndarray  # (T,) Σ |ΔM| after each step
    first_divergence: int | None  # first step whose outputs differ (> DIVERGENCE_TOLERANCE)
    first_changed_bit: int | None  # first step with a flipped answer bit

    @property
    def steps_with_changed_bits(self) -> list[int]:
        return [int(step) for step in np.flatnonzero(self.changed_bits.any(axis=1))]


def step_bit_errors(trace: Trace) -> np.ndarray:
    """Wrong output bits per step (outputs thresholded at 0.5), 0 on unscored steps; zeros
    when the trace has no targets."""
    if trace.targets is None:
        return np.zeros(trace.steps)
    wrong = (trace.outputs > 0.5) != (trace.targets > 0.5)
    mask = np.ones(trace.steps) if trace.mask is None else trace.mask
    return wrong.sum(axis=1) * (mask > 0)


def _first(flags: np.ndarray) -> int | None:
    found = np.flatnonzero(flags)
    return int(found[0]) if len(found) else None


@torch.no_grad()
def whatif(
    model: MemoryAugmentedNetwork, batch: Batch, interventions: Sequence[Intervention]
) -> WhatIf:
    """Run ``model`` on the first item of ``batch`` twice, without and with
    ``interventions``, and compare. Raises ValueError for a bad intervention (naming it)."""
    inputs, targets, mask = (tensor[:1] for tensor in batch)
    edits = as_interventions(list(interventions), model.config, inputs.shape[1])
    was_training = model.training
    model.eval()
    try:
        traces = []
        for run in (None, edits):
            logits, _, trace = model(inputs, record=True, interventions=run)
            errors = float(((logits[0] > 0) != (targets[0] > 0.5)).sum(-1).mul(mask[0]).sum())
            traces.append(trace.replace(
                targets=targets[0].float().cpu().numpy(), mask=mask[0].float().cpu().numpy(),
                metadata=dict(trace.metadata, bit_errors=errors),
            ))  # fmt: skip
    finally:
        model.train(was_training)
    original, intervened = traces
    difference = np.abs(intervened.outputs - original.outputs)
    # Outputs of unscored steps are no answers: a flip there is not a changed answer.
    flipped = (intervened.outputs > 0.5) != (original.outputs > 0.5)
    changed = flipped & (original.mask > 0)[:, None]
    memory = np.abs(intervened.memory - original.memory).sum(axis=(1, 2))
    return WhatIf(
        original=original,
        intervened=intervened,
        output_difference=difference.max(axis=1),
        changed_bits=changed,
        original_errors=step_bit_errors(original),
        intervened_errors=step_bit_errors(intervened),
        memory_difference=memory,
        first_divergence=_first(difference.max(axis=1) > DIVERGENCE_TOLERANCE),
        first_changed_bit=_first(changed.any(axis=1)),
    )


# ---------------------------------------------------------------------------------------
# Presets: one-click interventions whose effect a user can predict
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named list of interventions with what it does and what to expect."""

    name: str
    prediction: str
    interventions: tuple[Intervention, ...]


def copy_items(trace: Trace) -> list[tuple[int, int]]:
    """(input step, output step) of every item of a copy or multi-copy episode, in order, read
    from the delimiter (the last input channel) and the scored steps; [] for other inputs."""
    if trace.mask is None:
        return []
    delimiters = np.flatnonzero(trace.inputs[:, -1] > 0.5)
    items, start = [], 0
    for delimiter in delimiters:
        length = int(delimiter) - start
        items += [(start + k, int(delimiter) + 1 + k) for k in range(length)]
        start = int(delimiter) + 1 + length
    scored = np.flatnonzero(trace.mask > 0)
    if not items or [output for _, output in items] != scored.tolist():
        return []
    return items


def sort_answers(trace: Trace) -> tuple[int, list[int]] | None:
    """For a priority-sort run (``mann.tasks.priority_sort``): the delimiter step and, per
    scored step in order, the input step of the vector it answers (highest priority first).
    None for any other input: one delimiter, the scored steps right after it, and targets that
    are the inputs in descending order of priority (channel X−2) are all required."""
    if trace.mask is None or trace.targets is None or trace.inputs.shape[1] < 3:
        return None
    delimiters = np.flatnonzero(trace.inputs[:, -1] > 0.5)
    scored = np.flatnonzero(trace.mask > 0)
    if len(delimiters) != 1 or not 0 < len(scored) <= delimiters[0]:
        return None
    delimiter = int(delimiters[0])
    if scored.tolist() != list(range(delimiter + 1, delimiter + 1 + len(scored))):
        return None
    _, order = sorted_inputs(trace)
    bits = trace.targets.shape[1]
    if not np.array_equal(trace.inputs[order, :bits] > 0.5, trace.targets[scored] > 0.5):
        return None
    return delimiter, [int(step) for step in order]


def presets(trace: Trace) -> list[Preset]:
    """The presets that apply to this run: on a copy or multi-copy episode of an NTM or a DNC,
    each names the item it touches (item 3, or the last one in a shorter episode); on priority
    sort, each takes away one part of how the model sorts; an NTM with a learned initial
    memory, on any task, can be started from the constant one instead."""
    found = _learned_memory_presets(trace)
    sorting = sort_answers(trace)
    if sorting is not None:
        return found + _sort_presets(trace, *sorting)
    items = copy_items(trace)
    if not items:
        return found
    index = min(2, len(items) - 1)
    item, (stored, answered) = index + 1, items[index]
    multi = int((trace.inputs[:, -1] > 0.5).sum()) > 1
    outputs = [output for _, output in items]
    if trace.arch == "dnc":
        found.append(Preset(
            f"DNC: close the write gate while it stores item {item}",
            f"Item {item} is never written, and the temporal links then run from item "
            f"{item - 1} straight to item {item + 1}: reading forward, the DNC answers each item "
            f"from item {item}'s turn on with the one after it.",
            (Intervention(stored, "write_gate", 0.0),),
        ))
        found.append(Preset(
            "DNC: read by content only during the output",
            "Read modes forced to content (π = 0, 1, 0) on every output step: without the "
            "forward links the reads no longer know which item comes next.",
            tuple(Intervention(range(first, last + 1), "read_modes", [0.0, 1.0, 0.0], head=h)
                  for h in range(trace.read_heads)
                  for first, last in _runs(outputs)),
        ))  # fmt: skip
        slot = int(trace.write_weights[stored, 0].argmax())
        found.append(Preset(
            f"DNC: cut the link into item {item}'s slot",
            f"Row {slot} of the link matrix (what slot {slot} was written after) is set to 0 "
            f"from item {item}'s write on. A DNC that reads by following its links forward "
            f"loses the chain there, and its answers from item {item} on go wrong; if nothing "
            "changes, this model finds the items by content instead.",
            (Intervention(range(stored, trace.steps), "link", 0.0, slot=slot),),
        ))
        if multi:
            found.append(Preset(
                "DNC: never free a slot (free gates 0)",
                f"Read slots are never released, so usage only grows: once all "
                f"{trace.memory_size} slots are used, allocation has nowhere left to write, "
                "and the later rounds fail.",
                tuple(Intervention(range(0, trace.steps), "free_gates", 0.0, head=h)
                      for h in range(trace.read_heads)),
            ))  # fmt: skip
    if trace.arch == "ntm":
        slot = int(trace.write_weights[stored, 0].argmax())
        delimiter = answered - 1 - (answered - 1 - stored) // 2  # the round's delimiter step
        found.append(Preset(
            f"NTM: erase the slot that holds item {item} before it is read back",
            f"Slot {slot}, where item {item} was written, is set to 0 at the start of step "
            f"{delimiter}, once the round has been read in. The NTM reads by location, "
            f"walking slot by slot, so only item {item}'s answer should go wrong.",
            (Intervention(delimiter, "memory", 0.0, slot=slot),),
        ))
        shift = np.zeros(trace.shift.shape[-1])
        shift[len(shift) // 2] = 1.0  # all weight on offset 0: the head stays put
        head = trace.read_heads  # the first write head (NTM heads: reads, then writes)
        first_round = [step for step, _ in items][: _round_length(trace)]
        found.append(Preset(
            "NTM: hold the write head still during the first round",
            "The write head's shift is forced onto offset 0 while the first round is read "
            "in, so every item lands in the same slot and overwrites the one before: the "
            "answers of that round go wrong (at best the last item survives).",
            (Intervention(range(first_round[0], first_round[-1] + 1), "shift", shift.tolist(),
                          head=head),),
        ))  # fmt: skip
    return found


def _sort_presets(trace: Trace, delimiter: int, answered: list[int]) -> list[Preset]:
    """Priority sort, by how the model sorts: a model whose reads jump to each answer by
    content (a selection sort: the DNC, and an NTM that learned it) loses its first answer when
    that vector's slot is erased and repeats it when nothing is written on the answer steps;
    an NTM that placed each vector by its priority and walks the slots stops when its read
    heads are held still."""
    answers = range(delimiter + 1, delimiter + 1 + len(answered))
    if trace.arch not in ("dnc", "ntm") or (trace.arch == "ntm" and trace.shift is None):
        return []
    # The NTM's answering read head moves between answers: a walk, or jumps by content.
    if trace.arch == "ntm" and priority_placement(trace).read_steps >= 0.5:
        shift = np.zeros(trace.shift.shape[-1])
        shift[len(shift) // 2] = 1.0  # all weight on offset 0: the head stays put
        return [Preset(
            "NTM: hold the read heads still during the answers",
            "The NTM wrote each vector where its priority pointed and answers by walking "
            "those slots one step at a time. With its read heads' shift forced onto offset 0 "
            "they stay on the first answer's slot, and what it holds comes out again and "
            "again.",
            tuple(Intervention(answers, "shift", shift.tolist(), head=head)
                  for head in range(trace.read_heads)),
        )]  # fmt: skip
    name, top = trace.arch.upper(), answered[0]
    slot = int(trace.write_weights[top, 0].argmax())
    # The DNC closes its write gate; the NTM has none, so its write weightings are zeroed.
    how, field = (("write gate 0", "write_gate") if trace.arch == "dnc" else
                  ("no write", "write_weights"))  # fmt: skip
    return [
        Preset(
            f"{name}: erase the highest-priority vector before the answers",
            f"Slot {slot}, where the vector of highest priority (input step {top}) was "
            f"written, is set to 0 at the delimiter (step {delimiter}). The {name} finds each "
            "answer by a content lookup of the highest priority left, so it now starts "
            "with the second-highest: every answer comes one place early.",
            (Intervention(delimiter, "memory", 0.0, slot=slot),),
        ),
        Preset(
            f"{name}: keep what it has answered ({how} on the answer steps)",
            f"After each answer the {name} overwrites the slot it has just read, which takes "
            "that vector out of the next lookup. With nothing written on the answer steps "
            "nothing is overwritten, every lookup finds the highest priority again, and the "
            "first answer repeats.",
            (Intervention(answers, field, 0.0),),
        ),
    ]


def _learned_memory_presets(trace: Trace) -> list[Preset]:
    """For an NTM trained with ``learned_memory`` (its config is in the trace's metadata)."""
    config = trace.metadata.get("config") or {}
    if trace.arch != "ntm" or not config.get("learned_memory"):
        return []
    return [Preset(
        "NTM: forget the learned initial memory",
        "Every slot starts at the constant an NTM without a learned memory starts from, so "
        "content keys can no longer tell the slots apart until they are written. What the "
        "model finds by content in its learned rows is lost. ntm-ngrams' reads of a context "
        "stop returning to one slot and its predictions change from the first steps on; over "
        "many sequences its cost rises from 0.1% to about 40% above the optimum (one "
        "sequence's bit errors may, by chance, stay level). ntm-priority-sort's priorities no "
        "longer point to slots of their own: its vectors crowd into fewer slots.",
        (Intervention(0, "memory", INITIAL_MEMORY_VALUE),),
    )]


def _round_length(trace: Trace) -> int:
    return int(np.flatnonzero(trace.inputs[:, -1] > 0.5)[0])


def _runs(steps: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs in a sorted list of steps, as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for step in steps:
        if runs and step == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], step)
        else:
            runs.append((step, step))
    return runs


# ---------------------------------------------------------------------------------------
# Explain's knobs, sent to the run as interventions
# ---------------------------------------------------------------------------------------
def knob_interventions(
    arch: str, read_heads: int, step: int, head: str, knobs: dict, recorded: dict
) -> list[Intervention]:
    """The interventions that make a run use Explain's ``knobs`` for ``head`` ("read r" /
    "write w") at ``step``: one per knob whose value differs from ``recorded``."""
    kind, _, number = head.partition(" ")
    index = int(number)
    changed = {name: value for name, value in knobs.items()
               if not np.allclose(value, recorded.get(name, np.nan))}  # fmt: skip
    found = []
    for name, value in changed.items():
        if arch == "ntm":
            field = {"β": "key_strength", "g": "interpolation_gate", "s": "shift",
                     "γ": "sharpening"}[name]  # fmt: skip
            ntm_head = index if kind == "read" else read_heads + index  # reads, then writes
            found.append(Intervention(step, field, value, head=ntm_head))
        elif name == "β^w":
            found.append(Intervention(step, "write_strength", value, head=0))
        elif name == "g^a":
            if arch == "dnc":
                found.append(Intervention(step, "allocation_gate", value))
            else:  # SAM/SDNC record 1 - γ as their allocation gate
                found.append(Intervention(step, "interpolation_gate", 1.0 - value))
        elif name == "g^w":
            found.append(Intervention(step, "write_gate", value))
        elif name == "β^r":
            found.append(Intervention(step, "read_strengths", value, head=index))
        elif name == "π":
            found.append(Intervention(step, "read_modes", list(value), head=index))
        else:
            raise ValueError(f"unknown knob {name!r}")
    return found
