"""The array backend: one switch between NumPy (CPU) and CuPy (GPU).

Every layer is written once against an array module ``xp`` that has NumPy's API.
``get_array_module(x)`` returns ``cupy`` for a CuPy array and ``numpy`` otherwise, so
the same code runs on both. CuPy is imported lazily: a NumPy-only install never
touches it.

Asking for ``cupy`` where it cannot run is an error that names the fix. There is no
silent fallback to NumPy: a user who asked for the GPU and got the CPU would wait
hours for a run they believed took minutes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

BACKENDS = ("numpy", "cupy")


class BackendError(RuntimeError):
    """The requested backend cannot run on this machine."""


def _import_cupy() -> ModuleType:
    """Import CuPy and check that it sees a GPU, or raise a BackendError naming the fix."""
    try:
        import cupy
    except ImportError as exc:  # CuPy is an optional extra
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed: "
            "pip install 'minunet[cuda12]' (CUDA 12) or 'minunet[cuda13]' (CUDA 13)"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # raised when the driver or the runtime is missing
        raise BackendError(
            f"backend 'cupy': CuPy is installed but no GPU is visible ({exc}); "
            "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use --backend numpy"
        ) from exc
    if count == 0:
        raise BackendError(
            "backend 'cupy': CuPy is installed but no GPU is visible; "
            "check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use --backend numpy"
        )
    return cupy


def get_backend(name: str) -> ModuleType:
    """Return the array module for a backend name: ``numpy`` or ``cupy``."""
    if name == "numpy":
        return np
    if name == "cupy":
        return _import_cupy()
    raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def gpu_available() -> bool:
    """True when the CuPy backend can run here (used by tests to skip cleanly)."""
    try:
        _import_cupy()
    except BackendError:
        return False
    return True


def get_array_module(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Looks at the array's class module instead of importing CuPy, so it is free on
    machines without CuPy.
    """
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def backend_name(xp: ModuleType) -> str:
    """``'numpy'`` or ``'cupy'`` for an array module."""
    return "cupy" if xp.__name__.startswith("cupy") else "numpy"


def to_device(array: Any, xp: ModuleType) -> Any:
    """Copy a host (NumPy) array to the backend ``xp`` (a no-op for NumPy)."""
    if xp is np:
        return to_numpy(array)
    return xp.asarray(array)


def to_numpy(array: Any) -> np.ndarray:
    """Return a NumPy array for a NumPy or CuPy array (a device-to-host copy for CuPy)."""
    if get_array_module(array) is not np:
        return array.get()
    return np.asarray(array)


def seed_everything(seed: int, xp: ModuleType | None = None) -> np.random.Generator:
    """Seed the backend's global RNG and return a fresh NumPy Generator for host-side draws.

    Library code never draws from a global RNG: it takes a ``numpy.random.Generator``
    (or a CuPy one) explicitly, so runs are reproducible. Seeding the globals as well
    guards user code that does.
    """
    np.random.seed(seed % 2**32)
    if xp is not None and xp is not np:
        xp.random.seed(seed % 2**32)
    return np.random.default_rng(seed)
