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

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from redcompile.errors import ArtifactError
from redcompile.manifest import TOKENIZER_HASH, check_manifest
from redcompile.onnx_graphs import all_graphs
from redcompile.scratch import scratch_folder

FORMAT = "redcompile-artifact"
FORMAT_VERSION = 4  # 4: a speculative step reads its speculation level; 3: the tokenizer sha256
KEY_FORMAT = "redcompile.format"
KEY_VERSION = "redcompile.format_version"
KEY_MANIFEST = "redcompile.manifest"
KEY_MANIFEST_SHA = "redcompile.manifest_sha256"
KEY_TOKENIZER = "redcompile.tokenizer"
KEY_COMPLETE = "redcompile.complete"
DATA_SUFFIX = ".data"  # OUT.data holds the weights of an artifact above INLINE_LIMIT
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


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical text: what the artifact records as its tamper check,
    and what binds a tuning file (redcompile/speculation.py) to the artifact it measured."""
    return _sha256(manifest_json(manifest))


def with_tokenizer_hash(manifest: dict[str, Any], tokenizer_json: str) -> dict[str, Any]:
    """The manifest with the sha256 of the tokenizer it travels with, so the manifest's
    checksum covers the tokenizer too."""
    return {**manifest, TOKENIZER_HASH: _sha256(tokenizer_json)}


def checked_manifest(path: Path, text: str, sha: str | None, tokenizer_json: str) -> dict[str, Any]:
    """The manifest of the artifact at `path`, checked against its checksum, for every field a
    runtime reads (redcompile/manifest.py) and against the tokenizer it travels with."""
    if _sha256(text) != sha:
        raise ArtifactError(
            f"artifact: {path} has a manifest that does not match its checksum "
            f"(edited after conversion?); re-convert the model"
        )
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError):
        raise ArtifactError(f"artifact: {path} has an unreadable manifest") from None
    manifest = check_manifest(manifest, str(path))
    if _sha256(tokenizer_json) != manifest[TOKENIZER_HASH]:
        raise ArtifactError(
            f"artifact: {path} has a tokenizer that does not match its checksum (edited after "
            f"conversion?); re-convert the model"
        )
    return manifest


def _set_metadata(model: onnx.ModelProto, manifest: dict[str, Any], tokenizer_json: str) -> None:
    text = manifest_json(with_tokenizer_hash(manifest, tokenizer_json))
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


def _inline_subgraph_weights(graph: onnx.GraphProto, weights_dir: Path | None) -> None:
    """Bring the initializers of `graph`'s subgraphs (a branch's own weights, a few MB: a
    quantized drafter's blocks) into the file, their bytes inline: only the main graph's
    weights are streamed one by one or into the data file."""
    for sub in all_graphs(graph):
        if sub is graph:
            continue
        for tensor in sub.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raw = tensor_bytes(tensor, weights_dir)
                tensor.ClearField("external_data")
                tensor.data_location = onnx.TensorProto.DEFAULT
                tensor.raw_data = raw


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
    scratch: Path | None = None,
) -> list[Path]:
    """Write the artifact atomically; returns the files written (OUT, and OUT.data if needed).

    `model` may reference external data in `weights_dir`; those bytes are copied tensor by
    tensor into the artifact. Partial files are written in `scratch` (a scratch folder on OUT's
    file system, see redcompile/scratch.py; one is made for the call when None) and renamed
    into place, so nothing but a finished artifact ever appears at OUT.
    """
    out = Path(out)
    if scratch is None:
        with scratch_folder(out.parent) as own:
            return write_artifact(model, manifest, tokenizer_json, out, weights_dir, own)
    partial = Path(tempfile.mkdtemp(prefix="artifact-", dir=scratch))  # apart from weights_dir's
    header = onnx.ModelProto()
    header.CopyFrom(model)
    del header.graph.initializer[:]
    _inline_subgraph_weights(header.graph, weights_dir)
    _set_metadata(header, manifest, tokenizer_json)
    external = _external_bytes(model) > INLINE_LIMIT
    try:
        if external:
            data_name = out.name + DATA_SUFFIX
            data_tmp = partial / data_name
            _write_external(model, header, weights_dir, data_tmp, data_name)
        model_tmp = partial / out.name
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
        shutil.rmtree(partial, ignore_errors=True)


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
    tokenizer_json = meta.get(KEY_TOKENIZER, "")
    manifest = checked_manifest(
        path, meta.get(KEY_MANIFEST, ""), meta.get(KEY_MANIFEST_SHA), tokenizer_json
    )
    _check_graph_io(path, model, manifest)
    data = path.with_name(path.name + ".data")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer) and (
        not data.is_file()
    ):
        raise ArtifactError(f"artifact: {path} keeps its weights in {data.name}, which is missing")
    return Artifact(path, manifest, tokenizer_json, model)


def _check_graph_io(path: Path, model: onnx.ModelProto, manifest: dict[str, Any]) -> None:
    """The graph's inputs and outputs must be the manifest's I/O contract, in order, with the
    same fixed sizes where the graph fixes one (the tree's width and depth)."""
    weights = {t.name for t in model.graph.initializer}
    graph = [i for i in model.graph.input if i.name not in weights], list(model.graph.output)
    io = manifest["io"]
    for values, specs in zip(graph, (io["inputs"], io["outputs"])):
        same = len(values) == len(specs) and all(
            value.name == spec["name"] and _dims_fit(value, spec["dims"])
            for value, spec in zip(values, specs)
        )
        if not same:
            raise ArtifactError(
                f"artifact: {path} has a graph whose inputs and outputs differ from its "
                f"manifest's I/O contract; re-convert the model"
            )


def _dims_fit(value: onnx.ValueInfoProto, dims: list[Any]) -> bool:
    shape = value.type.tensor_type.shape
    if not value.type.tensor_type.HasField("shape"):
        return True
    if len(shape.dim) != len(dims):
        return False
    return all(
        not (isinstance(want, int) and dim.HasField("dim_value")) or dim.dim_value == want
        for dim, want in zip(shape.dim, dims)
    )
