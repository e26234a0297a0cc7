"""mann: memory-augmented neural networks (NTM, DNC, SAM, SDNC) you can watch at work."""

from mann.checkpoint import load, save
from mann.model import MemoryAugmentedNetwork, ModelConfig, ModelState, build_model, record_trace
from mann.trace import Trace

__all__ = [
    "MemoryAugmentedNetwork", "ModelConfig", "ModelState", "Trace", "build_model", "load",
    "record_trace", "save",
]
