"""`OpDef`: the single definition of a redcompile custom op, and what is generated from it.

Each op module in this package builds exactly one `OpDef` holding
- the torch schema (inputs, outputs, attributes) and the ONNX names of its inputs and outputs,
- a pure-torch reference implementation: the ground truth, runs on CPU,
- a fake (shape) function for torch.export and TensorRT plugin shape inference,
- an ONNX function body in standard ops, built for one node's attributes and input types,
- the names of its CUDA kernel entry point and TensorRT plugin.

From that definition `register_torch_op` makes the `torch.library` op, `call` dispatches eager
calls to it or emits a `redcompile::Name` node during ONNX export, and the passes attach the
function body. Nothing else wires an op up by hand.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch

DOMAIN = "redcompile"
DOMAIN_VERSION = 1
LIBRARY = "redcompile"
# The ONNX versions every artifact is written in: the default-domain opset (the model's and every
# function body's) and the IR version. ONNX Runtime loads them from 1.23 on (docs/artifact.md,
# "Runtimes"); convert refuses a model that left them.
ONNX_OPSET = 23
ONNX_IR_VERSION = 10
BODY_OPSET = ONNX_OPSET


@dataclass(frozen=True)
class OpDef:
    """One custom op: schema, reference, fake, ONNX body and backend names."""

    name: str  # snake_case torch name: torch.ops.redcompile.<name>
    onnx_name: str  # CamelCase ONNX op_type in domain `redcompile`
    schema: str  # torch schema without the name: "(Tensor q, ..., float scale) -> Tensor"
    reference: Callable[..., Any]
    fake: Callable[..., Any]
    build_body: Callable[[BodySpec], onnx.FunctionProto]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    attribute_names: tuple[str, ...] = ()
    cuda_kernel: str = ""  # C entry point in cuda/, e.g. "redcompile_tree_attention"
    doc: str = ""
    # (input, axis) pairs whose size the body writes as a constant when the graph knows it
    # statically, e.g. the KV cache's heads, so that nothing in the body depends on a per-layer
    # tensor's shape and ONNX Runtime can compute the shared index math once for all layers.
    static_dims: tuple[tuple[str, int], ...] = ()

    @property
    def qualname(self) -> str:
        """`redcompile::name`, the torch.library name."""
        return f"{LIBRARY}::{self.name}"

    @property
    def trt_plugin(self) -> tuple[str, str, str]:
        """(name, version, namespace) TensorRT looks up for a node of this op."""
        return (self.onnx_name, str(DOMAIN_VERSION), DOMAIN)

    @property
    def optional_inputs(self) -> frozenset[str]:
        """Inputs declared `Tensor?` in the schema."""
        return frozenset(re.findall(r"Tensor\?\s+(\w+)", self.schema))


@dataclass(frozen=True)
class BodySpec:
    """What a function body is specialised for: one node's attributes and input element types.

    `input_types` maps each input name to an ONNX TensorProto element type, or None when the
    optional input is absent on the node; `input_shapes` holds the static shape of inputs that
    are initializers (weights), which bodies may unroll over; `static_dims` the sizes of the
    op's `OpDef.static_dims` that the graph knows (absent: dynamic, the body reads the shape);
    `unused_outputs` the outputs nothing reads, which a body may leave uncomputed.
    """

    attributes: dict[str, Any]
    input_types: dict[str, int | None]
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    static_dims: dict[tuple[str, int], int] = field(default_factory=dict)
    unused_outputs: frozenset[str] = frozenset()  # outputs no node or graph output reads

    def has(self, name: str) -> bool:
        """Whether the optional input `name` is present on the node."""
        return self.input_types.get(name) is not None

    def key(self) -> tuple:
        """Hashable identity: nodes with equal keys share one function body."""
        return (
            tuple(sorted((k, repr(v)) for k, v in self.attributes.items())),
            tuple(sorted(self.input_types.items())),
            tuple(sorted(self.input_shapes.items())),
            tuple(sorted(self.static_dims.items())),
            tuple(sorted(self.unused_outputs)),
        )

    def used(self, output: str) -> bool:
        """Whether anything reads `output` (a body may skip computing an unread output)."""
        return output not in self.unused_outputs


def register_torch_op(op: OpDef, cuda_impl: Callable[..., Any] | None = None) -> None:
    """Define `torch.ops.redcompile.<name>` from the OpDef (CPU = reference) plus its fake.

    When the compiled CUDA library already defined the schema (TORCH_LIBRARY in cuda/), only the
    CPU implementation and the fake are added, so the C++ and Python halves share one op.
    """
    namespace = getattr(torch.ops, LIBRARY)
    if not _has_schema(namespace, op.name):
        torch.library.define(op.qualname, op.schema)
    if not _has_kernel(op.qualname, "CPU"):
        torch.library.impl(op.qualname, "CPU")(_contiguous_outputs(op.reference))
    if cuda_impl is not None and not _has_kernel(op.qualname, "CUDA"):
        torch.library.impl(op.qualname, "CUDA")(cuda_impl)
    if not _has_kernel(op.qualname, "Meta"):
        torch.library.register_fake(op.qualname)(op.fake)


def _contiguous_outputs(reference: Callable[..., Any]) -> Callable[..., Any]:
    """The reference with contiguous outputs: every implementation of an op returns contiguous
    tensors, as the fakes say, because compilers lay outputs out by the fake's strides."""

    def implementation(*args: Any) -> Any:
        out = reference(*args)
        if isinstance(out, tuple):
            return tuple(t.contiguous() for t in out)
        return out.contiguous()

    implementation.__name__ = getattr(reference, "__name__", "reference")
    return implementation


def _has_schema(namespace: Any, name: str) -> bool:
    try:
        getattr(namespace, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _has_kernel(qualname: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key)


def call(op: OpDef, *args: Any) -> Any:
    """Run `op` eagerly (through torch.ops) or, during ONNX export, emit a `redcompile` node.

    Arguments are positional in schema order: tensors (None for absent optional tensors) first,
    then attributes, exactly as `op.schema` lists them.
    """
    if torch.onnx.is_in_onnx_export():
        return _emit_onnx_node(op, args)
    return getattr(getattr(torch.ops, LIBRARY), op.name)(*args)


def _emit_onnx_node(op: OpDef, args: Sequence[Any]) -> Any:
    n_inputs = len(op.input_names)
    tensors, attr_values = args[:n_inputs], args[n_inputs:]
    attrs = dict(zip(op.attribute_names, attr_values))
    fake_out = op.fake(*args)
    outs = fake_out if isinstance(fake_out, tuple) else (fake_out,)
    result = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{op.onnx_name}",
        list(tensors),
        attrs={k: _onnx_attr(v) for k, v in attrs.items()},
        dtypes=[o.dtype for o in outs],
        shapes=[o.shape for o in outs],
        version=DOMAIN_VERSION,
    )
    return tuple(result) if isinstance(fake_out, tuple) else result[0]


def _onnx_attr(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    return value
