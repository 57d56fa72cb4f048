"""Run minunet's CUDA kernels without a GPU, and compile them with NVRTC.

For the tests, and for anyone reading or writing a kernel on a machine without a GPU.

``emulate()`` installs a CPU stand-in for the GPU: each kernel's source is compiled with
the system C++ compiler, the CUDA built-ins (blockIdx, threadIdx, ...) become ordinary
variables, and a small driver calls the kernel once per thread of the grid, one after
another. Because every minunet kernel is a gather (one thread, one output, no shared
memory, no atomics: see ``minunet/accel/cuda/kernel.py``), that sequential schedule computes exactly
what the GPU computes. The grid is deliberately small (3 blocks of 32 threads), so every
grid-stride loop takes several turns.

``nvrtc_compile()`` compiles a kernel for the H100/H200 (compute_90) with NVRTC from the
``nvidia-cuda-nvrtc`` wheel, loaded with ctypes: CUDA's own front end checks the source
on a machine with no GPU and no CuPy.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from minunet.accel.cuda import kernel as cuda

CXX = shutil.which("g++") or shutil.which("c++")

_SHIM = r"""
#include <algorithm>
#include <cmath>
using std::exp; using std::log; using std::sqrt; using std::max; using std::min;
struct Dim3 { unsigned x, y, z; };
static Dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
"""

_C_TYPES = {
    np.int32: ctypes.c_int32,
    np.int64: ctypes.c_int64,
    np.float32: ctypes.c_float,
    np.float64: ctypes.c_double,
}
_BLOCKS, _THREADS = 3, 32
_libraries: dict[tuple[str, str, str], Any] = {}
_build_dir: str | None = None  # a temporary folder for the compiled kernels, made on first use


def _driver(kernel: cuda.Kernel) -> str:
    """C++ that calls the kernel once per (block, thread) of a gridDim x blockDim grid."""
    params = ", ".join(f"{t}{'*' if p else ''} {n}" for t, p, n in kernel.params)
    names = ", ".join(n for _, _, n in kernel.params)
    return f"""
extern "C" void emulate_{kernel.name}(unsigned grid, unsigned block, {params}) {{
    gridDim = {{grid, 1, 1}};
    blockDim = {{block, 1, 1}};
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t) {{
            blockIdx = {{b, 0, 0}};
            threadIdx = {{t, 0, 0}};
            {kernel.name}({names});
        }}
}}
"""


def _library(kernel: cuda.Kernel, ctype: str) -> Any:
    """Compile (once) the kernel with T = ctype into a shared library."""
    global _build_dir
    code = f"{_SHIM}\n{kernel.code(ctype)}\n{_driver(kernel)}"
    digest = hashlib.sha1(code.encode()).hexdigest()[:16]
    key = (kernel.name, ctype, digest)  # by content: an edited kernel is compiled anew
    if key not in _libraries:
        if CXX is None:
            raise RuntimeError("the CUDA emulator needs a C++ compiler (g++ or c++) on PATH")
        _build_dir = _build_dir or tempfile.mkdtemp(prefix="minunet-cuda-emulator-")
        path = os.path.join(_build_dir, f"{kernel.name}_{ctype}_{digest}.so")
        src = path[:-3] + ".cpp"
        with open(src, "w") as f:
            f.write(code)
        # -ffp-contract=off: no fused multiply-adds, so the results are NumPy's to the bit
        # on every CPU (x86-64-v3 and ARM compilers would otherwise fuse a*b + c).
        cmd = [CXX, "-std=c++17", "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-Wall"]
        cmd += ["-Werror", src, "-o", path]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{kernel.name} ({ctype}) does not compile:\n{done.stderr}")
        _libraries[key] = ctypes.CDLL(path)
    return _libraries[key]


def run_on_cpu(kernel: cuda.Kernel, dtype: np.dtype, work_items: int, args: list[Any]) -> None:
    """minunet.accel.cuda.kernel's emulator hook: run one launch on NumPy arrays."""
    ctype = cuda.C_TYPES[dtype.type]
    fn = getattr(_library(kernel, ctype), f"emulate_{kernel.name}")
    c_args: list[Any] = []
    for (_, pointer, _), value in zip(kernel.params, args, strict=True):
        if pointer:
            c_args.append(ctypes.c_void_p(value.ctypes.data))
        else:  # already a NumPy scalar of the declared C type (Kernel.arguments)
            c_args.append(_C_TYPES[type(value)](value))
    fn.restype = None
    fn(ctypes.c_uint(_BLOCKS), ctypes.c_uint(_THREADS), *c_args)


@contextmanager
def emulate(route_numpy: bool = False) -> Iterator[None]:
    """Within the block, kernels called on NumPy arrays run on the CPU emulator.

    With ``route_numpy`` the layers also take their kernel paths for NumPy arrays, as
    they do for CuPy arrays: a whole forward and backward then runs the GPU's arithmetic.
    """
    saved = cuda.emulator, cuda.route_numpy
    cuda.emulator, cuda.route_numpy = run_on_cpu, route_numpy
    try:
        yield
    finally:
        cuda.emulator, cuda.route_numpy = saved


def _find_nvrtc() -> str | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel in this environment, if installed."""
    for root in sys.path:
        hits = sorted(glob.glob(os.path.join(root, "nvidia", "cu*", "lib", "libnvrtc.so.*")))
        hits += sorted(glob.glob(os.path.join(root, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")))
        if hits:
            return hits[-1]
    return None


NVRTC = _find_nvrtc()


def nvrtc_compile(kernel: cuda.Kernel, ctype: str, arch: str = "compute_90") -> None:
    """Compile the kernel to PTX with NVRTC; raise with the compiler's log on an error."""
    if NVRTC is None:
        raise RuntimeError("NVRTC is not installed: pip install nvidia-cuda-nvrtc")
    lib = ctypes.CDLL(NVRTC)
    program = ctypes.c_void_p()
    source = kernel.code(ctype).encode()
    check = lib.nvrtcCreateProgram(
        ctypes.byref(program), source, f"{kernel.name}.cu".encode(), 0, None, None
    )
    if check != 0:
        raise RuntimeError(f"nvrtcCreateProgram failed with status {check}")
    options = [f"-arch={arch}".encode()]
    array = (ctypes.c_char_p * len(options))(*options)
    status = lib.nvrtcCompileProgram(program, len(options), array)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    lib.nvrtcDestroyProgram(ctypes.byref(program))
    if status != 0:
        raise RuntimeError(
            f"NVRTC: {kernel.name} (T={ctype}) does not compile:\n{log.value.decode()}"
        )
