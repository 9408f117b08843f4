"""The `.pt2` artifact: a PyTorch AOTInductor package whose extra files carry the manifest.

Layout (a PT2 archive, i.e. a zip that `torch._inductor.aoti_load_package` and
`torch.export.pt2_archive.PT2ArchiveReader` read; documented in docs/artifact.md):

    data/aotinductor/model/...           the compiled step: wrapper and kernel C++, the shared
                                         library with the weights, the proxy-call table
    extra/redcompile.format              "redcompile-artifact"        (the magic)
    extra/redcompile.format_version      "3"
    extra/redcompile.manifest            JSON: configs, beam shape, I/O contract, sources, command,
                                         the tokenizer's sha256 and every record's sha256
    extra/redcompile.manifest_sha256     sha256 of the manifest text (tamper check)
    extra/redcompile.tokenizer           the tokenizer.json text
    extra/redcompile.complete            "1", the last record written

The record names after `extra/` are the ONNX artifact's metadata keys, so both formats carry the
same manifest. `write_pt2_artifact` copies the records of the package AOTInductor wrote, adds the
extra files, and renames the result into place, so a failed write leaves nothing at OUT.
`read_pt2_artifact` reads records with bounded sizes and hashes every record of the package
against the manifest before anything loads it: a .pt2 is native code, to be trusted like an
executable, and a swapped shared library is refused before it can run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
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
    checked_manifest,
    manifest_json,
    with_tokenizer_hash,
)
from redcompile.errors import ArtifactError

EXTRA_DIR = "extra/"
AOTI_DIR = "data/aotinductor/"
MODEL_NAME = "model"  # the AOTInductor model inside the package (the package's default)
ZIP_MAGIC = b"PK\x03\x04"
PACKAGE_HASHES = "package_sha256"  # manifest key: archive record name -> sha256
METADATA_MAX_BYTES = 64 << 20  # manifests, tokenizers and AOTInductor's JSON are far smaller
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
    package: Path, manifest: dict[str, Any], tokenizer_json: str, out: Path, scratch: Path
) -> list[Path]:
    """Write OUT atomically: the records of the AOTInductor `package`, then the extra files,
    into a partial file in `scratch` (OUT's scratch folder), renamed into place at the end.
    `manifest` gains what the written one holds besides: the tokenizer's and every record's
    sha256."""
    from torch.export.pt2_archive import PT2ArchiveReader, PT2ArchiveWriter

    out = Path(out)
    manifest.update(with_tokenizer_hash(manifest, tokenizer_json))
    text = manifest_json(manifest)
    extras = {
        KEY_FORMAT: FORMAT,
        KEY_VERSION: str(FORMAT_VERSION),
        KEY_MANIFEST: text,
        KEY_MANIFEST_SHA: _sha256(text),
        KEY_TOKENIZER: tokenizer_json,
    }
    temp = scratch / f"partial-{out.name}"
    try:
        reader = PT2ArchiveReader(str(package))
        records = sorted(
            name
            for name in reader.get_file_names()
            if name not in _BOOKKEEPING and not name.startswith((".data/", EXTRA_DIR))
        )
        manifest[PACKAGE_HASHES] = {
            name: hashlib.sha256(reader.read_bytes(name)).hexdigest() for name in records
        }
        text = manifest_json(manifest)
        extras[KEY_MANIFEST], extras[KEY_MANIFEST_SHA] = text, _sha256(text)
        # A file object, not a name: the writer then roots the archive at "archive/" rather
        # than at the (temporary) file's name.
        with open(temp, "wb") as handle:
            with PT2ArchiveWriter(handle) as writer:
                for name in records:
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


def _archive_root(names: list[str]) -> str:
    """The folder every record of a PT2 archive sits in ("archive/" when written to a file
    object), which PT2ArchiveReader strips from record names."""
    roots = {name.split("/", 1)[0] for name in names}
    return f"{roots.pop()}/" if len(roots) == 1 and all("/" in n for n in names) else ""


class _Records:
    """The records of a .pt2 zip under their archive names, read with bounded sizes: a
    record is never inflated past its declared size, metadata records are refused above
    METADATA_MAX_BYTES, and compressed records that would inflate far past their stored size
    are refused before anything is read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ArtifactError(
                f"artifact: {path} is not a PyTorch .pt2 package (truncated or corrupt: "
                f"{str(exc)[:200] or type(exc).__name__})"
            ) from None
        root = _archive_root([i.filename for i in infos])
        self.infos = {i.filename[len(root) :]: i for i in infos if not i.is_dir()}
        for name, info in self.infos.items():
            stored = max(info.compress_size, 1)
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > 100 * stored + 2**20:
                raise ArtifactError(
                    f"artifact: {path} has a record {name} that inflates {info.file_size} bytes "
                    f"from {info.compress_size}; refused (redcompile writes records stored)"
                )

    def text(self, name: str) -> str | None:
        """A metadata record as text, None when absent."""
        info = self.infos.get(name)
        if info is None:
            return None
        if info.file_size > METADATA_MAX_BYTES:
            raise ArtifactError(
                f"artifact: {self.path} has a {info.file_size}-byte record {name}, above the "
                f"{METADATA_MAX_BYTES}-byte bound for metadata; refused"
            )
        try:
            with self.zip.open(info) as handle:
                return handle.read(METADATA_MAX_BYTES + 1).decode("utf-8")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
            raise ArtifactError(
                f"artifact: {self.path} has an unreadable record {name} ({str(exc)[:200]}); "
                f"re-convert"
            ) from None

    def sha256(self, name: str) -> str:
        """sha256 of a record, streamed."""
        digest = hashlib.sha256()
        try:
            with self.zip.open(self.infos[name]) as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ArtifactError(
                f"artifact: {self.path} has an unreadable record {name} ({str(exc)[:200]}); "
                f"re-convert"
            ) from None
        return digest.hexdigest()


def _check_package_hashes(records: _Records, manifest: dict[str, Any]) -> None:
    """Every record of the compiled package must be the one convert wrote: same names, same
    sha256 (the shared library is native code that runs when loaded)."""
    expected = manifest.get(PACKAGE_HASHES)
    path = records.path
    if not isinstance(expected, dict):
        raise ArtifactError(f"artifact: {path} has no package checksums; re-convert the model")
    present = {
        n
        for n in records.infos
        if n not in _BOOKKEEPING and not n.startswith((".data/", EXTRA_DIR))
    }
    if present != set(expected):
        odd = sorted(present ^ set(expected))[:3]
        raise ArtifactError(
            f"artifact: {path} holds records its manifest does not list, or lacks listed ones "
            f"({', '.join(odd)}); refused before loading: re-convert the model"
        )
    for name in sorted(present):
        if records.sha256(name) != expected[name]:
            raise ArtifactError(
                f"artifact: {path} has a record {name} that does not match its checksum "
                f"(replaced after conversion?); refused before loading: re-convert the model"
            )


def read_pt2_artifact(path: Path | str) -> Pt2Artifact:
    """Read and validate a .pt2 artifact's manifest (the compiled code is not loaded), and hash
    every record of the compiled package against it: the package holds native code that runs
    when it is loaded, so nothing is loaded that convert did not write."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact: {path} not found")
    records = _Records(path)

    def extra(key: str) -> str | None:
        return records.text(EXTRA_DIR + key)

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
    tokenizer_json = extra(KEY_TOKENIZER) or ""
    manifest = checked_manifest(
        path, extra(KEY_MANIFEST) or "", extra(KEY_MANIFEST_SHA), tokenizer_json
    )
    model_dir = f"{AOTI_DIR}{MODEL_NAME}/"
    compiled = sorted(n for n in records.infos if n.startswith(model_dir))
    if not any(n.endswith(".so") or n.endswith(".cpp") for n in compiled):
        raise ArtifactError(f"artifact: {path} holds no compiled AOTInductor model; re-convert")
    _check_package_hashes(records, manifest)
    aoti: dict[str, Any] = {}
    custom_ops: dict[str, int] = {}
    try:
        for name in compiled:
            if name.endswith("wrapper_metadata.json"):
                aoti = json.loads(records.text(name) or "{}")
            elif name.endswith("wrapper.json"):  # the ops the compiled code calls through torch
                for node in json.loads(records.text(name) or "{}").get("nodes", []):
                    target = node.get("node", {}).get("target", "?")
                    custom_ops[target] = custom_ops.get(target, 0) + 1
    except (ValueError, AttributeError, RecursionError) as exc:
        raise ArtifactError(
            f"artifact: {path} has a corrupt compiled model ({str(exc)[:200]}); re-convert"
        ) from None
    return Pt2Artifact(path, manifest, tokenizer_json, aoti, dict(sorted(custom_ops.items())))
