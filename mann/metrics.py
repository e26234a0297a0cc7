"""Loss and scores on masked steps: what training minimises and what the papers plot."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the BCE (in nats) summed over scored steps and channels.

    logits, targets (B,T,Y), mask (B,T) -> scalar. Unscored steps contribute nothing.
    """
    per_bit = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_bit.sum(-1) * mask).sum() / logits.shape[0]


def cost_bits(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Cost in bits per sequence, the quantity the NTM paper's learning curves plot."""
    return float(masked_bce(logits, targets, mask)) / math.log(2.0)


def bit_errors(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wrong bits per sequence, outputs thresholded at probability 0.5: (B,T,Y) -> (B,)."""
    predicted = (logits > 0).to(targets.dtype)
    wrong = (predicted != (targets > 0.5).to(targets.dtype)).to(targets.dtype).sum(-1)
    return (wrong * mask).sum(-1)
