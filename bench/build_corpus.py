"""Write the pycode-lm training corpus as JSONL: the CPython standard-library files the fixture
was trained on (`train_files.txt`, paths relative to this interpreter's stdlib folder).

    python bench/build_corpus.py --fixture PATH/pycode-lm --out WORK/corpus.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = (args.fixture / "train_files.txt").read_text().split()
    written = missing = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for name in names:
            path = stdlib / name
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                missing += 1
                continue
            out.write(json.dumps({"text": text, "source": name}) + "\n")
            written += 1
    print(
        f"{written} files from {stdlib} (Python {sys.version.split()[0]}), {missing} missing "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    main()
