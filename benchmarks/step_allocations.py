"""The bytes of NumPy arrays one minunet training step allocates, by the line that asked.

    python benchmarks/step_allocations.py                 # base 32, depth 4, BN, 8x128x128
    python benchmarks/step_allocations.py --base 16 --top 20

Every fresh array is written in full once at least, by a copy or by a computation, so
the bytes allocated per step are a floor on the memory traffic the step makes beyond
its reads; the copies among them are the lines that only move data (a concatenation, a
padded copy, a transpose). The reusable scratch buffers (``minunet.accel.cpu.scratch``)
are left out of the count, though they are written again every step: each thread makes
or grows its own the first time it takes a block of a new size, which happens in
whichever step the pool first hands it one.

How it counts: NumPy lets a program install its own allocator for array data
(``PyDataMem_SetHandler``, NumPy's C API, called here through ctypes). This one hands
every request to the C library's malloc, as NumPy's default does (without its cache of
small blocks, which only changes where they come from), and adds its size to the Python
line of minunet that was running (the innermost frame in ``minunet/``). The handler
belongs to a thread's context, so it is installed in the calling thread and in every
thread of minunet's pool (``minunet.accel.cpu``), where the blocked products run. The
counts are deterministic: the same code and shapes give the same bytes on every run,
whatever else the machine does, so one step is counted, after an uncounted one that
makes the optimiser's state.

Rows: the step as it runs (``benchmarks/step.py``'s minunet), and its "joins copying"
row: the decoder's joins concatenating (``Concat.room`` off: each up-convolution
allocates its own output, and the join copies it), the step as it was before the
up-convolutions wrote into the joins' buffers.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_unet_arguments, setup, table  # noqa: E402

from minunet.accel import cpu  # noqa: E402

PACKAGE = str(ROOT / "minunet")

# NumPy's allocator interface (numpy/_core/include/numpy/ndarraytypes.h, NumPy >= 1.22)
_MALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_CALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
_REALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
# PyDataMem_SetHandler's and PyDataMem_GetHandler's slots in NumPy's C-API table
# (numpy/_core/include/numpy/__multiarray_api.h)
_SET_HANDLER, _GET_HANDLER = 304, 305


class _Allocator(ctypes.Structure):
    _fields_ = [
        ("ctx", ctypes.c_void_p),
        ("malloc", _MALLOC),
        ("calloc", _CALLOC),
        ("realloc", _REALLOC),
        ("free", _FREE),
    ]


class _Handler(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * 127),
        ("version", ctypes.c_uint8),
        ("allocator", _Allocator),
    ]


def _c_library() -> Any:
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.calloc.restype, libc.calloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t] * 2
    libc.realloc.restype = ctypes.c_void_p
    libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    return libc


def _numpy_api(slot: int, *argtypes: Any) -> Callable[..., Any]:
    """The function in ``slot`` of NumPy's C-API table, taking and returning objects."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    table = ctypes.cast(
        get(np._core._multiarray_umath._ARRAY_API, None), ctypes.POINTER(ctypes.c_void_p)
    )
    return ctypes.PYFUNCTYPE(ctypes.py_object, *argtypes)(table[slot])


def _site() -> str:
    """'file:line (function)' of the innermost frame running minunet's code."""
    frame = sys._getframe(2)  # above this function and the allocator callback
    while frame is not None and not frame.f_code.co_filename.startswith(PACKAGE):
        frame = frame.f_back
    if frame is None:
        return "(outside minunet)"
    path = Path(frame.f_code.co_filename).relative_to(ROOT)
    return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"


class AllocationCounter:
    """Bytes of NumPy array data allocated while ``counting()`` is active, per site."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()
        self.active = False
        libc = _c_library()

        def malloc(ctx: Any, size: int) -> int:
            if self.active:
                self.bytes[_site()] += size
            return libc.malloc(size)

        def calloc(ctx: Any, count: int, size: int) -> int:
            if self.active:
                self.bytes[_site()] += count * size
            return libc.calloc(count, size)

        def realloc(ctx: Any, ptr: int, size: int) -> int:  # growth is not counted
            return libc.realloc(ptr, size)

        def free(ctx: Any, ptr: int, size: int) -> None:
            libc.free(ptr)

        # kept on self: ctypes callbacks must outlive every array they allocated
        self._callbacks = (_MALLOC(malloc), _CALLOC(calloc), _REALLOC(realloc), _FREE(free))
        self._handler = _Handler(b"minunet_counting", 1, _Allocator(None, *self._callbacks))
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        self._capsule = new(ctypes.addressof(self._handler), b"mem_handler", None)
        self._set = _numpy_api(_SET_HANDLER, ctypes.py_object)  # (capsule) -> the old one
        self._default = _numpy_api(_GET_HANDLER)()  # this thread's handler now: NumPy's
        # Arrays allocated here are freed through these callbacks, some only when the
        # interpreter shuts down (scratch buffers, caches): the counter must never be
        # freed before them, so it holds one reference to itself that nothing drops.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self))

    def install_everywhere(self) -> None:
        """Install the handler in this thread and in each of minunet's pool threads."""
        self._everywhere(lambda: self._set(self._capsule))

    def uninstall_everywhere(self) -> None:
        """Put NumPy's default handler back in those threads (the arrays this one made are
        still freed through it, whenever they go)."""
        self._everywhere(lambda: self._set(self._default))

    def _everywhere(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in this thread and in every thread of minunet's pool (all of them: a
        pool grown for more threads earlier in the process has more than the
        ``num_threads() - 1`` a step uses, and any of them may take a step's blocks)."""
        fn()
        if cpu.num_threads() < 2:
            return
        cpu.parallel(lambda worker, chunk: None, range(cpu.num_threads()))  # starts the pool
        cpu.on_every_worker(fn)

    @contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        """Count the allocations of the block; yields the per-site counts (fresh)."""
        self.bytes = Counter()
        self.active = True
        try:
            yield self.bytes
        finally:
            self.active = False


def count_step(step: Callable[[], None], counter: AllocationCounter) -> Counter[str]:
    """Bytes per site of one ``step``, after an uncounted one (the optimiser's state),
    without the scratch buffers' (see the module's docstring)."""
    step()
    with counter.counting() as counts:
        step()
    return Counter({site: n for site, n in counts.items() if not site.endswith("(scratch)")})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser)
    parser.add_argument("--top", type=int, default=12, help="sites to list (default 12)")
    args = parser.parse_args(argv)
    from step import build  # noqa: PLC0415  (imports torch, as step.py does)

    dev = setup("numpy", False)
    counter = AllocationCounter()
    counter.install_everywhere()
    _, contenders = build(dev, args.base, args.depth, args.batch, args.size, join_rows=True)
    now = count_step(contenders["minunet"], counter)
    before = count_step(contenders["minunet, joins copying"], counter)
    mib = 2**20
    print(
        f"# NumPy array bytes allocated in one training step, b{args.base} d{args.depth} "
        f"n{args.batch} {args.size}px, float32, Adam"
    )
    rows = [
        ["up-convolutions into the joins (now)", f"{sum(now.values()) / mib:.1f}"],
        ["joins concatenating (before)", f"{sum(before.values()) / mib:.1f}"],
    ]
    print(table(["step", "MiB allocated"], rows))
    print()
    sites = sorted(set(now) | set(before), key=lambda s: -max(now[s], before[s]))
    print(
        table(
            ["site", "MiB now", "MiB before"],
            [[s, f"{now[s] / mib:.1f}", f"{before[s] / mib:.1f}"] for s in sites[: args.top]],
        )
    )


if __name__ == "__main__":
    main()
