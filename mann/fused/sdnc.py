"""A fused kernel for the SDNC's link upkeep: one step of ``SDNCAccess._update_links``.

The link tables carry no gradient (Rae et al. 2016), so a step's link work is a forward-only
state update; composed from torch operations it is about 1,500 small operations per time
step, and dispatching them is the whole cost. This kernel computes the same rows, with the
same float operations in the same order, from numpy views of the tables, and leaves the
change to the caller (``SlotStore.change``, journaled as before), so a step's tables and
journal are identical to the torch composition's (``mann.access.sdnc``; tests hold them equal).

Identical includes which entries survive a tie at the K_L cut and the order of the kept
entries: ``addressing._keep_largest`` and ``_compact`` use ``torch.topk``, which on the CPU
is libstdc++'s ``std::nth_element`` to place the k-th largest, then ``std::sort`` of the k-1
before it (``aten/src/ATen/native/TopKImpl.h``). ``_top_k`` below replays those two
algorithms step for step. Where torch would take another path (k·64 <= length: partial
sort; more than 16 entries to sort; nth_element's depth limit; NaN), the kernel reports
failure and the caller runs the torch composition instead.

Shapes: B batch, N slots, K_L = C entries per row (the tables are (B,N+1,C), row N an empty
sink), P written slots (merged, sorted, N-padded), Q precedence entries.
"""

from __future__ import annotations

import numpy as np
import torch

from mann.fused.runtime import HAVE_NUMBA, KERNEL_LOCK, arrays, njit

# Status codes of the kernel.
DONE, UNSUPPORTED = 0, 1
# libstdc++'s std::sort sorts at most this many entries by insertion alone.
_SORT_THRESHOLD = 16

if HAVE_NUMBA:
    KERNEL = dict(cache=True, nogil=True)  # no fastmath: every rounding as torch's

    @njit(**KERNEL)
    def _greater(values, a, b):
        # The topk comparator: strictly larger (NaN is refused before sorting).
        return values[a] > values[b]

    @njit(**KERNEL)
    def _swap(values, order, a, b):
        values[a], values[b] = values[b], values[a]
        order[a], order[b] = order[b], order[a]

    @njit(**KERNEL)
    def _insertion_sort(values, order, first, last):
        # std::__insertion_sort (descending by the comparator).
        if first == last:
            return
        for i in range(first + 1, last):
            value, index = values[i], order[i]
            if value > values[first]:
                for j in range(i, first, -1):
                    values[j], order[j] = values[j - 1], order[j - 1]
                values[first], order[first] = value, index
            else:  # std::__unguarded_linear_insert
                hole = i
                while value > values[hole - 1]:
                    values[hole], order[hole] = values[hole - 1], order[hole - 1]
                    hole -= 1
                values[hole], order[hole] = value, index

    @njit(**KERNEL)
    def _partition_pivot(values, order, first, last):
        # std::__unguarded_partition_pivot: median of three moved to first, then partition.
        middle = first + (last - first) // 2
        a, b, c = first + 1, middle, last - 1
        if _greater(values, a, b):
            if _greater(values, b, c):
                _swap(values, order, first, b)
            elif _greater(values, a, c):
                _swap(values, order, first, c)
            else:
                _swap(values, order, first, a)
        elif _greater(values, a, c):
            _swap(values, order, first, a)
        elif _greater(values, b, c):
            _swap(values, order, first, c)
        else:
            _swap(values, order, first, b)
        low, high = first + 1, last
        while True:
            while _greater(values, low, first):
                low += 1
            high -= 1
            while _greater(values, first, high):
                high -= 1
            if not low < high:
                return low
            _swap(values, order, low, high)
            low += 1

    @njit(**KERNEL)
    def _floor_log2(n):
        result = 0
        while n > 1:
            n >>= 1
            result += 1
        return result

    @njit(**KERNEL)
    def _top_k(values, order, k):
        """``torch.topk(values, k)`` on the CPU, in place: values (E,) -> the k largest in
        values[:k] and their original indices in order[:k], ties placed as torch places them.
        Returns False where torch would take a path not replayed here."""
        length = values.shape[0]
        for i in range(length):
            if values[i] != values[i]:
                return False
            order[i] = i
        if k * 64 <= length or k - 1 > _SORT_THRESHOLD:
            return False
        # std::nth_element(first, first + k - 1, last): std::__introselect.
        first, last, nth = 0, length, k - 1
        if nth != length:
            depth = 2 * _floor_log2(length)
            while last - first > 3:
                if depth == 0:
                    return False  # std::__heap_select
                depth -= 1
                cut = _partition_pivot(values, order, first, last)
                if cut <= nth:
                    first = cut
                else:
                    last = cut
            _insertion_sort(values, order, first, last)
        # std::sort(first, first + k - 1): insertion sort alone at these lengths.
        _insertion_sort(values, order, 0, k - 1)
        return True

    @njit(**KERNEL)
    def _positives(values):
        count = 0
        for value in values:
            if value > 0:
                count += 1
        return count

    @njit(**KERNEL)
    def _mark(where, positions, size):
        # where[slot] = the first index of each real slot in ``positions``; returns the last
        # index of the sink N (SlotStore.lookup's scatter keeps the last of N's repeats), -1.
        sink = -1
        for index in range(positions.shape[0]):
            slot = positions[index]
            if slot >= size:
                sink = index
            elif where[slot] < 0:
                where[slot] = index
        return sink

    @njit(**KERNEL)
    def _unmark(where, positions, size):
        for index in range(positions.shape[0]):
            if positions[index] < size:
                where[positions[index]] = -1

    @njit(**KERNEL)
    def _at(where, sink, slot, size):
        # Where ``slot`` sits in the marked positions, -1 if absent: O(1), where a scan over
        # the P written and Q preceding slots for each of the (P+Q) K_L touched entries made
        # this kernel's cost grow as P K_L (P+Q).
        return where[slot] if slot < size else sink

    @njit(**KERNEL)
    def _unique_sorted(slots, size, seen):
        # sdnc.unique_sorted: each slot once, ascending, N-padded to the same length. Most
        # entries are repeats or padding: drop them first (``seen``: (N+1,) all False, left
        # so), then sort the few left.
        result = np.full(slots.shape[0], size, dtype=np.int64)
        count = 0
        for slot in slots:
            if slot < size and not seen[slot]:
                seen[slot] = True
                result[count] = slot
                count += 1
        for index in range(count):
            seen[result[index]] = False
        result[:count] = np.sort(result[:count])
        return result

    @njit(**KERNEL)
    def _link_changes(predecessors, predecessor_weights, successors, successor_weights,
                      written, write_weights, preceding, precedence_values, unit,
                      written_at, preceding_at):  # fmt: skip
        """The rows ``_update_links`` changes, and their new contents.

        predecessors/successors (B,N+1,C) int64 and their weights (B,N+1,C); written (B,P)
        and write_weights (B,P) the merged write weighting; preceding (B,Q) and
        precedence_values (B,Q) p_{t-1}; unit (1,) holds 1 in the tables' dtype;
        written_at and preceding_at (N+1,) int64 scratch maps, all -1 (left so when DONE; the
        caller resets them after UNSUPPORTED, which returns from the middle of an item).
        Returns (status, predecessor rows (B,P+(Q+P)C), their slots and weights
        (B,P+(Q+P)C,C), successor rows (B,Q+P(C+1)), their slots and weights).
        """
        batch, rows, capacity = predecessors.shape
        size = rows - 1
        writes, precedents = written.shape[1], preceding.shape[1]
        one = unit[0]
        zero = one - one
        dtype = write_weights.dtype
        other_row_count = (precedents + writes) * capacity
        other_column_count = writes * capacity + writes
        row_positions = np.empty((batch, writes + other_row_count), dtype=np.int64)
        row_slots = np.empty((batch, writes + other_row_count, capacity), dtype=np.int64)
        row_weights = np.empty((batch, writes + other_row_count, capacity), dtype=dtype)
        column_positions = np.empty((batch, precedents + other_column_count), dtype=np.int64)
        column_slots = np.empty((batch, precedents + other_column_count, capacity), dtype=np.int64)
        column_weights = np.empty((batch, precedents + other_column_count, capacity), dtype=dtype)

        block = np.empty((writes, precedents), dtype=dtype)
        rest_of_rows = np.empty((writes, capacity), dtype=dtype)
        rest_of_columns = np.empty((precedents, capacity), dtype=dtype)
        old_row_slots = np.empty((writes, capacity), dtype=np.int64)
        old_column_slots = np.empty((precedents, capacity), dtype=np.int64)
        write_at_preceding = np.empty(precedents, dtype=dtype)
        row_values = np.empty(precedents + capacity, dtype=dtype)
        row_order = np.empty(precedents + capacity, dtype=np.int64)
        column_values = np.empty(writes + capacity, dtype=dtype)
        column_order = np.empty(writes + capacity, dtype=np.int64)
        seen = np.zeros(rows, dtype=np.bool_)

        for b in range(batch):
            w_positions, w = written[b], write_weights[b]
            p_positions, p = preceding[b], precedence_values[b]
            w_sink = _mark(written_at, w_positions, size)
            p_sink = _mark(preceding_at, p_positions, size)

            for q in range(precedents):
                index = _at(written_at, w_sink, p_positions[q], size)
                write_at_preceding[q] = w[index] if index >= 0 else zero

            # Old rows at the written slots and old columns at the preceding ones (N: empty).
            for i in range(writes):
                row = w_positions[i]
                for c in range(capacity):
                    weight = predecessor_weights[b, row, c]
                    old_row_slots[i, c] = predecessors[b, row, c] if weight > 0 else size
            for q in range(precedents):
                column = p_positions[q]
                for c in range(capacity):
                    weight = successor_weights[b, column, c]
                    old_column_slots[q, c] = successors[b, column, c] if weight > 0 else size

            # addressing.sparse_temporal_link: the block of written rows × preceding columns,
            # the written rows' other entries, the preceding columns' unwritten rows.
            for i in range(writes):
                row = w_positions[i]
                keep_row = one - w[i]
                for q in range(precedents):
                    column = p_positions[q]
                    old = zero
                    for c in range(capacity):
                        if old_row_slots[i, c] == column:
                            old = old + predecessor_weights[b, row, c]
                    value = zero
                    if row != column and row < size and column < size:
                        value = (keep_row - write_at_preceding[q]) * old + w[i] * p[q]
                    block[i, q] = value if value > zero else zero
                for c in range(capacity):
                    column = old_row_slots[i, c]
                    value = zero
                    if column < size and _at(preceding_at, p_sink, column, size) < 0:
                        index = _at(written_at, w_sink, column, size)
                        write_j = w[index] if index >= 0 else zero
                        value = (keep_row - write_j) * predecessor_weights[b, row, c]
                    rest_of_rows[i, c] = value if value > zero else zero
            for q in range(precedents):
                keep_column = one - write_at_preceding[q]
                for c in range(capacity):
                    row = old_column_slots[q, c]
                    value = zero
                    if row < size and _at(written_at, w_sink, row, size) < 0:
                        value = keep_column * successor_weights[b, p_positions[q], c]
                    rest_of_columns[q, c] = value if value > zero else zero

            # Rows keep their K_L largest, then columns among the rows' survivors. Every value
            # is >= 0 here (no NaN): a row or column of at most K_L positive ones keeps them
            # all, with no selection.
            for i in range(writes):
                row_values[:precedents] = block[i]
                row_values[precedents:] = rest_of_rows[i]
                if _positives(row_values) <= capacity:
                    continue
                if not _top_k(row_values, row_order, capacity):
                    return UNSUPPORTED, row_positions, row_slots, row_weights, \
                        column_positions, column_slots, column_weights
                kept = np.zeros(precedents + capacity, dtype=np.bool_)
                for e in range(capacity):
                    kept[row_order[e]] = True
                for q in range(precedents):
                    if not (kept[q] and block[i, q] > zero):
                        block[i, q] = zero
                for c in range(capacity):
                    if not (kept[precedents + c] and rest_of_rows[i, c] > zero):
                        rest_of_rows[i, c] = zero
            for q in range(precedents):
                column_values[:writes] = block[:, q]
                column_values[writes:] = rest_of_columns[q]
                if _positives(column_values) <= capacity:
                    continue
                if not _top_k(column_values, column_order, capacity):
                    return UNSUPPORTED, row_positions, row_slots, row_weights, \
                        column_positions, column_slots, column_weights
                kept = np.zeros(writes + capacity, dtype=np.bool_)
                for e in range(capacity):
                    kept[column_order[e]] = True
                for i in range(writes):
                    if not (kept[i] and block[i, q] > zero):
                        block[i, q] = zero
                for c in range(capacity):
                    if not (kept[writes + c] and rest_of_columns[q, c] > zero):
                        rest_of_columns[q, c] = zero

            # The new rows and columns, largest first (addressing._compact).
            for i in range(writes):
                row_values[:precedents] = block[i]
                row_values[precedents:] = rest_of_rows[i]
                if not _top_k(row_values, row_order, capacity):
                    return UNSUPPORTED, row_positions, row_slots, row_weights, \
                        column_positions, column_slots, column_weights
                row_positions[b, i] = w_positions[i]
                for e in range(capacity):
                    source = row_order[e]
                    slot = p_positions[source] if source < precedents else \
                        old_row_slots[i, source - precedents]
                    row_slots[b, i, e] = slot if row_values[e] > zero else size
                    row_weights[b, i, e] = row_values[e]
            for q in range(precedents):
                column_values[:writes] = block[:, q]
                column_values[writes:] = rest_of_columns[q]
                if not _top_k(column_values, column_order, capacity):
                    return UNSUPPORTED, row_positions, row_slots, row_weights, \
                        column_positions, column_slots, column_weights
                column_positions[b, q] = p_positions[q]
                for e in range(capacity):
                    source = column_order[e]
                    slot = w_positions[source] if source < writes else \
                        old_column_slots[q, source - writes]
                    column_slots[b, q, e] = slot if column_values[e] > zero else size
                    column_weights[b, q, e] = column_values[e]

            # Unwritten rows with an entry in a preceding or written column: each entry (i, j)
            # decays by (1 - w[j]); if j precedes, it stays only if column j kept i.
            touched = np.empty(other_row_count, dtype=np.int64)
            for q in range(precedents):
                for c in range(capacity):
                    touched[q * capacity + c] = old_column_slots[q, c]
            for i in range(writes):
                for c in range(capacity):
                    weight = successor_weights[b, w_positions[i], c]
                    slot = successors[b, w_positions[i], c] if weight > 0 else size
                    touched[(precedents + i) * capacity + c] = slot
            other_rows = _unique_sorted(touched, size, seen)
            for m in range(other_row_count):
                row = other_rows[m]
                out = writes + m
                if row == size:  # padding from here on (ascending): the sink, left empty
                    row_positions[b, out:] = size
                    row_slots[b, out:] = size
                    row_weights[b, out:] = zero
                    break
                target = size if _at(written_at, w_sink, row, size) >= 0 else row
                row_positions[b, out] = target
                for c in range(capacity):
                    weight = predecessor_weights[b, row, c]
                    # Empty, or sent to the sink (recomputed above, or padding): the sink row
                    # stays empty. Otherwise (1 - w[j]) 0 is 0, kept or not.
                    if not weight > 0 or target == size:
                        row_slots[b, out, c] = size
                        row_weights[b, out, c] = zero
                        continue
                    column = predecessors[b, row, c]
                    index = _at(written_at, w_sink, column, size)
                    write_j = w[index] if index >= 0 else zero
                    value = (one - write_j) * weight
                    value = value if value > zero else zero
                    q = _at(preceding_at, p_sink, column, size)
                    if q >= 0:
                        found = False
                        for e in range(capacity):
                            if column_slots[b, q, e] == target:
                                found = True
                        if not found:
                            value = zero
                    row_slots[b, out, c] = column if value > zero else size
                    row_weights[b, out, c] = value

            # Columns (not preceding) with an entry in a written row, or written: each entry
            # (i, j) decays by (1 - w[i] - w[j]); if i was written, it stays only if row i
            # kept j.
            touched = np.empty(other_column_count, dtype=np.int64)
            for i in range(writes):
                for c in range(capacity):
                    touched[i * capacity + c] = old_row_slots[i, c]
                touched[writes * capacity + i] = w_positions[i]
            other_columns = _unique_sorted(touched, size, seen)
            for m in range(other_column_count):
                column = other_columns[m]
                out = precedents + m
                if column == size:  # padding from here on (ascending): the sink, left empty
                    column_positions[b, out:] = size
                    column_slots[b, out:] = size
                    column_weights[b, out:] = zero
                    break
                target = size if _at(preceding_at, p_sink, column, size) >= 0 else column
                index = _at(written_at, w_sink, column, size)
                write_j = w[index] if index >= 0 else zero
                column_positions[b, out] = target
                for c in range(capacity):
                    weight = successor_weights[b, column, c]
                    if not weight > 0 or target == size:
                        column_slots[b, out, c] = size
                        column_weights[b, out, c] = zero
                        continue
                    row = successors[b, column, c]
                    index = _at(written_at, w_sink, row, size)
                    write_i = w[index] if index >= 0 else zero
                    value = (one - write_i - write_j) * weight
                    value = value if value > zero else zero
                    if index >= 0:
                        found = False
                        for e in range(capacity):
                            if row_slots[b, index, e] == target:
                                found = True
                        if not found:
                            value = zero
                    column_slots[b, out, c] = row if value > zero else size
                    column_weights[b, out, c] = value
            _unmark(written_at, w_positions, size)
            _unmark(preceding_at, p_positions, size)
        return DONE, row_positions, row_slots, row_weights, \
            column_positions, column_slots, column_weights


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    # runtime.arrays without its detach and copy when there is nothing to drop: these run
    # every time step, and each torch call is a dispatch.
    if tensor.requires_grad or not tensor.is_contiguous():
        return arrays(tensor)[0]
    return tensor.numpy()


_SCRATCH: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # N+1 -> the kernel's two maps


def _scratch_maps(rows: int) -> tuple[np.ndarray, np.ndarray]:
    # Used under KERNEL_LOCK only; the kernel leaves them all -1 again.
    if rows not in _SCRATCH:
        _SCRATCH[rows] = (np.full(rows, -1, np.int64), np.full(rows, -1, np.int64))
    return _SCRATCH[rows]


def link_changes(tables: dict, written, write_weights, preceding, precedence_values):
    """The link rows one SDNC step changes, or None where the kernel defers to torch.

    tables: the SDNC tables (``link_predecessors`` … (B,N+1,K_L)); written, write_weights
    (B,P) merged (``addressing.merge_sparse``); preceding, precedence_values (B,K_L) p_{t-1}.
    Returns ``((rows (B,P+M), slots, weights (B,P+M,K_L)), (columns (B,K_L+M'), slots,
    weights (B,K_L+M',K_L)))``, the arguments of ``SlotStore.change`` for the predecessor and
    successor tables.
    """
    dtype = tables["link_predecessor_weights"].dtype
    unit = np.ones(1, dtype=str(dtype).removeprefix("torch."))
    inputs = [
        _numpy(tensor)
        for tensor in (
            tables["link_predecessors"],
            tables["link_predecessor_weights"],
            tables["link_successors"],
            tables["link_successor_weights"],
            written,
            write_weights.to(dtype),
            preceding,
            precedence_values.to(dtype),
        )
    ]
    maps = _scratch_maps(inputs[0].shape[1])
    with KERNEL_LOCK:
        status, *parts = _link_changes(*inputs, unit, *maps)
        if status != DONE:
            for where in maps:  # a rare path: the kernel stopped with some slots marked
                where.fill(-1)
    if status != DONE:
        return None
    parts = [torch.from_numpy(part) for part in parts]
    return tuple(parts[:3]), tuple(parts[3:])
