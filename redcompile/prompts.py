"""Reading prompts files: JSONL with one object per line and a string `prompt` field."""

from __future__ import annotations

import json
from pathlib import Path

from redcompile.errors import InputError


def check_prompt_text(prompt: str, where: str) -> str:
    """`prompt` if it is text a tokenizer can encode: not empty, and valid Unicode (a command
    line's undecodable bytes and JSON's lone surrogate escapes arrive as lone surrogates)."""
    if not prompt:
        raise InputError(f"{where} is empty")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{where} is not valid UTF-8 text (bad character at position {exc.start})"
        ) from None
    return prompt


def read_prompts_file(path: Path | str, limit: int | None = None) -> list[str]:
    """Prompts of a JSONL file, validated line by line (blank lines are skipped)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"prompts file: {path} is a folder; give a .jsonl file")
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
        except RecursionError:
            raise InputError(
                f"prompts file: {path} line {number} nests JSON too deeply; one object per line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise InputError(f"prompts file: {path} line {number} needs a string 'prompt' field")
        prompts.append(check_prompt_text(record["prompt"], f"prompts file: {path} line {number}"))
    if not prompts:
        raise InputError(f"prompts file: {path} holds no prompts")
    return prompts[:limit] if limit else prompts
