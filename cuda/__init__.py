"""redcompile's CUDA kernels and the torch library built from them on demand.

The kernels (`*.cu`) have a plain C interface (`redcompile_kernels.h`) shared by the torch
bindings and TensorRT plugins. `torch_registration.cpp` defines the ops' schemas from the
generated `torch_ops_generated.h` (see `gen_registrations.py`), and `torch_bindings.cpp` adds
their CUDA implementations. `load_library()` compiles all of them with
`torch.utils.cpp_extension` (once per process; torch caches the build on disk) and loads the
result, after which `torch.ops.redcompile.*` run the kernels for CUDA tensors. docs/cuda.md has
the design.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
HEADER = SOURCE_DIR / "redcompile_kernels.h"
KERNEL_SOURCES = (
    "status.cu",
    "tree_attention.cu",
    "beam_select.cu",
    "tree_building.cu",
    "acceptance.cu",
    "kv_compaction.cu",
    "prompt_lookup.cu",
)
BINDING_SOURCES = ("torch_registration.cpp", "torch_bindings.cpp")
LIBRARY_NAME = "redcompile_cuda_ops"
# Same flags as cuda/build.sh --check, less the fixed architectures: torch builds for the GPU
# it sees (or TORCH_CUDA_ARCH_LIST).
CUDA_FLAGS = ("-O3", "-lineinfo")
CXX_FLAGS = ("-O3",)

_lock = threading.Lock()
_loaded_path: str | None = None


def sources() -> list[Path]:
    """Every source file the library is built from, kernels first."""
    return [SOURCE_DIR / name for name in (*KERNEL_SOURCES, *BINDING_SOURCES)]


def unavailable_reason() -> str | None:
    """Why the kernels cannot be built and run here, or None when they can."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "torch is not installed"
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return "the CUDA toolkit (nvcc) is not installed; set CUDA_HOME"
    return None


def available() -> bool:
    """Whether `load_library()` can build and load the kernels in this process."""
    return _loaded_path is not None or unavailable_reason() is None


def loaded() -> bool:
    """Whether the library is loaded in this process."""
    return _loaded_path is not None


def load_library(verbose: bool = False) -> str:
    """Build (when needed) and load the CUDA ops library; returns its path. Idempotent.

    Raises RuntimeError, saying why, when there is no GPU or no CUDA toolkit. The build goes to
    $REDCOMPILE_CUDA_BUILD_DIR when set, else torch's extension cache.
    """
    global _loaded_path
    with _lock:
        if _loaded_path is not None:
            return _loaded_path
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"redcompile's CUDA kernels are unavailable: {reason}")
        from torch.utils import cpp_extension

        build_dir = os.environ.get("REDCOMPILE_CUDA_BUILD_DIR")
        if build_dir:
            Path(build_dir).mkdir(parents=True, exist_ok=True)
        path = cpp_extension.load(
            name=LIBRARY_NAME,
            sources=[str(p) for p in sources()],
            extra_cflags=list(CXX_FLAGS),
            extra_cuda_cflags=list(CUDA_FLAGS),
            extra_include_paths=[str(SOURCE_DIR)],
            build_directory=build_dir or None,
            is_python_module=False,
            verbose=verbose,
        )
        # The Python half (CPU references, fakes) registers on import; order does not matter.
        import redcompile.ops  # noqa: F401

        _loaded_path = str(path)
        return _loaded_path


__all__ = [
    "BINDING_SOURCES",
    "HEADER",
    "KERNEL_SOURCES",
    "SOURCE_DIR",
    "available",
    "load_library",
    "loaded",
    "sources",
    "unavailable_reason",
]
