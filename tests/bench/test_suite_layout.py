"""bench/ as a suite: every record is named by a page, and every bench/ path the pages name exists.

Records are what bench/results/ holds (all of it) and the records kept beside the finished
studies under bench/studies/<topic>/. A record counts as named when its file name or its path
appears in bench/README.md, README.md or a page of docs/. Pure file reads.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
RECORD_SUFFIXES = {".json", ".jsonl", ".log", ".png", ".txt", ".csv"}
INDEX_PAGES = (BENCH / "README.md", REPO / "docs" / "benchmarks.md")
# a bench/ path as the pages write it: `bench/...`, or ../bench/... in a link, not tests/bench/...
BENCH_PATH = re.compile(r"(?:(?<=\.\./)|(?<![\w./-]))bench/[\w./-]*")


def pages() -> dict[Path, str]:
    found = [BENCH / "README.md", REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return {page: page.read_text(encoding="utf-8") for page in found if page.is_file()}


def records() -> list[Path]:
    kept = [p for p in (BENCH / "results").rglob("*") if p.is_file()]
    kept += [
        p
        for p in (BENCH / "studies").rglob("*")
        if p.is_file() and p.suffix in RECORD_SUFFIXES and "__pycache__" not in p.parts
    ]
    return sorted(kept)


def named(record: Path, text: str) -> bool:
    relative = record.relative_to(REPO).as_posix()
    for name in (relative, record.name):
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text):
            return True
    return False


def test_every_record_is_named_by_a_page():
    text = "\n".join(pages().values())
    assert records(), "no records found under bench/results or bench/studies"
    unnamed = [p.relative_to(REPO).as_posix() for p in records() if not named(p, text)]
    assert not unnamed, (
        "records no page names (bench/README.md, README.md, docs/*.md): " + ", ".join(unnamed)
    )


def test_every_bench_path_on_the_index_pages_exists():
    missing = []
    for page in INDEX_PAGES:
        for match in BENCH_PATH.finditer(page.read_text(encoding="utf-8")):
            path = match.group(0).rstrip(".,")
            if not (REPO / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, "paths named but absent: " + ", ".join(missing)


def test_the_path_pattern_reads_paths_as_the_pages_write_them():
    text = "`bench/peers.py`, [x](../bench/results/a.json). tests/bench/t.py bench/studies/<topic>/"
    assert [m.group(0) for m in BENCH_PATH.finditer(text)] == [
        "bench/peers.py",
        "bench/results/a.json",
        "bench/studies/",
    ]
