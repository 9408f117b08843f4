"""The pass protocol: `name`, a side-effect-free `match`, `rewrite`, and a `verify` of its own.

    class FuseThing(GraphPass):
        name = "fuse-thing"
        required = True                       # fail loudly when nothing matched

        def match(self, graph, ctx):          # yields Match objects, never edits the graph;
            ...                               # ctx.reject(node, "why") records near-misses
        def rewrite(self, graph, match, ctx): # edits the graph for one match
            ...
        def verify(self, graph, ctx):         # raises PassError when its postcondition fails
            ...

The manager (`manager.py`) collects all matches before rewriting, cleans up and sorts the graph
once, runs `verify`, then the global checks (ONNX checker, shape inference) after every pass.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from redcompile.errors import PassError


@dataclass(frozen=True)
class Match:
    """One place a pass will rewrite: its anchor node, the nodes it covers, named captures."""

    root: gs.Node
    nodes: tuple[gs.Node, ...] = ()
    bindings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejection:
    """A candidate a pass looked at and refused, with the reason (data, not an exception)."""

    pass_name: str
    node: str
    reason: str


@dataclass
class PassContext:
    """What passes may read (the target, the artifact dtype) and where they record rejections."""

    target: str = "onnxruntime"
    weights_dir: Path | None = None  # where external weight data lives during the passes
    rejections: list[Rejection] = field(default_factory=list)
    current_pass: str = ""

    def reject(self, node: gs.Node, reason: str) -> None:
        """Record why `node` is not a match for the running pass."""
        self.rejections.append(Rejection(self.current_pass, node.name or node.op, reason))


class GraphPass(ABC):
    """Base class of every pass; see the module docstring."""

    name: ClassVar[str]
    required: ClassVar[bool] = False

    @abstractmethod
    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterable[Match]:
        """Places to rewrite; must not modify the graph."""

    @abstractmethod
    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Rewrite one match in place."""

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:  # noqa: B027 - optional hook
        """Check the pass's postcondition; raise PassError when it does not hold."""

    def fail(self, message: str) -> PassError:
        """A PassError naming this pass."""
        return PassError(f"{self.name}: {message}")


def replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make `node` read `new` wherever it read `old` (graphsurgeon lists sync both ends)."""
    for index, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[index] = new


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node writing `tensor`, or None for graph inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def is_linear_gemm(node: gs.Node) -> bool:
    """Gemm(x, W, [b], transB=1) with unit alpha and beta: a Linear layer in ONNX."""
    attrs = node.attrs
    return (
        node.op == "Gemm"
        and len(node.inputs) >= 2
        and attrs.get("transB", 0) == 1
        and attrs.get("transA", 0) == 0
        and attrs.get("alpha", 1.0) == 1.0
        and attrs.get("beta", 1.0) == 1.0
    )


def attr(node: gs.Node, key: str, default: Any = None) -> Any:
    """A node attribute with a default (graphsurgeon keeps attributes in a dict)."""
    return node.attrs.get(key, default)


def _external(tensor: gs.Constant) -> onnx.TensorProto | None:
    values = tensor._values  # graphsurgeon keeps unloaded initializers as LazyValues
    proto = getattr(values, "tensor", None)
    if proto is not None and proto.data_location == onnx.TensorProto.EXTERNAL:
        return proto
    return None


def constant_array(tensor: gs.Constant, ctx: PassContext) -> np.ndarray:
    """The value of a constant, reading external weight data from `ctx.weights_dir`."""
    proto = _external(tensor)
    if proto is None:
        return np.asarray(tensor.values)
    return onnx.numpy_helper.to_array(proto, base_dir=str(ctx.weights_dir or "."))


def constant_digest(tensor: gs.Constant, ctx: PassContext) -> str:
    """sha256 of a constant's dtype, shape and bytes (external data is read, not loaded whole)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    proto = _external(tensor)
    if proto is None:
        digest.update(np.ascontiguousarray(np.asarray(tensor.values)).tobytes())
        return digest.hexdigest()
    _digest_external(digest, proto, ctx.weights_dir)
    return digest.hexdigest()


def tensor_digest(proto: onnx.TensorProto, weights_dir: Path | None) -> str:
    """sha256 of an initializer's element type, shape and bytes, whether they are in the
    proto or in external data under `weights_dir` (read in chunks, not loaded whole)."""
    digest = hashlib.sha256(f"{proto.data_type}{tuple(proto.dims)}".encode())
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        _digest_external(digest, proto, weights_dir)
    else:
        array = onnx.numpy_helper.to_array(proto)
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _digest_external(digest, proto: onnx.TensorProto, weights_dir: Path | None) -> None:
    info = {entry.key: entry.value for entry in proto.external_data}
    offset, length = int(info.get("offset", 0)), int(info["length"])
    with open(Path(weights_dir or ".") / info["location"], "rb") as handle:
        handle.seek(offset)
        remaining = length
        while remaining:
            chunk = handle.read(min(remaining, 1 << 24))
            digest.update(chunk)
            remaining -= len(chunk)
