"""host-graphs: step graphs a host may run in place of an artifact's whole graph, when it knows
before a step what the graph would otherwise test while it runs.

Two such facts, both inputs the host writes itself:

- the level (`speculation`): a step at level `none` may run the levels If's autoregressive
  branch, a step at another level its speculative branch (passes/speculation_levels.py);
- whether any row samples (`temperature`): a step whose rows are all greedy may run every op
  body with its sampling If (named `<Op>.sampling`, io_contract.SAMPLING_ROLE) replaced by
  the If's greedy branch.

Each graph has the artifact's inputs and outputs and computes, for the inputs it is run on,
the tensors the whole graph computes, so tokens cannot change, with one exception a host must
ask for (`history=False`): a level-`none` graph that passes the token history through
unchanged instead of appending the step's tokens to it. A host that runs it holds every row's
prompt and emitted tokens, which is the history (ops/prompt_lookup.py), and writes it before
the next step that drafts (generation.py); a lookup artifact's level-`none` step then costs
what an autoregressive step does. What it saves is ONNX Runtime's
If, which runs a branch as a subgraph: on the fixture a level-`none` step cost 1.10x the
autoregressive artifact's step through the levels If and 1.03x as a graph of its own, and an
autoregressive step without its sampling If decoded 5% faster (docs/benchmarks.md).
redcompile's ONNX Runtime host runs these graphs (runtime/loading.py); other hosts may run the
artifact as it is.
"""

from __future__ import annotations

import re

import onnx

from redcompile.io_contract import HISTORY, SAMPLING_ROLE
from redcompile.onnx_graphs import all_graphs, live, reads, rename
from redcompile.passes.speculation_levels import CHOOSE_NODE

BRANCHES = {"none": "then_branch", "tree": "else_branch"}  # the levels If's, by level


# `<Op>.sampling`, or with the suffix ONNX's inliner gives a body's node names (`__1`)
SAMPLING_IF_NAME = re.compile(rf"\.{SAMPLING_ROLE}(__\d+)?$")


def _is_sampling_if(node: onnx.NodeProto) -> bool:
    return node.op_type == "If" and SAMPLING_IF_NAME.search(node.name) is not None


def _resolved(node: onnx.NodeProto, branch: str) -> list[onnx.NodeProto]:
    """The nodes of `node`'s (an If's) `branch`, writing the If's outputs."""
    graph = onnx.GraphProto()
    graph.CopyFrom(next(a.g for a in node.attribute if a.name == branch))
    rename(graph, {value.name: out for value, out in zip(graph.output, node.output)})
    return list(graph.node)


def _greedy_nodes(nodes: list[onnx.NodeProto]) -> tuple[list[onnx.NodeProto], bool]:
    """`nodes` with every sampling If replaced by its greedy (else) branch; whether any was."""
    out, found = [], False
    for node in nodes:
        if _is_sampling_if(node):
            out.extend(_resolved(node, "else_branch"))
            found = True
        else:
            out.append(node)
    return out, found


def _greedy_function(function: onnx.FunctionProto) -> onnx.FunctionProto | None:
    """`function` with its sampling Ifs resolved to greedy, or None when it has none."""
    nodes, found = _greedy_nodes(list(function.node))
    if not found:
        return None
    greedy = onnx.FunctionProto()
    greedy.CopyFrom(function)
    del greedy.node[:]
    greedy.node.extend(live(nodes, set(function.output)))
    return greedy


def has_sampling_if(model: onnx.ModelProto) -> bool:
    """Whether `model` names a sampling If (artifacts made before the name have none)."""
    bodies = [*(g.node for g in all_graphs(model.graph)), *(f.node for f in model.functions)]
    return any(_is_sampling_if(n) for body in bodies for n in body)


def step_graph(
    model: onnx.ModelProto, level: str | None, greedy: bool, history: bool = True
) -> bytes | None:
    """`model` (an artifact's step) serialized with the choices made: `level` "none" or
    "tree" takes that branch of the levels If (None: the graph keeps it, or has none),
    `greedy` resolves every sampling If to its greedy branch (where the artifact names
    them), `history` False makes level `none` pass the token history through unchanged
    (the module docstring says when a host may). None when there is nothing to resolve (no
    levels If for a `level`; neither a level nor a sampling If for `greedy`) or the weights
    are external data (ONNX Runtime then loads the file itself)."""
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        return None
    outputs = [value.name for value in graph.output]
    nodes, value_info, own = list(graph.node), list(graph.value_info), []
    if level is not None:
        chooser = next((n for n in nodes if n.op_type == "If" and n.name == CHOOSE_NODE), None)
        if chooser is None:
            return None
        branch = next(a.g for a in chooser.attribute if a.name == BRANCHES[level])
        nodes = [n for n in nodes if n is not chooser] + _resolved(chooser, BRANCHES[level])
        value_info, own = list(branch.value_info), list(branch.initializer)
    functions, resolved_any = list(model.functions), level is not None
    if greedy:
        nodes, found = _greedy_nodes(nodes)
        resolved = [_greedy_function(f) for f in functions]
        functions = [new or old for new, old in zip(resolved, functions)]
        resolved_any = resolved_any or found or any(resolved)
    if not resolved_any:
        return None
    next_history = f"next_{HISTORY}"
    if level == "none" and not history and next_history in outputs:
        nodes = [n for n in nodes if next_history not in n.output]
        nodes.append(onnx.helper.make_node("Identity", [HISTORY], [next_history]))
    nodes = live(nodes, set(outputs))
    read = set().union(*(reads(n) for n in nodes))
    head = onnx.ModelProto(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
    )
    head.opset_import.extend(model.opset_import)
    head.functions.extend(functions)
    head.metadata_props.extend(model.metadata_props)
    head.graph.name = graph.name
    head.graph.node.extend(nodes)
    head.graph.input.extend(graph.input)
    head.graph.output.extend(graph.output)
    head.graph.value_info.extend(value_info)
    head.graph.initializer.extend(t for t in own if t.name in read)
    # The weights follow as one message each: protobuf merges concatenated messages, the way
    # artifact files are written, so no second in-memory copy of the model is made.
    pieces = [head.SerializeToString()]
    for tensor in graph.initializer:
        if tensor.name in read:
            piece = onnx.ModelProto()
            piece.graph.initializer.append(tensor)
            pieces.append(piece.SerializeToString())
    return b"".join(pieces)
