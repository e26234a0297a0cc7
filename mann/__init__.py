"""mann: memory-augmented neural networks (NTM, DNC, SAM, SDNC) you can watch at work."""

from mann.model import ModelConfig, ModelState, MemoryAugmentedNetwork, build_model
from mann.trace import Trace

__all__ = ["ModelConfig", "ModelState", "MemoryAugmentedNetwork", "build_model", "Trace"]
