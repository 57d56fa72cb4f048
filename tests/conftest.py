"""Shared test settings: hypothesis profiles, the GPU marker, and the torch reference."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# "ci" keeps the property tests quick on 2 cores; "thorough" draws many more cases.
settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when CuPy cannot run, with the reason printed."""
    from minunet.core.backend import gpu_available

    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a visible GPU (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
