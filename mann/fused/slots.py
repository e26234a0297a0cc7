"""Fused kernels for the sparse memories' usage bookkeeping (SAM, SDNC; ``mann.access.sam``).

Each step, ``SlotStore`` finds the least recently used slot U and then marks the slots the
step read or wrote as used. Both are O(P √N) integer work on the ``last_access`` table and
its cached minimum per block of √N slots; composed from torch operations they are about
twenty small operations a step, whose dispatch is the whole cost. These kernels do the same
work on numpy views of the same tables, in place, with the same results (the torch
composition in ``SlotStore`` stays as the reference; tests hold the two equal).

No gradient flows here: the tables are integers and the results are slot numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from mann.fused.runtime import HAVE_NUMBA, KERNEL_LOCK, njit

# An excluded slot's last use while searching: later than any real step (as in sam.py).
_EXCLUDED = np.iinfo(np.int64).max

if HAVE_NUMBA:
    KERNEL = dict(cache=True, nogil=True)

    @njit(**KERNEL)
    def _block_minimum(row, block, size):
        # The smallest value of block ``block`` (slots block·size … block·size + size - 1).
        first = block * size
        last = min(first + size, row.shape[0])
        smallest = row[first]
        for i in range(first + 1, last):
            if row[i] < smallest:
                smallest = row[i]
        return smallest

    @njit(**KERNEL)
    def _first_least(row, minima, size):
        # The lowest slot holding the smallest value: the first block whose minimum is
        # smallest, then its first slot with that value.
        block = 0
        for k in range(1, minima.shape[0]):
            if minima[k] < minima[block]:
                block = k
        smallest = minima[block]
        first = block * size
        for i in range(first, min(first + size, row.shape[0])):
            if row[i] == smallest:
                return i
        return first  # unreachable while the minima are up to date

    @njit(**KERNEL)
    def _least_used(last_access, minima, size, excluded, exclude, least):
        # U per item: the least recently used slot that is not an excluded one (``exclude``
        # set), unless every slot is. As SlotStore.least_used: search; if the answer is
        # excluded, mark the excluded slots as used last, refresh their blocks' minima in a
        # copy, search again and restore.
        batch = last_access.shape[0]
        count = excluded.shape[1]
        saved = np.empty(count, dtype=last_access.dtype)
        for b in range(batch):
            row = last_access[b]
            found = _first_least(row, minima[b], size)
            hit = False
            for k in range(count):
                if exclude[b, k] and excluded[b, k] == found:
                    hit = True
            if not hit:
                least[b] = found
                continue
            for k in range(count):
                saved[k] = row[excluded[b, k]]
            for k in range(count):
                if exclude[b, k]:
                    row[excluded[b, k]] = _EXCLUDED
            marked = minima[b].copy()
            for k in range(count):
                block = excluded[b, k] // size
                marked[block] = _block_minimum(row, block, size)
            least[b] = _first_least(row, marked, size)
            for k in range(count):
                row[excluded[b, k]] = saved[k]

    @njit(**KERNEL)
    def _touch(last_access, minima, size, positions, weights, threshold, version, old, new):
        # Slots ``positions`` whose weight exceeds the threshold were used at ``version``;
        # old/new get their values before and after (for the journal), minima follow.
        batch, count = positions.shape
        for b in range(batch):
            row = last_access[b]
            for k in range(count):
                old[b, k] = row[positions[b, k]]
            for k in range(count):
                # version is the newest step, so "the latest use" (amax) is version itself.
                if weights[b, k] > threshold:
                    row[positions[b, k]] = version
            for k in range(count):
                new[b, k] = row[positions[b, k]]
            if minima.shape[1]:
                for k in range(count):
                    block = positions[b, k] // size
                    minima[b, block] = _block_minimum(row, block, size)


def usable(*tensors: torch.Tensor) -> bool:
    """True when the kernels can take these tables: numba present and CPU tensors."""
    return HAVE_NUMBA and all(t.device.type == "cpu" for t in tensors)


def least_used(
    last_access: torch.Tensor,
    minima: torch.Tensor,
    block_size: int,
    excluded: torch.Tensor,
    exclude: torch.Tensor,
) -> torch.Tensor:
    """``SlotStore.least_used`` in one call: U (B,) int64.

    last_access (B,N) int64 and its block minima (B,⌈N/size⌉) (left as they were),
    excluded slots (B,P) int64 and which of them to exclude (B,P) bool.
    """
    least = np.empty(last_access.shape[0], dtype=np.int64)
    with KERNEL_LOCK:
        _least_used(
            last_access.numpy(), minima.numpy(), block_size,
            excluded.contiguous().numpy(), exclude.contiguous().numpy(), least,
        )  # fmt: skip
    return torch.from_numpy(least)


def touch(
    last_access: torch.Tensor,
    minima: torch.Tensor | None,
    block_size: int,
    positions: torch.Tensor,
    weights: torch.Tensor,
    threshold: float,
    version: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``SlotStore.touch``'s table work in one call, in place: returns (old, new) (B,P).

    Slots ``positions`` (B,P) whose weight (B,P) exceeds ``threshold`` get last use
    ``version``; the block minima (if any) are refreshed for the blocks touched.
    """
    old = np.empty(positions.shape, dtype=np.int64)
    new = np.empty(positions.shape, dtype=np.int64)
    no_minima = np.empty((0, 0), dtype=np.int64)
    weights = weights.detach().contiguous().numpy()
    with KERNEL_LOCK:
        _touch(
            last_access.numpy(), no_minima if minima is None else minima.numpy(), block_size,
            positions.contiguous().numpy(), weights,
            # Compared in the weights' precision, as torch compares a tensor with a float.
            weights.dtype.type(threshold), version, old, new,
        )  # fmt: skip
    return torch.from_numpy(old), torch.from_numpy(new)
