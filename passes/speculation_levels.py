"""speculation-levels: one graph that steps autoregressively or speculatively, one weight copy.

Before: two finished step graphs of one base model.

    speculative step  (verifies any tree, drafts at the level `speculation` asks for)
    autoregressive step (verifies forced tokens only: prefill chunks and roots; drafts nothing)

After: the speculative step's inputs and outputs, and

    If(speculation == none)
      then: the autoregressive step (functions whose bodies differ from the tree step's
            inlined) over each row's forced tokens: num_tokens := forced, input_ids ->
            [:, :max(ReduceMax(forced), 1)] (a row's drafted tokens, which level none drops,
            and padding are never read); outputs padded to the contract: new_tokens [B, 1] ->
            [B, L], next_input_ids [B, 1] -> [B, N]; next_parent_ids and next_depths are the
            pad values throughout (an autoregressive root's parent and depth equal them);
            beam_paths passed on
      else: input_ids, parent_ids, depths -> [:, :max(ReduceMax(num_tokens), 1)]; the
            speculative step

The trimmed inputs make a step verify only the columns some row uses: a root-only step (after
level none) verifies one token, a chain (level chain) L, whatever N the artifact was compiled
for; every output keeps its contract width, so hosts bind fixed buffers. Level none verifies
forced tokens only in every runtime (models/step.py): the drafts a row holds when the level
drops to none are discarded unverified, which is exact (an autoregressive step from the same
row state) and costs only what those drafts could have saved, once per change of level.

Every initializer lives in the outer graph; the two branches read the same tensor wherever their
weights are equal byte for byte (every matrix of the same base model), so the file holds one copy.

Why: a step at level `none` whose rows hold no drafts is an autoregressive step, and the
autoregressive graph is the lean one (no tree masks, acceptance over one token, no beam search):
a full batch that speculation cannot speed up then pays the autoregressive step, plus what ONNX
Runtime's If, the token history (with lookup beams) and the padding cost; docs/benchmarks.md,
"Speculation levels", has the figures. On a small model each kernel costs a few microseconds
against a step of a few hundred, so the path to the branch is as short as the contract allows:
the choice reads the level alone (one Equal), each branch trims what it reads, and the
autoregressive branch's tail is two pads and two fills.
Exactness: the branch taken for a row state computes what the autoregressive artifact computes
for it, and a step that has drafts to verify always runs the speculative branch.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper, inliner

from redcompile.io_contract import SPECULATION, SPECULATION_LEVELS, StepSignature
from redcompile.onnx_graphs import live, reads, rename
from redcompile.passes.base import tensor_digest

LEAN = "autoregressive/"
CHOOSE_NODE = "levels/If"  # the If that picks the branch (profiles name its kernel after it)
TRIMMED = "trimmed/"  # + a packed input: cut to the columns the step uses
TRIMMED_INPUTS = ("input_ids", "parent_ids", "depths")  # packed inputs, read trimmed
# the next packed tree's outputs and the values that pad them (docs/artifact.md, "Inputs")
PACKED_FILL = {"next_input_ids": 0, "next_depths": 0, "next_parent_ids": -1}
FULL = "speculative/"
INT64 = onnx.TensorProto.INT64


def _constant(name: str, values: list[int], scalar: bool = False) -> onnx.NodeProto:
    dims = [] if scalar else [len(values)]
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, INT64, dims, values)
    )


def _lean_branch(
    lean: onnx.ModelProto,
    weight_names: dict[str, str],
    signature: StepSignature,
    beam_length: int,
) -> onnx.GraphProto:
    """The autoregressive step as the `then` branch: its values prefixed, its weights renamed
    to the outer graph's, its outputs the speculative contract's (prefixed)."""
    tree_width = _tree_width(signature)
    graph = lean.graph
    types = {v.name: v.type.tensor_type.elem_type for v in graph.output}
    types["next_beam_paths"] = INT64
    outer_inputs = {v.name for v in graph.input}
    missing = outer_inputs - set(signature.input_names())
    if missing:
        raise ValueError(f"the autoregressive step reads {sorted(missing)}, not step inputs")
    produced = {name for node in graph.node for name in node.output if name}
    own_outputs = {v.name for v in graph.output}
    names = {}
    for name in produced:
        # a step output leaves the branch under its contract name, prefixed; new_tokens and
        # the next packed tree are padded to the tree's widths first
        direct = name in own_outputs and name != "new_tokens" and name not in PACKED_FILL
        names[name] = LEAN + ("out/" if direct else "") + name
    names.update(weight_names)
    names.update({name: LEAN + TRIMMED + name for name in TRIMMED_INPUTS})
    names["num_tokens"] = "forced"  # level none verifies the forced tokens alone
    # sample_uniforms stays the outer [B, L]: an autoregressive Accept reads a row's first
    # uniform itself, and only when some row samples (ops/acceptance.py)
    rename(graph, names)
    head = [
        _constant(LEAN + "c/pads", [0, 0, 0, beam_length - 1]),
        _constant(LEAN + "c/tree_pads", [0, 0, 0, tree_width - 1]),
        _constant(LEAN + "c/fill/next_input_ids", [PACKED_FILL["next_input_ids"]], scalar=True),
        _constant(LEAN + "c/zero", [0], scalar=True),
        _constant(LEAN + "c/parent_fill", [PACKED_FILL["next_parent_ids"]], scalar=True),
    ]
    if PACKED_FILL["next_depths"] != 0:
        raise ValueError("the depth fill below is a zero tensor")
    ids, depths, parents = (
        LEAN + "out/" + name for name in ("next_input_ids", "next_depths", "next_parent_ids")
    )
    # the next tree: the root [B, 1] -> [B, N], pad values after it; an autoregressive root's
    # depth and parent are the pad values, so those two are the fill throughout
    tail = [
        helper.make_node(
            "Pad",
            [LEAN + "new_tokens", LEAN + "c/tree_pads", LEAN + "c/fill/next_input_ids"],
            [ids],
        ),
        helper.make_node("Mul", [ids, LEAN + "c/zero"], [depths]),
        helper.make_node("Add", [depths, LEAN + "c/parent_fill"], [parents]),
    ]
    outputs = []
    for spec in signature.outputs:
        out = LEAN + "out/" + spec.name
        if spec.name == "new_tokens":
            tail.append(helper.make_node("Pad", [LEAN + "new_tokens", LEAN + "c/pads"], [out]))
        elif spec.name in PACKED_FILL:  # made at the top of the tail
            pass
        elif spec.name == "next_beam_paths":  # never read: the next tree is a forced root
            tail.append(helper.make_node("Identity", ["beam_paths"], [out]))
        elif spec.name not in own_outputs:
            raise ValueError(f"the autoregressive step has no output {spec.name}")
        elif spec.name not in produced:  # an input or weight passed through
            tail.append(helper.make_node("Identity", [names.get(spec.name, spec.name)], [out]))
        outputs.append(helper.make_tensor_value_info(out, types[spec.name], None))
    nodes = live(head + list(graph.node) + tail, {o.name for o in outputs})
    nodes = _trimmed(LEAN + TRIMMED, "forced", nodes) + nodes
    return helper.make_graph(nodes, "autoregressive_step", [], outputs)


def _tree_width(signature: StepSignature) -> int:
    """N: the packed width of the next tree, from the contract."""
    (spec,) = [t for t in signature.outputs if t.name == "next_input_ids"]
    return int(spec.dims[1])


def _full_branch(spec: onnx.ModelProto) -> tuple[onnx.GraphProto, list[onnx.ValueInfoProto]]:
    """The speculative step as the `else` branch (its outputs renamed apart from the outer
    graph's), and the outer graph's outputs (the step's, as they were)."""
    graph = spec.graph
    outer_outputs = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in graph.output]
    produced = {name for node in graph.node for name in node.output if name}
    names = {v.name: FULL + "out/" + v.name for v in graph.output}
    passed = [v.name for v in graph.output if v.name not in produced]
    rename(graph, {**names, **{name: FULL + TRIMMED + name for name in TRIMMED_INPUTS}})
    nodes = _trimmed(FULL + TRIMMED, "num_tokens", list(graph.node)) + list(graph.node)
    nodes += [helper.make_node("Identity", [n], [names[n]]) for n in passed]
    outputs = [
        helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, None)
        for v in graph.output
    ]
    branch = helper.make_graph(nodes, "speculative_step", [], outputs)
    branch.value_info.extend(graph.value_info)
    return branch, outer_outputs


def _functions(spec: onnx.ModelProto, lean: onnx.ModelProto) -> onnx.ModelProto:
    """`lean` with its local functions that `spec` defines differently (bodies specialised to
    other shapes) inlined, so one function per domain and name serves both; the rest stay
    calls, so a runtime with a kernel for the op still runs its kernel."""
    defined = {(f.domain, f.name): f.SerializeToString(deterministic=True) for f in spec.functions}
    clashes = [
        (f.domain, f.name)
        for f in lean.functions
        if defined.get((f.domain, f.name), f.SerializeToString(deterministic=True))
        != f.SerializeToString(deterministic=True)
    ]
    return inliner.inline_selected_functions(lean, clashes) if clashes else lean


def _dequantized_alone(spec: onnx.ModelProto, lean_reads: set[str]) -> set[str]:
    """The initializers of `spec` that DequantizeLinear nodes read and the autoregressive
    branch does not (a quantized drafter's blocks): they move into the tree branch, because
    ONNX Runtime's DequantizeLinear + MatMul -> MatMulNBits fusion looks for its weights in
    the node's own graph and refuses to load a subgraph whose weights are outer-scope."""
    weights = {t.name for t in spec.graph.initializer}
    dequantized = {
        name
        for node in spec.graph.node
        if node.op_type == "DequantizeLinear"
        for name in node.input
        if name in weights
    }
    elsewhere = {
        name
        for node in spec.graph.node
        if node.op_type != "DequantizeLinear"
        for name in node.input
    }
    return dequantized - lean_reads - elsewhere


def _trimmed(prefix: str, counts: str, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes that make `prefix + name` for each packed input `nodes` read: the input
    [B, T] cut to [B, width], width = max(ReduceMax(`counts`), 1), the columns some row uses."""
    read = set().union(*(reads(node) for node in nodes))
    wanted = [name for name in TRIMMED_INPUTS if prefix + name in read]
    if not wanted:
        return []
    width = prefix + "width"
    return [
        helper.make_node("ReduceMax", [counts], [prefix + "widest"], keepdims=1),
        helper.make_node("Max", [prefix + "widest", "levels/one"], [width]),
        *[
            helper.make_node("Slice", [name, "levels/start", width, "levels/one"], [prefix + name])
            for name in wanted
        ],
    ]


def _choose(outputs: list[str], then_branch, else_branch) -> list[onnx.NodeProto]:
    """If(speculation == none) -> then, else -> else, and the constants both read."""
    return [
        _constant("levels/one", [1]),
        _constant("levels/start", [0]),
        _constant("levels/none", [SPECULATION_LEVELS["none"]], scalar=True),
        helper.make_node("Equal", [SPECULATION, "levels/none"], ["levels/autoregressive"]),
        helper.make_node(
            "If",
            ["levels/autoregressive"],
            outputs,
            name=CHOOSE_NODE,
            then_branch=then_branch,
            else_branch=else_branch,
        ),
    ]


def with_autoregressive_branch(
    spec: onnx.ModelProto,
    lean: onnx.ModelProto,
    signature: StepSignature,
    beam_length: int,
    weights_dir: Path | None,
) -> tuple[onnx.ModelProto, int]:
    """The speculative step `spec` with `lean` (the autoregressive step of the same base model)
    as the branch a level-`none` step without drafts takes; see the module docstring.
    `signature` is the speculative step's contract; both models' external data is in
    `weights_dir`. Returns the model and how many of `lean`'s weights it shares with `spec`.
    Neither input model is usable afterwards."""
    if SPECULATION not in signature.input_names():
        raise ValueError("the step has no speculation input")
    lean = _functions(spec, lean)
    by_digest = {tensor_digest(t, weights_dir): t.name for t in spec.graph.initializer}
    weight_names, extra = {}, []
    for tensor in lean.graph.initializer:
        shared = by_digest.get(tensor_digest(tensor, weights_dir))
        weight_names[tensor.name] = shared if shared is not None else LEAN + tensor.name
        if shared is None:
            tensor.name = LEAN + tensor.name
            extra.append(tensor)
    then_branch = _lean_branch(lean, weight_names, signature, beam_length)
    own = _dequantized_alone(spec, set(weight_names.values()))
    else_branch, outputs = _full_branch(spec)
    else_branch.initializer.extend(t for t in spec.graph.initializer if t.name in own)
    graph = helper.make_graph(
        _choose([o.name for o in outputs], then_branch, else_branch),
        spec.graph.name,
        list(spec.graph.input),
        outputs,
        [t for t in spec.graph.initializer if t.name not in own] + extra,
    )
    opsets = {o.domain: o.version for o in lean.opset_import}
    opsets.update({o.domain: o.version for o in spec.opset_import})
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        ir_version=spec.ir_version,
        producer_name=spec.producer_name,
        producer_version=spec.producer_version,
    )
    own = {(f.domain, f.name) for f in spec.functions}
    model.functions.extend(spec.functions)
    model.functions.extend(f for f in lean.functions if (f.domain, f.name) not in own)
    return model, len(lean.graph.initializer) - len(extra)
