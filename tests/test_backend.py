"""The backend switch: NumPy always, CuPy only where it can really run, never a fallback."""

import sys
import types

import numpy as np
import pytest

from minunet.core.backend import (
    BackendError,
    get_array_module,
    get_backend,
    gpu_available,
    to_device,
    to_numpy,
)


def test_numpy_backend():
    assert get_backend("numpy") is np
    x = np.arange(3)
    assert get_array_module(x) is np
    assert to_numpy(to_device(x, np)) is not None


def test_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend 'torch'"):
        get_backend("torch")


def test_cupy_missing_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(BackendError, match=r"pip install 'minunet\[cuda12\]'"):
        get_backend("cupy")
    assert not gpu_available()


def test_cupy_without_a_gpu_is_an_error_not_a_fallback(monkeypatch):
    fake = types.ModuleType("cupy")

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendError, match="no GPU is visible"):
        get_backend("cupy")
    fake.cuda.runtime.getDeviceCount = lambda: 0
    with pytest.raises(BackendError, match="no GPU is visible"):
        get_backend("cupy")
