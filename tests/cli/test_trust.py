"""Trust: verify and inspect, atomic and reproducible artifacts, and a table of bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from bad_inputs import hostile_rows
from click.testing import CliRunner

from redcompile.artifact import read_artifact
from redcompile.cli import main
from redcompile.compiler import ConvertOptions, convert
from redcompile.config import BeamShape
from redcompile.errors import InputError

INSPECT_KEYS = [
    "path",
    "format_version",
    "redcompile_version",
    "target",
    "mode",
    "dtype",
    "beam",
    "max_seq_len",
    "draft_top_k",
    "model",
    "drafter",
    "stop_token_ids",
    "inputs",
    "outputs",
    "ops_by_domain",
    "custom_ops",
    "weights",
    "passes",
    "sources",
    "command",
    "base_weights",
    "speculation_levels",
    "autoregressive_branch",
]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


GOOD = ConvertOptions.of(beam=BeamShape(2, 3), random_drafter=True)


@pytest.fixture(scope="module")
def compiled(tiny_llama, converted):
    return converted(tiny_llama, GOOD).out


def test_verify_passes_a_good_artifact(compiled, tiny_llama):
    result = invoke("verify", compiled, tiny_llama, "--json", "--max-new-tokens", 12)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["sources"]["match"]
    names = [c["name"] for c in report["first_step"]]
    assert names[0] == "new_tokens" and "present.1.value" in names
    assert all(t["identical"] == t["prompts"] == 4 for t in report["tokens"].values())


def test_verify_catches_a_corrupted_weight(compiled, tiny_llama, tmp_path):
    model = onnx.load(str(compiled))
    # The first MLP up-projection ([hidden, intermediate] after export): layer 1's keys change.
    weight = next(t for t in model.graph.initializer if list(t.dims) == [64, 96])
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0, :] += 0.5  # one row of one matrix
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    result = invoke("verify", broken, tiny_llama, "--max-new-tokens", 12)
    assert result.exit_code == 1, result.output
    assert "FAILED | Mismatches found" in result.stdout
    assert "present.1" in "".join(line for line in result.stdout.splitlines() if "FAILED" in line)
    assert result.stderr.strip().startswith("error: verify:")


def test_verify_reports_changed_sources(compiled, tiny_llama, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config, indent=4))  # same model, other bytes
    result = invoke("verify", compiled, copy, "--json", "--max-new-tokens", 4)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["sources"]["differences"] == ["model/config.json"]


def test_inspect_json_is_the_documented_contract(compiled):
    result = invoke("inspect", compiled, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert list(info) == INSPECT_KEYS
    assert info["custom_ops"] == [
        {"op": "redcompile::Accept", "nodes": 1, "function_body": True},
        {"op": "redcompile::AncestorMask", "nodes": 1, "function_body": True},
        {"op": "redcompile::BuildTree", "nodes": 1, "function_body": True},
        {"op": "redcompile::DrafterBeamSearch", "nodes": 1, "function_body": True},
        {"op": "redcompile::KVCompaction", "nodes": 4, "function_body": True},
        {"op": "redcompile::PromptLookup", "nodes": 1, "function_body": True},
        {"op": "redcompile::TreeAttention", "nodes": 2, "function_body": True},
    ]
    assert info["weights"]["external_data_file"] is None and info["weights"]["bytes"] > 0
    assert info["command"].startswith("redcompile convert ")
    assert {"name": "input_ids", "dtype": "int64", "shape": ["batch", "tokens"]} in info["inputs"]
    manifest = read_artifact(compiled).manifest
    by_name = {t["name"]: t["dtype"] for t in manifest["io"]["inputs"]}
    for value in info["inputs"]:  # the manifest's names for dtypes ("model": the artifact's)
        want = by_name[value["name"]]
        assert value["dtype"] == (manifest["dtype"] if want == "model" else want)
    assert invoke("inspect", compiled).stdout == invoke("inspect", compiled).stdout


def test_converting_twice_gives_identical_bytes_however_the_folder_is_spelled(
    compiled, tiny_llama, tmp_path, monkeypatch
):
    monkeypatch.chdir(tiny_llama.parent)
    spelled = f"./{tiny_llama.name}/../{tiny_llama.name}"
    again = convert(spelled, tmp_path / "again.onnx", options=GOOD).out
    assert again.read_bytes() == compiled.read_bytes()


@pytest.fixture(scope="module")
def drafted_elsewhere(tiny_llama, tmp_path_factory):
    """An artifact converted with `--drafter` from a folder that is gone afterwards, and its
    model folder, which has no drafter/ of its own."""
    from bad_inputs import drafter_folder

    work = tmp_path_factory.mktemp("elsewhere")
    drafter = drafter_folder(tiny_llama, work)
    out = work / "drafted.onnx"
    convert(tiny_llama, out, ConvertOptions.of(beam=BeamShape(2, 3), drafter_dir=drafter))
    shutil.rmtree(drafter)
    return out


def test_verify_needs_only_the_artifact_and_the_base_model(drafted_elsewhere, tiny_llama):
    assert not (tiny_llama / "drafter").exists()
    result = invoke("verify", drafted_elsewhere, tiny_llama, "--json", "--max-new-tokens", 12)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and len(report["skipped"]) == 2
    assert "no drafter folder" in report["skipped"][0]
    drafts = {c["name"]: c for c in report["first_step"]}
    assert drafts["next_beam_paths"]["informational"]
    assert not drafts["present.1.key"]["informational"]
    assert all(t["identical"] == t["prompts"] == 4 for t in report["tokens"].values())
    text = invoke("verify", drafted_elsewhere, tiny_llama, "--max-new-tokens", 4).stdout
    assert "[I] skipped: drafter sources: no drafter folder" in text


def test_verify_without_the_drafter_still_catches_a_corrupted_weight(
    drafted_elsewhere, tiny_llama, tmp_path
):
    model = onnx.load(str(drafted_elsewhere))
    weight = next(t for t in model.graph.initializer if list(t.dims) == [64, 96])
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0, :] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    result = invoke("verify", broken, tiny_llama, "--max-new-tokens", 12)
    assert result.exit_code == 1, result.output
    assert "present.1" in "".join(line for line in result.stdout.splitlines() if "FAILED" in line)


def convert_process(model, out):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "redcompile.cli",
            "convert",
            str(model),
            str(out),
            "--random-drafter",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_scratch(folder, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any(p.name.startswith(".redcompile-tmp-") for p in folder.iterdir()):
            return True
        time.sleep(0.05)
    return False


def test_a_killed_convert_leaves_nothing_at_out_and_the_next_one_cleans_up(tiny_llama, tmp_path):
    out = tmp_path / "m.onnx"
    process = convert_process(tiny_llama, out)
    assert wait_for_scratch(tmp_path, process)
    time.sleep(1.0)  # inside loading or export
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".redcompile-tmp-")]
    assert len(left) == 1 and (left[0] / "redcompile-owner.json").is_file()
    # The next convert removes the killed one's scratch folder on its way in (this one then
    # fails cheaply at loading: the tiny model has no drafter) and leaves nothing itself.
    with pytest.raises(InputError, match="no drafter at"):
        convert(tiny_llama, out, options=ConvertOptions.of(beam=BeamShape(4, 5, lookup=0)))
    assert list(tmp_path.iterdir()) == []


def test_a_terminated_convert_removes_its_temporaries(tiny_llama, tmp_path):
    out = tmp_path / "m.onnx"
    process = convert_process(tiny_llama, out)
    assert wait_for_scratch(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    # Python acts on the signal when the running C++ call (export) returns: allow a loaded CI.
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and b"Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "raised,status", [("KeyboardInterrupt", -signal.SIGINT), ("Terminated", 130)]
)
def test_sigterm_unwinds_with_an_exception_cpython_does_not_remember(raised, status, tmp_path):
    """A KeyboardInterrupt that escapes code a library runs through PyRun_String makes CPython
    kill a `python -m` process with SIGINT at exit even when the CLI caught it; the CLI's
    SIGTERM exception is a subclass, which that check does not match, so its status holds."""
    (tmp_path / "unwind.py").write_text(
        "import ctypes, sys\n"
        "from redcompile.cli import Terminated\n"
        "run = ctypes.pythonapi.PyRun_String\n"
        "run.restype = ctypes.py_object\n"
        "run.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]\n"
        "scope = {'Terminated': Terminated}\n"
        "try:\n"
        f"    run(b'raise {raised}()', 257, scope, scope)\n"  # 257: Py_file_input
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    process = subprocess.run([sys.executable, "-m", "unwind"], cwd=tmp_path)
    assert process.returncode == status


def test_a_failing_pass_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    from redcompile.passes.share_weights import ShareWeights

    def explode(self, graph, ctx):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(ShareWeights, "match", explode)
    with pytest.raises(RuntimeError, match="injected"):
        convert(tiny_llama, tmp_path / "m.onnx", options=ConvertOptions.of(random_drafter=True))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Bad inputs through the CLI: one line, exit code 2, no traceback, no output file.


def _artifact_variant(kind):
    def make(good, tmp):
        path = tmp / f"{kind}.onnx"
        if kind == "truncated":
            data = good.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif kind == "cut at the end":
            data = good.read_bytes()
            path.write_bytes(data[:-30])
        elif kind == "not onnx":
            path.write_text("this is not a model\n")
        elif kind == "plain onnx":
            model = onnx.load(str(good))
            del model.metadata_props[:]
            onnx.save(model, str(path))
        else:
            model = onnx.load(str(good))
            props = {p.key: p for p in model.metadata_props}
            if kind == "future version":
                props["redcompile.format_version"].value = "99"
            elif kind == "tampered manifest":
                manifest = json.loads(props["redcompile.manifest"].value)
                manifest["beam"]["width"] = 64
                props["redcompile.manifest"].value = json.dumps(manifest)
            elif kind == "missing data file":
                onnx.save(
                    model,
                    str(path),
                    save_as_external_data=True,
                    location=path.name + ".data",
                    size_threshold=1024,
                )
                (tmp / (path.name + ".data")).unlink()
                return path
            onnx.save(model, str(path))
        return path

    return make


def _prompts(text):
    def make(good, tmp):
        path = tmp / "p.jsonl"
        path.write_text(text)
        return path

    return make


def _drafter_without_frequencies(model, tmp):
    """A drafter folder for `model` with weights and config but no token_frequencies.json."""
    from redcompile.models.drafter_io import random_drafter, save_drafter
    from redcompile.models.loader import load_decoder

    return save_drafter(random_drafter(load_decoder(model).config), tmp / "drafter")


A = _artifact_variant
TABLE = [
    # (name, command builder(good, tmp, model) -> args, expected words)
    (
        "artifact missing",
        lambda g, t, m: ["generate", t / "nope.onnx", "--prompt", "x"],
        "does not exist",
    ),
    (
        "artifact truncated",
        lambda g, t, m: ["generate", A("truncated")(g, t), "--prompt", "x"],
        "artifact:",
    ),
    (
        "artifact cut at the end",
        lambda g, t, m: ["inspect", A("cut at the end")(g, t)],
        "truncated",
    ),
    ("not an onnx file", lambda g, t, m: ["inspect", A("not onnx")(g, t)], "not an ONNX file"),
    (
        "onnx without magic",
        lambda g, t, m: ["inspect", A("plain onnx")(g, t)],
        "not a redcompile artifact",
    ),
    (
        "unknown format version",
        lambda g, t, m: ["generate", A("future version")(g, t), "--prompt", "x"],
        "format version 99",
    ),
    ("tampered manifest", lambda g, t, m: ["verify", A("tampered manifest")(g, t), m], "checksum"),
    ("missing external data", lambda g, t, m: ["inspect", A("missing data file")(g, t)], "missing"),
    (
        "prompt longer than the artifact allows",
        lambda g, t, m: ["generate", g, "--prompt", "y" * 600],
        "maximum sequence length 512",
    ),
    (
        "beam shape differs from the artifact",
        lambda g, t, m: ["generate", g, "--prompt", "x", "--beam-width", "4"],
        "compiled with",
    ),
    (
        "drafter given for an artifact",
        lambda g, t, m: ["generate", g, "--prompt", "x", "--drafter", m],
        "applies to model folders",
    ),
    (
        "prompts file missing",
        lambda g, t, m: ["generate", g, "--prompts-file", t / "no.jsonl"],
        "not found",
    ),
    (
        "prompts file bad json",
        lambda g, t, m: [
            "generate",
            g,
            "--prompts-file",
            _prompts('{"prompt": "a"}\n{oops\n')(g, t),
        ],
        "line 2 is not valid JSON",
    ),
    (
        "prompts file without prompt field",
        lambda g, t, m: ["generate", g, "--prompts-file", _prompts('{"text": "a"}\n')(g, t)],
        "'prompt' field",
    ),
    (
        "prompts file empty",
        lambda g, t, m: ["generate", g, "--prompts-file", _prompts("\n")(g, t)],
        "holds no prompts",
    ),
    (
        "verify: model folder missing",
        lambda g, t, m: ["verify", g, t / "no-model"],
        "does not exist",
    ),
    ("verify: negative tolerance", lambda g, t, m: ["verify", g, m, "--atol", "-1"], "--atol"),
    (
        "convert: model folder missing",
        lambda g, t, m: ["convert", t / "nope", t / "out.onnx"],
        "does not exist",
    ),
    (
        "convert: unknown suffix",
        lambda g, t, m: ["convert", m, t / "out.bin", "--random-drafter"],
        "cannot tell the target",
    ),
    (
        "convert: output folder missing",
        lambda g, t, m: ["convert", m, t / "no" / "out.onnx", "--random-drafter"],
        "does not exist",
    ),
    (
        "convert: output is a folder",
        lambda g, t, m: ["convert", m, t, "--random-drafter", "--target", "onnxruntime"],
        "folder",
    ),
    (
        "convert: bad dtype",
        lambda g, t, m: ["convert", m, t / "out.onnx", "--dtype", "fp8"],
        "--dtype",
    ),
    (
        "convert: beam width 0",
        lambda g, t, m: ["convert", m, t / "out.onnx", "--random-drafter", "--beam-width", "0"],
        "--beam-width",
    ),
    (
        "convert: beam length too long",
        lambda g, t, m: ["convert", m, t / "out.onnx", "--random-drafter", "--beam-length", "12"],
        "--beam-length",
    ),
    (
        "convert: max-seq-len too small",
        lambda g, t, m: ["convert", m, t / "out.onnx", "--random-drafter", "--max-seq-len", "1"],
        "--max-seq-len",
    ),
    (
        "convert: --device for an ONNX artifact",
        lambda g, t, m: ["convert", m, t / "out.onnx", "--random-drafter", "--device", "cpu"],
        "--device applies to the torch (.pt2) target",
    ),
    (
        "convert: no drafter",
        lambda g, t, m: ["convert", m, t / "out.onnx", "--lookup-beams", "0"],
        "no drafter at",
    ),
    (
        "convert: draft vocabulary larger than the vocabulary",
        lambda g, t, m: [
            "convert",
            m,
            t / "out.onnx",
            "--random-drafter",
            "--draft-vocab",
            "99999",
        ],
        "--draft-vocab",
    ),
    (
        "convert: draft vocabulary without token frequencies",
        lambda g, t, m: [
            "convert",
            m,
            t / "out.onnx",
            "--drafter",
            _drafter_without_frequencies(m, t),
            "--draft-vocab",
            "8",
        ],
        "token_frequencies.json does not exist",
    ),
    (
        "generate: draft vocabulary for an artifact",
        lambda g, t, m: ["generate", g, "--prompt", "x", "--draft-vocab", "8"],
        "--draft-vocab applies to model folders",
    ),
    ("convert: missing argument", lambda g, t, m: ["convert", m], "Missing argument"),
    (
        "unknown option",
        lambda g, t, m: ["generate", g, "--prompt", "x", "--beams", "3"],
        "No such option",
    ),
]


TABLE += hostile_rows()


def folder_hashes(*roots):
    """sha256 of every file under `roots` (links by their target's bytes)."""
    hashes = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.mark.parametrize("name,build,words", TABLE, ids=[row[0] for row in TABLE])
def test_bad_inputs_get_one_line_and_exit_code_2(
    compiled, tiny_llama, tmp_path, name, build, words
):
    work = tmp_path / "work"
    work.mkdir()
    args = build(compiled, work, tiny_llama)
    before = set(os.listdir(work))
    inputs = folder_hashes(tiny_llama, compiled, work)
    result = invoke(*args)
    assert result.exit_code == 2, f"{name}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in result.output
    created = set(os.listdir(work)) - before
    assert not {p for p in created if p.startswith("out") or ".tmp-" in p or "redcompile" in p}
    assert folder_hashes(tiny_llama, compiled, work) == inputs  # nothing read was changed


def test_the_table_is_long_enough():
    assert len(TABLE) >= 60
    assert np.unique([row[0] for row in TABLE]).size == len(TABLE)
