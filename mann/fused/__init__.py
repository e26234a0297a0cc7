"""Fused CPU kernels: the same equations as ``mann.addressing``, computed in fewer passes.

``addressing`` is the reference and the readable statement of each equation; a fused kernel
computes the same thing (tests hold them equal, values and gradients) with a hand-written
backward, because on a CPU the cost of a composed step is dispatch per operation and passes
over memory, not arithmetic (shared/PERFORMANCE.md).
"""

from mann.fused.dnc import dnc_read, dnc_write
from mann.fused.link import link_and_directions
from mann.fused.ntm import ntm_step
from mann.fused.runtime import HAVE_NUMBA

__all__ = ["HAVE_NUMBA", "dnc_read", "dnc_write", "link_and_directions", "ntm_step"]
