"""Neural Turing Machine memory (Graves, Wayne, Danihelka 2014, section 3).

Every head, read or write, addresses memory in four steps (NTM 3.3):
content → interpolation with its previous weighting (g) → circular shift (s) → sharpening (γ).
All heads are addressed together in one batched computation against M_{t-1}; read heads
read M_{t-1} (before this step's write, as in Collier & Beel's reference implementation),
then write heads erase and add to produce M_t. With ``read_after_write`` the order is the
DNC's: write heads address M_{t-1} and write M_t, then read heads address and read M_t, so a
step can erase what the step before read and read past it at once (the paper leaves the
order open).
With ``masked_content`` every head's content lookup is masked as in Csordás & Schmidhuber
2019 (3.1): a learned mask over the word picks the part a key compares, e.g. a priority
field alone, so one cosine no longer mixes what a slot holds with where it ranks.

Heads are ordered read heads first, then write heads, wherever they are stacked (the
interface, the state's weightings, the Trace's ``content_weights`` etc.).

Initialisation follows Collier & Beel 2018: memory starts at a small constant; the initial
weightings and read vectors are learned. With ``learned_memory`` the initial memory is a
learned N×W parameter too (their "learned" scheme): every slot then starts distinct, so a
content key can pick a slot before anything is written, e.g. by an item's priority.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mann import addressing
from mann.access.base import InterfaceLayout, content_lookup, require_positive
from mann.intervention import NO_EDITS, StepEdits

# Collier & Beel 2018: a small constant initial memory learns fastest (on copy).
INITIAL_MEMORY_VALUE = 1e-6
# A learned initial memory starts as small random rows: distinct in direction (which is all
# cosine similarity sees) and small beside what the add vectors write.
LEARNED_MEMORY_SCALE = 0.1


class NTMState(NamedTuple):
    memory: torch.Tensor  # M_t (B,N,W)
    read_weights: torch.Tensor  # w^r_t (B,R,N)
    write_weights: torch.Tensor  # w^w_t (B,Hw,N)


class NTMRecord(NamedTuple):
    memory: torch.Tensor  # after this step's write (B,N,W)
    read_weights: torch.Tensor  # (B,R,N)
    write_weights: torch.Tensor  # (B,Hw,N)
    read_vectors: torch.Tensor  # (B,R,W)
    content_weights: torch.Tensor  # w^c, reads then writes (B,H,N)
    interpolation_gate: torch.Tensor  # g (B,H)
    shift: torch.Tensor  # s (B,H,S)
    sharpening: torch.Tensor  # γ (B,H)
    key_strength: torch.Tensor  # β (B,H)
    content_masks: torch.Tensor | None = None  # m = σ(·) (B,H,W), with masked_content


def ntm_layouts(
    word_size: int,
    shift_range: int,
    read_heads: int,
    write_heads: int,
    masked_content: bool = False,
) -> tuple[InterfaceLayout, InterfaceLayout, InterfaceLayout]:
    """The NTM's interface: every head's addressing block (read heads first), then every write
    head's erase and add vectors. Returns the whole, one head's addressing block (key k,
    strength β, gate g, shift logits s, sharpening γ, and with ``masked_content`` the mask
    logits last) and one write head's block."""
    fields = [
        ("key", word_size), ("key_strength", 1), ("interpolation_gate", 1),
        ("shift", shift_range), ("sharpening", 1),
    ]  # fmt: skip
    if masked_content:
        fields.append(("mask", word_size))
    head = InterfaceLayout(fields)
    writing = InterfaceLayout([("erase", word_size), ("add", word_size)])
    whole = InterfaceLayout([
        ("addressing", (read_heads + write_heads) * head.total),
        ("writing", write_heads * writing.total),
    ])  # fmt: skip
    return whole, head, writing


class NTMAccess(nn.Module):
    """NTM memory with any number of read and write heads.

    Per head the controller emits key k (W), strength β (1), gate g (1), shift s (S) and
    sharpening γ (1); each write head also erase e (W) and add a (W).
    """

    def __init__(
        self,
        memory_size: int = 128,
        word_size: int = 20,
        read_heads: int = 1,
        write_heads: int = 1,
        shift_range: int = 3,
        learned_memory: bool = False,
        read_after_write: bool = False,
        masked_content: bool = False,
    ) -> None:
        super().__init__()
        require_positive("memory_size", memory_size)
        require_positive("word_size", word_size)
        require_positive("read_heads", read_heads)
        require_positive("write_heads", write_heads)
        require_positive("shift_range", shift_range)
        if shift_range % 2 != 1:
            raise ValueError(f"shift_range must be odd (offsets -s..s around 0), got {shift_range}")
        if shift_range > memory_size:
            raise ValueError(
                f"shift_range must be at most memory_size={memory_size}, got {shift_range}"
            )
        self.memory_size = memory_size
        self.word_size = word_size
        self.read_heads = read_heads
        self.write_heads = write_heads
        self.shift_range = shift_range
        self.masked_content = bool(masked_content)
        self.layout, self.head_layout, self.write_layout = ntm_layouts(
            word_size, shift_range, read_heads, write_heads, self.masked_content
        )
        self.interface_size = self.layout.total

        # Learned initial weightings (as logits, so they stay normalised), focused on slot 0
        # so location-based iteration has a definite start.
        initial_logits = torch.zeros(read_heads + write_heads, memory_size)
        initial_logits[:, 0] = 5.0
        self.initial_weight_logits = nn.Parameter(initial_logits)
        self.initial_read = nn.Parameter(torch.randn(read_heads, word_size) * 0.01)
        self.read_after_write = read_after_write
        self.learned_memory = learned_memory
        if learned_memory:
            self.initial_memory = nn.Parameter(
                torch.randn(memory_size, word_size) * LEARNED_MEMORY_SCALE
            )

    @property
    def reference_only(self) -> str | None:
        """Why only the reference can run this memory (None: the kernels can)."""
        if self.read_after_write:
            return "the kernels read M_{t-1} (read_after_write is the reference's alone)"
        if self.masked_content:
            return "the kernels compare whole words (masked_content is the reference's alone)"
        return None

    def initial_state(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> NTMState:
        dtype = dtype or self.initial_weight_logits.dtype
        shape = (batch_size, self.memory_size, self.word_size)
        if self.learned_memory:
            # A copy per sequence (B·N·W floats, once per run), as the constant memory is: an
            # in-place edit of one sequence's memory must not reach the parameter or the other
            # sequences. The gradient still reaches the parameter through the expand.
            memory = self.initial_memory.to(device, dtype).expand(shape).contiguous()
        else:
            memory = torch.full(shape, INITIAL_MEMORY_VALUE, device=device, dtype=dtype)
        weights = torch.softmax(self.initial_weight_logits, dim=-1).to(device, dtype)
        weights = weights.unsqueeze(0).expand(batch_size, -1, -1)
        return NTMState(
            memory=memory,
            read_weights=weights[:, : self.read_heads],
            write_weights=weights[:, self.read_heads :],
        )

    def initial_read_vectors(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        read = self.initial_read.to(device, dtype or self.initial_read.dtype)
        return read.unsqueeze(0).expand(batch_size, -1, -1)

    def step(
        self,
        interface: torch.Tensor,
        state: NTMState,
        record: bool = True,
        edit: StepEdits | None = None,
    ) -> tuple[torch.Tensor, NTMState, NTMRecord | None]:
        """One NTM step, the reference: interface (B,I) and state_{t-1} -> (r_t (B,R,W),
        state_t, record). ``edit`` (``mann.intervention``) replaces quantities as they are
        computed. Training usually runs ``mann.fused``'s kernel instead (``mann.backends``)."""
        # w_{t-1}, reads then writes; contiguous even when the state holds expanded views.
        previous = torch.cat([state.read_weights, state.write_weights], dim=1)
        batch = interface.shape[0]
        heads = self.read_heads + self.write_heads
        blocks = self.layout.split(interface)
        head = self.head_layout.split(blocks["addressing"].view(batch, heads, -1))
        key, strength, gate = head["key"], head["key_strength"], head["interpolation_gate"]
        shift, gamma = head["shift"], head["sharpening"]
        writes = self.write_layout.split(blocks["writing"].view(batch, self.write_heads, -1))
        edit = edit or NO_EDITS
        key_strength = edit("key_strength", nn.functional.softplus(strength.squeeze(-1)))  # β
        interpolation_gate = edit("interpolation_gate", torch.sigmoid(gate.squeeze(-1)))  # g
        shift = edit("shift", torch.softmax(shift, dim=-1))  # s over offsets -S//2..S//2
        sharpening = edit("sharpening", addressing.oneplus(gamma.squeeze(-1)))  # γ >= 1
        erase, add = torch.sigmoid(writes["erase"]), writes["add"]
        masks = torch.sigmoid(head["mask"]) if self.masked_content else None  # m (B,H,W)

        def address(memory, heads: slice):  # w^c and w_t of the heads in ``heads``
            head_masks = None if masks is None else masks[:, heads]
            content = content_lookup(memory, key[:, heads], key_strength[:, heads], head_masks)
            head_gate = interpolation_gate[:, heads]
            gated = addressing.interpolate(content, previous[:, heads], head_gate)
            shifted = addressing.shift(gated, shift[:, heads])
            return content, addressing.sharpen(shifted, sharpening[:, heads])

        if self.read_after_write:
            reading, writing = slice(0, self.read_heads), slice(self.read_heads, None)
            write_content, write_weights = address(state.memory, writing)
            write_weights = edit("write_weights", write_weights)
            memory = addressing.erase_and_write(state.memory, write_weights, erase, add)
            read_content, read_weights = address(memory, reading)
            read_weights = edit("read_weights", read_weights)
            read_vectors = edit("read_vectors", addressing.read(memory, read_weights))
            content = torch.cat([read_content, write_content], dim=1)
        else:
            content, weights = address(state.memory, slice(None))
            read_weights, write_weights = weights.split([self.read_heads, self.write_heads], 1)
            read_weights = edit("read_weights", read_weights)
            write_weights = edit("write_weights", write_weights)
            read_vectors = edit("read_vectors", addressing.read(state.memory, read_weights))
            memory = addressing.erase_and_write(state.memory, write_weights, erase, add)

        new_state = NTMState(memory, read_weights, write_weights)
        step_record = NTMRecord(
            memory=memory,
            read_weights=read_weights,
            write_weights=write_weights,
            read_vectors=read_vectors,
            content_weights=content,
            interpolation_gate=interpolation_gate,
            shift=shift,
            sharpening=sharpening,
            key_strength=key_strength,
            content_masks=masks,
        )
        return read_vectors, new_state, step_record
