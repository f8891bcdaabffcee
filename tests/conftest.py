"""Settings shared by the whole test suite.

Hypothesis profiles: ``default`` for work at the desk, ``ci`` (chosen when the
environment variable ``CI`` is set) with no per-example deadline, since timing
on a shared two-core machine is noisy, and a fixed seed so that a failure
reproduces. Pick one by hand with ``--hypothesis-profile=ci``.

Every test starts from the same seed of Python's, NumPy's and torch's random
generators, so tests that draw random angles or weights are reproducible.

Modules whose tensors are tiny use the ``one_thread`` fixture
(``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared two-core
machine a second OpenMP thread only adds synchronisation.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one torch thread, restoring the previous count after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
