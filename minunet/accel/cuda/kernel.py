"""Hand-written CUDA kernels: how they are written, compiled and launched.

Most of minunet runs on the GPU through CuPy's NumPy-like API, one kernel launch per
array operation. Where that generic path does many passes over memory for one idea
(im2col as nine slice copies, a max-pool as a tournament of comparisons, BatchNorm as a
dozen broadcasts), a short CUDA kernel does the same arithmetic in one pass. Each family
of kernels has its own module in ``minunet.accel.cuda`` (im2col, pool, batchnorm, loss,
optim), with the layer class that uses them, a subclass of the reference layer it
replaces; a test compares the two. Set ``MINUNET_CUDA_KERNELS=0`` to run CuPy through the
reference layers' array code instead.

Every kernel here follows one rule: **one logical thread computes one independent output
and reads whatever it needs** (a gather). No two threads write the same element, so there
are no atomics and no races, and no thread waits for another (no shared memory, no
``__syncthreads``). Work items are handed out by a grid-stride loop,

    for_each(i, n) { ... }      // i = this thread's index, then + (threads in the grid)

so any grid size computes the same result. That rule buys a second thing: the kernels can
run **without a GPU**. Executed one thread after another on the CPU they give exactly the
GPU's answer, so the tests compile each kernel's source with a C++ compiler and check it
against NumPy on every CI run (``minunet/accel/cuda/emulator.py``), and compile it for the H100
(``compute_90``) with NVRTC, CUDA's own compiler, so a syntax error cannot wait for a GPU
to show itself.

A kernel's source is written once for an element type ``T`` and compiled for each dtype
it meets, behind a ``typedef float T;`` or ``typedef double T;`` (a typedef, not
``-DT=float``: a macro named T would also rewrite the template parameters of CUDA's own
headers). Other dtypes (float16) take the generic path. The argument list is read from
the source, so a call passes plain Python numbers and arrays: ints become the declared
``int`` or ``long long``, floats become ``T``, and an array whose dtype does not match the
declared pointer type is a TypeError instead of a silent misread of memory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module

# MINUNET_CUDA_KERNELS=0 runs CuPy arrays through the generic NumPy-style code instead.
ENABLED = os.environ.get("MINUNET_CUDA_KERNELS", "1") != "0"

THREADS_PER_BLOCK = 256
# A cap on the grid: an H100 holds 132 SMs x 8 resident blocks of 256 threads (2048 threads
# per SM), so 8192 blocks are about 8 full waves. Larger launches gain nothing from more
# blocks, which would only queue; the grid-stride loop gives each thread more items instead.
MAX_BLOCKS = 8192

# Put in front of every kernel: the grid-stride loop (see the module docstring).
PRELUDE = r"""
#define for_each(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)
"""

# C parameter types -> what a Python argument becomes. "T" is the element type.
_SCALARS = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64}
_POINTEES = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "long long": np.int64,
    "unsigned char": np.uint8,
}
C_TYPES = {np.float32: "float", np.float64: "double"}  # the dtypes a kernel's T can be
_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')

# ``minunet.accel.cuda.emulator.emulate()`` sets these: kernels then run on NumPy arrays
# with a CPU compiler, and with ``route_numpy`` the layers send NumPy arrays down their
# kernel paths too.
emulator: Callable[[Kernel, np.dtype, int, list[Any]], None] | None = None
route_numpy = False


def enabled_for(x: Any) -> bool:
    """True when the hand-written kernels are switched on and ``x`` is a float32 or
    float64 CuPy array (or, under the emulator with ``route_numpy``, NumPy array)."""
    if not ENABLED or getattr(getattr(x, "dtype", None), "type", None) not in C_TYPES:
        return False
    return get_array_module(x) is not np or (route_numpy and emulator is not None)


class Kernel:
    """One ``extern "C" __global__`` function, compiled per element type on first use."""

    def __init__(self, source: str) -> None:
        match = _SIGNATURE.search(source)
        if match is None:
            raise ValueError('kernel source needs one extern "C" __global__ void name(...)')
        self.name = match.group(1)
        self.text = source.strip()  # the kernel as written (to read)
        self.source = PRELUDE + source  # what is compiled
        # [(C type without const/restrict, is_pointer, parameter name)]
        self.params: list[tuple[str, bool, str]] = []
        for decl in match.group(2).split(","):
            words = decl.replace("*", " * ").replace("const", " ").replace("__restrict__", " ")
            *ctype, name = words.split()
            pointer = "*" in ctype
            self.params.append((" ".join(w for w in ctype if w != "*"), pointer, name))
        self._compiled: dict[str, Any] = {}

    def arguments(self, dtype: np.dtype, args: tuple[Any, ...]) -> list[Any]:
        """Check arrays against the declared pointer types; give scalars their C type."""
        if len(args) != len(self.params):
            raise TypeError(
                f"kernel {self.name} takes {len(self.params)} arguments, got {len(args)}"
            )
        out = []
        for (ctype, pointer, name), arg in zip(self.params, args, strict=True):
            want = dtype.type if ctype == "T" else (_POINTEES if pointer else _SCALARS)[ctype]
            if pointer:
                if np.dtype(arg.dtype) != np.dtype(want) or not arg.flags.c_contiguous:
                    raise TypeError(
                        f"kernel {self.name}: {name} must be a C-contiguous {np.dtype(want)} "
                        f"array, got {arg.dtype} (contiguous: {arg.flags.c_contiguous})"
                    )
                out.append(arg)
            else:
                out.append(want(arg))
        return out

    def __call__(self, work_items: int, dtype: Any, *args: Any) -> None:
        """Launch over ``work_items`` logical threads with ``T`` = ``dtype``."""
        dtype = np.dtype(dtype)
        values = self.arguments(dtype, args)
        if work_items <= 0:
            return
        if get_array_module(*values) is np:  # NumPy arrays: only the tests' CPU emulator
            if emulator is None:
                raise TypeError(f"kernel {self.name} runs on CuPy arrays, got NumPy arrays")
            emulator(self, dtype, work_items, values)
            return
        blocks = min(MAX_BLOCKS, math.ceil(work_items / THREADS_PER_BLOCK))
        self._function(dtype)((blocks,), (THREADS_PER_BLOCK,), tuple(values))

    def code(self, ctype: str) -> str:
        """The full source for ``T`` = ctype (``float`` or ``double``)."""
        return f"typedef {ctype} T;\n{self.source}"

    def _function(self, dtype: np.dtype) -> Any:
        """The compiled kernel for ``T`` = dtype (CuPy caches the binary on disk too)."""
        ctype = C_TYPES[dtype.type]
        if ctype not in self._compiled:
            import cupy

            self._compiled[ctype] = cupy.RawKernel(self.code(ctype), self.name)
        return self._compiled[ctype]
