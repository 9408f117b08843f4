"""A small builder for ONNX function bodies written as straight-line Python.

    b = FunctionBuilder(op, spec)
    scores = b.MatMul(q, b.Transpose(k, perm=[0, 1, 3, 2]))
    values, indices = b.TopK(scores, b.const([4]), axis=-1, outputs=2)
    return b.build({"y": values})

Every call appends one node in the default domain and returns its output name(s). Python loops
unroll, which is how bodies specialise to a node's attributes (beam width, beam length, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from redcompile.ops.opdef import BODY_OPSET, DOMAIN, BodySpec

if TYPE_CHECKING:
    from redcompile.ops.opdef import OpDef

INT64 = TensorProto.INT64
FLOAT = TensorProto.FLOAT
BOOL = TensorProto.BOOL
_NUMPY_FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


class FunctionBuilder:
    """Accumulates nodes for one FunctionProto of `op`, specialised by `spec`."""

    def __init__(self, op: OpDef, spec: BodySpec) -> None:
        self.op = op
        self.spec = spec
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def input(self, name: str) -> str:
        """Name of a formal input; fails loudly if the body reads an absent optional input."""
        if name not in self.op.input_names:
            raise KeyError(f"{self.op.onnx_name} has no input {name!r}")
        if name in self.spec.input_types and self.spec.input_types[name] is None:
            raise KeyError(f"{self.op.onnx_name}: optional input {name!r} is absent on this node")
        return name

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs: Any) -> Any:
        """Append `op_type(inputs)` and return its output name, or a tuple of names."""
        names = [self._fresh(op_type.lower()) for _ in range(outputs)]
        # Named after the op: runtimes keep the name when they inline the body, so profiles
        # can attribute time to the op (ONNX Runtime: "_inlfunc_<Op>_<Op>.<name>").
        node_name = f"{self.op.onnx_name}.{names[0]}"
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names[0] if outputs == 1 else tuple(names)

    def __getattr__(self, op_type: str) -> Any:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)

        def emit(*inputs: str, outputs: int = 1, **attrs: Any) -> Any:
            return self.node(op_type, inputs, outputs=outputs, **attrs)

        return emit

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """A Constant node holding `value` (int64 by default)."""
        array = np.asarray(value, dtype=dtype)
        name = self._fresh("const")
        self.nodes.append(
            helper.make_node(
                "Constant",
                [],
                [name],
                name=f"{self.op.onnx_name}.{name}",
                value=numpy_helper.from_array(array, name),
            )
        )
        return name

    def const_like(self, value: float, like: str) -> str:
        """A float scalar in the element type of `like` (keeps bodies dtype-generic): a constant
        of that type when `like` is an input of known float32/float16 type, else a CastLike
        (e.g. bfloat16, which numpy cannot hold)."""
        dtype = _NUMPY_FLOATS.get(self.spec.input_types.get(like))
        if dtype is not None:
            return self.const(value, dtype)
        return self.CastLike(self.const(value, np.float32), like)

    def If(  # named like the ONNX op, as the other emitters are
        self,
        condition: str,
        then_branch: Callable[[], Sequence[str]],
        else_branch: Callable[[], Sequence[str]],
        output_types: Sequence[int],
        role: str | None = None,
    ) -> Any:
        """An ONNX If on the 0-d bool `condition`: each branch is a Python function that emits
        its nodes through this builder (reading outer values freely) and returns its outputs,
        whose element types are `output_types`. Only the branch taken runs. A `role` names
        the node `<Op>.<role>`, for hosts that look for it (ops/sampling.py)."""
        branches = []
        for kind, emit in (("then", then_branch), ("else", else_branch)):
            outer, self.nodes = self.nodes, []
            try:
                results = list(emit())
            finally:
                inner, self.nodes = self.nodes, outer
            if len(results) != len(output_types):
                raise ValueError(
                    f"{kind} branch returns {len(results)} values, not {len(output_types)}"
                )
            # A branch output must be produced inside the branch: an outer value leaves it
            # through an Identity (a kernel every time the branch runs, so emit the value
            # inside the branch where that costs nothing).
            made_inside = {name for node in inner for name in node.output}
            outputs = []
            for result in results:
                if result in made_inside and result not in outputs:
                    outputs.append(result)
                    continue
                out = self._fresh(f"{kind}_out")
                inner.append(
                    helper.make_node("Identity", [result], [out], name=f"{self.op.onnx_name}.{out}")
                )
                outputs.append(out)
            branches.append(
                helper.make_graph(
                    inner,
                    self._fresh(kind),
                    [],
                    [
                        helper.make_tensor_value_info(o, t, None)
                        for o, t in zip(outputs, output_types)
                    ],
                )
            )
        made = self.node(
            "If",
            [condition],
            outputs=len(output_types),
            then_branch=branches[0],
            else_branch=branches[1],
        )
        if role is not None:
            self.nodes[-1].name = f"{self.op.onnx_name}.{role}"
        return made

    def dim(self, tensor: str, axis: int) -> str:
        """Size of `tensor` along `axis` as an int64 tensor of shape [1]."""
        return self.Shape(tensor, start=axis, end=axis + 1 if axis != -1 else None)

    def build(self, outputs: dict[str, str]) -> onnx.FunctionProto:
        """Finish the body, binding each formal output to a computed value."""
        missing = set(self.op.output_names) - set(outputs)
        if missing:
            raise ValueError(f"{self.op.onnx_name} body leaves outputs {sorted(missing)} unbound")
        nodes = [_copy(n) for n in self.nodes]
        produced = {out for n in nodes for out in n.output}
        renamed: dict[str, str] = {}
        for name in self.op.output_names:
            value = outputs[name]
            # Write the output directly from its producing node; an Identity would make ONNX
            # Runtime allocate (and copy into) a second buffer, e.g. a whole KV cache.
            if value in produced and value not in renamed:
                renamed[value] = name
            else:
                nodes.append(helper.make_node("Identity", [renamed.get(value, value)], [name]))
        _rename(nodes, renamed)
        return helper.make_function(
            DOMAIN,
            self.op.onnx_name,
            list(self.op.input_names),
            list(self.op.output_names),
            nodes,
            opset_imports=[helper.make_opsetid("", BODY_OPSET)],
            attributes=list(self.op.attribute_names),
            doc_string=self.op.doc,
        )


def _rename(nodes: Sequence[onnx.NodeProto], renamed: dict[str, str]) -> None:
    """Apply `renamed` to the nodes' inputs and outputs, inside If branches too."""
    for node in nodes:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename(attribute.g.node, renamed)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def spec_from_node(
    op: OpDef,
    node_attrs: dict[str, Any],
    input_types: dict[str, int | None],
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    static_dims: dict[tuple[str, int], int] | None = None,
    unused_outputs: frozenset[str] = frozenset(),
) -> BodySpec:
    """Normalise a node's attributes (bytes to str) into a BodySpec for `op`."""
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in node_attrs.items()}
    unknown = set(attrs) - set(op.attribute_names)
    if unknown:
        raise ValueError(f"{op.onnx_name} node carries unknown attributes {sorted(unknown)}")
    return BodySpec(
        attributes=attrs,
        input_types=input_types,
        input_shapes=input_shapes or {},
        static_dims=static_dims or {},
        unused_outputs=unused_outputs,
    )
