"""A SAM or SDNC time step in two kernels forward and one backward, for the sequence node.

Step by step (``SAMAccess.step``, ``SDNCAccess.step``) a sparse time step is about thirty
torch operations, eight kernel calls and twenty autograd nodes, each on arrays of a few
hundred numbers, so at any memory size the step costs its dispatches: SDNC at N = 16384 spent
2.4 ms a time step (bench/scaling.py), nearly all of it around kernels that took microseconds.
Here the same step is:

1. ``write_step``: the interface's gates and write vector, the least used slot U, the write
   weighting and the write (memory rows changed in place), and for the SDNC the precedence
   and the link tables' changed rows (``mann.fused.sdnc``'s kernel, applied in place);
2. the k-NN index, updated with the written rows and searched (faiss; Python, as before);
3. ``read_step``: the content weights over the K nearest slots, for the SDNC the directional
   weightings, the mode mixture and its K largest, the read, and the usage (touch).

Each returns the old and new values of every table row it changed, which the caller adds to
the ``SlotStore`` journal, so states, branching and the journal are as step by step.
``step_backward`` is the step's gradient by hand: the read, the read weighting, the content
weights and the write, in reverse, adding into the memory's gradient buffer (B,N,W) at the
rows the step touched (O(K) per step, as ``mann.access.sam`` explains) and ending at
dL/d(interface) and dL/dw^r_{t-1}. The equations are those of ``mann.addressing``
(``sparse_write_weighting``, ``sparse_precedence``, ``sparse_content_weights``,
``sparse_directional_weights``, ``sparse_read_weighting``); tests hold this path to the step
loop in values, read positions, tables, journal and every gradient.

The selections replay torch's where they can: the K largest of the mixture and the K_L of
the precedence by ``mann.fused.sdnc._top_k`` (torch.topk's own algorithm, so ties fall
where torch puts them), merges by a stable sort of slot numbers. Where ``_top_k`` declines
(more than 17 sparse reads, or 32 temporal reads and more), a stable selection stands in: the
same entries up to the order of exact ties.
"""

from __future__ import annotations

import numpy as np

from mann.fused.runtime import HAVE_NUMBA, njit, prange

USABLE = HAVE_NUMBA  # else SAM and SDNC run step by step

if HAVE_NUMBA:
    from mann.fused.sdnc import DONE, _link_changes, _top_k
    from mann.fused.slots import _least_used, _touch
    from mann.fused.sparse import content_read_backward, content_read_forward

    KERNEL = dict(cache=True, nogil=True)  # no fastmath: every rounding as the step loop's

    @njit(**KERNEL)
    def _sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    @njit(**KERNEL)
    def _softplus(x):
        # torch.nn.functional.softplus: the identity above its threshold of 20.
        return x if x > 20.0 else np.log1p(np.exp(x))

    @njit(**KERNEL)
    def _merge(positions, values, size, order, group, merged_positions, merged_values):
        # addressing.merge_sparse: each slot once, ascending, its values summed in sorted
        # order; group[e] = the merged entry source entry e adds to; the freed entries
        # are (size, 0) at the end.
        count = positions.shape[0]
        order[:] = np.argsort(positions, kind="mergesort")  # stable: equal slots in place
        for e in range(count):
            merged_positions[e] = size
            merged_values[e] = 0.0
        current = -1
        for i in range(count):
            index = order[i]
            if i == 0 or positions[index] != positions[order[i - 1]]:
                current += 1
                merged_positions[current] = positions[index]
            merged_values[current] += values[index]
            group[index] = current

    @njit(**KERNEL)
    def _largest(values, order, k):
        # The k largest of ``values`` into values[:k] (largest first), their indices into
        # order[:k]: torch.topk's placement where _top_k replays it, else a stable one.
        saved = values.copy()
        if _top_k(values, order, k):
            return
        length = values.shape[0]
        for i in range(length):
            order[i] = i
        for i in range(1, length):  # stable insertion sort, descending
            index = order[i]
            j = i
            while j > 0 and saved[order[j - 1]] < saved[index]:
                order[j] = order[j - 1]
                j -= 1
            order[j] = index
        for i in range(length):
            values[i] = saved[order[i]]

    @njit(**KERNEL)
    def _precedence(prev_positions, prev_values, write_positions, write_weights, size,
                    positions, values):  # fmt: skip
        # addressing.sparse_precedence: p_t = (1 - Σ w) p_{t-1} + w, its K_L largest.
        batch, capacity = prev_positions.shape
        writes = write_positions.shape[1]
        entries = capacity + writes
        joined_positions = np.empty(entries, dtype=np.int64)
        joined_values = np.empty(entries, dtype=prev_values.dtype)
        order = np.empty(entries, dtype=np.int64)
        group = np.empty(entries, dtype=np.int64)
        merged_positions = np.empty(entries, dtype=np.int64)
        merged_values = np.empty(entries, dtype=prev_values.dtype)
        typed = np.empty(2, dtype=prev_values.dtype)  # to round as torch does, in its dtype
        for b in range(batch):
            written = 0.0  # the reference's cumsum: left to right, in double
            for p in range(writes):
                written += write_weights[b, p]
            typed[0], typed[1] = 1.0, written
            keep = typed[0] - typed[1]
            for q in range(capacity):
                joined_positions[q] = prev_positions[b, q]
                joined_values[q] = keep * prev_values[b, q]
            for p in range(writes):
                joined_positions[capacity + p] = write_positions[b, p]
                joined_values[capacity + p] = write_weights[b, p]
            _merge(joined_positions, joined_values, size, order, group,
                   merged_positions, merged_values)  # fmt: skip
            _largest(merged_values, order, capacity)
            for q in range(capacity):
                positions[b, q] = merged_positions[order[q]]
                values[b, q] = merged_values[q]

    @njit(**KERNEL)
    def write_step(
        interface, heads, width, prev_positions, prev_weights,
        last_access, minima, block_size, memory,
        gates, add, write_positions, write_weights, least, touched, old_rows, new_rows,
    ):  # fmt: skip
        """Steps 1–3 of ``mann.access.sam``: U, the write weighting, the write, in place.

        interface (B,I) (keys R·W, strengths R, a W, α, γ, …), prev_positions and
        prev_weights w^r_{t-1} (B,R,K), last_access (B,N) and its block minima, memory
        (B,N,W). Fills gates (B,2) α and γ, add a (B,W), write positions and weights (B,P)
        (P = R K + 1: the slots read at t-1, then U), least U (B,), and the touched rows
        (B,P+1) (the write's positions, then U) with their values before and after (B,P+1,W).
        """
        batch, slots, _ = memory.shape
        reads = prev_positions.shape[1] * prev_positions.shape[2]
        offset = heads * width + heads
        excluded = prev_positions.reshape(batch, reads)
        exclude = np.empty((batch, reads), dtype=np.bool_)
        for b in range(batch):
            for r in range(reads):
                exclude[b, r] = prev_weights.reshape(batch, reads)[b, r] > 0
        _least_used(last_access, minima, block_size, excluded, exclude, least)
        for b in range(batch):
            write_gate = _sigmoid(interface[b, offset + width])
            interpolation = _sigmoid(interface[b, offset + width + 1])
            gates[b, 0], gates[b, 1] = write_gate, interpolation
            for c in range(width):
                add[b, c] = interface[b, offset + c]
            read_gate = write_gate * interpolation / heads
            for r in range(reads):
                write_positions[b, r] = excluded[b, r]
                write_weights[b, r] = read_gate * prev_weights.reshape(batch, reads)[b, r]
            write_positions[b, reads] = least[b]
            write_weights[b, reads] = write_gate * (1.0 - interpolation)
            for p in range(reads + 1):
                touched[b, p] = write_positions[b, p]
            touched[b, reads + 1] = least[b]
            for p in range(reads + 2):
                for c in range(width):
                    old_rows[b, p, c] = memory[b, touched[b, p], c]
            for c in range(width):
                memory[b, least[b], c] = 0.0
            for p in range(reads + 1):
                slot = write_positions[b, p]
                for c in range(width):
                    memory[b, slot, c] += write_weights[b, p] * add[b, c]
            for p in range(reads + 2):
                for c in range(width):
                    new_rows[b, p, c] = memory[b, touched[b, p], c]

    @njit(**KERNEL)
    def _link_rows(
        predecessors, predecessor_weights, successors, successor_weights,
        write_positions, write_weights, prev_precedence, prev_precedence_values,
        unit, written_at, preceding_at, precedence, precedence_values,
        rows, row_slots, row_weights, columns, column_slots, column_weights,
    ):  # fmt: skip
        # link_step's first half, for a slice of the batch: p_t and the changed rows.
        batch, writes = write_positions.shape
        size = predecessors.shape[1] - 1
        written = np.empty((batch, writes), dtype=np.int64)
        merged = np.empty((batch, writes), dtype=write_weights.dtype)
        order = np.empty(writes, dtype=np.int64)
        group = np.empty(writes, dtype=np.int64)
        for b in range(batch):
            _merge(write_positions[b], write_weights[b], size, order, group, written[b], merged[b])
        _precedence(prev_precedence, prev_precedence_values, write_positions, write_weights,
                    size, precedence, precedence_values)  # fmt: skip
        status, new_rows, new_row_slots, new_row_weights, new_columns, new_column_slots, \
            new_column_weights = _link_changes(
                predecessors, predecessor_weights, successors, successor_weights, written,
                merged, prev_precedence, prev_precedence_values, unit, written_at, preceding_at,
            )  # fmt: skip
        if status == DONE:
            rows[:], row_slots[:], row_weights[:] = new_rows, new_row_slots, new_row_weights
            columns[:], column_slots[:] = new_columns, new_column_slots
            column_weights[:] = new_column_weights
        return status

    @njit(**KERNEL)
    def _apply_rows(slot_table, weight_table, positions, slots, weights, lo, hi,
                    index, old_slots, new_slots, old_weights, new_weights, start):  # fmt: skip
        # SlotStore.change of a slot table and its weight table at rows ``positions`` (B,R)
        # of items lo…hi, in place; journaled compactly from ``start``: flat row numbers
        # (b (N+1) + row) with the old and new rows. The rows are distinct but for the sink
        # N, whose repeats carry equal (empty) values: it is written, and journaled, once
        # per item. Returns the number of rows journaled.
        size = slot_table.shape[1] - 1
        count = start
        for b in range(lo, hi):
            sink = False
            for r in range(positions.shape[1]):
                row = positions[b, r]
                if row == size:
                    if sink:
                        continue
                    sink = True
                index[count] = b * (size + 1) + row
                for c in range(slots.shape[2]):
                    old_slots[count, c] = slot_table[b, row, c]
                    old_weights[count, c] = weight_table[b, row, c]
                    new_slots[count, c] = slot_table[b, row, c] = slots[b, r, c]
                    new_weights[count, c] = weight_table[b, row, c] = weights[b, r, c]
                count += 1
        return count - start

    @njit(**KERNEL)
    def _close_gaps(counts, starts, arrays_index, arrays_a, arrays_b, arrays_c, arrays_d):
        # Move each part's journal rows right after the previous part's; returns the total.
        total = counts[0]
        for part in range(1, counts.shape[0]):
            for k in range(counts[part]):
                source, target = starts[part] + k, total + k
                arrays_index[target] = arrays_index[source]
                arrays_a[target] = arrays_a[source]
                arrays_b[target] = arrays_b[source]
                arrays_c[target] = arrays_c[source]
                arrays_d[target] = arrays_d[source]
            total += counts[part]
        return total

    @njit(parallel=True, cache=True, nogil=True)
    def link_step(
        predecessors, predecessor_weights, successors, successor_weights,
        write_positions, write_weights, prev_precedence, prev_precedence_values,
        unit, written_at, preceding_at, precedence, precedence_values,
        rows, row_slots, row_weights, columns, column_slots, column_weights,
        row_index, old_row_slots, new_row_slots, old_row_weights, new_row_weights,
        column_index, old_column_slots, new_column_slots, old_column_weights,
        new_column_weights, parts,
    ):  # fmt: skip
        """The SDNC's steps 2–3 (``SDNCAccess._update_links``, ``sparse_precedence``), the
        batch split in ``parts`` run side by side, each with its own scratch maps
        (written_at and preceding_at (parts, N+1), all -1; ``scratch_maps``).

        Fills p_t (B,K_L), the changed rows of each table pair (rows (B,R) and their new
        slots and weights (B,R,K_L), as ``mann.fused.sdnc`` makes them), changes the link
        tables in place and journals it (``_apply_rows``: for the predecessor and the
        successor tables, flat row numbers and the rows before and after). Returns (status,
        the number of predecessor rows journaled, of successor rows); unless the status is
        DONE the tables are untouched and the caller takes the torch composition.
        """
        batch = write_positions.shape[0]
        statuses = np.empty(parts, dtype=np.int64)
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            statuses[part] = _link_rows(
                predecessors[lo:hi], predecessor_weights[lo:hi], successors[lo:hi],
                successor_weights[lo:hi], write_positions[lo:hi], write_weights[lo:hi],
                prev_precedence[lo:hi], prev_precedence_values[lo:hi], unit, written_at[part],
                preceding_at[part], precedence[lo:hi], precedence_values[lo:hi], rows[lo:hi],
                row_slots[lo:hi], row_weights[lo:hi], columns[lo:hi], column_slots[lo:hi],
                column_weights[lo:hi],
            )  # fmt: skip
        for part in range(parts):
            if statuses[part] != DONE:
                return statuses[part], 0, 0
        row_counts, column_counts = np.empty(parts, np.int64), np.empty(parts, np.int64)
        row_starts, column_starts = np.empty(parts, np.int64), np.empty(parts, np.int64)
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            row_starts[part], column_starts[part] = lo * rows.shape[1], lo * columns.shape[1]
            row_counts[part] = _apply_rows(
                predecessors, predecessor_weights, rows, row_slots, row_weights, lo, hi,
                row_index, old_row_slots, new_row_slots, old_row_weights, new_row_weights,
                row_starts[part],
            )  # fmt: skip
            column_counts[part] = _apply_rows(
                successors, successor_weights, columns, column_slots, column_weights, lo, hi,
                column_index, old_column_slots, new_column_slots, old_column_weights,
                new_column_weights, column_starts[part],
            )  # fmt: skip
        row_total = _close_gaps(row_counts, row_starts, row_index, old_row_slots,
                                new_row_slots, old_row_weights, new_row_weights)  # fmt: skip
        column_total = _close_gaps(column_counts, column_starts, column_index,
                                   old_column_slots, new_column_slots, old_column_weights,
                                   new_column_weights)  # fmt: skip
        return DONE, row_total, column_total

    @njit(**KERNEL)
    def _read(
        interface, heads, width, positions, memory, links,
        predecessors, predecessor_weights, successors, successor_weights,
        prev_positions, prev_weights,
        last_access, minima, block_size, write_positions, write_weights, threshold, version,
        keys, strengths, rows, similarity, key_norms, row_norms, content_weights,
        modes, successor_values, predecessor_values, kept_by, read_positions, read_weights,
        read_rows, reads, touch_positions, touch_old, touch_new,
    ):  # fmt: skip
        """Step 4 (SAM) or 4–6 (SDNC, ``links``), then the usage; ``read_step`` for a slice
        of the batch.

        positions (B,R,K): the K nearest slots of each key (the index's answer). Fills the
        keys (B,R,W) and β (B,R), the content read's arrays (``content_read_forward``), and:
        SAM: reads (B,R,W) = the content read, read positions and weights = the content's;
        SDNC: π (B,R,3), the link weights L_t at the slots read at t-1 (B,R,K,K_L) (column:
        successor_values, row: predecessor_values), the read positions and weights (B,R,K)
        (the mixture's K largest, slot N-1 for an empty entry), kept_by (B,R,E) (the kept
        entry each of the mixture's E = K (2 K_L + 1) entries went to, -1 if none), the
        rows read (B,R,K,W) and reads. Then marks the touched slots used at ``version``:
        touch_positions (B,P+RK) and their last use before and after.
        """
        batch, _, k = positions.shape
        slots = memory.shape[1]
        for b in range(batch):
            for h in range(heads):
                for c in range(width):
                    keys[b, h, c] = interface[b, h * width + c]
                strengths[b, h] = 1.0 + _softplus(interface[b, heads * width + h])
        content_read_forward(memory, positions, keys, strengths, rows, similarity, key_norms,
                             row_norms, content_weights, reads)  # fmt: skip
        if not links:
            for b in range(batch):
                for h in range(heads):
                    for j in range(k):
                        read_positions[b, h, j] = positions[b, h, j]
                        read_weights[b, h, j] = content_weights[b, h, j]
        else:
            capacity = predecessors.shape[2]
            entries = k * (2 * capacity + 1)
            mode_offset = heads * width + heads + width + 2
            mixed_positions = np.empty(entries, dtype=np.int64)
            mixed_values = np.empty(entries, dtype=memory.dtype)
            order = np.empty(entries, dtype=np.int64)
            group = np.empty(entries, dtype=np.int64)
            merged_positions = np.empty(entries, dtype=np.int64)
            merged_values = np.empty(entries, dtype=memory.dtype)
            rank = np.empty(entries, dtype=np.int64)  # merged entry -> its place among kept
            for b in range(batch):
                for h in range(heads):
                    raw = interface[b, mode_offset + 3 * h : mode_offset + 3 * h + 3]
                    largest = max(raw[0], max(raw[1], raw[2]))
                    total = raw[0] - raw[0]
                    for m in range(3):
                        modes[b, h, m] = np.exp(raw[m] - largest)
                        total += modes[b, h, m]
                    for m in range(3):
                        modes[b, h, m] /= total
                    # Backward entries (rows of L at the slots read at t-1), content, forward.
                    for j in range(k):
                        slot = prev_positions[b, h, j]
                        weight = prev_weights[b, h, j]
                        for c in range(capacity):
                            e = j * capacity + c
                            value = predecessor_weights[b, slot, c]
                            predecessor_values[b, h, j, c] = value
                            mixed_positions[e] = predecessors[b, slot, c] if value > 0 else slots
                            mixed_values[e] = modes[b, h, 0] * (value * weight)
                            value = successor_weights[b, slot, c]
                            successor_values[b, h, j, c] = value
                            e = k * (capacity + 1) + j * capacity + c
                            mixed_positions[e] = successors[b, slot, c] if value > 0 else slots
                            mixed_values[e] = modes[b, h, 2] * (value * weight)
                        e = k * capacity + j
                        mixed_positions[e] = positions[b, h, j]
                        mixed_values[e] = modes[b, h, 1] * content_weights[b, h, j]
                    _merge(mixed_positions, mixed_values, slots, order, group,
                           merged_positions, merged_values)  # fmt: skip
                    _largest(merged_values, order, k)
                    rank[:] = -1
                    for j in range(k):
                        rank[order[j]] = j
                    for e in range(entries):
                        kept_by[b, h, e] = rank[group[e]]
                    for j in range(k):
                        read_positions[b, h, j] = min(merged_positions[order[j]], slots - 1)
                        read_weights[b, h, j] = merged_values[j]
                    for c in range(width):
                        reads[b, h, c] = 0.0
                    for j in range(k):
                        slot = read_positions[b, h, j]
                        for c in range(width):
                            value = memory[b, slot, c]
                            read_rows[b, h, j, c] = value
                            reads[b, h, c] += read_weights[b, h, j] * value
        writes = write_positions.shape[1]
        count = touch_positions.shape[1]
        touch_weights = np.empty((batch, count), dtype=memory.dtype)
        for b in range(batch):
            for p in range(writes):
                touch_positions[b, p] = write_positions[b, p]
                touch_weights[b, p] = write_weights[b, p]
            for h in range(heads):
                for j in range(k):
                    touch_positions[b, writes + h * k + j] = read_positions[b, h, j]
                    touch_weights[b, writes + h * k + j] = read_weights[b, h, j]
        _touch(last_access, minima, block_size, touch_positions, touch_weights, threshold,
               version, touch_old, touch_new)  # fmt: skip

    @njit(parallel=True, cache=True, nogil=True)
    def read_step(
        interface, heads, width, positions, memory, links,
        predecessors, predecessor_weights, successors, successor_weights,
        prev_positions, prev_weights,
        last_access, minima, block_size, write_positions, write_weights, threshold, version,
        keys, strengths, rows, similarity, key_norms, row_norms, content_weights,
        modes, successor_values, predecessor_values, kept_by, read_positions, read_weights,
        read_rows, reads, touch_positions, touch_old, touch_new, parts,
    ):  # fmt: skip
        """``_read`` with the batch split in ``parts`` run side by side."""
        batch = positions.shape[0]
        for part in prange(parts):
            lo, hi = part * batch // parts, (part + 1) * batch // parts
            if links:
                tables = (predecessors[lo:hi], predecessor_weights[lo:hi], successors[lo:hi],
                          successor_weights[lo:hi])  # fmt: skip
            else:  # SAM: stand-ins, never read
                tables = (predecessors, predecessor_weights, successors, successor_weights)
            _read(
                interface[lo:hi], heads, width, positions[lo:hi], memory[lo:hi], links,
                tables[0], tables[1], tables[2], tables[3], prev_positions[lo:hi],
                prev_weights[lo:hi], last_access[lo:hi], minima[lo:hi], block_size,
                write_positions[lo:hi], write_weights[lo:hi], threshold, version, keys[lo:hi],
                strengths[lo:hi], rows[lo:hi], similarity[lo:hi], key_norms[lo:hi],
                row_norms[lo:hi], content_weights[lo:hi], modes[lo:hi],
                successor_values[lo:hi], predecessor_values[lo:hi], kept_by[lo:hi],
                read_positions[lo:hi], read_weights[lo:hi], read_rows[lo:hi], reads[lo:hi],
                touch_positions[lo:hi], touch_old[lo:hi], touch_new[lo:hi],
            )  # fmt: skip

    @njit(**KERNEL)
    def step_backward(
        grad_reads, grad_read_weights, grad_memory, links, heads, width,
        interface, gates, add, prev_weights, write_positions, write_weights, least,
        positions, keys, strengths, rows, similarity, key_norms, row_norms, content_weights,
        modes, successor_values, predecessor_values, kept_by, read_positions, read_weights,
        read_rows, grad_interface, grad_prev_weights,
    ):  # fmt: skip
        """One step's gradient, in reverse: from dL/dr_t (B,R,W) and dL/dw^r_t (B,R,K) to
        dL/d(interface) (B,I) and dL/dw^r_{t-1} (B,R,K), filled; grad_memory (B,N,W), dL/dM_t
        on entry, is dL/dM_{t-1} on return (changed in place at the rows the step touched)."""
        batch, _, k = positions.shape
        reads = heads * k
        grad_content = np.zeros((batch, heads, k), dtype=grad_reads.dtype)
        grad_content_reads = np.zeros((batch, heads, width), dtype=grad_reads.dtype)
        for b in range(batch):
            for i in range(grad_interface.shape[1]):
                grad_interface[b, i] = 0.0
            for h in range(heads):
                for j in range(k):
                    grad_prev_weights[b, h, j] = 0.0
        if not links:  # SAM: the read is the content read
            for b in range(batch):
                for h in range(heads):
                    for j in range(k):
                        grad_content[b, h, j] = grad_read_weights[b, h, j]
                    for c in range(width):
                        grad_content_reads[b, h, c] = grad_reads[b, h, c]
        else:
            capacity = predecessor_values.shape[3]
            grad_kept = np.empty(k, dtype=grad_reads.dtype)
            for b in range(batch):
                for h in range(heads):
                    # The read r = Σ_j w_j M[i_j].
                    for j in range(k):
                        slot = read_positions[b, h, j]
                        weight = read_weights[b, h, j]
                        total = grad_read_weights[b, h, j]
                        for c in range(width):
                            total += grad_reads[b, h, c] * read_rows[b, h, j, c]
                            grad_memory[b, slot, c] += weight * grad_reads[b, h, c]
                        grad_kept[j] = total
                    # The mixture: each kept entry's gradient reaches every entry merged
                    # into it, then the mode and the backward, content or forward value.
                    grad_modes = np.zeros(3, dtype=grad_reads.dtype)
                    for j in range(k):
                        weight = prev_weights[b, h, j]
                        for c in range(capacity):
                            e = j * capacity + c
                            if kept_by[b, h, e] >= 0:
                                g = grad_kept[kept_by[b, h, e]]
                                value = predecessor_values[b, h, j, c]
                                grad_modes[0] += g * (value * weight)
                                grad_prev_weights[b, h, j] += modes[b, h, 0] * g * value
                            e = k * (capacity + 1) + j * capacity + c
                            if kept_by[b, h, e] >= 0:
                                g = grad_kept[kept_by[b, h, e]]
                                value = successor_values[b, h, j, c]
                                grad_modes[2] += g * (value * weight)
                                grad_prev_weights[b, h, j] += modes[b, h, 2] * g * value
                        e = k * capacity + j
                        if kept_by[b, h, e] >= 0:
                            g = grad_kept[kept_by[b, h, e]]
                            grad_modes[1] += g * content_weights[b, h, j]
                            grad_content[b, h, j] = modes[b, h, 1] * g
                    # π = softmax(raw): ∂raw_m = π_m (∂π_m - Σ π ∂π).
                    mean = 0.0
                    for m in range(3):
                        mean += modes[b, h, m] * grad_modes[m]
                    mode_offset = heads * width + heads + width + 2
                    for m in range(3):
                        grad_interface[b, mode_offset + 3 * h + m] = modes[b, h, m] * (
                            grad_modes[m] - mean
                        )
        grad_keys = np.empty((batch, heads, width), dtype=grad_reads.dtype)
        grad_strengths = np.empty((batch, heads), dtype=grad_reads.dtype)
        content_read_backward(grad_content, grad_content_reads, positions, keys, strengths,
                              rows, similarity, key_norms, row_norms, content_weights,
                              grad_memory, grad_keys, grad_strengths)  # fmt: skip
        offset = heads * width + heads
        writes = write_positions.shape[1]
        for b in range(batch):
            for h in range(heads):
                for c in range(width):
                    grad_interface[b, h * width + c] = grad_keys[b, h, c]
                # β = 1 + softplus(x): ∂x = σ(x) ∂β (torch's softplus backward).
                x = interface[b, heads * width + h]
                grad_interface[b, heads * width + h] = (
                    grad_strengths[b, h] if x > 20.0 else grad_strengths[b, h] * _sigmoid(x)
                )
            # The write M_t = (1 - 1_U 1ᵀ) M_{t-1} + w aᵀ (mann.access.sparse_autograd._Write).
            grad_write = np.empty(writes, dtype=grad_reads.dtype)
            for p in range(writes):
                slot = write_positions[b, p]
                total = 0.0
                for c in range(width):
                    total += grad_memory[b, slot, c] * add[b, c]
                grad_write[p] = total
            for c in range(width):
                total = 0.0
                for p in range(writes):
                    total += write_weights[b, p] * grad_memory[b, write_positions[b, p], c]
                grad_interface[b, offset + c] = total
            for c in range(width):
                grad_memory[b, least[b], c] = 0.0
            write_gate, interpolation = gates[b, 0], gates[b, 1]
            along_reads = 0.0
            for r in range(reads):
                h, j = r // k, r % k
                along_reads += grad_write[r] * prev_weights[b, h, j]
                grad_prev_weights[b, h, j] += write_gate * interpolation / heads * grad_write[r]
            grad_unused = grad_write[reads]
            grad_gate = interpolation / heads * along_reads + (1.0 - interpolation) * grad_unused
            grad_interpolation = write_gate / heads * along_reads - write_gate * grad_unused
            grad_interface[b, offset + width] = grad_gate * write_gate * (1.0 - write_gate)
            grad_interface[b, offset + width + 1] = (
                grad_interpolation * interpolation * (1.0 - interpolation)
            )




_SCRATCH: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def scratch_maps(parts: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``link_step``'s two scratch maps per part, (parts, N+1) of -1, which the kernel leaves
    so (used under KERNEL_LOCK only)."""
    if (parts, rows) not in _SCRATCH:
        _SCRATCH[parts, rows] = tuple(np.full((parts, rows), -1, np.int64) for _ in range(2))
    return _SCRATCH[parts, rows]

