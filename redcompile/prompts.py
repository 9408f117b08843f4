"""Reading prompts files: JSONL with one object per line and a string `prompt` field."""

from __future__ import annotations

import json
from pathlib import Path

from redcompile.errors import InputError


def read_prompts_file(path: Path | str, limit: int | None = None) -> list[str]:
    """Prompts of a JSONL file, validated line by line (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file: {path} not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"prompts file: {path} is not readable UTF-8 text ({exc})") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"prompts file: {path} line {number} is not valid JSON ({exc.msg})"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise InputError(f"prompts file: {path} line {number} needs a string 'prompt' field")
        if not record["prompt"]:
            raise InputError(f"prompts file: {path} line {number} has an empty prompt")
        prompts.append(record["prompt"])
    if not prompts:
        raise InputError(f"prompts file: {path} holds no prompts")
    return prompts[:limit] if limit else prompts
