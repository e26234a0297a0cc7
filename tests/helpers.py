"""Helpers the test files share (fixtures live in conftest.py): small models that train and run
in milliseconds, sized for a task or for given input and output sizes."""

from __future__ import annotations

from typing import Any

import torch

import mann

# Small enough to run in milliseconds, large enough for every architecture's options.
TINY_SIZES: dict[str, Any] = dict(hidden_size=12, memory_size=10, word_size=4, read_heads=1)


def tiny_config(arch: str = "ntm", task=None, **changes: Any) -> mann.ModelConfig:
    """A ModelConfig of ``TINY_SIZES`` with ``changes``; input and output sizes from ``task``
    when given (else 5 and 4, unless changed)."""
    values: dict[str, Any] = dict(arch=arch, input_size=5, output_size=4, **TINY_SIZES)
    if task is not None:
        values.update(input_size=task.input_size, output_size=task.output_size)
    values.update(changes)
    return mann.ModelConfig(**values)


def tiny_model(arch: str = "ntm", task=None, seed: int = 0, **changes: Any):
    """``tiny_config``'s model, initialised from ``seed``."""
    torch.manual_seed(seed)
    return mann.build_model(tiny_config(arch, task, **changes))
