"""The manifest's fields, checked once when an artifact is read, before any runtime uses them.

The checksum catches an edited manifest, but a hostile file can carry a recomputed one: every
field a runtime reads is checked here for its JSON type and range, and the I/O contract for
being one the runtimes can drive, so a bad artifact fails with the field's name (exit 2)
rather than with a KeyError or TypeError deep inside a backend.
"""

from __future__ import annotations

from typing import Any

from redcompile.config import DTYPES, TARGETS
from redcompile.errors import ArtifactError
from redcompile.io_contract import step_signature

MODES = ("redrafter", "autoregressive", "lookup")
TOKENIZER_HASH = "tokenizer_sha256"  # manifest key: sha256 of the tokenizer.json text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Fields:
    """Typed reads of one manifest object; every failure names the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, wanted: str, value: Any) -> ArtifactError:
        shown = repr(value)[:80]
        return ArtifactError(
            f"artifact: {self.where} has a manifest whose '{field}' must be {wanted}, got "
            f"{shown}; re-convert the model"
        )

    def obj(self, data: Any, field: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(field, "an object", data)
        return data

    def int(self, data: dict[str, Any], key: str, field: str, minimum: int = 0) -> int:
        value = data.get(key)
        if not _is_int(value) or value < minimum:
            raise self.fail(field, f"an integer >= {minimum}", value)
        return value

    def choice(self, data: dict[str, Any], key: str, field: str, choices: tuple[str, ...]) -> str:
        value = data.get(key)
        if value not in choices:
            raise self.fail(field, f"one of {', '.join(choices)}", value)
        return value

    def int_list(self, data: dict[str, Any], key: str, field: str, below: int) -> list[int]:
        value = data.get(key)
        if not isinstance(value, list) or not all(_is_int(v) and 0 <= v < below for v in value):
            raise self.fail(field, f"a list of integers in 0 ... {below - 1}", value)
        return value


def _check_io(f: _Fields, io: Any, num_layers: int, beams: int, length: int, lookup: int) -> None:
    """The recorded I/O contract must be exactly the one the beam shape defines: runtimes drive
    the step by it, and docs/artifact.md documents it."""
    expected = step_signature(num_layers, beams, length, history=lookup > 0).to_dict()
    if io != expected:
        raise f.fail("io", "the I/O contract of its beam shape and layer count", "(differs)")


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """`manifest` if every field a runtime reads has the type and range it needs."""
    f = _Fields(where)
    m = f.obj(manifest, "manifest")
    mode = f.choice(m, "mode", "mode", MODES)
    f.choice(m, "target", "target", TARGETS)
    f.choice(m, "dtype", "dtype", DTYPES)
    f.int(m, "max_seq_len", "max_seq_len", minimum=2)
    f.int(m, "draft_top_k", "draft_top_k")
    beam = f.obj(m.get("beam"), "beam")
    width = f.int(beam, "width", "beam.width")
    length = f.int(beam, "length", "beam.length", minimum=1)
    lookup = f.int(beam, "lookup_beams", "beam.lookup_beams") if "lookup_beams" in beam else 0
    if mode != "autoregressive" and (width + lookup < 1 or length < 2):
        raise f.fail("beam", "a tree of at least one beam of two tokens", beam)
    if mode == "redrafter" and m.get("drafter") is None:
        raise f.fail("drafter", "the drafter's description in a redrafter artifact", None)
    if m.get("drafter") is not None:
        f.obj(m["drafter"], "drafter")
    model = f.obj(m.get("model"), "model")
    vocab = f.int(model, "vocab_size", "model.vocab_size", minimum=1)
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
        f.int(model, key, f"model.{key}", minimum=1)
    f.int_list(m, "stop_token_ids", "stop_token_ids", vocab)
    if not isinstance(m.get(TOKENIZER_HASH), str):
        raise f.fail(TOKENIZER_HASH, "the tokenizer's sha256", m.get(TOKENIZER_HASH))
    beams = max(width + lookup, 1)
    _check_io(f, m.get("io"), model["num_layers"], beams, length, lookup)
    return m
