"""Runs a pipeline of passes with checks after each one, records, and optional graph dumps."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from redcompile.errors import PassError
from redcompile.ops.opdef import ONNX_IR_VERSION
from redcompile.passes.base import GraphPass, PassContext

gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.WARNING


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: matches, rejected candidates, time, node counts before and after."""

    name: str
    matches: int
    rejected: int
    seconds: float
    nodes_before: int
    nodes_after: int

    def to_dict(self) -> dict:
        """JSON form for reports."""
        return {
            "name": self.name,
            "matches": self.matches,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 4),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
        }


def to_model(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export a graphsurgeon graph as an IR-10 model (keeping the template's metadata)."""
    model = gs.export_onnx(graph, do_type_check=False, ir_version=ONNX_IR_VERSION)
    if template is not None:
        model.producer_name, model.producer_version = (
            template.producer_name,
            template.producer_version,
        )
        del model.metadata_props[:]
        model.metadata_props.extend(template.metadata_props)
    return model


def check_model(
    model: onnx.ModelProto, where: str, weights_dir: Path | None = None
) -> onnx.ModelProto:
    """ONNX checker and strict shape inference; returns the model with inferred value info.

    With weights stored externally the checker needs a file next to the data, so the (small)
    graph is written to `weights_dir` and checked by path.
    """
    try:
        if weights_dir is None:
            onnx.checker.check_model(model)
        else:
            path = Path(weights_dir) / "_check.onnx"
            onnx.save(model, str(path))
            onnx.checker.check_model(str(path))
        return onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PassError(f"{where}: the graph no longer checks: {exc}") from exc


class PassManager:
    """Apply passes in order; fail loudly on a required pass with no match or a broken graph."""

    def __init__(
        self,
        passes: Sequence[GraphPass],
        dump_dir: Path | None = None,
        on_pass: Callable[[str], None] | None = None,
    ) -> None:
        names = [p.name for p in passes]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline lists a pass twice: {names}")
        self.passes = list(passes)
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.on_pass = on_pass

    def run(
        self, model: onnx.ModelProto, ctx: PassContext | None = None
    ) -> tuple[onnx.ModelProto, list[PassRecord]]:
        """The rewritten model and one record per pass."""
        ctx = ctx or PassContext()
        model = check_model(model, "input graph", ctx.weights_dir)
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            _dump(model, self.dump_dir / "00_exported.onnx")
        records = []
        for index, graph_pass in enumerate(self.passes, start=1):
            if self.on_pass:
                self.on_pass(graph_pass.name)
            model, record = self._run_one(graph_pass, model, ctx)
            records.append(record)
            if self.dump_dir:
                _dump(model, self.dump_dir / f"{index:02d}_{graph_pass.name}.onnx")
        return model, records

    def _run_one(
        self, graph_pass: GraphPass, model: onnx.ModelProto, ctx: PassContext
    ) -> tuple[onnx.ModelProto, PassRecord]:
        start = time.perf_counter()
        ctx.current_pass = graph_pass.name
        rejected_before = len(ctx.rejections)
        graph = gs.import_onnx(model)
        before = len(graph.nodes)
        matches = list(graph_pass.match(graph, ctx))
        rejections = ctx.rejections[rejected_before:]
        if graph_pass.required and not matches:
            hint = (
                f"; closest candidate {rejections[0].node}: {rejections[0].reason}"
                if (rejections)
                else ""
            )
            raise PassError(f"{graph_pass.name}: required pass matched nothing{hint}")
        for match in matches:
            graph_pass.rewrite(graph, match, ctx)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        graph_pass.verify(graph, ctx)
        out = check_model(to_model(graph, model), f"after {graph_pass.name}", ctx.weights_dir)
        record = PassRecord(
            graph_pass.name,
            len(matches),
            len(rejections),
            time.perf_counter() - start,
            before,
            len(out.graph.node),
        )
        return out, record


def _dump(model: onnx.ModelProto, path: Path) -> None:
    """Write a snapshot (.onnx, weights kept as references) and a readable listing (.txt)."""
    onnx.save(model, str(path))
    path.with_suffix(".txt").write_text(render(model), encoding="utf-8")


def render(model: onnx.ModelProto) -> str:
    """One line per node: outputs = domain::op(inputs) {attributes}; then the functions."""
    lines = [f"# opsets {[(o.domain or 'ai.onnx', o.version) for o in model.opset_import]}"]
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        shown = {k: v for k, v in attrs.items() if not isinstance(v, onnx.TensorProto)}
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        lines.append(f"{', '.join(node.output)} = {op}({', '.join(node.input)}) {shown or ''}")
    for fn in model.functions:
        lines.append(f"# function {fn.domain}::{fn.name}: {len(fn.node)} nodes")
    return "\n".join(lines) + "\n"
