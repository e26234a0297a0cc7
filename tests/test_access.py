"""Tests for the memory access modules (mann/access/ntm.py, mann/access/dnc.py).

Each module is checked as a pure function of (interface, state): its state is an immutable
record of tensors, a step never changes the state it was given, and nothing recurrent lives
on the module. The interface layout is the documented one: whole steps are recomputed in
numpy from an interface split by hand, by that layout, in the order of shared/MATH.md.
Then behaviour the papers promise: NTM shifts move focus, DNC read modes select backward /
content / forward, allocation writes to the least used slot, free gates free memory.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mann.access.dnc import DNCAccess
from mann.access.ntm import INITIAL_MEMORY_VALUE, NTMAccess
from mann.access.sam import SAMAccess
from mann.access.sdnc import SDNCAccess

EPS = 1e-6  # the ε of cosine similarity and of the allocation's usage map
BIG = 30.0  # a logit that saturates a sigmoid or softmax to within ~1e-13


def make_access(arch: str, **sizes) -> torch.nn.Module:
    if arch == "ntm":
        defaults = dict(memory_size=7, word_size=4, read_heads=2, write_heads=2, shift_range=3)
        return NTMAccess(**{**defaults, **sizes})
    defaults = dict(memory_size=7, word_size=4, read_heads=3)
    return DNCAccess(**{**defaults, **sizes})


def random_interfaces(access, steps: int, batch: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, access.interface_size, generator=generator) for _ in range(steps)]


def one_hot(slots: int, index: int) -> np.ndarray:
    vector = np.zeros(slots)
    vector[index] = 1.0
    return vector


# ---------------------------------------------------------------------------------------
# Numpy references of whole steps, with the interface split by the documented layout.
# ---------------------------------------------------------------------------------------
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def softmax(x, axis=-1):
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def content(memory, keys, strengths):
    """memory (B,N,W), keys (B,H,W), strengths (B,H) -> (B,H,N)."""
    dot = np.einsum("bhw,bnw->bhn", keys, memory)
    norms = np.linalg.norm(keys, axis=-1)[:, :, None] * np.linalg.norm(memory, axis=-1)[:, None]
    return softmax(strengths[..., None] * dot / (norms + EPS))


def ntm_reference_step(interface, state, word_size, read_heads, write_heads, shift_range):
    """NTM 3.3 per head, reads from M_{t-1}, erase product and add sum over write heads."""
    memory, read_w, write_w = (np.asarray(x, dtype=np.float64) for x in state)
    batch, slots, _ = memory.shape
    heads = read_heads + write_heads
    block = word_size + 3 + shift_range  # k (W), β, g, s (S), γ
    previous = np.concatenate([read_w, write_w], axis=1)
    weights = np.zeros((batch, heads, slots))
    for h in range(heads):
        part = interface[:, h * block : (h + 1) * block]
        key = part[:, :word_size]
        beta = softplus(part[:, word_size])
        gate = sigmoid(part[:, word_size + 1])
        shift = softmax(part[:, word_size + 2 : word_size + 2 + shift_range])
        gamma = 1.0 + softplus(part[:, -1])
        content_w = content(memory, key[:, None], beta[:, None])[:, 0]
        gated = gate[:, None] * content_w + (1 - gate[:, None]) * previous[:, h]
        shifted = np.zeros_like(gated)
        for k in range(shift_range):
            # Offset k - S//2 towards higher indices: roll the weighting forward.
            shifted += shift[:, k : k + 1] * np.roll(gated, k - shift_range // 2, axis=-1)
        powered = shifted ** gamma[:, None]
        weights[:, h] = powered / powered.sum(-1, keepdims=True)
    reads = np.einsum("brn,bnw->brw", weights[:, :read_heads], memory)
    keep = np.ones_like(memory)
    added = np.zeros_like(memory)
    base = heads * block
    for j in range(write_heads):
        start = base + j * 2 * word_size
        erase = sigmoid(interface[:, start : start + word_size])
        add = interface[:, start + word_size : start + 2 * word_size]
        w = weights[:, read_heads + j][:, :, None]
        keep *= 1 - w * erase[:, None]
        added += w * add[:, None]
    new_memory = memory * keep + added
    return reads, (new_memory, weights[:, :read_heads], weights[:, read_heads:])


def dnc_layout(W: int, R: int) -> list[tuple[str, int]]:
    """The DNC interface vector's documented layout (mann/access/dnc.py): fields sharing a
    squashing function are adjacent — keys and write vector | oneplus | σ | softmax."""
    return [
        ("read_keys", R * W), ("write_key", W), ("write_vector", W),  # identity
        ("read_strengths", R), ("write_strength", 1),  # oneplus
        ("erase", W), ("free_gates", R), ("allocation_gate", 1), ("write_gate", 1),  # σ
        ("read_modes", 3 * R),  # softmax over backward, content, forward per head
    ]


def field_slices(layout: list[tuple[str, int]]) -> dict[str, slice]:
    slices, start = {}, 0
    for name, size in layout:
        slices[name] = slice(start, start + size)
        start += size
    return slices


def dnc_reference_step(interface, state, word_size, read_heads):
    """DNC Methods, in the step order of shared/MATH.md."""
    memory, usage, link, prec, read_w, write_w = (np.asarray(x, np.float64) for x in state)
    batch, slots, _ = memory.shape
    W, R = word_size, read_heads
    parts, start = {}, 0
    for name, size in dnc_layout(W, R):
        parts[name] = interface[:, start : start + size]
        start += size
    assert start == interface.shape[1]
    read_keys = parts["read_keys"].reshape(batch, R, W)
    read_strengths = 1 + softplus(parts["read_strengths"])
    write_strength = 1 + softplus(parts["write_strength"])
    erase = sigmoid(parts["erase"])
    free = sigmoid(parts["free_gates"])
    alloc_gate = sigmoid(parts["allocation_gate"])
    write_gate = sigmoid(parts["write_gate"])
    modes = softmax(parts["read_modes"].reshape(batch, R, 3))

    write_w = write_w[:, 0]
    retention = np.prod(1 - free[:, :, None] * read_w, axis=1)
    usage = (usage + write_w - usage * write_w) * retention
    allocation = np.zeros_like(usage)
    for b in range(batch):
        mapped = EPS + (1 - EPS) * usage[b]
        used_before = 1.0
        for slot in np.argsort(mapped, kind="stable"):
            allocation[b, slot] = (1 - mapped[slot]) * used_before
            used_before *= mapped[slot]
    write_content = content(memory, parts["write_key"][:, None], write_strength)[:, 0]
    write_w = write_gate * (alloc_gate * allocation + (1 - alloc_gate) * write_content)
    memory = memory * (1 - write_w[:, :, None] * erase[:, None]) + write_w[:, :, None] * (
        parts["write_vector"][:, None]
    )
    link = (1 - write_w[:, :, None] - write_w[:, None, :]) * link + (
        write_w[:, :, None] * prec[:, None, :]
    )
    link = link * (1 - np.eye(slots))
    prec = (1 - write_w.sum(-1, keepdims=True)) * prec + write_w
    forward = np.einsum("bij,brj->bri", link, read_w)
    backward = np.einsum("bji,brj->bri", link, read_w)
    read_content = content(memory, read_keys, read_strengths)
    read_w = modes[..., 0:1] * backward + modes[..., 1:2] * read_content + modes[..., 2:3] * forward
    reads = np.einsum("brn,bnw->brw", read_w, memory)
    return reads, (memory, usage, link, prec, read_w, write_w[:, None]), allocation


def float64_state(state):
    return type(state)(*(x.detach().double().clone() for x in state))


# ---------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("word_size", "read_heads", "write_heads", "shift_range"),
    [(4, 1, 1, 3), (5, 2, 3, 1), (3, 3, 2, 5)],
)
def test_ntm_interface_size_is_the_documented_layout(word_size, read_heads, write_heads,
                                                     shift_range):
    access = NTMAccess(9, word_size, read_heads, write_heads, shift_range)
    per_head = word_size + 1 + 1 + shift_range + 1  # k, β, g, s, γ
    expected = (read_heads + write_heads) * per_head + write_heads * 2 * word_size  # e, a
    assert access.interface_size == expected


@pytest.mark.parametrize(
    ("word_size", "read_heads", "write_heads", "shift_range"), [(4, 1, 1, 3), (5, 2, 3, 5)]
)
def test_ntm_layout_is_where_the_fused_kernel_reads(word_size, read_heads, write_heads,
                                                    shift_range):
    W, S, heads = word_size, shift_range, read_heads + write_heads
    access = NTMAccess(9, W, read_heads, write_heads, S)
    head, writing = access.head_layout, access.write_layout
    # mann/fused/ntm.py: _address reads k at start, β at start + W, g at start + W + 1,
    # s at start + W + 2, γ at start + W + 2 + S; _write_parts e at start + 2wW, a one W on.
    assert [head.offset(name) for name in head.names] == [0, W, W + 1, W + 2, W + 2 + S]
    assert head.total == W + 3 + S
    assert access.layout.offset("writing") == heads * head.total
    assert (writing.offset("erase"), writing.offset("add"), writing.total) == (0, W, 2 * W)
    assert access.interface_size == access.layout.total


@pytest.mark.parametrize(("word_size", "read_heads"), [(4, 1), (5, 3)])
def test_sparse_layouts_are_where_the_fused_kernels_read(word_size, read_heads):
    W, R = word_size, read_heads
    sam = SAMAccess(16, W, R, sparse_reads=2).layout
    sdnc = SDNCAccess(16, W, R, sparse_reads=2, temporal_reads=2).layout
    # mann/fused/sparse_step.py: keys at h·W, strengths at R·W + h, the write vector at
    # offset = R·W + R, the write gate at offset + W, α at offset + W + 1, SDNC's read modes
    # at mode_offset = R·W + R + W + 2.
    for layout in (sam, sdnc):
        assert layout.offset("read_keys") == 0 and layout.offset("read_strengths") == R * W
        assert layout.offset("write_vector") == R * W + R
        assert layout.offset("write_gate") == R * W + R + W
        assert layout.offset("interpolation_gate") == R * W + R + W + 1
    assert sdnc.offset("read_modes") == R * W + R + W + 2 and sdnc.total == sam.total + 3 * R


@pytest.mark.parametrize(("word_size", "read_heads"), [(4, 1), (5, 3), (2, 4)])
def test_dnc_interface_size_is_the_documented_layout(word_size, read_heads):
    access = DNCAccess(8, word_size, read_heads)
    W, R = word_size, read_heads
    # k^r, k^w, v | β^r, β^w | e, f^r, g^a, g^w | π^r
    assert access.interface_size == R * W + W + W + R + 1 + W + R + 1 + 1 + 3 * R
    assert access.interface_size == sum(size for _, size in dnc_layout(W, R))


@pytest.mark.parametrize(
    ("read_heads", "write_heads", "shift_range"), [(1, 1, 3), (2, 2, 3), (3, 2, 5), (1, 3, 1)]
)
def test_ntm_steps_match_the_numpy_reference(rng, read_heads, write_heads, shift_range):
    batch, slots, width = 3, 7, 4
    access = NTMAccess(slots, width, read_heads, write_heads, shift_range).double()
    state = float64_state(access.initial_state(batch))
    # Start from a random memory so content addressing has something to find.
    state = state._replace(memory=torch.tensor(rng.normal(size=(batch, slots, width))))
    reference = tuple(x.numpy().copy() for x in state)
    for _ in range(4):
        interface = rng.normal(size=(batch, access.interface_size)) * 1.5
        read_vectors, state, record = access.step(torch.tensor(interface), state)
        expected_reads, reference = ntm_reference_step(
            interface, reference, width, read_heads, write_heads, shift_range
        )
        np.testing.assert_allclose(read_vectors.detach().numpy(), expected_reads, rtol=1e-9,
                                   atol=1e-12)
        for got, expected in zip(state, reference, strict=True):
            np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-9, atol=1e-12)
        assert record.shift.shape == (batch, read_heads + write_heads, shift_range)


@pytest.mark.parametrize("read_heads", [1, 3])
def test_dnc_steps_match_the_numpy_reference(rng, read_heads):
    batch, slots, width = 3, 6, 4
    access = DNCAccess(slots, width, read_heads)
    state = float64_state(access.initial_state(batch))
    reference = tuple(x.numpy().copy() for x in state)
    for step in range(6):
        interface = rng.normal(size=(batch, access.interface_size)) * 2.0
        read_vectors, state, record = access.step(torch.tensor(interface), state)
        expected_reads, reference, allocation = dnc_reference_step(
            interface, reference, width, read_heads
        )
        if step > 0:  # at t = 0 every usage is 0: ties, so the allocation order is arbitrary
            np.testing.assert_allclose(record.allocation.numpy(), allocation, rtol=1e-9,
                                       atol=1e-12)
            np.testing.assert_allclose(read_vectors.numpy(), expected_reads, rtol=1e-8,
                                       atol=1e-10)
            for got, expected in zip(state, reference, strict=True):
                np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-10)
        else:  # carry on from the module's own state, whatever order it broke the tie in
            reference = tuple(x.numpy().copy() for x in state)


def test_ntm_record_fields_are_parsed_from_the_documented_positions(rng):
    access = NTMAccess(6, 3, read_heads=1, write_heads=2, shift_range=5)
    batch, block = 2, 3 + 3 + 5
    interface = torch.tensor(rng.normal(size=(batch, access.interface_size)), dtype=torch.float32)
    _, _, record = access.step(interface, access.initial_state(batch))
    x = interface.numpy().astype(np.float64)
    for h in range(3):  # read head, then write heads
        part = x[:, h * block : (h + 1) * block]
        np.testing.assert_allclose(record.key_strength[:, h], softplus(part[:, 3]), rtol=1e-5)
        np.testing.assert_allclose(record.interpolation_gate[:, h], sigmoid(part[:, 4]),
                                   rtol=1e-5)
        np.testing.assert_allclose(record.shift[:, h], softmax(part[:, 5:10]), rtol=1e-5)
        np.testing.assert_allclose(record.sharpening[:, h], 1 + softplus(part[:, 10]), rtol=1e-5)


def test_dnc_record_fields_are_parsed_from_the_documented_positions(rng):
    W, R, batch = 3, 2, 2
    access = DNCAccess(5, W, R)
    interface = torch.tensor(rng.normal(size=(batch, access.interface_size)), dtype=torch.float32)
    _, _, record = access.step(interface, access.initial_state(batch))
    x = interface.numpy().astype(np.float64)
    at = field_slices(dnc_layout(W, R))
    np.testing.assert_allclose(record.free_gates, sigmoid(x[:, at["free_gates"]]), rtol=1e-5)
    np.testing.assert_allclose(record.allocation_gate, sigmoid(x[:, at["allocation_gate"]])[:, 0],
                               rtol=1e-5)
    np.testing.assert_allclose(record.write_gate, sigmoid(x[:, at["write_gate"]])[:, 0],
                               rtol=1e-5)
    modes = softmax(x[:, at["read_modes"]].reshape(batch, R, 3))
    np.testing.assert_allclose(record.read_modes, modes, rtol=1e-5)
    # The fields the record does not carry, from the parse itself.
    parsed = access.parse_interface(interface)
    np.testing.assert_allclose(parsed.read_keys.reshape(batch, -1), x[:, at["read_keys"]])
    np.testing.assert_allclose(parsed.write_key[:, 0], x[:, at["write_key"]])
    np.testing.assert_allclose(parsed.write_vector[:, 0], x[:, at["write_vector"]])
    np.testing.assert_allclose(parsed.read_strengths, 1 + softplus(x[:, at["read_strengths"]]),
                               rtol=1e-5)
    np.testing.assert_allclose(parsed.write_strength, 1 + softplus(x[:, at["write_strength"]]),
                               rtol=1e-5)
    np.testing.assert_allclose(parsed.erase[:, 0], sigmoid(x[:, at["erase"]]), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# State: immutable, never mutated, never kept on the module
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_state_is_an_immutable_namedtuple_of_tensors(arch):
    access = make_access(arch)
    state = access.initial_state(2)
    assert isinstance(state, tuple) and hasattr(state, "_fields")
    assert all(isinstance(value, torch.Tensor) for value in state)
    assert all(value.shape[0] == 2 for value in state)
    assert state.memory.shape == (2, access.memory_size, access.word_size)
    assert state.read_weights.shape == (2, access.read_heads, access.memory_size)
    assert state.write_weights.shape == (2, access.write_heads, access.memory_size)
    with pytest.raises(AttributeError):
        state.memory = torch.zeros(1)
    with pytest.raises(TypeError):
        state[0] = torch.zeros(1)
    _, new_state, record = access.step(random_interfaces(access, 1, 2, 0)[0], state)
    assert type(new_state) is type(state)
    assert hasattr(record, "_fields")


@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_step_does_not_mutate_the_state_it_is_given(arch):
    access = make_access(arch)
    state = access.initial_state(2)
    for interface in random_interfaces(access, 5, 2, seed=1):
        copies = [value.detach().clone() for value in state]
        versions = [value._version for value in state]
        _, new_state, _ = access.step(interface, state)
        for value, copy, version in zip(state, copies, versions, strict=True):
            assert torch.equal(value, copy)
            assert value._version == version  # no in-place operation touched it
        state = new_state


@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_states_returned_earlier_stay_valid_while_later_steps_run(arch):
    # A state is a value: keeping it must keep its contents, however many steps (of this or
    # another run, of the same shapes) run afterwards and whatever memory they reuse.
    access = make_access(arch)
    kept, snapshots = [], []
    state = access.initial_state(2)
    for interface in random_interfaces(access, 6, 2, seed=6):
        _, state, record = access.step(interface, state)
        kept.append((state, record))
        record = tuple(value for value in record if value is not None)  # options left off
        kept[-1] = (state, record)
        snapshots.append([value.detach().clone() for value in (*state, *record)])
    other = access.initial_state(2)
    for interface in random_interfaces(access, 6, 2, seed=7):
        _, other, _ = access.step(interface, other)
    with torch.no_grad():
        for interface in random_interfaces(access, 6, 2, seed=8):
            _, other, _ = access.step(interface, other)
    for (state, record), snapshot in zip(kept, snapshots, strict=True):
        for value, copy in zip((*state, *record), snapshot, strict=True):
            assert torch.equal(value, copy)


@pytest.mark.parametrize("arch", ["ntm", "dnc"])
def test_interleaved_runs_equal_separate_runs(arch):
    access = make_access(arch)
    run_a = random_interfaces(access, 5, 2, seed=2)
    run_b = random_interfaces(access, 5, 3, seed=3)  # even another batch size
    attributes = set(vars(access))
    parameters = {name: p.detach().clone() for name, p in access.named_parameters()}

    def run(interfaces, state):
        outputs = []
        for interface in interfaces:
            read_vectors, state, _ = access.step(interface, state)
            outputs.append(read_vectors)
        return outputs

    separate_a = run(run_a, access.initial_state(2))
    separate_b = run(run_b, access.initial_state(3))
    state_a, state_b = access.initial_state(2), access.initial_state(3)
    for t in range(5):
        read_a, state_a, _ = access.step(run_a[t], state_a)
        read_b, state_b, _ = access.step(run_b[t], state_b)
        assert torch.equal(read_a, separate_a[t])
        assert torch.equal(read_b, separate_b[t])
    # Stepping left no attribute, buffer or parameter change behind on the module.
    assert set(vars(access)) == attributes
    assert list(access.buffers()) == []
    for name, p in access.named_parameters():
        assert torch.equal(p, parameters[name])


# ---------------------------------------------------------------------------------------
# NTM
# ---------------------------------------------------------------------------------------
def test_ntm_initial_state_constant_memory_and_learned_weightings():
    access = NTMAccess(memory_size=6, word_size=3, read_heads=2, write_heads=1)
    state = access.initial_state(4)
    assert torch.equal(state.memory, torch.full((4, 6, 3), INITIAL_MEMORY_VALUE))
    assert 0 < INITIAL_MEMORY_VALUE < 1e-3  # small constant (Collier & Beel 2018)
    for weights in (state.read_weights, state.write_weights):
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    reads = access.initial_read_vectors(4)
    assert reads.shape == (4, 2, 3)
    # The initial weightings and read vectors are learned: gradients reach their parameters.
    interface = torch.randn(4, access.interface_size)
    read_vectors, new_state, _ = access.step(interface, state)
    loss = read_vectors.sum() + new_state.memory.sum() + reads.pow(2).sum()
    loss.backward()
    trained = [p for p in access.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(trained) == len(list(access.parameters())) >= 2


def test_ntm_reads_memory_before_this_steps_write(rng):
    access = NTMAccess(memory_size=5, word_size=3, read_heads=2, write_heads=2)
    state = access.initial_state(2)._replace(
        memory=torch.tensor(rng.normal(size=(2, 5, 3)), dtype=torch.float32)
    )
    interface = torch.tensor(rng.normal(size=(2, access.interface_size)) * 2, dtype=torch.float32)
    read_vectors, new_state, record = access.step(interface, state)
    torch.testing.assert_close(read_vectors, record.read_weights @ state.memory)
    assert not torch.allclose(read_vectors, record.read_weights @ new_state.memory, atol=1e-3)
    assert torch.equal(record.memory, new_state.memory)


@pytest.mark.parametrize("shift_range", [1, 3, 5])
def test_ntm_shift_moves_focus_by_the_chosen_offset(shift_range):
    slots, width = 8, 4
    access = NTMAccess(slots, width, read_heads=1, write_heads=1, shift_range=shift_range)
    block = width + 3 + shift_range
    for start in (2, slots - 1):
        for k in range(shift_range):
            focus = torch.tensor(one_hot(slots, start), dtype=torch.float32).view(1, 1, slots)
            state = access.initial_state(1)._replace(read_weights=focus, write_weights=focus)
            interface = torch.zeros(1, access.interface_size)
            for h in range(2):
                head = interface[0, h * block : (h + 1) * block]
                head[width + 1] = -BIG  # g ≈ 0: keep the previous weighting
                head[width + 2 + k] = BIG  # all shift probability on offset k - S//2
                head[-1] = BIG  # γ ≈ 31: stay sharp
            _, new_state, record = access.step(interface, state)
            destination = (start + k - shift_range // 2) % slots
            expected = torch.tensor(one_hot(slots, destination), dtype=torch.float32)
            for weights in (new_state.read_weights, new_state.write_weights):
                torch.testing.assert_close(weights[0, 0], expected, atol=1e-5, rtol=0)
            assert record.shift.shape == (1, 2, shift_range)
            assert record.shift[0, 0, k] > 0.999


def test_ntm_write_replaces_the_focused_row_and_content_finds_it(rng):
    slots, width = 6, 5
    access = NTMAccess(slots, width, read_heads=1, write_heads=1, shift_range=3)
    block = width + 3 + 3
    focus = torch.tensor(one_hot(slots, 4), dtype=torch.float32).view(1, 1, slots)
    state = access.initial_state(1)._replace(read_weights=focus, write_weights=focus)
    word = torch.tensor(rng.normal(size=width), dtype=torch.float32)
    interface = torch.zeros(1, access.interface_size)
    interface[0, width + 1 : 2 * block : block] = -BIG  # both heads keep their weighting
    interface[0, width + 3 : 2 * block : block] = BIG  # offset 0
    interface[0, block - 1 : 2 * block : block] = BIG  # sharp
    interface[0, 2 * block : 2 * block + width] = BIG  # erase everything
    interface[0, 2 * block + width :] = word  # add the word
    _, state, _ = access.step(interface, state)
    torch.testing.assert_close(state.memory[0, 4], word, atol=1e-5, rtol=0)

    # Next step: the read head looks the word up by content (g = 1, large β).
    interface = torch.zeros(1, access.interface_size)
    interface[0, :width] = word
    interface[0, width] = BIG  # β = softplus(30) ≈ 30
    interface[0, width + 1] = BIG  # g ≈ 1: take the content weighting
    interface[0, width + 3] = BIG  # offset 0
    interface[0, block - 1] = BIG
    read_vectors, _, record = access.step(interface, state)
    assert record.content_weights[0, 0].argmax() == 4
    torch.testing.assert_close(read_vectors[0, 0], word, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(word_size=0), "word_size"),
        (dict(memory_size=0), "memory_size"),
        (dict(read_heads=0), "read_heads"),
        (dict(write_heads=0), "write_heads"),
        (dict(shift_range=4), "shift_range"),
        (dict(shift_range=9, memory_size=7), "shift_range"),
    ],
)
def test_ntm_rejects_impossible_sizes(kwargs, name):
    with pytest.raises(ValueError, match=name) as error:
        NTMAccess(**kwargs)
    assert str(list(kwargs.values())[0]) in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [(dict(word_size=0), "word_size"), (dict(memory_size=-1), "memory_size"),
     (dict(read_heads=0), "read_heads")],
)
def test_dnc_rejects_impossible_sizes(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DNCAccess(**kwargs)


# ---------------------------------------------------------------------------------------
# DNC
# ---------------------------------------------------------------------------------------
def dnc_interface(access: DNCAccess, batch: int = 1, **fields: torch.Tensor) -> torch.Tensor:
    """An interface vector (pre-activation) with the named fields set, the rest zero."""
    parts = []
    for name, size in dnc_layout(access.word_size, access.read_heads):
        value = fields.pop(name, torch.zeros(batch, size))
        parts.append(torch.as_tensor(value, dtype=torch.float32).reshape(batch, size))
    assert not fields, f"unknown fields {sorted(fields)}"
    return torch.cat(parts, dim=-1)


def test_dnc_initial_state_is_empty():
    access = DNCAccess(memory_size=5, word_size=3, read_heads=2)
    state = access.initial_state(3)
    for value in state:
        assert not value.any()
    assert state.link.shape == (3, 5, 5) and state.usage.shape == (3, 5)
    assert not access.initial_read_vectors(3).any()


def test_dnc_read_modes_pick_backward_content_and_forward(rng):
    slots, width = 6, 8
    access = DNCAccess(slots, width, read_heads=3)
    order = [2, 5, 0, 3, 1, 4]
    link = torch.zeros(1, slots, slots)
    for before, after in zip(order, order[1:], strict=False):
        link[0, after, before] = 1.0
    # Nearly orthogonal rows, so a content lookup has one clear answer.
    memory = torch.eye(slots, width) * 3 + 0.01 * torch.tensor(rng.normal(size=(slots, width)))
    prev_read = torch.tensor(one_hot(slots, order[2]), dtype=torch.float32).expand(1, 3, slots)
    state = access.initial_state(1)._replace(
        memory=memory[None].float(), link=link, read_weights=prev_read.clone(),
        usage=torch.full((1, slots), 0.5),
    )
    modes = torch.full((1, 3, 3), -BIG)
    modes[0, 0, 0] = modes[0, 1, 1] = modes[0, 2, 2] = BIG  # backward, content, forward
    keys = torch.zeros(1, 3, width)
    keys[0, 1] = memory[order[4]]
    interface = dnc_interface(
        access, read_keys=keys, read_strengths=torch.full((1, 3), 50.0),
        write_gate=torch.tensor([[-BIG]]), read_modes=modes,
    )
    _, new_state, record = access.step(interface, state)
    for head, slot in enumerate([order[1], order[4], order[3]]):
        expected = torch.tensor(one_hot(slots, slot), dtype=torch.float32)
        torch.testing.assert_close(new_state.read_weights[0, head], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(record.read_modes[0], torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(record.backward_weights[0, 0], new_state.read_weights[0, 0])
    torch.testing.assert_close(record.forward_weights[0, 2], new_state.read_weights[0, 2])


def test_dnc_allocation_writes_to_the_least_used_slot(rng):
    slots, width = 7, 4
    access = DNCAccess(slots, width, read_heads=1)
    usage = torch.tensor(rng.uniform(0.95, 0.99, size=(1, slots)), dtype=torch.float32)
    usage[0, 4] = 0.0
    memory = torch.tensor(rng.normal(size=(1, slots, width)), dtype=torch.float32)
    state = access.initial_state(1)._replace(memory=memory, usage=usage)
    word = torch.tensor(rng.normal(size=(1, width)), dtype=torch.float32)
    interface = dnc_interface(
        access, allocation_gate=torch.tensor([[BIG]]), write_gate=torch.tensor([[BIG]]),
        erase=torch.full((1, width), BIG), write_vector=word,
        free_gates=torch.tensor([[-BIG]]),
    )
    _, new_state, record = access.step(interface, state)
    assert record.write_weights[0, 0].argmax() == 4
    assert record.write_weights[0, 0, 4] > 0.99
    torch.testing.assert_close(new_state.memory[0, 4], word[0], atol=1e-4, rtol=0)
    others = [i for i in range(slots) if i != 4]
    torch.testing.assert_close(new_state.memory[0, others], memory[0, others], atol=0.05, rtol=0)


def test_dnc_allocation_fills_every_slot_once_before_reusing_any():
    slots, width = 6, 3
    access = DNCAccess(slots, width, read_heads=2)
    state = access.initial_state(2)
    interface = dnc_interface(
        access, batch=2, allocation_gate=torch.full((2, 1), BIG),
        write_gate=torch.full((2, 1), BIG), free_gates=torch.full((2, 2), -BIG),
    )
    written = [[], []]
    for _ in range(slots):
        _, state, record = access.step(interface, state)
        for b in range(2):
            slot = int(record.write_weights[b, 0].argmax())
            assert record.write_weights[b, 0, slot] > 0.99
            written[b].append(slot)
    for b in range(2):
        assert sorted(written[b]) == list(range(slots))
        # u_t counts writes up to t-1 (MATH.md step 2): all but the last written slot are used.
        used = [slot for slot in range(slots) if slot != written[b][-1]]
        assert (state.usage[b, used] > 0.99).all()


def test_dnc_free_gates_free_what_was_read():
    slots, width = 6, 3
    access = DNCAccess(slots, width, read_heads=2)
    prev_read = torch.zeros(1, 2, slots)
    prev_read[0, 0, 3] = 1.0  # head 0 read slot 3
    prev_read[0, 1, 1] = 1.0  # head 1 read slot 1
    state = access.initial_state(1)._replace(
        usage=torch.full((1, slots), 0.9), read_weights=prev_read
    )
    interface = dnc_interface(
        access, free_gates=torch.tensor([[BIG, -BIG]]),  # head 0 frees, head 1 does not
        allocation_gate=torch.tensor([[BIG]]), write_gate=torch.tensor([[BIG]]),
    )
    _, new_state, record = access.step(interface, state)
    assert record.usage[0, 3] < 1e-6  # freed
    torch.testing.assert_close(record.usage[0, [0, 1, 2, 4, 5]], torch.full((5,), 0.9))
    assert record.write_weights[0, 0].argmax() == 3  # and reused first


def test_dnc_reads_memory_after_this_steps_write(rng):
    access = DNCAccess(memory_size=5, word_size=3, read_heads=2)
    state = access.initial_state(2)
    for interface in random_interfaces(access, 3, 2, seed=4):
        prev_memory = state.memory
        read_vectors, state, record = access.step(interface * 2, state)
        torch.testing.assert_close(read_vectors, record.read_weights @ state.memory)
        assert not torch.equal(state.memory, prev_memory)


THREADS_PROBE = """
import torch
torch.set_num_threads(1)
from mann.access.dnc import DNCAccess
access = DNCAccess(memory_size=6, word_size=3, read_heads=2)
access.step(torch.randn(2, access.interface_size), access.initial_state(2))
print(torch.get_num_threads())
"""


def test_a_dnc_step_leaves_torchs_thread_count_alone():
    # In a fresh interpreter: the effect shows only on the first kernel call of a process.
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", THREADS_PROBE], capture_output=True,
                            text=True, timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "1"


def test_dnc_invariants_over_a_long_random_run():
    access = DNCAccess(memory_size=8, word_size=4, read_heads=3)
    state = access.initial_state(4)
    tolerance = 1e-5
    for interface in random_interfaces(access, 40, 4, seed=5):
        _, state, record = access.step(interface * 3, state)
        for name in ("read_weights", "write_weights", "allocation", "write_content_weights",
                     "read_content_weights", "forward_weights", "backward_weights",
                     "precedence"):
            weights = getattr(record, name)
            assert weights.min() >= 0, name
            assert weights.sum(-1).max() <= 1 + tolerance, name
        assert record.usage.min() >= 0 and record.usage.max() <= 1
        assert (record.link.diagonal(dim1=-2, dim2=-1) == 0).all()
        assert record.link.min() >= 0
        assert record.link.sum(-1).max() <= 1 + tolerance
        assert record.link.sum(-2).max() <= 1 + tolerance
        torch.testing.assert_close(record.read_modes.sum(-1), torch.ones(4, 3))
        for gate in (record.free_gates, record.allocation_gate, record.write_gate):
            assert gate.min() >= 0 and gate.max() <= 1
    assert math.isfinite(float(state.memory.abs().max()))
