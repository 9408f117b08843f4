"""Write a larger prompt set for pycode-lm: one function opening from every held-out file.

The fixture's `dev_prompts.jsonl` holds 32 prompts (a function's first five lines), one from
each of 32 files the model never saw. Tokens per step measured on 32 prompts carry a sampling
error of about +-10% (`redcompile bench` reports the interval), more than most differences this
project measures. This script takes the same kind of prompt from every other held-out file:
the standard-library files of this Python that are neither in `train_files.txt` nor a source
of a dev prompt (the held-out files the model never saw, less the dev ones, so the two sets are
disjoint). One prompt per file keeps the prompts independent: each file's function is drawn
with a seed from its path, among the undecorated functions (the prompt starts at `def`, as the
dev prompts do) that at least ten lines of the file follow, so there is code to continue.

    python bench/build_prompts.py --fixture PATH/pycode-lm --out bench/held_out_prompts.jsonl
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import sys
import sysconfig
from pathlib import Path

PROMPT_LINES = 5  # as in dev_prompts.jsonl
FOLLOWING_LINES = 10  # lines of the file after the prompt, at least


def held_out_files(fixture: Path, stdlib: Path) -> list[str]:
    """Standard-library .py files (outside site-packages) neither trained on nor used by a dev
    prompt, relative to `stdlib`, sorted."""
    trained = set((fixture / "train_files.txt").read_text().split())
    dev = {json.loads(line)["source"] for line in (fixture / "dev_prompts.jsonl").open()}
    names = (
        path.relative_to(stdlib).as_posix()
        for path in stdlib.rglob("*.py")
        if "site-packages" not in path.parts
    )
    return sorted(name for name in names if name not in trained and name not in dev)


def function_prompt(name: str, text: str) -> dict | None:
    """The first PROMPT_LINES lines of one function of `text`, drawn with a seed from `name`;
    None when no function has enough of the file after it (or the file does not parse)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    last = len(text.splitlines())
    starts = sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and not node.decorator_list
        and last - node.lineno + 1 >= PROMPT_LINES + FOLLOWING_LINES
    )
    if not starts:
        return None
    seed = int(hashlib.sha1(name.encode()).hexdigest(), 16)
    line = random.Random(seed).choice(starts)
    lines = text.splitlines()[line - 1 : line - 1 + PROMPT_LINES]
    return {"prompt": "\n".join(lines) + "\n", "source": name, "line": line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    prompts, skipped = [], 0
    for name in held_out_files(args.fixture, stdlib):
        try:
            text = (stdlib / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            skipped += 1
            continue
        prompt = function_prompt(name, text)
        if prompt is None:
            skipped += 1
            continue
        prompts.append(prompt)
    args.out.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    print(
        f"{len(prompts)} prompts from {stdlib} (Python {sys.version.split()[0]}), {skipped} "
        f"held-out files without a function to prompt with -> {args.out}"
    )


if __name__ == "__main__":
    main()
