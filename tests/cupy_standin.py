"""A strict stand-in for CuPy, so the GPU code paths run (and are checked) without a GPU.

Tests only. ``install()`` puts this module in ``sys.modules["cupy"]``; from then on
``get_backend("cupy")``, ``get_array_module`` and every ``import cupy`` in minunet find
it, and the library runs its CuPy code exactly as on a GPU, on "device" arrays that live
in host memory. What makes it worth having is what it refuses, in the places CuPy
refuses (or silently waits for the GPU):

- Device arrays are their own type, ``cupy.ndarray`` (a NumPy subclass, so NumPy does the
  arithmetic): every ``type(x) is np.ndarray`` test routes them as on a GPU.
- Implicit conversion to NumPy is a TypeError, with CuPy's own message: ``np.asarray``,
  ``np.array``, ``np.ascontiguousarray`` (patched while installed), ``__array__``,
  ``.tolist()`` (stricter than CuPy, which syncs: write ``cupy.asnumpy(x).tolist()``),
  ``float()``/``int()`` of anything but a 0-d array.
- A device array and a NumPy array in one operation is a TypeError, as in CuPy's ufuncs:
  ``x + np_array``, ``np.concatenate([x, np_array])``, ``x[...] = np_array``.
- Every device <-> host copy is counted in ``transfers``: ``cupy.asnumpy``, ``x.get()``
  and the reads CuPy does by syncing (``float(x)``, ``int(x)``, ``bool(x)``, ``x.item()``,
  formatting, a boolean-mask index) go to ``d2h``; ``cupy.asarray(host)``, ``x.set()``
  and a NumPy/list index go to ``h2d``.
- Reductions and scalar indexing give 0-d device arrays, never host numbers, as in CuPy.
- ``RawKernel`` runs the kernel's source on the CPU emulator (``minunet.accel.cuda.emulator``).
- Devices, streams, memory pools and ``cuda.runtime`` are no-ops that record their calls
  in ``calls`` (``getDeviceCount()`` is 1).
- CuPy's limits are kept: its ufuncs ``reduce``/``accumulate`` for add and multiply
  only, ``at`` for the scatters only; its ``random.Generator`` has no ``normal``,
  ``permutation`` or ``choice``; ``bincount``, ``nonzero`` and ``unique`` read numbers
  back to size their output, and count those reads.
- Only names the real CuPy has are offered (``tests/test_standin.py`` checks this module
  against the installed ``cupy`` package, and binds every call the library makes to the
  real signatures): a call CuPy lacks fails here as it would there.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__version__ = "14.0.0-standin"

# NumPy's own conversions, kept before install() puts the strict versions in their place.
_np_asarray, _np_array = np.asarray, np.array
_IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. "
    "Please use `.get()` to construct a NumPy array explicitly."
)


@dataclass
class Transfers:
    """Copies between host and device since the last ``reset()``."""

    d2h: int = 0  # device -> host: a read (asnumpy, .get(), float(x), ...)
    h2d: int = 0  # host -> device: an upload (asarray(host), .set(), a host index)

    def reset(self) -> None:
        self.d2h = self.h2d = 0


transfers = Transfers()
calls: list[str] = []  # the device, stream, memory-pool and runtime calls, in order
# How each cupy function was called: (dotted name, positional count, keyword names), for
# a test to bind against the real CuPy's signatures (tests/test_standin.py).
used: set[tuple[str, int, tuple[str, ...]]] = set()

# The tests' handles on the stand-in, which the real CuPy does not have; every other public
# name here is one CuPy has (tests/test_standin.py checks).
STANDIN_ONLY = {
    "Transfers", "transfers", "calls", "used", "install", "kernel_paths", "run_kernel",
    "STANDIN_ONLY", "FUNCTIONS", "TYPES", "GENERATOR_METHODS", "NOT_IN_CUPY",
}  # fmt: skip


# --- moving between the two worlds ----------------------------------------------------


def _host(obj: Any) -> Any:
    """Arguments for NumPy: device arrays as plain ndarray views (no copy: writes go
    through), lists, tuples and dicts walked. A NumPy array is refused, as CuPy does."""
    if isinstance(obj, ndarray):
        return np.ndarray.view(obj, np.ndarray)
    if isinstance(obj, np.ndarray):
        raise TypeError(f"Unsupported type {type(obj)}")  # CuPy's words for a host array
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _host(v) for k, v in obj.items()}
    return obj


def _device(obj: Any) -> Any:
    """Results of NumPy back as device arrays; a NumPy scalar becomes a 0-d array, as
    CuPy's reductions and scalar indexing give."""
    if isinstance(obj, ndarray):
        return obj
    if isinstance(obj, np.ndarray):
        return obj.view(ndarray)
    if isinstance(obj, np.generic):
        return _np_asarray(obj).view(ndarray)
    if isinstance(obj, tuple):
        return tuple(_device(o) for o in obj)
    if isinstance(obj, list):
        return [_device(o) for o in obj]
    return obj


def _has_device_array(obj: Any) -> bool:
    if isinstance(obj, ndarray):
        return True
    return isinstance(obj, (list, tuple)) and builtins.any(_has_device_array(o) for o in obj)


def _read(a: ndarray) -> np.ndarray:
    """One device -> host copy, counted."""
    transfers.d2h += 1
    return _np_array(np.ndarray.view(a, np.ndarray), copy=True)


def _index(key: Any) -> Any:
    """An index for NumPy. CuPy uploads NumPy and list indices (counted); device index
    arrays stay; a boolean mask makes CuPy read the count of True back (counted)."""
    parts = key if isinstance(key, tuple) else (key,)
    out = []
    for k in parts:
        if isinstance(k, (list, np.ndarray)) and not isinstance(k, ndarray):
            transfers.h2d += 1
            k = _np_asarray(k)
        elif isinstance(k, ndarray):
            k = np.ndarray.view(k, np.ndarray)
        if isinstance(k, np.ndarray) and k.dtype == bool:
            transfers.d2h += 1
        out.append(k)
    return tuple(out) if isinstance(key, tuple) else out[0]


# --- the device array ------------------------------------------------------------------


def _method(name: str) -> Callable[..., Any]:
    """An ndarray method on the host view, its arguments checked and its result on the
    device (so ``x.sum()`` is a 0-d device array, not a NumPy scalar)."""
    base = getattr(np.ndarray, name)

    def method(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        transfers.d2h += _SYNCS.get(name, 0)
        out = kwargs.get("out")
        result = base(_host(self), *_host(args), **_host(kwargs))
        return out if out is not None else _device(result)

    method.__name__ = name
    return method


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A "device" array: NumPy's memory and arithmetic behind CuPy's rules (see above)."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__" and ufunc.__name__ not in _UFUNC_METHODS.get(method, ()):
            # CuPy's ufuncs: reduce and accumulate for add and multiply only (x.sum(),
            # x.prod(), cumsum...), at for the scatter operations only.
            raise NotImplementedError(f"`cupy_{ufunc.__name__}.{method}` is not supported yet")
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_host(inputs), **_host(kwargs))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        # np.concatenate(device arrays) -> cupy.concatenate, as CuPy dispatches; a function
        # CuPy does not have is NumPy's TypeError "no implementation found".
        namespace = linalg if func.__module__ == "numpy.linalg" else sys.modules[__name__]
        impl = getattr(namespace, func.__name__, None) if func.__module__ in _DISPATCH else None
        if impl is None or not callable(impl):
            return NotImplemented
        return impl(*args, **kwargs)

    def __getitem__(self, key: Any) -> Any:
        return _device(np.ndarray.__getitem__(_host(self), _index(key)))

    def __setitem__(self, key: Any, value: Any) -> None:
        np.ndarray.__setitem__(_host(self), _index(key), _host(value))

    def __iter__(self) -> Iterator[Any]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    def _scalar(self, kind: type) -> Any:
        if self.ndim != 0:
            raise TypeError(
                f"{kind.__name__}() of a device array of shape {self.shape}: only a 0-d "
                "array converts (CuPy then waits for the GPU); use cupy.asnumpy(x)"
            )
        return kind(_read(self)[()])

    def __float__(self) -> float:
        return self._scalar(float)

    def __int__(self) -> int:
        return self._scalar(int)

    def __complex__(self) -> complex:
        return self._scalar(complex)

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        return bool(_read(self).reshape(()))

    def __index__(self) -> int:
        raise TypeError("a device array is not an index (CuPy has no __index__)")

    def __format__(self, spec: str) -> str:
        return format(_read(self)[()] if self.ndim == 0 else _read(self), spec)

    def __repr__(self) -> str:
        return repr(_read(self))

    def __str__(self) -> str:
        return str(_read(self))

    def item(self, *args: Any) -> Any:
        return _read(self).item(*args)

    def tolist(self) -> Any:
        raise TypeError(f"tolist() of a device array: {_IMPLICIT}")

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True):
        """The device -> host copy (counted)."""
        host = _read(self)
        if out is None:
            return host
        out[...] = host
        return out

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        """The host -> device copy into this array (counted)."""
        transfers.h2d += 1
        np.copyto(_host(self), arr)


ndarray.__module__ = "cupy"  # what minunet.core.backend.get_array_module recognises
_UFUNC_METHODS = {
    "reduce": ("add", "multiply"),
    "accumulate": ("add", "multiply"),
    "at": ("add", "maximum", "minimum"),
    "outer": tuple(n for n in dir(np) if isinstance(getattr(np, n), np.ufunc)),
}


def _missing(name: str) -> property:
    def refuse(self: ndarray) -> Any:
        raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")

    return property(refuse)


# NumPy's ndarray has these, CuPy's does not: refused, as on a GPU.
NOT_IN_CUPY = "ctypes dump getfield resize setfield setflags to_device tofile".split()
for _name in NOT_IN_CUPY:
    setattr(ndarray, _name, _missing(_name))
# Methods that give a NumPy scalar for a NumPy array give a 0-d device array here.
for _name in (
    "all any argmax argmin clip cumsum dot max mean min nonzero prod round std sum take trace var"
).split():
    setattr(ndarray, _name, _method(_name))
del _name


# --- the module's functions ------------------------------------------------------------


def _lift(name: str, numpy_module: ModuleType = np, where: str = "") -> Callable[..., Any]:
    """numpy.<name> on device arrays: host arrays refused, the result on the device; each
    call's shape recorded in ``used`` as ``where + name``."""
    base = getattr(numpy_module, name)

    def function(*args: Any, **kwargs: Any) -> Any:
        used.add((where + name, len(args), tuple(sorted(kwargs))))
        transfers.d2h += _SYNCS.get(where + name, 0)
        out = kwargs.get("out")
        result = base(*_host(args), **_host(kwargs))
        return out if out is not None else _device(result)

    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"cupy.{name} (stand-in): numpy.{name} on device arrays."
    return function


# The NumPy functions the stand-in offers, each one CuPy has (tests/test_standin.py checks).
FUNCTIONS = """
abs absolute add all allclose amax amin any arange arccos arcsin arctan arctan2 argmax
argmin argsort around array_equal ascontiguousarray atleast_1d atleast_2d atleast_3d
bincount broadcast_arrays broadcast_to ceil clip concatenate copy copyto cos cosh count_nonzero
cumprod cumsum diag diagonal divide dot einsum empty empty_like equal exp expand_dims expm1
eye flip floor floor_divide fmax fmin full full_like greater greater_equal hstack identity
isclose isfinite isinf isnan less less_equal linspace log log10 log1p log2 logical_and
logical_not logical_or logical_xor matmul max maximum mean meshgrid min minimum mod
moveaxis multiply nan_to_num negative nonzero not_equal ones ones_like pad power prod ravel
reciprocal remainder repeat reshape rint round sign sin sinh sort sqrt square squeeze stack
std subtract sum swapaxes take take_along_axis tan tanh tensordot tile transpose tril triu
true_divide trunc unique var vstack where zeros zeros_like
""".split()


class ufunc:  # noqa: N801 - CuPy's name
    """``cupy.add`` and the others: NumPy's ufunc, called on device arrays, so each call
    and each method (``reduce``, ``at``, ...) goes through ``ndarray.__array_ufunc__`` and
    its checks. Python scalars alone give a 0-d device array, as in CuPy."""

    def __init__(self, base: np.ufunc) -> None:
        self._base, self.__name__ = base, base.__name__
        self.nin, self.nout = base.nin, base.nout

    def _apply(self, method: str, args: tuple, kwargs: dict) -> Any:
        out = kwargs.get("out")
        outs = [] if out is None else list(out) if isinstance(out, tuple) else [out]
        if not _has_device_array(list(args) + outs):
            _host(args)  # refuses NumPy arrays, as CuPy does
            args = tuple(_device(_np_asarray(a)) for a in args)  # scalars: 0-d on the device
        return getattr(self._base, method)(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._apply("__call__", args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return self._apply("reduce", args, kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return self._apply("accumulate", args, kwargs)

    def at(self, *args: Any, **kwargs: Any) -> Any:
        return self._apply("at", args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return self._apply("outer", args, kwargs)

    def __repr__(self) -> str:
        return f"<ufunc 'cupy_{self.__name__}'>"


# The functions that read numbers back from the GPU before they can size their output, and
# how many (CuPy's sources mark each "synchronize!"): a read, counted like any other.
_SYNCS = {"bincount": 2, "nonzero": 1, "unique": 1}
for _name in FUNCTIONS:
    _base = getattr(np, _name)
    globals()[_name] = ufunc(_base) if isinstance(_base, np.ufunc) else _lift(_name)
del _name, _base
_DISPATCH = {"numpy", "numpy.linalg"}

# NumPy's types and constants, which CuPy re-exports unchanged.
TYPES = """
bool_ complex64 complex128 dtype e finfo float16 float32 float64 iinfo inf int8 int16
int32 int64 intp integer floating nan newaxis pi uint8 uint16 uint32 uint64
""".split()
for _name in TYPES:
    globals()[_name] = getattr(np, _name)
del _name


def asarray(
    a: Any, dtype: Any = None, order: Any = None, *, copy: Any = None, blocking: bool = False
) -> ndarray:
    """A device array: ``a`` itself when it already is one, else an upload (counted)."""
    if copy:
        return array(a, dtype, order=order or "K")
    if isinstance(a, ndarray):
        return _device(_np_asarray(_host(a), dtype=dtype, order=order))
    if _has_device_array(a):  # a list of device arrays: stacked on the device
        return _device(np.stack(_host(list(a))).astype(dtype, copy=False))
    transfers.h2d += 1
    return _np_array(a, dtype=dtype, order=order, copy=True).view(ndarray)


def array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", ndmin: int = 0):
    """Like ``asarray``, but a device array is copied unless ``copy=False``."""
    if isinstance(obj, ndarray):
        return _device(_np_array(_host(obj), dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    out = asarray(obj, dtype)
    return _device(_np_array(_host(out), ndmin=ndmin, copy=False))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, *, blocking=True):
    """The device -> host copy (counted); a host array is returned as it is."""
    if isinstance(a, ndarray):
        return a.get(out=out)
    return _np_asarray(a, order=order)


def get_array_module(*args: Any) -> ModuleType:
    device = builtins.any(isinstance(a, ndarray) for a in args)
    return sys.modules[__name__] if device else np


def get_default_memory_pool() -> _MemoryPool:
    calls.append("get_default_memory_pool")
    return _POOL


def get_default_pinned_memory_pool() -> _MemoryPool:
    calls.append("get_default_pinned_memory_pool")
    return _POOL


class _MemoryPool:
    def free_all_blocks(self, stream: Any = None) -> None:
        calls.append("MemoryPool.free_all_blocks")

    def used_bytes(self) -> int:
        calls.append("MemoryPool.used_bytes")
        return 0

    def total_bytes(self) -> int:
        calls.append("MemoryPool.total_bytes")
        return 0

    def set_limit(self, size: Any = None, fraction: Any = None) -> None:
        calls.append("MemoryPool.set_limit")


_POOL = _MemoryPool()


# --- kernels ----------------------------------------------------------------------------


class RawKernel:
    """``cupy.RawKernel(code, name)``: a launch runs ``code`` on the CPU emulator."""

    def __init__(self, code: str, name: str, options: tuple = (), backend: str = "nvrtc", **_):
        self.code, self.name = code, name

    def __call__(self, grid: tuple, block: tuple, args: tuple, **_: Any) -> None:
        run_kernel(self.code, self.name, grid, block, args)


def run_kernel(code: str, name: str, grid: tuple, block: tuple, args: tuple) -> None:
    """Run one launch of a minunet kernel on the emulator, on the device arrays' memory.

    The one place that knows how minunet's kernels are found and emulated: by the source
    CuPy would compile (``Kernel.code(ctype)``), among ``minunet.accel.cuda.KERNELS``.
    """
    from minunet.accel.cuda import KERNELS, emulator
    from minunet.accel.cuda import kernel as kernels

    for k in KERNELS:
        for dtype, ctype in kernels.C_TYPES.items():
            if k.name == name and k.code(ctype) == code:
                values = [_host(a) for a in args]
                emulator.run_on_cpu(k, np.dtype(dtype), int(np.prod(grid) * np.prod(block)), values)
                return
    raise RuntimeError(f"RawKernel {name!r}: not one of minunet's kernels, nothing to emulate")


@contextmanager
def kernel_paths(enabled: bool) -> Iterator[None]:
    """Within the block the layers take (``True``) or skip (``False``) their hand-written
    kernels on device arrays, launched through this module's ``RawKernel``.

    The one place that knows minunet's kernel switches (``ENABLED``, and the compiled
    kernels each ``Kernel`` caches: dropped on the way in and out, so a real CuPy in the
    same session never launches a stand-in's kernel, nor the reverse). A change in how
    minunet dispatches to its kernels is a change here alone.
    """
    from minunet.accel.cuda import KERNELS
    from minunet.accel.cuda import kernel as kernels

    def forget_compiled() -> None:
        for k in KERNELS:
            k._compiled.clear()

    saved = kernels.ENABLED
    kernels.ENABLED = enabled
    forget_compiled()
    try:
        yield
    finally:
        kernels.ENABLED = saved
        forget_compiled()


# --- submodules: random, linalg, cuda ---------------------------------------------------


random = ModuleType("cupy.random", "cupy.random (stand-in): NumPy's generators, device results.")
# CuPy's Generator has these methods only (no normal, permutation, choice, shuffle).
GENERATOR_METHODS = (
    "beta binomial exponential gamma integers poisson random standard_normal uniform"
)


class _Generator:
    """``cupy.random.Generator``: NumPy's PCG64 underneath, results on the device."""

    def __init__(self, seed: Any = None) -> None:
        self._rng = np.random.default_rng(seed)


def _generator_method(name: str) -> Callable[..., Any]:
    def method(self: _Generator, *args: Any, **kwargs: Any) -> Any:
        # "self" counts as a positional argument, as in the real method's signature.
        used.add(("random.Generator." + name, 1 + len(args), tuple(sorted(kwargs))))
        return _device(getattr(self._rng, name)(*_host(args), **_host(kwargs)))

    method.__name__ = name
    return method


for _name in GENERATOR_METHODS.split():
    setattr(_Generator, _name, _generator_method(_name))
del _name
_Generator.__name__ = _Generator.__qualname__ = "Generator"
random.Generator = _Generator
random.default_rng = lambda seed=None: _Generator(seed)
random.seed = lambda seed=None: np.random.seed(seed)

linalg = ModuleType("cupy.linalg", "cupy.linalg (stand-in)")
for _name in ("norm", "solve", "inv", "det"):
    setattr(linalg, _name, _lift(_name, np.linalg, "linalg."))
del _name


def _recorded(name: str, result: Any = None) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return result

    call.__name__ = name.rsplit(".", 1)[-1]
    return call


class _Stream:
    """A stream: synchronising it is a no-op, recorded."""

    ptr = 0

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False):
        calls.append("Stream")

    synchronize = _recorded("Stream.synchronize")
    use = _recorded("Stream.use")

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Device:
    """A device: always device 0 of 1."""

    def __init__(self, device: Any = None) -> None:
        calls.append("Device")
        self.id = 0 if device is None else int(device)

    use = _recorded("Device.use")
    synchronize = _recorded("Device.synchronize")

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


cuda = ModuleType("cupy.cuda", "cupy.cuda (stand-in): devices and streams that record calls.")
cuda.runtime = ModuleType("cupy.cuda.runtime", "cupy.cuda.runtime (stand-in)")
cuda.runtime.getDeviceCount = _recorded("runtime.getDeviceCount", 1)
cuda.runtime.getDevice = _recorded("runtime.getDevice", 0)
cuda.runtime.setDevice = _recorded("runtime.setDevice")
cuda.runtime.deviceSynchronize = _recorded("runtime.deviceSynchronize")
cuda.Device = _Device
cuda.Stream = _Stream
cuda.MemoryPool = _MemoryPool
cuda.is_available = _recorded("cuda.is_available", True)
_STREAM = _Stream()
calls.clear()
cuda.get_current_stream = lambda device=None: (calls.append("get_current_stream"), _STREAM)[1]


# --- installing ------------------------------------------------------------------------


def _strict(convert: Callable[..., Any]) -> Callable[..., Any]:
    """numpy.asarray and friends, refusing a device array as CuPy's ``__array__`` does
    (NumPy never asks a subclass for ``__array__``, so it is asked here)."""

    def strict(a: Any, *args: Any, **kwargs: Any) -> Any:
        if _has_device_array(a):
            raise TypeError(_IMPLICIT)
        return convert(a, *args, **kwargs)

    strict.__name__, strict.__doc__ = convert.__name__, convert.__doc__
    return strict


_CONVERSIONS = ("asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray")


@contextmanager
def install(kernels: bool = True) -> Iterator[ModuleType]:
    """Within the block this module is ``cupy`` (and ``cupy.random``, ``cupy.cuda``, ...)
    and NumPy's conversions refuse device arrays; the layers take their hand-written
    kernels on device arrays or not, as ``kernels`` says (``kernel_paths``). The counters
    and ``calls`` start at zero."""
    this = sys.modules[__name__]
    modules = {"cupy": this, "cupy.random": random, "cupy.linalg": linalg, "cupy.cuda": cuda}
    modules["cupy.cuda.runtime"] = cuda.runtime
    saved_modules = {name: sys.modules.get(name) for name in modules}
    saved_numpy = {name: getattr(np, name) for name in _CONVERSIONS}
    transfers.reset()
    calls.clear()
    used.clear()
    sys.modules.update(modules)
    for name, convert in saved_numpy.items():
        setattr(np, name, _strict(convert))
    try:
        with kernel_paths(kernels):
            yield this
    finally:
        for name, convert in saved_numpy.items():
            setattr(np, name, convert)
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
