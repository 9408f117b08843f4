"""The artifact file: an ONNX model whose metadata carries a redcompile manifest.

Layout (documented for other runtimes in docs/artifact.md):

    ModelProto.metadata_props
        redcompile.format            "redcompile-artifact"        (the magic)
        redcompile.format_version    "2"
        redcompile.manifest          JSON: configs, beam shape, I/O contract, sources, command
        redcompile.manifest_sha256   sha256 of the manifest text (tamper check)
        redcompile.tokenizer         the tokenizer.json text
        redcompile.complete          "1", written last (a truncated file lacks it)

The file is written as a sequence of protobuf chunks that parse as one ModelProto (protobuf
merges concatenated messages and appends repeated fields): the model without weights, then one
chunk per initializer, then the completion marker. Weights therefore stream from disk one tensor
at a time. Above `INLINE_LIMIT` bytes of weights (protobuf's 2 GB limit), the weights go to
`OUT.data` next to the file as ONNX external data instead. Both files are written under temporary
names and renamed into place, so a failed or interrupted write leaves nothing at OUT.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from redcompile.errors import ArtifactError

FORMAT = "redcompile-artifact"
FORMAT_VERSION = 2
KEY_FORMAT = "redcompile.format"
KEY_VERSION = "redcompile.format_version"
KEY_MANIFEST = "redcompile.manifest"
KEY_MANIFEST_SHA = "redcompile.manifest_sha256"
KEY_TOKENIZER = "redcompile.tokenizer"
KEY_COMPLETE = "redcompile.complete"
INLINE_LIMIT = 1_800_000_000
SMALL_TENSOR = 1024  # bytes; smaller tensors stay in the .onnx file even with external data


@dataclass
class Artifact:
    """What an artifact file holds besides its graph."""

    path: Path
    manifest: dict[str, Any]
    tokenizer_json: str
    model: onnx.ModelProto  # loaded without external data


def tree_beams(manifest: dict[str, Any]) -> int:
    """Beams of an artifact's draft tree: drafter beams plus lookup beams (manifest `beam`;
    artifacts from before lookup beams have none)."""
    beam = manifest["beam"]
    return max(int(beam["width"]) + int(beam.get("lookup_beams", 0)), 1)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_json(manifest: dict[str, Any]) -> str:
    """Canonical manifest text: sorted keys, so equal manifests are equal bytes."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"))


def _set_metadata(model: onnx.ModelProto, manifest: dict[str, Any], tokenizer_json: str) -> None:
    text = manifest_json(manifest)
    entries = {
        KEY_FORMAT: FORMAT,
        KEY_VERSION: str(FORMAT_VERSION),
        KEY_MANIFEST: text,
        KEY_MANIFEST_SHA: _sha256(text),
        KEY_TOKENIZER: tokenizer_json,
    }
    keep = [p for p in model.metadata_props if not p.key.startswith("redcompile.")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)


def _initializer_chunks(model: onnx.ModelProto, weights_dir: Path | None) -> Iterator[bytes]:
    """One serialized ModelProto(graph=GraphProto(initializer=[t])) per weight, data inline."""
    for tensor in model.graph.initializer:
        inline = tensor
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            inline = onnx.TensorProto(
                name=tensor.name,
                data_type=tensor.data_type,
                dims=tensor.dims,
                raw_data=tensor_bytes(tensor, weights_dir),
            )
        chunk = onnx.ModelProto()
        chunk.graph.initializer.append(inline)
        yield chunk.SerializeToString()


def _external_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            total += int(info["length"])
        else:
            total += tensor.ByteSize()
    return total


def write_artifact(
    model: onnx.ModelProto,
    manifest: dict[str, Any],
    tokenizer_json: str,
    out: Path,
    weights_dir: Path | None = None,
) -> list[Path]:
    """Write the artifact atomically; returns the files written (OUT, and OUT.data if needed).

    `model` may reference external data in `weights_dir`; those bytes are copied tensor by
    tensor into the artifact.
    """
    out = Path(out)
    header = onnx.ModelProto()
    header.CopyFrom(model)
    del header.graph.initializer[:]
    _set_metadata(header, manifest, tokenizer_json)
    external = _external_bytes(model) > INLINE_LIMIT
    temps: list[Path] = []
    try:
        if external:
            data_name = out.name + ".data"
            data_tmp = _temp_name(out.parent / data_name)
            temps.append(data_tmp)
            _write_external(model, header, weights_dir, data_tmp, data_name)
        model_tmp = _temp_name(out)
        temps.append(model_tmp)
        with open(model_tmp, "wb") as handle:
            handle.write(header.SerializeToString())
            if not external:
                for chunk in _initializer_chunks(model, weights_dir):
                    handle.write(chunk)
            marker = onnx.ModelProto()
            marker.metadata_props.add(key=KEY_COMPLETE, value="1")
            handle.write(marker.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())
        finals = []
        if external:
            os.replace(data_tmp, out.parent / data_name)
            finals.append(out.parent / data_name)
        os.replace(model_tmp, out)
        finals.insert(0, out)
        return finals
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def tensor_bytes(tensor: onnx.TensorProto, weights_dir: Path | None) -> bytes:
    """Raw little-endian bytes of a tensor, read from external data when it lives there."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        with open(Path(weights_dir or ".") / info["location"], "rb") as handle:
            handle.seek(int(info.get("offset", 0)))
            return handle.read(int(info["length"]))
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return onnx.numpy_helper.to_array(tensor).tobytes()


def _write_external(
    model: onnx.ModelProto,
    header: onnx.ModelProto,
    weights_dir: Path | None,
    data_tmp: Path,
    data_name: str,
) -> None:
    """Stream every weight into one data file and reference it from the header's graph."""
    offset = 0
    with open(data_tmp, "wb") as data:
        for tensor in model.graph.initializer:
            raw = tensor_bytes(tensor, weights_dir)
            if len(raw) < SMALL_TENSOR:  # shapes and axes stay inline: shape inference reads them
                header.graph.initializer.append(
                    onnx.TensorProto(
                        name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, raw_data=raw
                    )
                )
                continue
            pad = (-offset) % 64  # keep tensors aligned for memory mapping
            data.write(b"\0" * pad)
            offset += pad
            data.write(raw)
            ref = onnx.TensorProto(
                name=tensor.name,
                data_type=tensor.data_type,
                dims=tensor.dims,
                data_location=onnx.TensorProto.EXTERNAL,
            )
            for key, value in (("location", data_name), ("offset", offset), ("length", len(raw))):
                ref.external_data.add(key=key, value=str(value))
            header.graph.initializer.append(ref)
            offset += len(raw)
            del raw
        data.flush()
        os.fsync(data.fileno())


def read_artifact(path: Path | str) -> Artifact:
    """Read and validate an artifact's metadata (weights stay on disk)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact: {path} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ArtifactError(
            f"artifact: {path} is not an ONNX file (truncated or corrupt: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(KEY_FORMAT) != FORMAT:
        raise ArtifactError(
            f"artifact: {path} is an ONNX file but not a redcompile artifact "
            f"(no {KEY_FORMAT} metadata); convert the model with redcompile"
        )
    version = meta.get(KEY_VERSION, "?")
    if version != str(FORMAT_VERSION):
        raise ArtifactError(
            f"artifact: {path} has format version {version}; this redcompile "
            f"reads version {FORMAT_VERSION}; re-convert the model"
        )
    if meta.get(KEY_COMPLETE) != "1":
        raise ArtifactError(f"artifact: {path} is truncated (no completion marker); re-convert")
    text = meta.get(KEY_MANIFEST, "")
    if _sha256(text) != meta.get(KEY_MANIFEST_SHA):
        raise ArtifactError(
            f"artifact: {path} has a manifest that does not match its checksum "
            f"(edited after conversion?); re-convert the model"
        )
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError:
        raise ArtifactError(f"artifact: {path} has an unreadable manifest") from None
    data = path.with_name(path.name + ".data")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer) and (
        not data.is_file()
    ):
        raise ArtifactError(f"artifact: {path} keeps its weights in {data.name}, which is missing")
    return Artifact(path, manifest, meta.get(KEY_TOKENIZER, ""), model)
