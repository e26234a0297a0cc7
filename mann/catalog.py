"""The models the app and the command line offer: the shipped checkpoints, untrained models
sized for a task, uploads, names for new checkpoints, and compiling the kernels ahead of use.
Plain Python, no Streamlit.

- ``list_checkpoints(directory)``: the checkpoints in a directory, shipped ones first;
- ``untrained_model(arch, task)``: a freshly initialised model sized for a task, for looking
  at the mechanics before any training (and until the shipped checkpoints exist);
- ``task_of(metadata)``: the task a checkpoint was trained on;
- ``load_upload(name, data)``: an uploaded checkpoint, checked before it is used;
- ``checkpoint_name_error(name, directory)``: why a name cannot name a new checkpoint;
- ``warm_kernels()``: compile the fused kernels ahead of first use (the app does it at start).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mann.checkpoint import WEIGHTS_SUFFIX, load, read_metadata
from mann.model import (
    ARCHITECTURES,
    MEMORY_OPTIONS,
    MemoryAugmentedNetwork,
    ModelConfig,
    build_model,
)
from mann.tasks import make_task
from mann.tasks.base import Task

# The checkpoints the project ships, in the order the app lists them.
SHIPPED = (
    "ntm-copy", "dnc-copy", "ntm-repeat-copy", "dnc-repeat-copy", "ntm-associative-recall",
    "dnc-associative-recall", "dnc-masked-associative-recall", "ntm-multi-copy",
    "dnc-multi-copy", "sam-copy", "sdnc-copy", "lstm-copy", "ntm-ngrams", "dnc-ngrams",
    "lstm-ngrams", "ntm-priority-sort", "ntm-pretrained-priority-sort", "dnc-priority-sort",
    "lstm-priority-sort",
)
# Sizes of the untrained models, per architecture (input and output sizes come from the task).
UNTRAINED_SIZES: dict[str, dict[str, Any]] = {
    "ntm": dict(memory_size=64, word_size=20, hidden_size=100, read_heads=1, write_heads=1),
    "dnc": dict(memory_size=32, word_size=20, hidden_size=64, read_heads=2),
    "sam": dict(memory_size=128, word_size=20, hidden_size=100, read_heads=1, sparse_reads=4),
    "sdnc": dict(
        memory_size=128, word_size=20, hidden_size=100, read_heads=1, sparse_reads=4,
        temporal_reads=8,
    ),
    "lstm": dict(hidden_size=100),
}
CONTROLLER_NAMES = {"lstm": "LSTM", "gru": "GRU", "feedforward": "feed-forward"}
# The largest checkpoint accepted as an upload.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def available_architectures() -> list[str]:
    """The architectures this installation can build (SAM and SDNC arrive separately)."""
    names = []
    for arch in ARCHITECTURES:
        try:
            __import__(f"mann.access.{'none' if arch == 'lstm' else arch}")
        except ImportError:
            continue
        names.append(arch)
    return names


def list_checkpoints(directory: str | os.PathLike) -> list[str]:
    """Names of the checkpoints (``NAME.safetensors``) in ``directory``: shipped ones first,
    in ``SHIPPED`` order, then the others alphabetically. Training states are not listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = {
        path.name[: -len(WEIGHTS_SUFFIX)]
        for path in directory.glob(f"*{WEIGHTS_SUFFIX}")
        if not path.name.endswith(".train" + WEIGHTS_SUFFIX) and not path.name.startswith(".")
    }
    shipped = [name for name in SHIPPED if name in names]
    return shipped + sorted(names - set(shipped))


def untrained_config(arch: str, task: Task) -> ModelConfig:
    """The config of ``untrained_model(arch, task)``."""
    if arch not in UNTRAINED_SIZES:
        raise ValueError(f"arch must be one of {sorted(UNTRAINED_SIZES)}, got {arch!r}")
    return ModelConfig(
        arch=arch, input_size=task.input_size, output_size=task.output_size,
        **UNTRAINED_SIZES[arch],
    )


def untrained_model(arch: str, task: Task, seed: int = 0) -> MemoryAugmentedNetwork:
    """A freshly initialised ``arch`` model sized for ``task`` (the same seed, the same weights)."""
    config = untrained_config(arch, task)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config)
    return model.eval()


def task_of(metadata: Mapping[str, Any], default: str = "copy") -> Task:
    """The task a checkpoint was trained on, from its metadata (``task``, ``task_options``).

    A checkpoint saved without a task gets ``default`` with its default options.
    """
    name = metadata.get("task") or default
    options = dict(metadata.get("task_options") or {})
    return make_task(name, **options)


def describe(model: MemoryAugmentedNetwork) -> str:
    """One line: architecture, memory and controller sizes."""
    config = model.config
    text = (
        f"{config.arch.upper()}: memory {config.memory_size}×{config.word_size}, "
        f"{CONTROLLER_NAMES.get(config.controller, config.controller)} "
        f"{config.hidden_size}×{config.num_layers}, "
        f"{config.read_heads} read head{'s' if config.read_heads > 1 else ''}"
    )
    if config.arch == "ntm":
        text += f", {config.write_heads} write head{'s' if config.write_heads > 1 else ''}"
    if config.arch in ("sam", "sdnc"):
        text += f", K = {config.sparse_reads}"
    return text + "".join(f", {option}" for option in memory_options(config.to_dict()))


def memory_options(config: Mapping[str, Any]) -> list[str]:
    """The names of the ``MEMORY_OPTIONS`` a config (as a dict) switches on."""
    return [name for field, (_, name, _) in MEMORY_OPTIONS.items() if config.get(field)]


def load_upload(
    name: str, data: bytes, max_bytes: int | None = None
) -> tuple[MemoryAugmentedNetwork, dict]:
    """Load an uploaded checkpoint file (``NAME.safetensors``) and its metadata.

    ``max_bytes`` defaults to ``MAX_UPLOAD_BYTES``.

    The bytes are written to a private temporary directory and read by ``mann.load`` (which
    checks the header, the checksum, the config and every tensor's shape), then removed.

    Raises:
        ValueError: the file is too large or is not named ``*.safetensors``.
        CheckpointError: the file is not a valid mann checkpoint (says what is wrong).
    """
    if max_bytes is None:
        max_bytes = MAX_UPLOAD_BYTES
    if len(data) > max_bytes:
        raise ValueError(
            f"upload {name!r} is {len(data) / 1e6:.1f} MB; checkpoints of at most "
            f"{max_bytes / 1e6:.0f} MB are accepted"
        )
    if not name.endswith(WEIGHTS_SUFFIX) or name.endswith(".train" + WEIGHTS_SUFFIX):
        raise ValueError(
            f"upload {name!r} is not a checkpoint: upload the NAME{WEIGHTS_SUFFIX} file "
            "(the .json beside it is only a readable copy of its metadata)"
        )
    with tempfile.TemporaryDirectory(prefix="mann-upload-") as directory:
        path = Path(directory) / Path(name).name
        path.write_bytes(data)
        model = load(path)
        metadata = read_metadata(path)
    return model, metadata


def check_fits_config(config: ModelConfig, task: Task) -> None:
    """Raise ValueError unless a model config's sizes are those of ``task``."""
    if (config.input_size, config.output_size) != (task.input_size, task.output_size):
        raise ValueError(
            f"input_size={config.input_size} and output_size={config.output_size} must be "
            f"{task.input_size} and {task.output_size} for task {task.name!r}"
        )


def checkpoint_name_error(name: str, directory: str | os.PathLike | None = None) -> str | None:
    """Why ``name`` cannot name a new checkpoint file (in ``directory``, when given: the name
    must be free there), or None if it can."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    if not name:
        return "name must not be empty"
    if len(name) > 64:
        return f"name must be at most 64 characters, got {len(name)}"
    if not set(name) <= allowed or name.startswith("-"):
        return f"name must use only letters, digits, '-' and '_' (not first '-'), got {name!r}"
    if directory is not None and (Path(directory) / f"{name}{WEIGHTS_SUFFIX}").exists():
        shipped = " (a shipped model)" if name in SHIPPED else ""
        return (f"a checkpoint named {name!r}{shipped} exists already; it is never replaced "
                "from the app: choose another name")
    return None


# The ways a model runs, for warm_kernels: each compiles kernels the others need not.
RUN_MODES = ("evaluate", "record", "train")


def warm_kernels(
    configs: list[ModelConfig] | None = None, modes: tuple[str, ...] = RUN_MODES
) -> list[str]:
    """Run each model configuration (by default each architecture's ``untrained_config`` for
    copy) on a tiny batch the ``modes`` ways (a subset of ``RUN_MODES``), so that numba
    compiles their fused kernels now rather than at first use.

    numba compiles a kernel on its first call and caches it on disk. On a fresh machine that
    first call is slow (``python bench/first_run.py``: about 9 s for the NTM, 12 s for the DNC,
    25 s for SAM and 41 s for SDNC, whose whole-sequence kernels are large, imports included);
    once cached, all four take about 3 s. The defaults go NTM, DNC, SAM, SDNC, so the cheap
    ones are ready first. Returns the architectures warmed (none without numba, which the
    models then do without).
    """
    from mann.fused.runtime import HAVE_NUMBA

    unknown = sorted(set(modes) - set(RUN_MODES))
    if unknown:
        raise ValueError(f"modes must be among {RUN_MODES}, got {unknown}")
    if not HAVE_NUMBA:
        return []
    if configs is None:
        configs = [untrained_config(arch, make_task("copy")) for arch in UNTRAINED_SIZES]
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the caller's random state is not this function's to move
        for config in configs:
            model = build_model(config)
            inputs = torch.rand(2, 3, config.input_size, generator=generator)
            with torch.no_grad():
                if "evaluate" in modes:
                    model(inputs)
                if "record" in modes:
                    model(inputs, record=True)
            if "train" in modes:
                logits, _ = model.train()(inputs)
                logits.sum().backward()
    return [config.arch for config in configs]
