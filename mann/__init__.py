"""mann: memory-augmented neural networks (NTM, DNC, SAM, SDNC) you can watch at work."""

from mann.backends import BackendError, backend, backend_for
from mann.checkpoint import load, save
from mann.intervention import Intervention, intervention_fields
from mann.model import (
    MemoryAugmentedNetwork,
    ModelConfig,
    ModelState,
    build_model,
    record_trace,
    record_traces,
)
from mann.trace import Trace

__all__ = [
    "BackendError",
    "Intervention",
    "MemoryAugmentedNetwork",
    "ModelConfig",
    "ModelState",
    "Trace",
    "backend",
    "backend_for",
    "build_model",
    "intervention_fields",
    "load",
    "record_trace",
    "record_traces",
    "save",
]
