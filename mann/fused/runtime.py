"""What every fused kernel shares: numba set-up, a pool of large buffers, one launch lock.

Kernels are compiled by numba on first use (cached on disk). Without numba, callers fall back
to the torch composition in ``mann.addressing`` (``usable`` says which to take).
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import types
from pathlib import Path

import numpy as np
import torch


def _threading_layer() -> str:
    """numba's OpenMP layer where the system's libgomp is installed, else its workqueue.

    A DNC step launches parallel kernels several times per time step. The workqueue's threads
    sleep between launches, and waking one took 110-200 µs here (a 2-core VM), against 2 µs
    for GNU OpenMP, whose threads spin a while after each parallel region before sleeping: a
    DNC 1024 training step went from 1.36 to 0.97-1.00 s (bench/ab_speed.py). The OpenMP
    layer loads the system's libgomp beside torch's bundled copy, so there are two thread
    teams (both spin only briefly, and the measured steps are faster with both); starting
    numba's would reset torch's thread count, which ``_start_threads`` keeps.
    """
    try:
        from numba.np.ufunc import omppool  # noqa: F401  (fails without libgomp1)
    except ImportError:  # pragma: no cover - depends on the machine's packages
        return "workqueue"
    return "omp"


KERNEL_DIRECTORY = Path(__file__).resolve().parent


def kernel_sources_stamp(directory: Path = KERNEL_DIRECTORY) -> tuple:
    """The (name, mtime, size) of every kernel source file: a cached kernel is stale when any
    of them changed, not only its own file, because it inlines functions of others (the
    content lookup of ``content.py``)."""
    stamps = []
    for path in sorted(directory.glob("*.py")):
        status = path.stat()
        stamps.append((path.name, status.st_mtime, status.st_size))
    return tuple(stamps)


try:
    import numba
    from numba import njit, prange
    from numba.core import caching

    # Neither layer is safe for concurrent launches (the app runs models in several
    # threads), so launches are serialised by KERNEL_LOCK.
    numba.config.THREADING_LAYER = _threading_layer()
    HAVE_NUMBA = True

    class KernelSourcesLocator(caching.InTreeCacheLocator):
        """numba's cache beside the kernels (``__pycache__``), stamped by all of their source
        files: numba's own stamp is the compiled function's file alone, so an edit to an
        inlined function in another file would leave its callers' cached machine code in use."""

        def get_source_stamp(self):
            return kernel_sources_stamp()

        @classmethod
        def from_function(cls, py_func, py_file):
            if Path(py_file).resolve().parent != KERNEL_DIRECTORY:
                return None
            return super().from_function(py_func, py_file)

    # After a NUMBA_CACHE_DIR the user set, before numba's in-tree locator; the kernels'
    # modules import this one first, so it is in place before they are compiled.
    _locators = caching.CacheImpl._locator_classes
    if not any(locator.__name__ == KernelSourcesLocator.__name__ for locator in _locators):
        _locators.insert(_locators.index(caching.InTreeCacheLocator), KernelSourcesLocator)
except ImportError:  # pragma: no cover - exercised only where numba is absent
    HAVE_NUMBA = False
    njit = prange = None


__all__ = [
    "HAVE_NUMBA",
    "KERNEL_LOCK",
    "POOL",
    "arrays",
    "batch_kernel",
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
# Below this much per-step work (B N W) a batch-split kernel runs serially.
PARALLEL_MIN_BATCH_WORK = 1 << 14


@functools.cache
def _start_threads() -> None:
    # numba starts its thread pool on first use, and starting the OpenMP one sets torch's
    # thread count to the machine's (tests/test_access.py): start it here, keep torch's.
    threads = torch.get_num_threads()
    numba.get_num_threads()
    torch.set_num_threads(threads)


def set_threads(entries: int, minimum: int = PARALLEL_MIN_ENTRIES) -> int:
    """Give the next parallel kernel torch's thread count, or one thread if it is small
    (fewer than ``minimum`` entries).

    Returns the thread count set: with 1, callers should prefer a serial kernel.
    """
    threads = 1 if entries < minimum else torch.get_num_threads()
    threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    _start_threads()
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


def batch_kernel(serial, split, shape: tuple[int, ...]):
    """A serial kernel over a batch, or its split (the DNC and NTM steps: a parallel driver
    that runs ``serial`` on one slice of the batch per thread, taking the number of slices
    as its last argument). For memory of ``shape`` (B,N,W): the split, its threads set,
    when the batch splits and B N W pays for a launch; else the serial kernel."""
    batch = shape[0]
    threads = set_threads(math.prod(shape), PARALLEL_MIN_BATCH_WORK) if batch > 1 else 1
    if threads == 1:
        return serial
    parts = min(batch, threads)
    return lambda *arguments: split(*arguments, parts)


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
