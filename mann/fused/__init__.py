"""Fused CPU kernels: the same equations as ``mann.addressing``, computed in fewer passes.

``addressing`` is the reference and the readable statement of each equation; a fused kernel
computes the same thing (tests hold them equal, values and gradients) with a hand-written
backward, because on a CPU the cost of a composed step is dispatch per operation and passes
over memory, not arithmetic (docs/performance.md).

Importing this package registers the whole-sequence kernel (``mann.fused.sequence``) with
``mann.backends`` for exactly the four memories it implements. The dependency runs one way:
this package imports the access modules; they never import it.
"""

from mann.access.dnc import DNCAccess
from mann.access.ntm import NTMAccess
from mann.access.sam import SAMAccess
from mann.access.sdnc import SDNCAccess
from mann.backends import Kernel, register
from mann.fused import sequence
from mann.fused.dnc import dnc_read, dnc_write
from mann.fused.link import link_and_directions
from mann.fused.ntm import ntm_step
from mann.fused.runtime import HAVE_NUMBA

# Looked up at each call, so that a patched sequence.run (or missing) is the one that runs.
SEQUENCE_KERNEL = Kernel(
    "sequence node (mann.fused.sequence)",
    missing=lambda *arguments: sequence.missing(*arguments),
    run=lambda *arguments: sequence.run(*arguments),
)
for _access_class in (NTMAccess, DNCAccess, SAMAccess, SDNCAccess):
    register(_access_class, SEQUENCE_KERNEL)

__all__ = [
    "HAVE_NUMBA", "SEQUENCE_KERNEL", "dnc_read", "dnc_write", "link_and_directions", "ntm_step",
]  # fmt: skip
