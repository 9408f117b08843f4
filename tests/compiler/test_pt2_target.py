"""The torch target: `convert` to a .pt2 AOTInductor package, run it, inspect and verify it.

One package is compiled for the whole module (AOTInductor compiles C++: about 20-40 s on two
cores) and shared by every test; the other tests only export or fail before compiling.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile

import pytest
import torch
from click.testing import CliRunner
from torch.export.pt2_archive import PT2ArchiveReader, PT2ArchiveWriter

from redcompile.api import open_generator, open_model_folder
from redcompile.cli import main
from redcompile.compiler import ConvertOptions, convert
from redcompile.config import BeamShape
from redcompile.errors import ArtifactError, InputError, PassError, TargetUnavailableError
from redcompile.generation import GenerationConfig
from redcompile.pt2_artifact import EXTRA_DIR, read_pt2_artifact
from support import PROMPTS

BEAM = BeamShape(3, 4, lookup=1)  # drafter beams and a lookup beam: both state kinds
OPTIONS = ConvertOptions.of(beam=BEAM, random_drafter=True, max_seq_len=64, target="torch")


@pytest.fixture(scope="module")
def pt2(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pt2")
    report = convert(tiny_models["qwen3"], folder / "spec.pt2", options=OPTIONS)
    return {"report": report, "out": report.out, "model": tiny_models["qwen3"], "dir": folder}


@pytest.fixture(scope="module")
def generator(pt2):
    return open_generator(pt2["out"])


def ids(result):
    return [c.token_ids for c in result.completions]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_convert_writes_one_package_with_the_manifest_in_its_extra_files(pt2):
    report = pt2["report"]
    assert report.files == [pt2["out"]] and report.target == "torch"
    assert sorted(p.name for p in pt2["dir"].iterdir()) == ["spec.pt2"]  # no temporaries
    manifest = read_pt2_artifact(pt2["out"]).manifest
    assert manifest == json.loads(json.dumps(report.manifest))
    assert manifest["target"] == "torch" and manifest["device"] == "cpu"
    assert manifest["beam"] == {
        "width": 3,
        "length": 4,
        "lookup_beams": 1,
        "lookup_ngrams": [3, 2, 1],
    }
    assert manifest["max_seq_len"] == 64
    assert manifest["torch_version"] == torch.__version__ and manifest["weights"]["bytes"] > 0
    assert (
        manifest["command"].startswith("redcompile convert ")
        and "--target torch" in manifest["command"]
    )
    assert [p["name"] for p in manifest["passes"]] == ["contiguous-op-inputs"]
    assert manifest["passes"][0]["matches"] > 0
    assert set(report.stage_seconds) == {"load", "export", "passes", "compile", "check", "write"}
    # Stock torch reads the manifest without redcompile's reader.
    reader = PT2ArchiveReader(str(pt2["out"]))
    assert json.loads(reader.read_string(EXTRA_DIR + "redcompile.manifest")) == manifest


@pytest.mark.parametrize("batch_size", [1, 8])
def test_greedy_pt2_equals_pytorch_and_autoregressive(pt2, generator, batch_size):
    cfg = GenerationConfig(max_new_tokens=20, batch_size=batch_size, stop_token_ids=())
    expected = ids(open_model_folder(pt2["model"], autoregressive=True).generate_ids(PROMPTS, cfg))
    reference = open_model_folder(pt2["model"], beam=BEAM, random_drafter=True)
    assert ids(reference.generate_ids(PROMPTS, cfg)) == expected
    assert ids(generator.generate_ids(PROMPTS, cfg)) == expected


def test_new_prompts_join_rows_that_are_decoding(generator):
    solo = [
        ids(generator.generate_ids([p], GenerationConfig(max_new_tokens=16)))[0] for p in PROMPTS
    ]
    stop = solo[0][7]
    expected = [s[: s.index(stop)] if stop in s else s for s in solo]
    cfg = GenerationConfig(max_new_tokens=16, batch_size=3, stop_token_ids=(stop,))
    assert ids(generator.generate_ids(PROMPTS, cfg)) == expected
    assert len({len(e) for e in expected}) > 1


def test_sampling_pt2_matches_pytorch_for_the_same_seed(pt2, generator):
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.8, seed=3, batch_size=2)
    reference = open_model_folder(pt2["model"], beam=BEAM, random_drafter=True)
    assert ids(generator.generate_ids(PROMPTS[:4], cfg)) == ids(
        reference.generate_ids(PROMPTS[:4], cfg)
    )


def test_cli_generate_verify_and_inspect_run_the_package(pt2):
    result = invoke(
        "generate", pt2["out"], "--prompt", "def f(x):", "--max-new-tokens", 8, "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["runtime"] == "torch" and report["completions"][0]["num_tokens"] > 0

    result = invoke("verify", pt2["out"], pt2["model"], "--max-new-tokens", 8, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True

    result = invoke("inspect", pt2["out"], "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["target"] == "torch" and info["aoti"]["device"] == "cpu"
    assert info["custom_ops"] == [
        {"op": "redcompile::accept", "nodes": 1, "function_body": None},
        {"op": "redcompile::ancestor_mask", "nodes": 1, "function_body": None},
        {"op": "redcompile::build_tree", "nodes": 1, "function_body": None},
        {"op": "redcompile::drafter_beam_search", "nodes": 1, "function_body": None},
        {"op": "redcompile::kv_compaction", "nodes": 4, "function_body": None},
        {"op": "redcompile::prompt_lookup", "nodes": 1, "function_body": None},
        {"op": "redcompile::tree_attention", "nodes": 2, "function_body": None},
    ]
    assert {"name": "input_ids", "dtype": "int64", "shape": ["batch", "tokens"]} in info["inputs"]
    assert {
        "name": "present.0.key",
        "dtype": "float32",
        "shape": ["batch", 2, "cache", 16],
    } in info["outputs"]
    text = invoke("inspect", pt2["out"])
    assert text.exit_code == 0 and "AOTInductor" in text.stdout


def test_the_package_runs_in_plain_torch_once_redcompile_ops_is_imported(pt2, tmp_path):
    """The compiled step calls the redcompile ops through torch: Python registration needed.
    (Plain torch extracts each load into an aotinductor_* folder of $TMPDIR and keeps it: the
    subprocess's $TMPDIR is the test's own folder.)"""
    code = f"""
import torch
path = {str(pt2["out"])!r}
b, t, s = 1, 2, 8
dims = {{"batch": b, "tokens": t, "cache": s, "vocab": 97, "kv_heads": 2, "head_dim": 16}}
try:
    torch._inductor.aoti_load_package(path)
    print("loaded-without-ops")
except Exception as exc:
    print("refused-without-ops", "redcompile" in str(exc))
import json
from torch.export.pt2_archive import PT2ArchiveReader
import redcompile.ops
manifest = json.loads(PT2ArchiveReader(path).read_string("extra/redcompile.manifest"))
inputs = []
for spec in manifest["io"]["inputs"]:
    dtype = torch.int64 if spec["dtype"] == "int64" else torch.float32
    inputs.append(torch.zeros([dims.get(d, d) for d in spec["dims"]], dtype=dtype))
names = [spec["name"] for spec in manifest["io"]["inputs"]]
inputs[names.index("input_ids")][:] = torch.tensor([[5, 6]])
inputs[names.index("parent_ids")][:] = torch.tensor([[-1, 0]])
inputs[names.index("depths")][:] = torch.tensor([[0, 1]])
inputs[names.index("num_tokens")][:] = 2
inputs[names.index("forced")][:] = 2
out = dict(zip([o["name"] for o in manifest["io"]["outputs"]],
               torch._inductor.aoti_load_package(path)(*inputs)))
print(int(out["num_new_tokens"][0]), int(out["next_cache_lengths"][0]))
"""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "refused-without-ops True", result.stdout
    assert lines[1].split() == ["1", "2"], result.stdout


# ---------------------------------------------------------------------------------------------
# Bad packages and bad options: one clear line, exit code 2.


def _rewrite(good, path, changes):
    """Copy the package `good` to `path`, replacing (or, for None, dropping) extra records."""
    reader = PT2ArchiveReader(str(good))
    with open(path, "wb") as handle, PT2ArchiveWriter(handle) as writer:
        for name in reader.get_file_names():
            if name in ("archive_format", "archive_version", "byteorder") or name.startswith(
                ".data/"
            ):
                continue
            key = name.removeprefix(EXTRA_DIR)
            if name.startswith(EXTRA_DIR) and key in changes:
                if changes[key] is not None:
                    writer.write_string(name, changes[key])
                continue
            writer.write_bytes(name, reader.read_bytes(name))
    return path


def _variant(kind, good, tmp):
    path = tmp / f"{kind.replace(' ', '_')}.pt2"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "cut at the end":
        path.write_bytes(data[:-30])
    elif kind == "not a package":
        path.write_text("this is not a model\n")
    elif kind == "plain package":
        keys = ("format", "format_version", "manifest", "manifest_sha256", "tokenizer", "complete")
        _rewrite(good, path, {f"redcompile.{k}": None for k in keys})
    elif kind == "future version":
        _rewrite(good, path, {"redcompile.format_version": "99"})
    elif kind == "no completion marker":
        _rewrite(good, path, {"redcompile.complete": None})
    elif kind == "tampered manifest":
        manifest = read_pt2_artifact(good).manifest
        manifest["beam"]["width"] = 64
        _rewrite(good, path, {"redcompile.manifest": json.dumps(manifest)})
    return path


@pytest.mark.parametrize(
    "kind,words",
    [
        ("truncated", "not a PyTorch .pt2 package"),
        ("cut at the end", "not a PyTorch .pt2 package"),
        ("not a package", "not a PyTorch .pt2 package"),
        ("plain package", "not a redcompile artifact"),
        ("future version", "format version 99"),
        ("no completion marker", "truncated"),
        ("tampered manifest", "checksum"),
    ],
)
def test_a_bad_package_is_one_clear_line(pt2, tmp_path, kind, words):
    path = _variant(kind, pt2["out"], tmp_path)
    with pytest.raises(ArtifactError, match=words):
        open_generator(path)
    for args in (["generate", path, "--prompt", "x"], ["inspect", path]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: artifact:"), result.stderr
        assert words in lines[0] and "Traceback" not in result.output


def _with_record(good, path, suffix, data=None, extra=None):
    """A copy of the package with the record ending in `suffix` replaced by `data`, or with
    an `extra` record added (name, bytes), checksums left as they were."""
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            body = source.read(info)
            if data is not None and info.filename.endswith(suffix):
                body = data
            target.writestr(info, body)
        if extra is not None:
            target.writestr(f"archive/{extra[0]}", extra[1])
    return path


def _library_that_writes(marker, folder):
    """A shared library whose constructor writes `marker` when it is loaded."""
    source = folder / "marker.c"
    source.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void mark(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n}}\n'
    )
    library = folder / "marker.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library.read_bytes()


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build a library")
def test_a_swapped_library_is_refused_before_it_can_run(pt2, tmp_path):
    marker = tmp_path / "ran.txt"
    library = _library_that_writes(marker, tmp_path)
    ctypes.CDLL(str(tmp_path / "marker.so"))  # the library does what it says when loaded
    assert marker.read_text() == "ran"
    marker.unlink()
    evil = _with_record(pt2["out"], tmp_path / "evil.pt2", ".wrapper.so", library)
    for args in (
        ["generate", evil, "--prompt", "x"],
        ["inspect", evil],
        ["verify", evil, pt2["model"]],
    ):
        result = invoke(*args)
        assert result.exit_code == 2 and "does not match its checksum" in result.stderr
        assert "refused before loading" in result.stderr
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        open_generator(evil)
    assert not marker.exists()


def test_a_record_added_to_the_package_is_refused(pt2, tmp_path):
    added = _with_record(
        pt2["out"], tmp_path / "added.pt2", "", extra=("data/aotinductor/model/x.so", b"\0")
    )
    with pytest.raises(ArtifactError, match="does not list"):
        read_pt2_artifact(added)


def test_metadata_that_inflates_is_refused_within_bounded_memory(pt2, tmp_path):
    bomb = tmp_path / "bomb.pt2"
    deflated = dict(compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(pt2["out"]) as source, zipfile.ZipFile(bomb, "w", **deflated) as target:
        for info in source.infolist():
            if not info.filename.endswith("redcompile.manifest"):
                target.writestr(info, source.read(info))
        with target.open("archive/extra/redcompile.manifest", "w", force_zip64=True) as record:
            for _ in range(256):  # 256 MiB of spaces, about 0.3 MB stored
                record.write(b" " * (1 << 20))
    assert bomb.stat().st_size < 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match="inflates|bound"):
            read_pt2_artifact(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20
    result = invoke("inspect", bomb)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_options_that_do_not_fit_the_package_are_refused(pt2):
    with pytest.raises(InputError, match="compiled for cpu"):
        open_generator(pt2["out"], provider="cuda")
    with pytest.raises(InputError, match="compiled with --beam-width 3"):
        open_generator(pt2["out"], beam=BeamShape(4, 4))
    with pytest.raises(InputError, match="applies to model folders"):
        open_generator(pt2["out"], random_drafter=True)
    with pytest.raises(InputError, match="session options apply to ONNX"):
        open_generator(pt2["out"], session_options=object())


def test_device_option_is_checked_before_any_work(tiny_llama, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(TargetUnavailableError, match="no CUDA device"):
            convert(tiny_llama, tmp_path / "m.pt2", options=ConvertOptions.of(device="cuda"))
    with pytest.raises(InputError, match="--device must be cpu or cuda"):
        convert(tiny_llama, tmp_path / "m.pt2", options=ConvertOptions.of(device="tpu"))
    with pytest.raises(InputError, match="applies to the torch"):
        convert(tiny_llama, tmp_path / "m.onnx", options=ConvertOptions.of(device="cpu"))
    assert list(tmp_path.iterdir()) == []


def test_a_failing_compile_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    import redcompile.torch_target as torch_target

    def explode(program, path):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(torch_target, "compile_package", explode)
    with pytest.raises(RuntimeError, match="injected"):
        convert(tiny_llama, tmp_path / "m.pt2", options=OPTIONS)
    assert list(tmp_path.iterdir()) == []


def test_contiguous_op_inputs_makes_fakes_and_implementations_agree(tiny_llama):
    """Every redcompile op gets contiguous inputs; the exported program still equals eager."""
    from redcompile.torch_target import (
        _statically_contiguous,
        example_inputs_on,
        export_step,
        make_op_inputs_contiguous,
    )

    step = open_model_folder(tiny_llama, beam=BeamShape(2, 3), random_drafter=True).backend.module
    program = export_step(step, "cpu")
    assert make_op_inputs_contiguous(program) > 0
    assert make_op_inputs_contiguous(program) == 0  # a second run finds nothing
    for node in program.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "namespace", "") == "redcompile":
            for arg in node.args:
                if isinstance(arg, torch.fx.Node):
                    assert _statically_contiguous(arg.meta["val"]), (node, arg)
    inputs = example_inputs_on(step, "cpu")
    with torch.no_grad():
        for got, want in zip(program.module()(*inputs), step(*inputs)):
            assert torch.equal(got, want)


def test_check_run_catches_a_package_that_differs_from_eager(pt2, tiny_models):
    """The convert-time check compares the compiled step with the eager one (here: another
    drafter than the one compiled in, so the drafted beams differ)."""
    from redcompile.models.drafter_io import random_drafter
    from redcompile.torch_target import check_package

    step = open_model_folder(tiny_models["qwen3"], beam=BEAM, random_drafter=True).backend.module
    step.drafter = random_drafter(step.base.config, seed=1)
    with pytest.raises(PassError, match="differs"):
        check_package(pt2["out"], step, "cpu", "float32")


@pytest.mark.slow  # a second AOTInductor compile; the module's package has a lookup beam too
def test_lookup_only_pt2_equals_autoregressive_alone_and_in_flight(tiny_models, tmp_path):
    """A second package, lookup only (no drafter): the token history is the only tree state."""
    options = ConvertOptions.of(beam=BeamShape(0, 5, lookup=1), max_seq_len=64, target="torch")
    report = convert(tiny_models["llama"], tmp_path / "lookup.pt2", options=options)
    assert report.manifest["mode"] == "lookup"
    generator = open_generator(report.out)
    prompts = PROMPTS + [[5, 17, 33, 5, 17, 33, 5]]
    for batch_size in (1, 3):  # 3 rows for 9 prompts: rows take new prompts mid-run
        cfg = GenerationConfig(max_new_tokens=20, batch_size=batch_size, stop_token_ids=())
        model = tiny_models["llama"]
        expected = ids(open_model_folder(model, autoregressive=True).generate_ids(prompts, cfg))
        assert ids(generator.generate_ids(prompts, cfg)) == expected
