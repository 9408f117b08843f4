"""ONNX Runtime session settings for decoding: how many threads, and whether they spin.

A decoding step is a few hundred microseconds of small kernels on a small model; every kernel
that runs in parallel synchronises the intra-op pool, and a spinning pool thread competes with
the host loop for a core between steps. `session_options` is the one place the generate/bench
defaults are made, so every command decodes with the same settings (docs/cli.md, "Threads").
"""

from __future__ import annotations

from typing import Any

from redcompile.errors import InputError


def session_options(threads: int | None = None, spinning: bool | None = None) -> Any:
    """SessionOptions for a decoding session: `threads` intra-op threads (None or 0: ONNX
    Runtime's default, one per core), pool threads spinning between kernels or not (None:
    ONNX Runtime's default, spinning); one inter-op thread, sequential execution."""
    import onnxruntime as ort

    if threads is not None and threads < 0:
        raise InputError(f"--threads must be 0 (the runtime's default) or more, got {threads}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if spinning is not None:
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options
