"""Interventions: replace a quantity of a running memory at chosen steps ("what if").

``model(inputs, interventions=[Intervention(step=7, field="write_gate", value=0.0)])`` runs
the step-by-step path and, at step 7, replaces the write gate by 0 right after the model
computed it and before anything used it; ``memory`` is replaced at the start of its step,
before that step reads or writes. Every item of the batch gets the same intervention. The
model's parameters, and anything cached, are never touched: the replaced tensor is a copy.

A value is a number (broadcast over the quantity) or an array of the quantity's per-item
shape, with the ``head`` axis left out when ``head`` is given and the ``slot`` axis left out
when ``slot`` is given (for ``link``, ``slot`` picks a row: what slot ``slot`` was written
after). ``intervention_fields(arch)`` lists the fields and their axes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

# Per-item axes of every field each architecture lets you replace. Axis names are sized by
# the model's config (``field_shapes``); NTM heads are read heads then write heads.
_COMMON = {
    "memory": ("slot", "word"),
    "read_weights": ("read_head", "slot"),
    "write_weights": ("write_head", "slot"),
    "read_vectors": ("read_head", "word"),
}
_SPARSE = {
    "memory": ("slot", "word"),
    "read_vectors": ("read_head", "word"),
    "write_gate": (),
    "interpolation_gate": (),
    "write_vector": ("word",),
    "read_strengths": ("read_head",),
}
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "ntm": {
        **_COMMON,
        "key_strength": ("head",),
        "interpolation_gate": ("head",),
        "shift": ("head", "offset"),
        "sharpening": ("head",),
    },
    "dnc": {
        **_COMMON,
        "write_gate": (),
        "allocation_gate": (),
        "free_gates": ("read_head",),
        "read_modes": ("read_head", "mode"),
        "erase": ("write_head", "word"),
        "write_vector": ("write_head", "word"),
        "usage": ("slot",),
        "link": ("slot", "slot_from"),
        "write_strength": ("write_head",),
        "read_strengths": ("read_head",),
    },
    # SAM and SDNC keep their weightings sparse (K entries), so theirs are not offered.
    "sam": _SPARSE,
    "sdnc": {**_SPARSE, "read_modes": ("read_head", "mode")},
}
FIELDS["lstm"] = {}  # the controller alone: no memory to intervene in
HEAD_AXES = ("head", "read_head", "write_head")
SLOT_AXES = ("slot",)
# What each field is, for the listing and the app.
DESCRIPTIONS = {
    "memory": "M, replaced at the start of the step, before it reads or writes",
    "read_weights": "w^r, the read weighting (after the step computed it, before reading)",
    "write_weights": "w^w, the write weighting (before the write)",
    "read_vectors": "r, what the reads return (before the output and the next step use it)",
    "key_strength": "β, each head's key strength",
    "interpolation_gate": "g (NTM) / γ (SAM, SDNC): previous weighting vs content / "
    "previously read slots vs the least used one",
    "shift": "s, each head's shift distribution over offsets -S//2..S//2",
    "sharpening": "γ, each head's sharpening exponent (>= 1)",
    "write_gate": "g^w (α for SAM/SDNC): how much the step writes",
    "allocation_gate": "g^a: a fresh slot (1) or one found by content (0)",
    "free_gates": "f, whether each read head frees what it read at the previous step",
    "read_modes": "π, backward / content / forward shares of each read head",
    "erase": "e, the erase vector",
    "write_vector": "v (a for SAM/SDNC), the vector written",
    "usage": "u, slot usage (before allocation is computed from it)",
    "link": "L, the temporal link matrix (before the reads follow it); row i: what slot i "
    "was written after",
    "read_strengths": "β^r, each read head's key strength",
    "write_strength": "β^w, the write key's strength",
}


def _axis_sizes(config: Any) -> dict[str, int]:
    heads = config.read_heads + (config.write_heads if config.arch == "ntm" else 0)
    return {
        "slot": config.memory_size, "slot_from": config.memory_size, "word": config.word_size,
        "read_head": config.read_heads,
        "write_head": config.write_heads if config.arch == "ntm" else 1,
        "head": heads, "offset": config.shift_range, "mode": 3,
    }  # fmt: skip


def intervention_fields(arch_or_config: Any) -> dict[str, tuple]:
    """The fields an architecture lets you replace, with their per-item axes.

    Given an architecture name, the axes are named (``("read_head", "slot")``); given a
    ``ModelConfig`` or a model, they are sized (``(1, 64)``).
    """
    config = getattr(arch_or_config, "config", arch_or_config)
    arch = config if isinstance(config, str) else getattr(config, "arch", None)
    if arch not in FIELDS:
        raise ValueError(f"arch must be one of {sorted(FIELDS)}, got {arch!r}")
    if isinstance(config, str):
        return dict(FIELDS[arch])
    sizes = _axis_sizes(config)
    return {name: tuple(sizes[axis] for axis in axes) for name, axes in FIELDS[arch].items()}


@dataclass(frozen=True)
class Intervention:
    """Replace ``field`` by ``value`` at ``step`` (an int, or a range of steps).

    ``head`` picks one head where the field has heads, ``slot`` one memory row (a row of the
    link matrix). See the module docstring for when each field is replaced.
    """

    step: int | range
    field: str
    value: Any
    head: int | None = None
    slot: int | None = None

    def steps(self) -> range:
        return self.step if isinstance(self.step, range) else range(self.step, self.step + 1)

    def to_dict(self) -> dict:
        """Plain JSON data (for a Trace's metadata); ``from_dict`` reverses it."""
        value = self.value
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        value = np.asarray(value, dtype=np.float64).tolist()
        step = [self.step.start, self.step.stop] if isinstance(self.step, range) else self.step
        return {"step": step, "field": self.field, "value": value, "head": self.head,
                "slot": self.slot}  # fmt: skip

    @classmethod
    def from_dict(cls, values: dict) -> Intervention:
        step = values["step"]
        step = range(*step) if isinstance(step, list) else step
        return cls(step, values["field"], values["value"], values.get("head"),
                   values.get("slot"))  # fmt: skip


def _check_index(owner: str, name: str, value: Any, size: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{owner}: {name} must be an integer in [0, {size - 1}], got {value!r}")
    if not 0 <= value < size:
        raise ValueError(f"{owner}: {name} must be in [0, {size - 1}], got {value}")


class _Prepared(NamedTuple):
    index: tuple  # indexes the batched tensor: (all items, then head / slot picks)
    value: torch.Tensor  # broadcastable to tensor[index]
    source: Intervention


class StepEdits:
    """The interventions of one step, applied as the access module computes each quantity.

    ``edit(name, tensor)`` returns ``tensor`` unchanged when nothing replaces ``name`` at this
    step, else a copy with the replacement. ``NO_EDITS`` replaces nothing.
    """

    def __init__(self, prepared: dict[str, list[_Prepared]]) -> None:
        self._prepared = prepared

    def __bool__(self) -> bool:
        return bool(self._prepared)

    def __contains__(self, name: str) -> bool:
        return name in self._prepared

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        changes = self._prepared.get(name)
        if not changes:
            return tensor
        tensor = tensor.clone()
        for change in changes:
            tensor[change.index] = change.value.to(tensor.device, tensor.dtype)
        return tensor

    def interface(self, parsed: NamedTuple) -> NamedTuple:
        """The parsed interface with every replaced field replaced."""
        replaced = {name: self(name, getattr(parsed, name)) for name in parsed._fields
                    if name in self._prepared}  # fmt: skip
        return parsed._replace(**replaced) if replaced else parsed


NO_EDITS = StepEdits({})


class Interventions:
    """A validated list of interventions for one model and sequence length: ``at(t)`` gives
    the ``StepEdits`` of step t."""

    def __init__(self, interventions: Iterable[Intervention], config: Any, steps: int) -> None:
        self.interventions = list(interventions)
        fields = FIELDS.get(config.arch, {})
        sizes = _axis_sizes(config)
        self._by_step: dict[int, dict[str, list[_Prepared]]] = {}
        for number, intervention in enumerate(self.interventions):
            prepared = _prepare(intervention, number, config.arch, fields, sizes, steps)
            for step in intervention.steps():
                self._by_step.setdefault(step, {}).setdefault(intervention.field, []).append(
                    prepared
                )

    def __bool__(self) -> bool:
        return bool(self.interventions)

    def at(self, step: int) -> StepEdits:
        prepared = self._by_step.get(step)
        return StepEdits(prepared) if prepared else NO_EDITS

    def metadata(self) -> list[dict]:
        return [intervention.to_dict() for intervention in self.interventions]


def _prepare(
    intervention: Any, number: int, arch: str, fields: dict, sizes: dict, steps: int
) -> _Prepared:
    owner = f"interventions[{number}]"
    if not isinstance(intervention, Intervention):
        raise ValueError(f"{owner} must be a mann.Intervention, got {type(intervention).__name__}")
    field = intervention.field
    if field not in fields:
        raise ValueError(
            f"{owner}: field {field!r} is not one {arch} can replace; its fields are "
            f"{', '.join(fields) or 'none (it has no memory)'}"
        )
    step = intervention.step
    if isinstance(step, range):
        if len(step) == 0 or step.step != 1:
            raise ValueError(f"{owner}: step must be an int or a non-empty range(start, stop), "
                             f"got {step!r}")  # fmt: skip
        first, last = step.start, step.stop - 1
    elif isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ValueError(f"{owner}: step must be an int or a range, got {step!r}")
    else:
        first = last = int(step)
    if first < 0 or last >= steps:
        raise ValueError(f"{owner}: step must lie in [0, {steps - 1}] (the sequence has {steps} "
                         f"steps), got {step!r}")  # fmt: skip

    axes = list(fields[field])
    index: list[Any] = [slice(None)]  # every batch item
    kept = []
    head_axis = next((axis for axis in axes if axis in HEAD_AXES), None)
    slot_axis = next((axis for axis in axes if axis in SLOT_AXES), None)
    if intervention.head is not None and head_axis is None:
        raise ValueError(f"{owner}: field {field!r} has no heads; leave head=None")
    if intervention.slot is not None and slot_axis is None:
        raise ValueError(f"{owner}: field {field!r} has no slot axis; leave slot=None")
    for axis in axes:
        if axis == head_axis and intervention.head is not None:
            _check_index(owner, "head", intervention.head, sizes[axis])
            index.append(int(intervention.head))
        elif axis == slot_axis and intervention.slot is not None:
            _check_index(owner, "slot", intervention.slot, sizes[axis])
            index.append(int(intervention.slot))
        else:
            index.append(slice(None))
            kept.append(axis)
    shape = tuple(sizes[axis] for axis in kept)

    value = intervention.value
    try:
        value = torch.as_tensor(
            value.detach().cpu() if isinstance(value, torch.Tensor) else np.asarray(value),
            dtype=torch.float64,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: value must be a number or an array, got {value!r}") from error
    if value.dim() and tuple(value.shape) != shape:
        described = " × ".join(f"{axis} {sizes[axis]}" for axis in kept) or "a scalar"
        raise ValueError(
            f"{owner}: value for {field!r} must be a number or have shape {shape} ({described}), "
            f"got shape {tuple(value.shape)}"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"{owner}: value must be finite, got {intervention.value!r}")
    return _Prepared(tuple(index), value, intervention)


def as_interventions(
    interventions: Sequence[Intervention] | Interventions | None, config: Any, steps: int
) -> Interventions | None:
    """None for no interventions, else the validated ``Interventions``."""
    if interventions is None or isinstance(interventions, Interventions):
        return interventions
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    return Interventions(interventions, config, steps)


def describe(intervention: Intervention) -> str:
    """One line for a legend: "write_gate = 0 at steps 3-5 (head 0)"."""
    steps = intervention.steps()
    when = f"step {steps.start}" if len(steps) == 1 else f"steps {steps.start}-{steps[-1]}"
    value = np.asarray(intervention.value)
    shown = f"{float(value):g}" if value.ndim == 0 else f"array {value.shape}"
    where = "".join(f", {name} {getattr(intervention, name)}" for name in ("head", "slot")
                    if getattr(intervention, name) is not None)  # fmt: skip
    return f"{intervention.field} = {shown} at {when}{where}"


