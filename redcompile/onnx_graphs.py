"""Walking and editing an ONNX graph with its subgraphs (If branches, Loop bodies): one
definition for the compiler, the artifact writer, `inspect` and the runtime's specialised
step graphs, which all see a step split into branches."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in `node`'s attributes (an If's two branches, a Loop's body)."""
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every graph nested in its nodes, depth first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def rename(graph: onnx.GraphProto, names: dict[str, str], outer: bool = True) -> None:
    """Apply `names` to every value `graph` reads or writes; in subgraphs only to the values
    they read from outside (a subgraph may not redefine an outer name, so those are exact)."""
    for node in graph.node:
        node.input[:] = [names.get(n, n) if n else n for n in node.input]
        if outer:
            node.output[:] = [names.get(n, n) if n else n for n in node.output]
        for sub in subgraphs(node):
            rename(sub, names, outer=False)
    if outer:
        for value in graph.output:
            value.name = names.get(value.name, value.name)


def reads(node: onnx.NodeProto) -> set[str]:
    """Every value `node` reads, its subgraphs' outer reads included (a superset: names a
    subgraph makes itself are counted too, which only keeps more nodes alive)."""
    names = {n for n in node.input if n}
    for sub in subgraphs(node):
        for inner in sub.node:
            names |= reads(inner)
    return names


def live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` (in order) without those whose outputs nothing reads (on the way to
    `outputs`), so that no step spends a kernel on them."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed |= reads(node)
    return kept[::-1]
