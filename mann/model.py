"""A memory-augmented network: controller + memory access + output layer, and the time loop.

At each step t (DNC Methods; the NTM is wired the same way):
    h_t = controller([x_t ; r_{t-1}]),  clipped to ±clip_value
    interface_t = W_ξ h_t,              clipped to ±clip_value
    r_t, state_t = memory.step(interface_t, state_{t-1})
    y_t = W_y [h_t ; r_t],              clipped to ±clip_value (logits)
Clipping follows deepmind/dnc: it keeps a rare large activation from blowing up training.
Every controller here ends in tanh or an LSTM/GRU state within (-1, 1), so clipping h_t only
changes anything when clip_value < 1; otherwise that clamp is skipped (it is the identity).

Without ``record``, the "auto" backend (``mann.backends``) runs this loop as one autograd node
over the whole sequence where a kernel is registered for the memory (``mann.fused.sequence``:
the same equations, a hand-written backward through time); the loop below is the reference
it is tested against, what recording uses, and what the "reference" backend runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from mann import backends
from mann.access.base import require_positive
from mann.access.none import controller_record
from mann.controller import CONTROLLERS, build_controller
from mann.intervention import Intervention, as_interventions
from mann.trace import Trace

ARCHITECTURES = ("ntm", "dnc", "sam", "sdnc", "lstm")  # "lstm": the controller alone
# Switches beyond an architecture's plain equations, off by default: field -> (the
# architectures that have it, its name, what it does). Read by validation, the trainer's
# command line and the model descriptions.
_CSORDAS = "(Csordás & Schmidhuber 2019)"
MEMORY_OPTIONS = {
    "masked_content": (("dnc", "ntm"), "masked content",
                       f"a learned mask over the word for content lookups {_CSORDAS}"),
    "deallocation": (("dnc",), "de-allocation", f"freed slots' contents wiped {_CSORDAS}"),
    "link_sharpness": (("dnc",), "link sharpness",
                       f"forward/backward weightings sharpened {_CSORDAS}"),
    "learned_memory": (("ntm",), "learned initial memory",
                       "the initial memory (N×W) is learned (Collier & Beel 2018)"),
    "read_after_write": (("ntm",), "read after write",
                         "read heads address and read M_t, after this step's write (the "
                         "DNC's order)"),
}  # fmt: skip


def option_owner_label(name: str) -> str:
    """The architectures that have option ``name`` as a user reads them: "NTM", "DNC/NTM"."""
    return "/".join(owner.upper() for owner in MEMORY_OPTIONS[name][0])


# Csordás & Schmidhuber's DNC improvements (masked content is one the NTM has too).
IMPROVEMENTS = tuple(name for name, (owners, *_) in MEMORY_OPTIONS.items() if "dnc" in owners)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    arch: str = "ntm"
    input_size: int = 9
    output_size: int = 8
    controller: str = "lstm"
    hidden_size: int = 100
    num_layers: int = 1
    memory_size: int = 128
    word_size: int = 20
    read_heads: int = 1
    write_heads: int = 1
    shift_range: int = 3
    sparse_reads: int = 4
    temporal_reads: int = 8
    clip_value: float = 20.0
    # The DNC's improvements (Csordás & Schmidhuber 2019), off by default: a plain DNC.
    masked_content: bool = False  # a learned mask over the word for each content lookup
    deallocation: bool = False  # freed slots' contents wiped, scaled by the retention
    link_sharpness: bool = False  # forward/backward weightings sharpened by learned powers
    # The NTM's initial memory: a small constant (False, Collier & Beel's recommendation for
    # copy) or a learned N×W parameter, so content lookups can tell slots apart from step 1.
    learned_memory: bool = False
    # The NTM's order within a step: reads of M_{t-1} then the write (False), or the write then
    # reads of M_t (True, the DNC's order), so a step can read past what it just erased.
    read_after_write: bool = False

    def validate(self) -> ModelConfig:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {list(ARCHITECTURES)}, got {self.arch!r}")
        if self.controller not in CONTROLLERS:
            raise ValueError(
                f"controller must be one of {sorted(CONTROLLERS)}, got {self.controller!r}"
            )
        for name in (
            "input_size",
            "output_size",
            "hidden_size",
            "num_layers",
            "memory_size",
            "word_size",
            "read_heads",
            "write_heads",
            "shift_range",
            "sparse_reads",
            "temporal_reads",
        ):
            require_positive(name, getattr(self, name))
        if self.shift_range % 2 != 1:
            raise ValueError(
                f"shift_range must be odd (offsets -s..s around 0), got {self.shift_range}"
            )
        if self.arch == "ntm" and self.shift_range > self.memory_size:
            raise ValueError(
                f"shift_range must be at most memory_size={self.memory_size},"
                f" got {self.shift_range}"
            )
        if self.arch != "ntm" and self.write_heads != 1:
            raise ValueError(
                f"write_heads must be 1 for arch={self.arch!r} (one write head), "
                f"got {self.write_heads}"
            )
        if self.arch in ("sam", "sdnc") and self.sparse_reads > self.memory_size:
            raise ValueError(
                f"sparse_reads must be at most memory_size={self.memory_size},"
                f" got {self.sparse_reads}"
            )
        clip = self.clip_value
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
            raise ValueError(f"clip_value must be a number > 0, got {self.clip_value!r}")
        for name, (owners, _, _) in MEMORY_OPTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
            if value and self.arch not in owners:
                article = "an" if owners[0] == "ntm" else "a"  # spoken "en-tee-em", "dee-en-see"
                raise ValueError(f"{name} is {article} {option_owner_label(name)} option; arch="
                                 f"{self.arch!r} has no such option")  # fmt: skip
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        if not isinstance(values, dict):
            raise ValueError(f"a ModelConfig needs a dict of fields, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values).validate()


def build_access(config: ModelConfig) -> nn.Module:
    if config.arch == "lstm":
        from mann.access.none import NoMemoryAccess

        return NoMemoryAccess(config.word_size)
    if config.arch == "ntm":
        from mann.access.ntm import NTMAccess

        return NTMAccess(
            config.memory_size,
            config.word_size,
            config.read_heads,
            config.write_heads,
            config.shift_range,
            learned_memory=config.learned_memory,
            read_after_write=config.read_after_write,
            masked_content=config.masked_content,
        )
    if config.arch == "dnc":
        from mann.access.dnc import DNCAccess

        return DNCAccess(
            config.memory_size, config.word_size, config.read_heads,
            masked_content=config.masked_content, deallocation=config.deallocation,
            link_sharpness=config.link_sharpness,
        )  # fmt: skip
    if config.arch == "sam":
        from mann.access.sam import SAMAccess

        return SAMAccess(
            config.memory_size, config.word_size, config.read_heads, config.sparse_reads
        )
    if config.arch == "sdnc":
        from mann.access.sdnc import SDNCAccess

        return SDNCAccess(
            config.memory_size,
            config.word_size,
            config.read_heads,
            config.sparse_reads,
            config.temporal_reads,
        )
    raise ValueError(f"arch must be one of {list(ARCHITECTURES)}, got {config.arch!r}")


class ModelState(NamedTuple):
    controller: tuple[torch.Tensor, ...]
    access: NamedTuple
    read_vectors: torch.Tensor  # r_t (B,R,W)


class MemoryAugmentedNetwork(nn.Module):
    """Controller plus one memory; call it on inputs (B,T,X) to get logits (B,T,Y)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.access = build_access(config)
        read_size = self.access.read_heads * config.word_size
        self.controller = build_controller(
            config.controller,
            config.input_size,
            read_size,
            config.hidden_size,
            config.num_layers,
        )
        # W_ξ; a memory-less model (arch "lstm") has no interface at all.
        self.interface = (
            nn.Linear(config.hidden_size, self.access.interface_size)
            if self.access.interface_size else None
        )
        self.output = nn.Linear(config.hidden_size + read_size, config.output_size)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> ModelState:
        dtype = self.output.weight.dtype  # follows model.double() and the like
        return ModelState(
            controller=self.controller.initial_state(batch_size, device),
            access=self.access.initial_state(batch_size, device, dtype=dtype),
            read_vectors=self.access.initial_read_vectors(batch_size, device, dtype=dtype),
        )

    def forward(
        self,
        inputs: torch.Tensor,
        state: ModelState | None = None,
        record: bool = False,
        trace_item: int = 0,
        interventions: Sequence[Intervention] | None = None,
    ):
        """Run the model over ``inputs`` (B,T,X), batch first.

        Returns ``(logits (B,T,Y), state)``; with ``record=True`` also a Trace of batch item
        ``trace_item``. Passing the returned state to the next call continues the sequence.
        ``interventions`` (``mann.Intervention``) replace quantities at chosen steps of this
        call, on the step-by-step path; the Trace's metadata lists them.
        """
        self._check_inputs(inputs, trace_item if record else None)
        edits = as_interventions(interventions, self.config, inputs.shape[1])
        if state is None:
            state = self.initial_state(inputs.shape[0], inputs.device)
        kernel = None if record or edits is not None else backends.kernel_for(self, inputs, state)
        if kernel is not None:
            logits, controller_state, access_fields, read_vectors = kernel.run(
                self, inputs, state
            )
            access_state = type(state.access)(*access_fields)
            return logits, ModelState(controller_state, access_state, read_vectors)
        logits, new_state, records = self._step_loop(inputs, state, record, edits)
        if not record:
            return logits, new_state
        trace = self._traces(inputs, logits, records, [trace_item])[0]
        if edits:
            trace.metadata["interventions"] = edits.metadata()
        return logits, new_state, trace

    def _step_loop(
        self, inputs: torch.Tensor, state: ModelState, record: bool, edits=None
    ):
        """The reference time loop: (logits (B,T,Y), final state, per-step access records).

        ``edits`` (``mann.intervention.Interventions``) replace quantities at their steps;
        given at all, every step runs the reference path, so a replacement equal to what the
        model computed changes nothing.
        """
        clip = self.config.clip_value
        clip_hidden = clip < 1.0  # |h_t| < 1 for every controller: a larger clip is the identity
        controller_state, access_state, read_vectors = state
        hidden_outputs, read_outputs, records = [], [], []
        # The controller sees [x_t; r_{t-1}]; the x_t part is projected for all steps at once.
        projected_inputs = self.controller.project_inputs(inputs).unbind(1)
        # Transposed once per sequence: a .t() per step would be an autograd node per step.
        step_weights = self.controller.step_weights()
        interface_weight = None if self.interface is None else self.interface.weight.t()
        flat_reads = read_vectors.flatten(1)
        for t in range(inputs.shape[1]):
            hidden, controller_state = self.controller(
                projected_inputs[t], flat_reads, controller_state, step_weights
            )
            if clip_hidden:
                hidden = hidden.clamp(-clip, clip)
            if interface_weight is None:
                interface = hidden.new_zeros(hidden.shape[0], 0)
            else:
                interface = torch.addmm(self.interface.bias, hidden, interface_weight)
                interface = interface.clamp(-clip, clip)
            if edits is None:
                read_vectors, access_state, step_record = self.access.step(
                    interface, access_state, record=record
                )
            else:
                step_edits = edits.at(t)
                if "memory" in step_edits:  # M_{t-1}, before this step reads or writes
                    memory = step_edits("memory", access_state.memory)
                    if hasattr(self.access, "with_memory"):  # SAM, SDNC: tables in a store
                        access_state = self.access.with_memory(access_state, memory)
                    else:
                        access_state = access_state._replace(memory=memory)
                read_vectors, access_state, step_record = self.access.step(
                    interface, access_state, record=record, edit=step_edits
                )
            flat_reads = read_vectors.flatten(1)  # r_t, for the output and the next step
            hidden_outputs.append(hidden)
            read_outputs.append(flat_reads)
            if record:
                if self.access.memory_size == 0:  # no memory: record the controller's state
                    step_record = controller_record(controller_state, hidden, read_vectors)
                records.append(step_record)
        # One output projection for all steps: fewer, larger operations.
        output_input = torch.cat([torch.stack(hidden_outputs, 1), torch.stack(read_outputs, 1)], -1)
        logits = self.output(output_input).clamp(-clip, clip)
        return logits, ModelState(controller_state, access_state, read_vectors), records

    def _check_inputs(self, inputs: torch.Tensor, trace_item: int | None) -> None:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
            raise ValueError(
                f"inputs must be a tensor of shape (batch, time, input_size), got {shape}"
            )
        if inputs.shape[-1] != self.config.input_size:
            raise ValueError(
                f"inputs have width {inputs.shape[-1]}, but input_size={self.config.input_size}"
            )
        if inputs.shape[1] < 1:
            raise ValueError("inputs must have at least one time step")
        if trace_item is not None and not 0 <= trace_item < inputs.shape[0]:
            raise ValueError(
                f"trace_item must be in [0, {inputs.shape[0] - 1}] for batch size "
                f"{inputs.shape[0]}, got {trace_item}"
            )

    def _traces(self, inputs, logits, records, items: list[int], steps=None) -> list[Trace]:
        """Traces of batch items ``items``; ``steps[i]`` (default all) cuts item i's trace to
        its first steps. Each field is stacked over time once for all items."""
        chosen = torch.tensor(items, device=inputs.device)

        def stacked(values) -> torch.Tensor:  # (len(items), T, ...) of the chosen items
            chosen_values = [v.index_select(0, chosen) for v in values]
            return torch.stack(chosen_values, 1).detach().float().cpu()

        present = [name for name in records[0]._fields if getattr(records[0], name) is not None]
        fields = {name: stacked([getattr(r, name) for r in records]) for name in present}
        inputs = inputs.index_select(0, chosen).detach().float().cpu()
        outputs = torch.sigmoid(logits.index_select(0, chosen)).detach().float().cpu()
        traces = []
        for position in range(len(items)):
            end = inputs.shape[1] if steps is None else steps[position]
            traces.append(Trace(
                arch=self.config.arch,
                inputs=inputs[position, :end].numpy(),
                outputs=outputs[position, :end].numpy(),
                metadata={"config": self.config.to_dict()},
                **{name: values[position, :end].numpy() for name, values in fields.items()},
            ))  # fmt: skip
        return traces


def check_fits(model: MemoryAugmentedNetwork, task, name: str | None = None) -> None:
    """Raise ValueError (naming the model ``name`` when given) unless the model's input and
    output sizes are those of ``task``."""
    config = model.config
    if (config.input_size, config.output_size) != (task.input_size, task.output_size):
        which = f"model {name!r}" if name else "the model"
        raise ValueError(
            f"{which} (input_size={config.input_size}, output_size={config.output_size}) "
            f"does not fit task {task.name!r} (inputs {task.input_size} wide, "
            f"targets {task.output_size} wide)"
        )


def build_model(config: ModelConfig) -> MemoryAugmentedNetwork:
    """Make a freshly initialised model from a config (validated first)."""
    return MemoryAugmentedNetwork(config)


@torch.no_grad()
def record_trace(
    model: MemoryAugmentedNetwork,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    item: int = 0,
) -> Trace:
    """Run ``model`` on a batch (B,T,X) without gradients and return item ``item``'s Trace.

    When targets (B,T,Y) and mask (B,T) are given they are stored in the trace, with the
    item's bit errors (outputs thresholded at 0.5 on scored steps) in its metadata.
    """
    was_training = model.training
    model.eval()
    try:
        logits, _, trace = model(inputs, record=True, trace_item=item)
    finally:
        model.train(was_training)
    if targets is None:
        return trace
    from mann.metrics import bit_errors

    if mask is None:
        mask = torch.ones(targets.shape[:2], dtype=targets.dtype, device=targets.device)
    errors = float(
        bit_errors(logits[item : item + 1], targets[item : item + 1], mask[item : item + 1])
    )
    metadata = dict(trace.metadata, bit_errors=errors)
    return trace.replace(
        targets=targets[item].float().cpu().numpy(),
        mask=mask[item].float().cpu().numpy(),
        metadata=metadata,
    )


@torch.no_grad()
def record_traces(model: MemoryAugmentedNetwork, batch) -> list[Trace]:
    """Traces of every item of ``batch`` (a ``mann.tasks.Batch``) from one forward pass.

    Each trace stops at its item's last step (the last scored step or non-zero input), so
    the padding of shorter items is left out; targets, mask and ``metadata["bit_errors"]``
    (outputs thresholded at 0.5 on scored steps) are included.
    """
    from mann.metrics import bit_errors

    inputs, targets, mask = batch
    model._check_inputs(inputs, 0)
    was_training = model.training
    model.eval()
    try:
        state = model.initial_state(inputs.shape[0], inputs.device)
        logits, _, records = model._step_loop(inputs, state, record=True)
    finally:
        model.train(was_training)
    used = (mask > 0) | (inputs != 0).any(-1)  # (B,T)
    positions = torch.arange(1, inputs.shape[1] + 1)
    steps = [max(int((positions * used[item].cpu()).max()), 1) for item in range(len(inputs))]
    errors = bit_errors(logits, targets, mask).cpu()
    traces = model._traces(inputs, logits, records, list(range(len(inputs))), steps)
    targets, mask = targets.detach().float().cpu(), mask.detach().float().cpu()
    return [
        trace.replace(
            targets=targets[item, : steps[item]].numpy(),
            mask=mask[item, : steps[item]].numpy(),
            metadata=dict(trace.metadata, bit_errors=float(errors[item])),
        )
        for item, trace in enumerate(traces)
    ]
