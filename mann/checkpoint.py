"""Checkpoints: weights in safetensors, metadata in JSON, written atomically, loaded without pickle.

``save(model, "checkpoints/ntm-copy", task="copy", ...)`` writes two files:

- ``checkpoints/ntm-copy.safetensors``: the model's tensors (``state_dict`` names, float32) and,
  in the safetensors header's string metadata under the key ``"mann"``, the whole metadata as
  JSON. This file alone is the checkpoint: ``load`` and ``read_metadata`` read nothing else.
- ``checkpoints/ntm-copy.json``: the same metadata, indented, for people and the README.

The metadata is ``{"format_version": 1, "config": ModelConfig.to_dict(), **caller's metadata,
"weights_sha256": ...}``; the trainer adds ``task``, ``task_options``, ``train_config``,
``command`` (the command line that reproduces the checkpoint) and ``metrics``.
``weights_sha256`` is the SHA-256 of the tensor bytes (everything after the header), so a
flipped bit anywhere in the weights is found at load time, not as a silently wrong model.

The trainer's state for ``--resume`` goes to a third file, ``NAME.train.safetensors``
(``save_training_state`` / ``load_training_state``): the model's weights again (so weights and
optimizer state always come from the same moment), the optimizer's tensors, the random number
generators' states, and JSON (in the header) for everything that is not a tensor.

Every file is written to a hidden temporary file in the same directory and moved into place
with ``os.replace``, so a kill during a save leaves the previous file whole; a leftover
temporary file (``.NAME.safetensors.*.tmp``) never has a checkpoint's name. Loading never
unpickles: safetensors and ``json`` only. Every problem with a file raises ``CheckpointError``
naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as serialise_tensors

from mann.access.ntm import INITIAL_MEMORY_VALUE
from mann.devices import resolve_device
from mann.model import ARCHITECTURES, MemoryAugmentedNetwork, ModelConfig, build_model

FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
METADATA_SUFFIX = ".json"
TRAINING_SUFFIX = ".train.safetensors"
# The key, in the safetensors header's string metadata, that holds our JSON.
HEADER_KEY = "mann"
# Keys save() writes itself; a caller may not pass them as metadata.
RESERVED_KEYS = ("format_version", "config", "weights_sha256")
# A header bigger than this is not one we wrote (safetensors itself caps it at 100 MB).
LARGEST_HEADER = 100_000_000


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted, or does not fit this version of mann."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


# --------------------------------------------------------------------------- file names


def checkpoint_stem(path: str | os.PathLike) -> Path:
    """The checkpoint's name without suffix: ``a/b.safetensors``, ``a/b.json``, ``a/b`` -> ``a/b``.

    ``a/b.train.safetensors`` (the training state) also gives ``a/b``.
    """
    path = Path(path)
    for suffix in (TRAINING_SUFFIX, WEIGHTS_SUFFIX, METADATA_SUFFIX):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def weights_path(path: str | os.PathLike) -> Path:
    """``NAME.safetensors``: the weights and the metadata (the checkpoint itself)."""
    stem = checkpoint_stem(path)
    return stem.with_name(stem.name + WEIGHTS_SUFFIX)


def metadata_path(path: str | os.PathLike) -> Path:
    """``NAME.json``: the metadata, indented, for people."""
    stem = checkpoint_stem(path)
    return stem.with_name(stem.name + METADATA_SUFFIX)


def training_state_path(path: str | os.PathLike) -> Path:
    """``NAME.train.safetensors``: what ``--resume`` needs."""
    stem = checkpoint_stem(path)
    return stem.with_name(stem.name + TRAINING_SUFFIX)


# --------------------------------------------------------------------------- public API


def save(
    model: MemoryAugmentedNetwork,
    path: str | os.PathLike,
    overwrite: bool = True,
    **metadata: Any,
) -> Path:
    """Save ``model`` as the checkpoint ``path`` (with or without suffix); return the weights file.

    Keyword arguments are stored as metadata; they must be JSON-serialisable (numbers, strings,
    lists, dicts, None) and may not be ``format_version``, ``config`` or ``weights_sha256``.
    Missing directories are created. With ``overwrite=False`` an existing checkpoint of that
    name is never replaced (FileExistsError naming it), even by a save racing this one.

    Raises:
        ValueError: ``model`` is not a MemoryAugmentedNetwork, or a metadata value is not JSON.
        FileExistsError: ``overwrite=False`` and the checkpoint exists.
    """
    if not isinstance(model, MemoryAugmentedNetwork):
        raise ValueError(
            f"model must be a mann MemoryAugmentedNetwork (from build_model or load), "
            f"got {type(model).__name__}"
        )
    for key in RESERVED_KEYS:
        if key in metadata:
            raise ValueError(f"metadata key {key!r} is written by save itself; pass another name")
    full_metadata = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        **{key: _json_ready(key, value) for key, value in metadata.items()},
    }
    tensors = _state_tensors(model)
    data, full_metadata = _serialise(tensors, full_metadata)
    target = weights_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The weights file is the source of truth, so it goes first; the JSON is a readable copy.
    try:
        write_atomically(target, data, replace=overwrite)
    except FileExistsError:
        raise FileExistsError(f"checkpoint {target} exists; it is not replaced") from None
    text = json.dumps(full_metadata, indent=2, sort_keys=False) + "\n"
    write_atomically(metadata_path(path), text.encode("utf-8"))
    return target


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored in checkpoint ``path`` (read from its header only; fast).

    Raises:
        CheckpointError: the file is missing, is not a mann checkpoint, or its header is damaged.
    """
    file = weights_path(path)
    data = _read_file(file)
    metadata, _ = _parse(file, data, verify=False)
    return metadata


def read_training_metadata(path: str | os.PathLike) -> dict:
    """The header metadata of ``NAME.train.safetensors`` (configs, step, ...; no tensors read).

    Raises:
        CheckpointError: the training state is missing or its header is damaged.
    """
    file = training_state_path(path)
    metadata, _ = _parse(file, _read_file(file), verify=False)
    return metadata


def load(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> MemoryAugmentedNetwork:
    """The model saved as checkpoint ``path`` (with or without suffix), in eval mode, on
    ``device`` ("cpu", "cuda", "cuda:N", or "auto": a GPU where torch sees one; default the
    CPU; ``mann.devices``). On a GPU it runs the pure-torch reference (the fused kernels take
    CPU tensors only).

    Raises:
        CheckpointError: naming the file and what is wrong: missing, truncated, corrupted,
            a newer format version, a bad or unknown config, or tensors that do not fit it.
        ValueError: ``device`` is unknown or not available here.
    """
    target = resolve_device(device)
    file = weights_path(path)
    metadata, tensors = _parse(file, _read_file(file), verify=True)
    model = _build(file, metadata.get("config"))
    _load_state(file, model, tensors, prefix="")
    model.eval()
    return model.to(target)


# Architectures with no parameter sized by the number of slots: one trained with N slots runs
# with any other N. (The NTM learns its initial weightings over the N slots.)
RESIZABLE_ARCHITECTURES = ("ntm", "dnc", "sam", "sdnc")
# Those with no parameter sized by N: the same weights load at any memory size.
SIZE_FREE_ARCHITECTURES = ("dnc", "sam", "sdnc")


def resized_model(model: MemoryAugmentedNetwork, memory_size: int) -> MemoryAugmentedNetwork:
    """A copy of ``model`` with ``memory_size`` slots, in memory (see ``resize``).

    Raises:
        ValueError: the architecture has no memory (the LSTM), or the size is impossible.
    """
    config = model.config
    if config.arch not in RESIZABLE_ARCHITECTURES:
        raise ValueError(
            f"cannot resize an {config.arch!r} model: it has no memory "
            f"(only {', '.join(RESIZABLE_ARCHITECTURES)} can be resized)"
        )
    resized = build_model(ModelConfig.from_dict({**config.to_dict(), "memory_size": memory_size}))
    state = model.state_dict()
    if config.arch == "ntm":
        logits = state["access.initial_weight_logits"]  # (heads, N)
        grown = torch.full((logits.shape[0], memory_size), float(logits.min()) - 40.0,
                           dtype=logits.dtype)  # fmt: skip
        kept = min(memory_size, logits.shape[1])
        grown[:, :kept] = logits[:, :kept]
        state["access.initial_weight_logits"] = grown
        if config.learned_memory:
            # New slots start as a constant-initialised NTM's do; shrinking keeps the first.
            rows = state["access.initial_memory"]  # (N, W)
            grown_rows = torch.full((memory_size, rows.shape[1]), INITIAL_MEMORY_VALUE,
                                    dtype=rows.dtype)  # fmt: skip
            grown_rows[:kept] = rows[:kept]
            state["access.initial_memory"] = grown_rows
    resized.load_state_dict(state, strict=True)
    return resized.train(model.training)


def resize(path: str | os.PathLike, memory_size: int, out: str | os.PathLike) -> Path:
    """Save checkpoint ``path`` with ``memory_size`` slots at ``out``; return the weights file.

    DNC, SAM and SDNC have no parameter sized by N, so the same weights run with a larger (or
    smaller) memory: a model trained on short sequences in a small memory can be given the room
    that longer ones need. An NTM's heads' initial weighting (as logits) gains new slots at a
    logit 40 below its lowest, so the initial weighting stays as it was (new slots get e^-40 of
    the weight); shrinking keeps the first slots and renormalises. A learned initial memory
    (``learned_memory``) keeps its rows, and new slots start at the constant an NTM without one
    starts from. The metadata is kept; ``resized_from`` records the old size and ``command``
    gains the ``python -m mann resize`` that made this file.

    Raises:
        CheckpointError: ``path`` is missing or damaged.
        ValueError: the architecture cannot be resized (the memory-less LSTM), or the size is
            impossible.
    """
    model = load(path)
    config = model.config
    resized = resized_model(model, memory_size)
    metadata = {
        key: value for key, value in read_metadata(path).items() if key not in RESERVED_KEYS
    }
    step = shlex.join(
        ["python", "-m", "mann", "resize", str(checkpoint_stem(path)),
         "--memory-size", str(memory_size), "--out", str(checkpoint_stem(out))]
    )  # fmt: skip
    if metadata.get("command"):
        metadata["command"] = f"{metadata['command']} && {step}"
    metadata["resized_from"] = {
        "memory_size": config.memory_size, **metadata.get("resized_from", {}),
    }  # fmt: skip
    return save(resized, out, **metadata)


def save_training_state(
    path: str | os.PathLike,
    model: MemoryAugmentedNetwork,
    optimizer: torch.optim.Optimizer,
    random_states: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write ``NAME.train.safetensors``: everything a resumed run needs, without pickle.

    Args:
        path: the checkpoint (with or without suffix).
        model: its weights are stored again, so they always match the optimizer state.
        optimizer: its ``state_dict`` is flattened: tensors by name
            (``optimizer.state.<parameter index>.<key>``), everything else as JSON.
        random_states: generator states (uint8 tensors) by name, e.g. ``torch``, ``task``.
        state: JSON-serialisable training bookkeeping (step, configs, curriculum, ...).

    Returns:
        The file written.
    """
    tensors = {f"model.{name}": tensor for name, tensor in _state_tensors(model).items()}
    optimizer_tensors, optimizer_json = flatten_optimizer_state(optimizer.state_dict())
    tensors.update(optimizer_tensors)
    for name, value in random_states.items():
        tensors[f"rng.{name}"] = value.detach().cpu().contiguous().clone()
    metadata = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "optimizer": optimizer_json,
        "random_states": sorted(random_states),
        "training": _json_ready("state", state),
    }
    data, _ = _serialise(tensors, metadata)
    target = training_state_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, data)
    return target


def load_training_state(
    path: str | os.PathLike,
) -> tuple[MemoryAugmentedNetwork, dict, dict[str, torch.Tensor], dict]:
    """Read ``NAME.train.safetensors``.

    Returns:
        ``(model, optimizer_state_dict, random_states, state)``: the model (train mode) with the
        stored weights, the optimizer's state_dict for ``optimizer.load_state_dict``, the
        generator states by name, and the bookkeeping passed to ``save_training_state``.

    Raises:
        CheckpointError: as ``load``, for the training-state file.
    """
    file = training_state_path(path)
    metadata, tensors = _parse(file, _read_file(file), verify=True)
    model = _build(file, metadata.get("config"))
    model_tensors = {
        name.removeprefix("model."): tensor
        for name, tensor in tensors.items()
        if name.startswith("model.")
    }
    _load_state(file, model, model_tensors, prefix="model.")
    try:
        optimizer_state = unflatten_optimizer_state(
            {name: tensor for name, tensor in tensors.items() if name.startswith("optimizer.")},
            metadata["optimizer"],
        )
        random_states = {name: tensors[f"rng.{name}"] for name in metadata["random_states"]}
        state = metadata["training"]
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            file, f"training state is incomplete or malformed ({error!r})"
        ) from None
    model.train()
    return model, optimizer_state, random_states, state


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer ``state_dict`` as (tensors by name, JSON for everything else).

    Tensors are named ``optimizer.state.<parameter index>.<key>``; the JSON holds the
    param_groups and, per parameter index, its non-tensor values and the names of its tensors.
    """
    tensors: dict[str, torch.Tensor] = {}
    per_parameter: dict[str, dict] = {}
    for index, values in state_dict["state"].items():
        entry: dict[str, Any] = {"tensors": [], "values": {}}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                name = f"optimizer.state.{index}.{key}"
                tensors[name] = value.detach().cpu().contiguous().clone()
                entry["tensors"].append(key)
            else:
                entry["values"][key] = _json_ready(f"optimizer state {key}", value)
        per_parameter[str(index)] = entry
    groups = [
        _json_ready("optimizer param_groups", dict(group)) for group in state_dict["param_groups"]
    ]
    return tensors, {"state": per_parameter, "param_groups": groups}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], flat: dict) -> dict:
    """Inverse of ``flatten_optimizer_state``; lists in param_groups come back as tuples
    (optimizers keep e.g. Adam's ``betas`` as a tuple)."""
    state = {}
    for index, entry in flat["state"].items():
        values = dict(entry["values"])
        for key in entry["tensors"]:
            values[key] = tensors[f"optimizer.state.{index}.{key}"]
        state[int(index)] = values
    groups = []
    for group in flat["param_groups"]:
        groups.append(
            {
                key: (tuple(value) if isinstance(value, list) and key != "params" else value)
                for key, value in group.items()
            }
        )
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- internals


def _state_tensors(model: MemoryAugmentedNetwork) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage, and views that are not contiguous.
    return {
        name: tensor.detach().cpu().contiguous().clone()
        for name, tensor in model.state_dict().items()
    }


def _json_ready(name: str, value: Any) -> Any:
    """``value`` checked to round-trip through JSON (tuples become lists); else ValueError."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"metadata {name!r} must be JSON-serialisable (numbers, strings, lists, dicts, None; "
            f"NaN and infinity excluded), got {type(value).__name__}: {error}"
        ) from None
    return json.loads(text)


def _serialise(tensors: dict[str, torch.Tensor], metadata: dict) -> tuple[bytes, dict]:
    """safetensors bytes with ``metadata`` (plus the tensor bytes' SHA-256) in the header."""
    # Tensor offsets are relative to the end of the header, so the tensor bytes are the same
    # whatever the header holds: hash them first, then write the header that names the hash.
    bare = serialise_tensors(tensors)
    (header_size,) = struct.unpack("<Q", bare[:8])
    digest = hashlib.sha256(bare[8 + header_size :]).hexdigest()
    metadata = {**metadata, "weights_sha256": digest}
    text = json.dumps(metadata, allow_nan=False)
    return serialise_tensors(tensors, metadata={HEADER_KEY: text}), metadata


def write_atomically(target: Path, data: bytes, replace: bool = True) -> None:
    """Write ``data`` to ``target`` via a temporary file in the same directory and a rename.

    With ``replace=False`` an existing ``target`` is never replaced: the file appears by a
    hard link that fails if the name is taken (FileExistsError), so two writers racing for
    one name cannot both win.
    """
    handle = tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    )
    temporary = Path(handle.name)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile makes the file private (0600); a checkpoint is for sharing.
        os.chmod(temporary, 0o644)
        if replace:
            os.replace(temporary, target)
        else:
            os.link(temporary, target)
            temporary.unlink()
    except BaseException:
        # Also on KeyboardInterrupt: the previous file stays, no partial file remains.
        temporary.unlink(missing_ok=True)
        raise


def _read_file(file: Path) -> bytes:
    if not file.exists():
        raise CheckpointError(file, "file is missing")
    if not file.is_file():
        raise CheckpointError(file, "is not a file")
    try:
        return file.read_bytes()
    except OSError as error:
        raise CheckpointError(file, f"cannot be read ({error.strerror})") from None


def _parse(file: Path, data: bytes, verify: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and (when ``verify``) the tensors of a safetensors file we wrote."""
    if len(data) < 8:
        raise CheckpointError(file, f"truncated: {len(data)} bytes, not even a header length")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > LARGEST_HEADER:
        raise CheckpointError(file, "corrupted: not a safetensors file (impossible header size)")
    if 8 + header_size > len(data):
        raise CheckpointError(
            file, f"truncated: header needs {header_size} bytes, file has {len(data) - 8}"
        )
    try:
        header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(file, "corrupted: its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(file, "corrupted: its header is not a JSON object")
    text = (header.get("__metadata__") or {}).get(HEADER_KEY)
    if text is None:
        raise CheckpointError(file, f"not a mann checkpoint: no {HEADER_KEY!r} header metadata")
    try:
        metadata = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(file, "corrupted: its metadata is not valid JSON") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(file, "corrupted: its metadata is not a JSON object")
    _check_version(file, metadata.get("format_version"))
    if not verify:
        return metadata, {}

    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + header_size + max(ends, default=0)
    if len(data) < expected:
        raise CheckpointError(
            file, f"truncated: {len(data)} bytes, the header describes {expected}"
        )
    digest = hashlib.sha256(data[8 + header_size :]).hexdigest()
    if digest != metadata.get("weights_sha256"):
        raise CheckpointError(
            file, "corrupted: the tensor bytes do not match the checksum in its header"
        )
    try:
        tensors = load_tensors(data)
    except Exception as error:  # safetensors raises its own SafetensorError
        raise CheckpointError(file, f"corrupted: safetensors cannot read it ({error})") from None
    return metadata, tensors


def _check_version(file: Path, version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            file, f"corrupted: format_version must be an integer >= 1, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            file,
            f"format_version {version} is newer than this mann reads (up to {FORMAT_VERSION}); "
            "upgrade mann to load it",
        )


def _build(file: Path, config: Any) -> MemoryAugmentedNetwork:
    if not isinstance(config, dict):
        raise CheckpointError(file, f"bad config: expected a JSON object, got {config!r}")
    arch = config.get("arch")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            file, f"unknown arch {arch!r}; this mann knows {list(ARCHITECTURES)}"
        )
    try:
        model_config = ModelConfig.from_dict(config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(file, f"bad config: {error}") from None
    try:
        return build_model(model_config)
    except ImportError:
        raise CheckpointError(
            file, f"arch {arch!r} is not available in this installation of mann"
        ) from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(file, f"bad config: {error}") from None


def _load_state(
    file: Path, model: MemoryAugmentedNetwork, tensors: dict[str, torch.Tensor], prefix: str
) -> None:
    """Copy ``tensors`` into ``model`` after checking names, shapes and dtypes all fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append("missing tensors " + ", ".join(prefix + name for name in missing))
    if unexpected:
        problems.append("unexpected tensors " + ", ".join(prefix + name for name in unexpected))
    for name in sorted(set(expected) & set(tensors)):
        want, have = expected[name], tensors[name]
        if tuple(want.shape) != tuple(have.shape):
            problems.append(
                f"{prefix}{name} has shape {tuple(have.shape)}, "
                f"the config needs {tuple(want.shape)}"
            )
        elif not have.dtype.is_floating_point:
            problems.append(f"{prefix}{name} has dtype {have.dtype}, a float type is needed")
    if problems:
        raise CheckpointError(file, "weights do not fit its config: " + "; ".join(problems))
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(file, f"corrupted: {prefix}{name} holds NaN or infinite values")
    model.load_state_dict(tensors, strict=True)

