"""redcompile: compile a causal LM plus a ReDrafter draft head into one speculative-decoding
artifact.

The library API lives in `redcompile.api` (generation) and `redcompile.compiler` (convert); the
names below are re-exported lazily so that `import redcompile.ops` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "open_generator": "redcompile.api",
    "open_model_folder": "redcompile.api",
    "Generator": "redcompile.api",
    "GenerationConfig": "redcompile.generation",
    "BeamShape": "redcompile.config",
    "convert": "redcompile.compiler",
    "ConvertOptions": "redcompile.compiler",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'redcompile' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]
