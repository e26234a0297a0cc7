"""The Trace: everything one run recorded for one batch item, as plain numpy data.

A Trace is what the figures draw and the app shows. It is produced by
``model(inputs, record=True)`` and never needs the model again: it can be saved to
``.npz``, loaded, turned into a long pandas DataFrame, diffed.

Every array is float32 with time first. Fields an architecture does not have are None.

Head order: NTM fields indexed by ``H`` list the read heads first, then the write heads
(``H = read_heads + write_heads``). ``read_modes`` is ordered backward, content, forward.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Names of the non-time axes of each array field, used by ``to_frame`` and the figures.
AXES: dict[str, tuple[str, ...]] = {
    # common
    "inputs": ("channel",),
    "targets": ("channel",),
    "mask": (),
    "outputs": ("channel",),
    "memory": ("slot", "word"),
    "read_weights": ("head", "slot"),
    "write_weights": ("head", "slot"),
    "read_vectors": ("head", "word"),
    # DNC (and SDNC where it has them)
    "usage": ("slot",),
    "precedence": ("slot",),
    "link": ("slot", "slot_from"),
    "allocation": ("slot",),
    "write_content_weights": ("slot",),
    "read_content_weights": ("head", "slot"),
    "forward_weights": ("head", "slot"),
    "backward_weights": ("head", "slot"),
    "read_modes": ("head", "mode"),
    "free_gates": ("head",),
    "allocation_gate": (),
    "write_gate": (),
    "write_strength": (),
    "read_strengths": ("head",),
    # the DNC's improvements (Csordás & Schmidhuber 2019), when on
    "read_masks": ("head", "word"),
    "write_mask": ("word",),
    "forward_sharpness": ("head",),
    "backward_sharpness": ("head",),
    # NTM (H = read heads then write heads)
    "content_weights": ("head", "slot"),
    "interpolation_gate": ("head",),
    "shift": ("head", "offset"),
    "sharpening": ("head",),
    "key_strength": ("head",),
    "content_masks": ("head", "word"),  # with masked_content
    # SAM / SDNC
    "read_positions": ("head", "k"),
    "least_used": (),
    "link_positions": ("k",),
}

ARRAY_FIELDS: tuple[str, ...] = tuple(AXES)
HEADER_KEY = "__header__"  # the .npz entry holding the JSON header
READ_MODES = ("backward", "content", "forward")


@dataclass
class Trace:
    """One batch item's recording. Shapes are given with T = time steps.

    Common: inputs (T,X), outputs (T,Y) as probabilities, memory (T,N,W) after the step's
    write, read_weights (T,R,N), write_weights (T,Hw,N), read_vectors (T,R,W); targets (T,Y)
    and mask (T,) when the run was given them.

    DNC: usage, precedence, allocation, write_content_weights (T,N); link (T,N,N) with
    ``link[t, i, j]`` the degree to which slot i was written right after slot j;
    read_content_weights, forward_weights, backward_weights (T,R,N); read_modes (T,R,3);
    free_gates (T,R); allocation_gate, write_gate, write_strength β^w (T,); read_strengths β^r
    (T,R). With the improvements on: read_masks (T,R,W), write_mask (T,W), forward_sharpness
    and backward_sharpness (T,R).

    NTM: content_weights (T,H,N), interpolation_gate (T,H), shift (T,H,S), sharpening (T,H),
    key_strength (T,H), heads ordered reads first, then writes; with masked_content also
    content_masks (T,H,W).

    SAM/SDNC: read_positions (T,R,K) slot indices (stored as float32 like the rest),
    least_used (T,) the slot index chosen as least recently used; usage (T,N) the steps since
    each slot was last used (read or written with weight > δ); the write is explained with
    the DNC's fields: w^w = g^w [g^a a + (1 - g^a) c^w] with write_gate g^w = α,
    allocation_gate g^a = 1 - γ, allocation a = 1_U (the least used slot) and
    write_content_weights c^w = the previous step's read weights (mean over heads). SDNC adds
    precedence, read_content_weights, forward/backward_weights and read_modes as the DNC
    (its read_weights are the mixture's K largest entries); its link is dense (T,N,N) only
    while N <= 256 (``mann.access.sdnc.DENSE_LINK_LIMIT``), otherwise link_positions (T,S)
    names the slots of the touched sub-matrix stored in link (T,S,S): the slots the step
    wrote and those of the previous precedence, ascending, -1 padding.
    """

    arch: str
    inputs: np.ndarray
    outputs: np.ndarray
    memory: np.ndarray
    read_weights: np.ndarray
    write_weights: np.ndarray
    read_vectors: np.ndarray
    targets: np.ndarray | None = None
    mask: np.ndarray | None = None
    usage: np.ndarray | None = None
    precedence: np.ndarray | None = None
    link: np.ndarray | None = None
    allocation: np.ndarray | None = None
    write_content_weights: np.ndarray | None = None
    read_content_weights: np.ndarray | None = None
    forward_weights: np.ndarray | None = None
    backward_weights: np.ndarray | None = None
    read_modes: np.ndarray | None = None
    free_gates: np.ndarray | None = None
    allocation_gate: np.ndarray | None = None
    write_gate: np.ndarray | None = None
    write_strength: np.ndarray | None = None
    read_strengths: np.ndarray | None = None
    read_masks: np.ndarray | None = None
    write_mask: np.ndarray | None = None
    forward_sharpness: np.ndarray | None = None
    backward_sharpness: np.ndarray | None = None
    content_weights: np.ndarray | None = None
    interpolation_gate: np.ndarray | None = None
    shift: np.ndarray | None = None
    sharpening: np.ndarray | None = None
    key_strength: np.ndarray | None = None
    content_masks: np.ndarray | None = None
    read_positions: np.ndarray | None = None
    least_used: np.ndarray | None = None
    link_positions: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        steps = None
        for name in ARRAY_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            array = np.asarray(value, dtype=np.float32)
            expected_rank = 1 + len(AXES[name])
            if array.ndim != expected_rank:
                raise ValueError(
                    f"Trace.{name} must have {expected_rank} axes (time, {', '.join(AXES[name])}),"
                    f" got shape {array.shape}"
                )
            if steps is None:
                steps = array.shape[0]
            elif array.shape[0] != steps:
                raise ValueError(
                    f"Trace.{name} has {array.shape[0]} time steps, other fields have {steps}"
                )
            setattr(self, name, array)

    # ---- sizes -------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.inputs.shape[0]

    @property
    def memory_size(self) -> int:
        return self.memory.shape[1]

    @property
    def word_size(self) -> int:
        return self.memory.shape[2]

    @property
    def read_heads(self) -> int:
        return self.read_weights.shape[1]

    @property
    def write_heads(self) -> int:
        return self.write_weights.shape[1]

    def available(self) -> list[str]:
        """Names of the array fields this trace has."""
        return [name for name in ARRAY_FIELDS if getattr(self, name) is not None]

    # ---- export ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the trace to an ``.npz`` file (no pickles: metadata is stored as JSON)."""
        Path(path).write_bytes(self.to_bytes())

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's contents, e.g. for a download button."""
        arrays = {name: getattr(self, name) for name in self.available()}
        header = json.dumps({"arch": self.arch, "metadata": self.metadata})
        arrays[HEADER_KEY] = np.frombuffer(header.encode("utf-8"), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path | io.BytesIO) -> Trace:
        """Read a trace written by ``save``; ValueError if the file is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if HEADER_KEY not in data.files:
                    raise ValueError(f"{path} is not a mann trace: it has no {HEADER_KEY} entry")
                header = json.loads(bytes(data[HEADER_KEY]).decode("utf-8"))
                arrays = {name: data[name] for name in data.files if name in AXES}
        except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not a readable mann trace: {error}") from error
        return cls(arch=header["arch"], metadata=header.get("metadata", {}), **arrays)

    def to_frame(self, fields: list[str] | None = None):
        """A long pandas DataFrame: one row per recorded number.

        Columns: ``signal, step, head, slot, index, value``. ``head`` and ``slot`` are -1
        where the signal has no such axis; ``index`` holds the remaining axis (word column,
        input channel, shift offset, read mode, link source slot), -1 when absent.
        """
        import pandas as pd

        unknown = sorted(set(fields or ()) - set(AXES))
        if unknown:
            raise ValueError(f"unknown trace fields {unknown}; known: {list(AXES)}")
        frames = []
        for name in fields or self.available():
            array = getattr(self, name)
            if array is None:
                continue
            axes = AXES[name]
            grids = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
            columns = {"step": grids[0].ravel()}
            head = slot = index = None
            for axis_name, grid in zip(axes, grids[1:], strict=True):
                if axis_name == "head":
                    head = grid.ravel()
                elif axis_name == "slot":
                    slot = grid.ravel()
                else:
                    index = grid.ravel()
            size = array.size
            minus = np.full(size, -1)
            columns["head"] = minus if head is None else head
            columns["slot"] = minus if slot is None else slot
            columns["index"] = minus if index is None else index
            columns["value"] = array.ravel()
            frame = pd.DataFrame(columns)
            frame.insert(0, "signal", name)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def replace(self, **changes) -> Trace:
        return dataclasses.replace(self, **changes)
