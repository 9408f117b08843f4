"""Scratch folders next to OUT: where convert writes before it renames into place.

A convert needs room on OUT's disk (a copy of the weights, the artifact's partial files), so its
scratch folder sits beside OUT, as `.redcompile-tmp-<pid>-<random>/`, and every partial file is
written inside it. The folder holds an owner record (`redcompile-owner.json`: this machine's
identity, the process id and the process's start time). A killed convert leaves its folder
behind; the next convert in that folder removes it only when the record proves it ours and
stale: written on this machine (same host, boot and process namespace) by a process that is no
longer running (or whose id now names a process started later). Anything else, including other
tools' temporaries and a convert still running on another host of a shared file system, stays.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from redcompile.errors import InputError

SCRATCH_PREFIX = ".redcompile-tmp-"
OWNER_FILE = "redcompile-owner.json"
_OWNER_TOOL = "redcompile"
_OWNER_MAX_BYTES = 4096  # an owner record is ~200 bytes; anything larger is not ours


def machine_identity() -> str:
    """This machine as a process sees it: host name, boot, and process-id namespace (two
    containers on one kernel number their processes apart)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return "/".join(parts)


def process_start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is parenthesised and may hold spaces; fields after it are plain
    return stat.rsplit(")", 1)[-1].split()[19]


def process_running(pid: int) -> bool:
    """Whether a process with id `pid` exists here (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_record(pid: int | None = None) -> dict[str, object]:
    """The record a scratch folder carries: who made it, where, and when that process began."""
    pid = os.getpid() if pid is None else pid
    return {
        "tool": _OWNER_TOOL,
        "machine": machine_identity(),
        "pid": pid,
        "started": process_start_time(pid),
    }


def is_stale_scratch(folder: Path) -> bool:
    """Whether `folder` is provably a redcompile scratch folder whose writer is gone."""
    if not (folder.name.startswith(SCRATCH_PREFIX) and folder.is_dir() and not folder.is_symlink()):
        return False
    record_path = folder / OWNER_FILE
    try:
        if record_path.is_symlink() or record_path.stat().st_size > _OWNER_MAX_BYTES:
            return False
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("tool") != _OWNER_TOOL:
        return False
    pid = record.get("pid")
    if record.get("machine") != machine_identity() or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    if not process_running(pid):
        return True
    started = record.get("started")
    return started is not None and process_start_time(pid) not in (None, started)


def remove_stale_scratch(parent: Path) -> list[Path]:
    """Delete the stale scratch folders killed converts left in `parent`; returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if is_stale_scratch(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def scratch_folder(parent: Path) -> Iterator[Path]:
    """A private scratch folder in `parent` with its owner record, removed on exit. Stale
    folders of killed converts in `parent` are removed first."""
    path = _new_scratch(parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_scratch_folder(parent: Path) -> Path:
    """A scratch folder in `parent` that lives until this process exits (removed then, and by
    a later call when a killed process left it): for files a runtime must keep while the
    process runs, such as the libraries a .pt2 package extracts."""
    path = _new_scratch(parent)
    atexit.register(shutil.rmtree, path, True)
    return path


def _new_scratch(parent: Path) -> Path:
    """Remove `parent`'s stale scratch folders, then make ours with its owner record."""
    remove_stale_scratch(parent)
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
        (path / OWNER_FILE).write_text(json.dumps(owner_record()))
    except OSError as exc:
        raise InputError(
            f"cannot write in {parent} ({exc.strerror}); OUT's folder must be writable"
        ) from None
    return path
