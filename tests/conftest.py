"""Shared test settings: hypothesis profiles, the GPU marker, and the torch reference.

Three hypothesis profiles, chosen with the environment variable ``HYPOTHESIS_PROFILE``:

- ``ci`` (the default): derandomised. Every run draws the same 25 examples per property
  (seeded from each test's own source), so a CI run cannot fail by the luck of the draw,
  and no example database carries one run's finds into the next.
- ``thorough``: 300 examples per property from a random seed, for the work before each
  submission. A failure prints the seed (``--hypothesis-seed=N`` replays it) and the
  ``@reproduce_failure`` blob of the failing example::

      HYPOTHESIS_PROFILE=thorough python -m pytest -q tests/test_gradients.py
      HYPOTHESIS_PROFILE=thorough python -m pytest -q tests/ --hypothesis-seed=7

- ``seeds``: 50 examples per property from the seed given with ``--hypothesis-seed=N``,
  for the sweep over many seeds (``bash tests/property_seeds.sh 20`` runs every property
  file under seeds 1..20 and lists the seeds that failed).

A failure under any profile is a real bug or a tolerance that does not follow from
what is compared: fix that, never the draw.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "seeds",
    max_examples=50,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
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


# --- CuPy: a real GPU, or the strict stand-in (tests/cupy_standin.py) ------------------
# ``cp`` runs a test three times: on real CuPy (marked ``gpu``, skipped without one), and
# on the stand-in with the hand-written kernels on (emulated) and off (CuPy's generic
# array code). ``cp_kernels`` leaves out the generic run, for tests of the kernels.
_CUPY_VARIANTS = {
    "gpu": pytest.param("gpu", marks=pytest.mark.gpu),
    "standin-kernels": "standin-kernels",
    "standin-generic": "standin-generic",
}


def _cupy_backend(variant: str):
    import contextlib

    if variant == "gpu":
        import cupy

        return contextlib.nullcontext(cupy)
    import cupy_standin

    from minunet.accel.cuda.emulator import CXX

    if variant == "standin-kernels" and CXX is None:
        pytest.skip("the stand-in runs kernels on the CPU emulator: no C++ compiler on PATH")
    return cupy_standin.install(kernels=variant == "standin-kernels")


@pytest.fixture(params=list(_CUPY_VARIANTS.values()))
def cp(request):
    """The ``cupy`` module of a test: real CuPy, or the stand-in installed as ``cupy``."""
    with _cupy_backend(request.param) as module:
        yield module


@pytest.fixture(params=[_CUPY_VARIANTS["gpu"], "standin-kernels"])
def cp_kernels(request):
    """Like ``cp``, for tests of the hand-written kernels: never the generic path."""
    with _cupy_backend(request.param) as module:
        yield module
