"""Shared fixtures: every test starts from a known random state and draws its own data."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

# gradcheck also runs each backward twice and, by default, demands bit-identical results.
# The float64 backward of the DNC sequence node is not bit-reproducible from call to call:
# results 1e-17 apart (rounding order) on alternate calls, with one thread too, already at
# 1c001f1, so tests/test_fused_sequence.py's gradcheck failed when run alone and passed in its
# file. The source is not pinned down: in a plain script torch's AVX2 kernels (instead of
# AVX-512) made it reproducible, under pytest they did not. Allow differences far below what
# gradcheck's numerical comparison (atol 1e-5) could notice; the Jacobians are still compared.
torch.autograd.gradcheck = functools.partial(torch.autograd.gradcheck, nondet_tol=1e-12)


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Seed torch's global generator so parameter initialisation is the same on every run."""
    torch.manual_seed(1234)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator for test data."""
    return np.random.default_rng(20240601)
