"""OUT is never an input: no command writes over, or inside, what it reads.

`convert M M/config.json` would otherwise rename the artifact over the model's own config. A
file OUT (and the OUT.data beside it) is refused when it is an input file, lies inside an input
folder (followed through symbolic links), or is the same file as one there (a hard link or a
symbolic link to it). An output folder (a drafter's `--out`) is refused when it is, contains
or lies inside an input folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from redcompile.errors import InputError


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _files_under(folder: Path) -> Iterable[Path]:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            yield Path(root) / name


def check_output_file(
    command: str, out: Path, inputs: Sequence[Path | None], sidecars: Sequence[str] = ()
) -> None:
    """Refuse a file OUT (or OUT + each suffix in `sidecars`) that is, aliases or lies inside
    one of `inputs` (files or folders; None entries are skipped)."""
    roots = [Path(p) for p in inputs if p is not None and Path(p).exists()]
    for target in [out] + [out.with_name(out.name + s) for s in sidecars]:
        real = target.resolve()
        for root in roots:
            real_root = root.resolve()
            if _inside(real, real_root):
                what = "is" if real == real_root else "lies inside"
                raise InputError(
                    f"{command}: output {target} {what} the input {root}; write it elsewhere"
                )
            if not target.exists():
                continue
            candidates = _files_under(root) if root.is_dir() else [root]
            for candidate in candidates:
                if _same_file(target, candidate):
                    raise InputError(
                        f"{command}: output {target} is the same file as the input {candidate} "
                        f"(a link to it); write it elsewhere"
                    )


def check_output_folder(
    command: str, out_dir: Path, names: Sequence[str], inputs: Sequence[Path | None]
) -> None:
    """Refuse an output folder that is one of the input folders, or whose files `names` (what
    the command writes there) would be, or alias, an input file. A folder inside an input
    folder is allowed (`train-drafter M --out M/drafter` is where convert looks)."""
    roots = [Path(p) for p in inputs if p is not None and Path(p).exists()]
    real = out_dir.resolve()
    for root in roots:
        if root.is_dir() and real == root.resolve():
            raise InputError(f"{command}: output folder {out_dir} is the input {root}; use another")
    for name in names:
        target = out_dir / name
        for root in roots:
            for candidate in _files_under(root) if root.is_dir() else [root]:
                if target.resolve() == candidate.resolve() or _same_file(target, candidate):
                    raise InputError(
                        f"{command}: {target} would overwrite the input {candidate}; "
                        f"choose another --out"
                    )
