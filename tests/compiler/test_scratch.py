"""Scratch folders: only provably ours and provably stale ones are removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from redcompile.scratch import (
    OWNER_FILE,
    SCRATCH_PREFIX,
    owner_record,
    process_start_time,
    remove_stale_scratch,
    scratch_folder,
)


def _folder(parent, name, record=None):
    path = parent / f"{SCRATCH_PREFIX}{name}"
    path.mkdir()
    (path / "weights.bin").write_bytes(b"x")
    if record is not None:
        (path / OWNER_FILE).write_text(json.dumps(record))
    return path


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_our_stale_folders_go(tmp_path):
    dead = _dead_pid()
    ours_stale = _folder(tmp_path, f"{dead}-a", {**owner_record(dead), "started": "1"})
    other_host = _folder(tmp_path, f"{dead}-b", {**owner_record(dead), "machine": "elsewhere"})
    no_record = _folder(tmp_path, f"{dead}-c")
    alive = _folder(tmp_path, f"{os.getppid()}-d", owner_record(os.getppid()))
    reused = _folder(tmp_path, f"{os.getppid()}-e", {**owner_record(os.getppid()), "started": "1"})
    not_ours = _folder(tmp_path, f"{dead}-f", {"tool": "other", "pid": dead})
    garbage = _folder(tmp_path, f"{dead}-g")
    (garbage / OWNER_FILE).write_bytes(b"\xff" * 10_000)
    other_tools = [tmp_path / f".model.onnx.tmp-{dead}", tmp_path / f".cache.tmp-{dead}"]
    for path in other_tools:
        path.write_text("another tool's partial file")
    (tmp_path / f"{SCRATCH_PREFIX}link").symlink_to(other_host)

    removed = remove_stale_scratch(tmp_path)

    assert process_start_time(os.getppid()) is not None
    assert sorted(removed) == sorted([ours_stale, reused])
    for kept in (other_host, no_record, alive, not_ours, garbage, *other_tools):
        assert kept.exists(), kept
    assert (tmp_path / f"{SCRATCH_PREFIX}link").is_symlink()


def test_a_scratch_folder_records_its_owner_and_goes_on_exit(tmp_path):
    with scratch_folder(tmp_path) as folder:
        record = json.loads((folder / OWNER_FILE).read_text())
        assert record == owner_record()
        assert remove_stale_scratch(tmp_path) == []  # ours and running: kept
    assert list(tmp_path.iterdir()) == []
