"""passes/host_graphs.py and the ONNX Runtime host that runs them: the step graphs without the
levels If or the sampling If have the artifact's contract, and decode exactly what the artifact
decodes; the sampling graphs are made when a run first samples."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
from test_lookup import LOOKUP_ONLY, REPEATING, cfg, ids

from redcompile.api import open_generator, open_model_folder
from redcompile.compiler import ConvertOptions
from redcompile.io_contract import SAMPLING_ROLE
from redcompile.onnx_graphs import all_graphs
from redcompile.passes.host_graphs import has_sampling_if, step_graph


def sampling_ifs(model: onnx.ModelProto) -> int:
    bodies = [*all_graphs(model.graph)]
    nodes = [n for g in bodies for n in g.node]
    for function in model.functions:
        nodes += [n for n in function.node]
    return sum(n.op_type == "If" and f".{SAMPLING_ROLE}" in n.name for n in nodes)


@pytest.fixture(scope="module")
def artifacts(tiny_llama, converted):
    return {
        "autoregressive": converted(tiny_llama, ConvertOptions.of(autoregressive=True)),
        "lookup": converted(tiny_llama, ConvertOptions.of(beam=LOOKUP_ONLY, max_seq_len=128)),
    }


@pytest.mark.parametrize("name,levels", [("autoregressive", (None,)), ("lookup", ("none", "tree"))])
def test_greedy_graphs_drop_the_sampling_if_and_keep_the_contract(artifacts, name, levels):
    model = onnx.load(str(artifacts[name].out))
    assert has_sampling_if(model) and sampling_ifs(model) >= 1
    for level in levels:
        greedy = onnx.load_from_string(step_graph(model, level, greedy=True))
        assert sampling_ifs(greedy) == 0
        assert [v.name for v in greedy.graph.output] == [v.name for v in model.graph.output]
        assert [v.name for v in greedy.graph.input] == [v.name for v in model.graph.input]
    # nothing to resolve: the artifact itself
    assert step_graph(model, None, greedy=False) is None


@pytest.mark.parametrize("name", ["autoregressive", "lookup"])
def test_greedy_and_sampling_runs_decode_as_the_whole_artifact(tiny_llama, artifacts, name):
    generator = open_generator(artifacts[name].out)
    sessions = generator.backend._step_sessions
    assert set(sessions._made) == {True}  # only the greedy graphs at open
    reference = open_model_folder(tiny_llama, autoregressive=True)
    greedy = ids(generator.generate_ids(REPEATING, cfg(2)))
    assert greedy == ids(reference.generate_ids(REPEATING, cfg(2)))
    sampled = ids(generator.generate_ids(REPEATING, cfg(2, temperature=0.9, seed=3)))
    assert set(sessions._made) == {True, False}  # made when a run first sampled
    assert sampled == ids(reference.generate_ids(REPEATING, cfg(2, temperature=0.9, seed=3)))
    # the artifact's own graph, If and all, decodes the same tokens in both modes
    whole = ort.InferenceSession(str(artifacts[name].out), providers=["CPUExecutionProvider"])
    with generator.backend.using_session(whole):
        assert ids(generator.generate_ids(REPEATING, cfg(2))) == greedy
        assert ids(generator.generate_ids(REPEATING, cfg(2, temperature=0.9, seed=3))) == sampled


def test_a_generator_opened_for_sampling_makes_only_the_sampling_graphs_first(
    tiny_llama, artifacts
):
    generator = open_generator(artifacts["lookup"].out, sampling=True)
    sessions = generator.backend._step_sessions
    assert set(sessions._made) == {False}
    reference = open_model_folder(tiny_llama, autoregressive=True)
    sampled = cfg(2, temperature=0.9, seed=3)
    assert ids(generator.generate_ids(REPEATING, sampled)) == ids(
        reference.generate_ids(REPEATING, sampled)
    )
    assert set(sessions._made) == {False}
    assert ids(generator.generate_ids(REPEATING, cfg(2))) == ids(
        reference.generate_ids(REPEATING, cfg(2))
    )
    assert set(sessions._made) == {True, False}
