"""Differentiable Neural Computer memory (Graves et al. 2016, Methods).

One write head, R read heads. ``step`` owns the order of the equations (docs/math.md):
usage from the previous step's weightings, allocation, write weighting, erase-and-write,
temporal link and precedence, then the read weightings on the new memory.

Csordás & Schmidhuber's (2019) three improvements are options, off by default (a plain DNC,
which every shipped checkpoint is): ``masked_content`` (a learned mask over the word for each
content lookup), ``deallocation`` (freed slots' contents wiped in proportion to how much they
were freed) and ``link_sharpness`` (forward and backward weightings raised to a learned power
and renormalised). Each adds its fields at the end of the interface vector.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import nn

from mann import addressing
from mann.access.base import InterfaceLayout, content_lookup, require_positive
from mann.intervention import NO_EDITS, StepEdits


class DNCState(NamedTuple):
    memory: torch.Tensor  # M_t (B,N,W)
    usage: torch.Tensor  # u_t (B,N)
    link: torch.Tensor  # L_t (B,N,N)
    precedence: torch.Tensor  # p_t (B,N)
    read_weights: torch.Tensor  # w^r_t (B,R,N)
    write_weights: torch.Tensor  # w^w_t (B,1,N)


class DNCInterface(NamedTuple):
    """The controller's interface vector split into the paper's named quantities."""

    read_keys: torch.Tensor  # k^r (B,R,W)
    write_key: torch.Tensor  # k^w (B,1,W)
    write_vector: torch.Tensor  # v (B,1,W)
    read_strengths: torch.Tensor  # β^r = oneplus(·) (B,R)
    write_strength: torch.Tensor  # β^w = oneplus(·) (B,1)
    erase: torch.Tensor  # e = σ(·) (B,1,W)
    free_gates: torch.Tensor  # f^r = σ(·) (B,R)
    allocation_gate: torch.Tensor  # g^a = σ(·) (B,)
    write_gate: torch.Tensor  # g^w = σ(·) (B,)
    read_modes: torch.Tensor  # π^r = softmax(·) over backward, content, forward (B,R,3)
    # The improvements (None when off):
    read_masks: torch.Tensor | None = None  # m^r = σ(·) (B,R,W)
    write_mask: torch.Tensor | None = None  # m^w = σ(·) (B,1,W)
    forward_sharpness: torch.Tensor | None = None  # s^f = oneplus(·) (B,R)
    backward_sharpness: torch.Tensor | None = None  # s^b = oneplus(·) (B,R)


class DNCRecord(NamedTuple):
    memory: torch.Tensor  # after this step's write (B,N,W)
    read_weights: torch.Tensor  # (B,R,N)
    write_weights: torch.Tensor  # (B,1,N)
    read_vectors: torch.Tensor  # (B,R,W)
    usage: torch.Tensor  # (B,N)
    precedence: torch.Tensor  # (B,N)
    link: torch.Tensor  # (B,N,N)
    allocation: torch.Tensor  # (B,N)
    write_content_weights: torch.Tensor  # (B,N)
    read_content_weights: torch.Tensor  # (B,R,N)
    forward_weights: torch.Tensor  # (B,R,N)
    backward_weights: torch.Tensor  # (B,R,N)
    read_modes: torch.Tensor  # (B,R,3)
    free_gates: torch.Tensor  # (B,R)
    allocation_gate: torch.Tensor  # (B,)
    write_gate: torch.Tensor  # (B,)
    write_strength: torch.Tensor  # β^w (B,)
    read_strengths: torch.Tensor  # β^r (B,R)
    # The improvements (None when off):
    read_masks: torch.Tensor | None = None  # (B,R,W)
    write_mask: torch.Tensor | None = None  # (B,W)
    forward_sharpness: torch.Tensor | None = None  # (B,R)
    backward_sharpness: torch.Tensor | None = None  # (B,R)


def dnc_layout(
    word_size: int, read_heads: int, masked_content: bool = False, link_sharpness: bool = False
) -> InterfaceLayout:
    """The DNC's interface vector. Fields sharing a squashing function are adjacent, so each
    function is one operation (keys and write vector | oneplus | σ | softmax); the
    improvements' fields follow. ``mann.fused.dnc`` reads the plain part at these offsets."""
    W, R = word_size, read_heads
    fields = [
        ("read_keys", R * W), ("write_key", W), ("write_vector", W),  # raw
        ("read_strengths", R), ("write_strength", 1),  # oneplus
        ("erase", W), ("free_gates", R), ("allocation_gate", 1), ("write_gate", 1),  # σ
        ("read_modes", 3 * R),  # softmax per head
    ]  # fmt: skip
    if masked_content:
        fields += [("read_masks", R * W), ("write_mask", W)]  # σ
    if link_sharpness:
        fields += [("forward_sharpness", R), ("backward_sharpness", R)]  # oneplus
    return InterfaceLayout(fields)


class DNCAccess(nn.Module):
    """DNC memory: content lookup, dynamic allocation and temporal links (and, as options,
    Csordás & Schmidhuber's masked content lookup, de-allocation and link sharpness)."""

    write_heads = 1

    def __init__(
        self,
        memory_size: int = 64,
        word_size: int = 20,
        read_heads: int = 4,
        masked_content: bool = False,
        deallocation: bool = False,
        link_sharpness: bool = False,
    ) -> None:
        super().__init__()
        require_positive("memory_size", memory_size)
        require_positive("word_size", word_size)
        require_positive("read_heads", read_heads)
        self.memory_size = memory_size
        self.word_size = word_size
        self.read_heads = read_heads
        self.masked_content = bool(masked_content)
        self.deallocation = bool(deallocation)
        self.link_sharpness = bool(link_sharpness)
        self.layout = dnc_layout(word_size, read_heads, masked_content, link_sharpness)
        self.interface_size = self.layout.total

    @property
    def improved(self) -> bool:
        """Whether any of the improvements is on (the fused kernels implement the plain DNC)."""
        return self.masked_content or self.deallocation or self.link_sharpness

    @property
    def reference_only(self) -> str | None:
        """Why only the reference can run this memory (None: the kernels can)."""
        if self.improved:
            return ("the kernels implement the plain DNC (masked_content, deallocation and "
                    "link_sharpness are the reference's alone)")  # fmt: skip
        return None

    def parse_interface(self, interface: torch.Tensor) -> DNCInterface:
        batch = interface.shape[0]
        W, R = self.word_size, self.read_heads
        field = self.layout.split(interface)
        layout = self.layout
        # One squashing operation per group of adjacent fields.
        strengths = addressing.oneplus(
            interface[:, layout.offset("read_strengths") : layout.offset("erase")]
        )
        read_strengths, write_strength = strengths.split([R, 1], dim=-1)
        gates = torch.sigmoid(interface[:, layout.offset("erase") : layout.offset("read_modes")])
        erase, free_gates, allocation_gate, write_gate = gates.split([W, R, 1, 1], dim=-1)
        read_keys, write_key, write_vector = (
            field["read_keys"], field["write_key"], field["write_vector"]
        )
        extra = {}
        if self.masked_content:
            extra["read_masks"] = torch.sigmoid(field["read_masks"]).view(batch, R, W)
            extra["write_mask"] = torch.sigmoid(field["write_mask"]).view(batch, 1, W)
        if self.link_sharpness:
            extra["forward_sharpness"] = addressing.oneplus(field["forward_sharpness"])
            extra["backward_sharpness"] = addressing.oneplus(field["backward_sharpness"])
        read_modes = field["read_modes"]
        return DNCInterface(
            read_keys=read_keys.view(batch, R, W),
            write_key=write_key.view(batch, 1, W),
            write_vector=write_vector.view(batch, 1, W),
            read_strengths=read_strengths,
            write_strength=write_strength,
            erase=erase.view(batch, 1, W),
            free_gates=free_gates,
            allocation_gate=allocation_gate.squeeze(-1),
            write_gate=write_gate.squeeze(-1),
            read_modes=torch.softmax(read_modes.view(batch, R, 3), dim=-1),
            **extra,
        )

    def initial_state(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> DNCState:
        N, W, R = self.memory_size, self.word_size, self.read_heads
        zeros = functools.partial(torch.zeros, device=device, dtype=dtype)
        return DNCState(
            memory=zeros(batch_size, N, W),
            usage=zeros(batch_size, N),
            link=zeros(batch_size, N, N),
            precedence=zeros(batch_size, N),
            read_weights=zeros(batch_size, R, N),
            write_weights=zeros(batch_size, 1, N),
        )

    def initial_read_vectors(
        self, batch_size: int, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.read_heads, self.word_size, device=device, dtype=dtype)

    def step(
        self,
        interface: torch.Tensor,
        state: DNCState,
        record: bool = True,
        edit: StepEdits | None = None,
    ) -> tuple[torch.Tensor, DNCState, DNCRecord | None]:
        """One DNC step, the reference: interface ξ_t (B,I) and state_{t-1} -> (r_t (B,R,W),
        state_t, record). ``edit`` (``mann.intervention``) replaces quantities as they are
        computed. Training usually runs ``mann.fused``'s kernel instead (``mann.backends``).
        """
        edit = edit or NO_EDITS
        io = edit.interface(self.parse_interface(interface))
        prev_write_weights = state.write_weights.squeeze(1)

        # Allocation from usage, which sees the previous step's reads and write.
        usage = edit(
            "usage",
            addressing.usage(state.usage, prev_write_weights, state.read_weights, io.free_gates),
        )
        allocation = addressing.allocation(usage)
        prev_memory = state.memory
        if self.deallocation:  # what was freed is wiped before anything looks at it
            retention = addressing.retention(state.read_weights, io.free_gates)
            prev_memory = addressing.deallocate(prev_memory, retention)
        write_content = content_lookup(
            prev_memory, io.write_key, io.write_strength, io.write_mask
        ).squeeze(1)
        write_weights = edit(
            "write_weights",
            addressing.write_weighting(
                allocation, write_content, io.allocation_gate, io.write_gate
            ).unsqueeze(1),
        )
        memory = addressing.erase_and_write(prev_memory, write_weights, io.erase, io.write_vector)

        # Temporal links record the order of writes; reads follow them.
        written = write_weights.squeeze(1)
        link = edit("link", addressing.temporal_link(state.link, state.precedence, written))
        forward, backward = addressing.directional_weights(link, state.read_weights)
        if self.link_sharpness:
            forward = addressing.sharpen_links(forward, io.forward_sharpness)
            backward = addressing.sharpen_links(backward, io.backward_sharpness)
        precedence = addressing.precedence(state.precedence, written)
        read_content = content_lookup(memory, io.read_keys, io.read_strengths, io.read_masks)
        read_weights = edit(
            "read_weights",
            addressing.read_weighting(backward, read_content, forward, io.read_modes),
        )
        read_vectors = edit("read_vectors", addressing.read(memory, read_weights))

        new_state = DNCState(memory, usage, link, precedence, read_weights, write_weights)
        step_record = DNCRecord(
            memory=memory,
            read_weights=read_weights,
            write_weights=write_weights,
            read_vectors=read_vectors,
            usage=usage,
            precedence=precedence,
            link=link,
            allocation=allocation,
            write_content_weights=write_content,
            read_content_weights=read_content,
            forward_weights=forward,
            backward_weights=backward,
            read_modes=io.read_modes,
            free_gates=io.free_gates,
            allocation_gate=io.allocation_gate,
            write_gate=io.write_gate,
            write_strength=io.write_strength.squeeze(-1),
            read_strengths=io.read_strengths,
            read_masks=io.read_masks,
            write_mask=None if io.write_mask is None else io.write_mask.squeeze(1),
            forward_sharpness=io.forward_sharpness,
            backward_sharpness=io.backward_sharpness,
        )
        return read_vectors, new_state, step_record
