"""ONNX Runtime session settings for decoding: how many threads, and whether they spin.

A decoding step is a few hundred microseconds of small kernels on a small model; every kernel
that runs in parallel synchronises the intra-op pool, and a spinning pool thread competes with
the host loop for a core between steps. `session_options` is the one place the generate/bench
defaults are made, so every command decodes with the same settings (docs/cli.md, "Threads").

A spinning pool keeps one thread at a full core for ~30 ms after a session run returns before
it sleeps (measured on the fixture, 2 threads). A measurement that times several sessions in
turn (`bench`, `tune`, bench/peers.py) waits for that to end between them
(`wait_until_idle`), or the next session shares its cores with the last one's pool.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
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


IDLE_WINDOW_S = 0.01  # several scheduler ticks: a running thread's CPU time is updated at ticks
IDLE_SHARE = 0.02  # of one core: what counts as idle over the window
IDLE_TIMEOUT_S = 0.5


def cpu_nanoseconds(pid: int | None = None) -> int | None:
    """CPU time so far of every thread of process `pid` (None: this one), from Linux's /proc;
    None where that is not available."""
    total = 0
    try:
        for task in Path(f"/proc/{pid or os.getpid()}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


def wait_until_idle(pid: int | None = None, timeout: float = IDLE_TIMEOUT_S) -> None:
    """Return once process `pid` (None: this one, whose caller sleeps meanwhile) uses under
    IDLE_SHARE of a core over IDLE_WINDOW_S, i.e. no pool thread of it still spins, or after
    `timeout` seconds; at once where CPU time cannot be read."""
    before = cpu_nanoseconds(pid)
    deadline = time.perf_counter() + timeout
    while before is not None and time.perf_counter() < deadline:
        time.sleep(IDLE_WINDOW_S)
        now = cpu_nanoseconds(pid)
        if now is None or now - before < IDLE_SHARE * IDLE_WINDOW_S * 1e9:
            return
        before = now
