"""The `.pt2` artifact: a PyTorch AOTInductor package whose extra files carry the manifest.

Layout (a PT2 archive, i.e. a zip that `torch._inductor.aoti_load_package` and
`torch.export.pt2_archive.PT2ArchiveReader` read; documented in docs/artifact.md):

    data/aotinductor/model/...           the compiled step: wrapper and kernel C++, the shared
                                         library with the weights, the proxy-call table
    extra/redcompile.format              "redcompile-artifact"        (the magic)
    extra/redcompile.format_version      "1"
    extra/redcompile.manifest            JSON: configs, beam shape, I/O contract, sources, command
    extra/redcompile.manifest_sha256     sha256 of the manifest text (tamper check)
    extra/redcompile.tokenizer           the tokenizer.json text
    extra/redcompile.complete            "1", the last record written

The record names after `extra/` are the ONNX artifact's metadata keys, so both formats carry the
same manifest. `write_pt2_artifact` copies the records of the package AOTInductor wrote, adds the
extra files, and renames the result into place, so a failed write leaves nothing at OUT.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redcompile.artifact import (
    FORMAT,
    FORMAT_VERSION,
    KEY_COMPLETE,
    KEY_FORMAT,
    KEY_MANIFEST,
    KEY_MANIFEST_SHA,
    KEY_TOKENIZER,
    KEY_VERSION,
    _sha256,
    _temp_name,
    manifest_json,
)
from redcompile.errors import ArtifactError

EXTRA_DIR = "extra/"
AOTI_DIR = "data/aotinductor/"
MODEL_NAME = "model"  # the AOTInductor model inside the package (the package's default)
ZIP_MAGIC = b"PK\x03\x04"
# Records every PT2 archive writer adds itself; they are not copied from the compiled package.
_BOOKKEEPING = {"archive_format", "archive_version", ".data/version", "byteorder"}


@dataclass
class Pt2Artifact:
    """What a .pt2 artifact holds besides its compiled code."""

    path: Path
    manifest: dict[str, Any]
    tokenizer_json: str
    aoti: dict[str, Any]  # AOTInductor's package metadata: device, CPU ISA, compute capability
    custom_ops: dict[str, int]  # torch op name -> calls the compiled code makes through torch


def is_pt2_file(path: Path) -> bool:
    """Whether `path` should be read as a .pt2 package (by suffix, or a zip by its first bytes)."""
    if path.suffix.lower() == ".pt2":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == ZIP_MAGIC
    except OSError:
        return False


def write_pt2_artifact(
    package: Path, manifest: dict[str, Any], tokenizer_json: str, out: Path
) -> list[Path]:
    """Write OUT atomically: the records of the AOTInductor `package`, then the extra files."""
    from torch.export.pt2_archive import PT2ArchiveReader, PT2ArchiveWriter

    out = Path(out)
    text = manifest_json(manifest)
    extras = {
        KEY_FORMAT: FORMAT,
        KEY_VERSION: str(FORMAT_VERSION),
        KEY_MANIFEST: text,
        KEY_MANIFEST_SHA: _sha256(text),
        KEY_TOKENIZER: tokenizer_json,
    }
    temp = _temp_name(out)
    try:
        reader = PT2ArchiveReader(str(package))
        # A file object, not a name: the writer then roots the archive at "archive/" rather
        # than at the (temporary) file's name.
        with open(temp, "wb") as handle:
            with PT2ArchiveWriter(handle) as writer:
                for name in sorted(reader.get_file_names()):
                    if name in _BOOKKEEPING or name.startswith((".data/", EXTRA_DIR)):
                        continue
                    writer.write_bytes(name, reader.read_bytes(name))
                for key, value in extras.items():
                    writer.write_string(EXTRA_DIR + key, value)
                writer.write_string(EXTRA_DIR + KEY_COMPLETE, "1")
            handle.flush()
            os.fsync(handle.fileno())
        del reader
        os.replace(temp, out)
        return [out]
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def read_pt2_artifact(path: Path | str) -> Pt2Artifact:
    """Read and validate a .pt2 artifact's manifest (the compiled code is not loaded)."""
    from torch.export.pt2_archive import PT2ArchiveReader

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact: {path} not found")
    try:
        reader = PT2ArchiveReader(str(path))
        names = set(reader.get_file_names())
    except (RuntimeError, AssertionError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(
            f"artifact: {path} is not a PyTorch .pt2 package (truncated or corrupt: {first})"
        ) from None

    def extra(key: str) -> str | None:
        name = EXTRA_DIR + key
        if name not in names:
            return None
        try:
            return reader.read_string(name)
        except (RuntimeError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"artifact: {path} has an unreadable record {name} ({str(exc)[:200]}); re-convert"
            ) from None

    if extra(KEY_FORMAT) != FORMAT:
        raise ArtifactError(
            f"artifact: {path} is a .pt2 package but not a redcompile artifact "
            f"(no {EXTRA_DIR}{KEY_FORMAT} record); convert the model with redcompile"
        )
    version = extra(KEY_VERSION) or "?"
    if version != str(FORMAT_VERSION):
        raise ArtifactError(
            f"artifact: {path} has format version {version}; this redcompile "
            f"reads version {FORMAT_VERSION}; re-convert the model"
        )
    if extra(KEY_COMPLETE) != "1":
        raise ArtifactError(f"artifact: {path} is truncated (no completion marker); re-convert")
    text = extra(KEY_MANIFEST) or ""
    if _sha256(text) != extra(KEY_MANIFEST_SHA):
        raise ArtifactError(
            f"artifact: {path} has a manifest that does not match its checksum "
            f"(edited after conversion?); re-convert the model"
        )
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError:
        raise ArtifactError(f"artifact: {path} has an unreadable manifest") from None
    model_dir = f"{AOTI_DIR}{MODEL_NAME}/"
    compiled = sorted(n for n in names if n.startswith(model_dir))
    if not any(n.endswith(".so") or n.endswith(".cpp") for n in compiled):
        raise ArtifactError(f"artifact: {path} holds no compiled AOTInductor model; re-convert")
    aoti: dict[str, Any] = {}
    custom_ops: dict[str, int] = {}
    try:
        for name in compiled:
            if name.endswith("wrapper_metadata.json"):
                aoti = json.loads(reader.read_string(name))
            elif name.endswith("wrapper.json"):  # the ops the compiled code calls through torch
                for node in json.loads(reader.read_string(name)).get("nodes", []):
                    target = node.get("node", {}).get("target", "?")
                    custom_ops[target] = custom_ops.get(target, 0) + 1
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(
            f"artifact: {path} has a corrupt compiled model ({str(exc)[:200]}); re-convert"
        ) from None
    return Pt2Artifact(
        path, manifest, extra(KEY_TOKENIZER) or "", aoti, dict(sorted(custom_ops.items()))
    )
