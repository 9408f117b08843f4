"""What a benchmark record says about where it was measured: the machine in words, and its
command line without this machine's paths (stdlib only: scripts that must not import the
compiler, such as the cost study's PyTorch runtime, use it too)."""

from __future__ import annotations

import platform
from pathlib import Path

# The vector instruction sets ONNX Runtime's CPU kernels (MLAS) pick their code paths by: two
# machines with the same core count can rank the same kernels differently.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_description() -> str:
    """The CPU's model name and the vector instruction sets it has ('AMD EPYC (avx2 avx512f
    ...)'), for a record's machine field; the platform's processor name where /proc/cpuinfo
    is not there."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    flags = next(
        (
            set(line.split(":", 1)[1].split())
            for line in info.splitlines()
            if line.startswith("flags")
        ),
        set(),
    )
    present = [flag for flag in VECTOR_FLAGS if flag in flags]
    return f"{model} ({' '.join(present)})" if present else model


def portable_argument(arg: str) -> str:
    """A command-line argument as a record keeps it: an absolute path (this machine's), also
    as NAME=PATH, by its file name; anything else as it is."""
    name, sep, value = arg.rpartition("=")
    if value.startswith("/"):
        return f"{name}{sep}{Path(value).name}"
    return arg
