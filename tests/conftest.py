"""Shared fixtures: every test starts from a known random state and draws its own data."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Seed torch's global generator so parameter initialisation is the same on every run."""
    torch.manual_seed(1234)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator for test data."""
    return np.random.default_rng(20240601)
