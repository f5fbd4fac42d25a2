"""The pure-C kernels built as a host shared library, for fast numpy checks through ctypes.

The kernels include no MicroPython headers, so the same sources the firmware uses compile
here with the host gcc, the qemu port's warning flags and UBSan in trap mode (a bug traps
instead of passing silently; no sanitizer runtime is needed inside the Python process).
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "usermod" / "mcutrain" / "kernels"
CFLAGS = [
    "-std=gnu99", "-O2", "-fPIC", "-shared",
    "-Wall", "-Wextra", "-Werror", "-Wdouble-promotion", "-Wfloat-conversion",
    "-fsanitize=undefined", "-fsanitize-undefined-trap-on-error",
]


def build_kernels(out_dir: Path, defines: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile every kernels/*.c (or the `only` ones, e.g. "gemm_f32") into one shared library
    in out_dir and load it; `defines` (e.g. "MCUTRAIN_GEMM_WIDE") select paths a target other
    than the host builds."""
    sources = sorted(str(p) for p in KERNEL_DIR.glob("*.c") if not only or p.stem in only)
    lib = out_dir / "libmtkernels.so"
    flags = [f"-D{d}" for d in defines]
    subprocess.run(["gcc", *CFLAGS, *flags, "-I", str(KERNEL_DIR), "-o", str(lib), *sources, "-lm"],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def f32(a: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy (or the array itself) for passing to a kernel."""
    return np.ascontiguousarray(a, dtype=np.float32)


def ptr(a: np.ndarray | None) -> ctypes.c_void_p:
    """A pointer to an array's data for a kernel argument; None becomes NULL."""
    if a is None:
        return ctypes.c_void_p(None)
    assert a.flags.c_contiguous, "kernels take C-contiguous arrays"
    return ctypes.c_void_p(a.ctypes.data)
