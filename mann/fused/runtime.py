"""What every fused kernel shares: numba set-up, a pool of large buffers, one launch lock.

Kernels are compiled by numba on first use (cached on disk). Without numba, callers fall back
to the torch composition in ``mann.addressing`` (``usable`` says which to take).
"""

from __future__ import annotations

import math
import sys
import threading
import types

import numpy as np
import torch

try:
    import numba
    from numba import njit, prange

    # numba's own thread pool: its OpenMP layer would load a second libgomp beside torch's
    # and reset torch's thread count. The pool is not safe for concurrent launches (the app
    # runs models in several threads), so launches are serialised by KERNEL_LOCK.
    numba.config.THREADING_LAYER = "workqueue"
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is absent
    HAVE_NUMBA = False
    njit = prange = None


__all__ = [
    "HAVE_NUMBA",
    "KERNEL_LOCK",
    "POOL",
    "arrays",
    "njit",
    "parallel_and_serial",
    "prange",
    "set_threads",
    "usable",
]


class _BufferPool:
    """Reuses large (B,N,N) buffers between steps and training iterations.

    A fresh 32 MB tensor costs as much in page faults as the kernel that fills it (glibc
    serves allocations that large with a new mmap each time). Buffers are numpy arrays
    handed out as tensors via ``torch.from_numpy``; every tensor or view using one holds a
    reference to the array, so an array whose only reference is the pool's is free.
    """

    def __init__(self, max_free: int = 4) -> None:
        self.buffers: list[np.ndarray] = []
        self.max_free = max_free
        self.lock = threading.Lock()

    # Smaller buffers come from torch.empty: glibc reuses its heap for them, and scanning
    # the pool (which holds every link still alive in the graph) would cost more.
    min_bytes = 1 << 22

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numpy_dtype = np.dtype(str(dtype).removeprefix("torch."))
        if math.prod(shape) * numpy_dtype.itemsize < self.min_bytes:
            return torch.empty(shape, dtype=dtype)
        with self.lock:
            free = [b for b in self.buffers if sys.getrefcount(b) <= 3]  # list, b, argument
            for buffer in free:
                if buffer.shape == shape and buffer.dtype == numpy_dtype:
                    return torch.from_numpy(buffer)
            # Keep the pool bounded: forget free buffers of other shapes beyond max_free.
            if len(free) >= self.max_free:
                forgotten = {id(buffer) for buffer in free}
                self.buffers = [b for b in self.buffers if id(b) not in forgotten]
            buffer = np.empty(shape, dtype=numpy_dtype)
            self.buffers.append(buffer)
            return torch.from_numpy(buffer)


POOL = _BufferPool()
KERNEL_LOCK = threading.Lock()


def usable(*tensors: torch.Tensor) -> bool:
    """True when the fused kernels can take these tensors: numba present, CPU, one float dtype."""
    return (
        HAVE_NUMBA
        and all(
            t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors
        )
        and len({t.dtype for t in tensors}) == 1
    )


def arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    """The tensors as numpy arrays sharing their (contiguous) memory, for a kernel call."""
    return [tensor.detach().contiguous().numpy() for tensor in tensors]


# Below this many link entries a parallel launch costs more than it saves.
PARALLEL_MIN_ENTRIES = 1 << 18
# From this many (B N²) entries the link takes its BLAS path (mann/fused/link.py). Measured
# (R=4): below it the two paths tie; at B=16 the BLAS path is 1.2x faster at N=64, 1.6x at
# N=128 and 2x at N=256.
LARGE_LINK_ENTRIES = 1 << 15


def set_threads(entries: int) -> int:
    """Give the next parallel kernel torch's thread count, or one thread if it is small.

    Returns the thread count set: with 1, callers should prefer a serial kernel.
    """
    threads = 1 if entries < PARALLEL_MIN_ENTRIES else torch.get_num_threads()
    threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


def parallel_and_serial(function):
    """``function`` compiled twice by numba, with ``prange`` parallel and serial (cached on disk).

    numba's disk cache finds a kernel by its qualified name and bytecode, not by its compile
    flags, so two compilations of one function share a cache entry: whichever compiled first
    was loaded for both, and the "parallel" kernel ran serially from then on. The serial one is
    compiled from a renamed copy, which numba caches in a file of its own.
    """
    options = dict(fastmath=True, cache=True, nogil=True)
    twin = types.FunctionType(
        function.__code__,
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    twin.__qualname__ = f"{function.__qualname__}_serial"
    return njit(parallel=True, **options)(function), njit(**options)(twin)
