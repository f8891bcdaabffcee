"""Settings shared by the whole test suite.

Hypothesis profiles: ``default`` for work at the desk, ``ci`` (chosen when the
environment variable ``CI`` is set) with no per-example deadline, since timing
on a shared two-core machine is noisy, and a fixed seed so that a failure
reproduces. Pick one by hand with ``--hypothesis-profile=ci``.

Every test starts from the same seed of Python's, NumPy's and torch's random
generators, so tests that draw random angles or weights are reproducible.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None)
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

SEED = 1234


@pytest.fixture(autouse=True)
def _seed_random_generators() -> None:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
