"""CPU checks of the CUDA sources: generated registrations, entry points, packaging, errors.

These run everywhere in a second or two; the kernels themselves are compiled by
`cuda/build.sh --check` (CI) and run by the GPU tests beside this file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from redcompile import cuda
from redcompile.cuda import gen_registrations
from redcompile.ops import OPS

SOURCE_DIR = cuda.SOURCE_DIR
HEADER_TEXT = cuda.HEADER.read_text()
KERNEL_TEXT = {path.name: path.read_text() for path in sorted(SOURCE_DIR.glob("*.cu"))}
BINDINGS_TEXT = (SOURCE_DIR / "torch_bindings.cpp").read_text()
REPO = SOURCE_DIR.parent


def test_generated_registrations_are_up_to_date():
    text = gen_registrations.render(*gen_registrations.current_ops())
    assert gen_registrations.HEADER.read_text() == text, (
        "cuda/torch_ops_generated.h is stale: run `python cuda/gen_registrations.py`"
    )


def test_generated_header_holds_every_op_schema_once():
    generated = gen_registrations.HEADER.read_text()
    joined = "".join(re.findall(r'"([^"]*)"', generated))
    for op in OPS:
        assert f"{op.name}{op.schema}" in joined, op.name
        assert generated.count(f'{{"{op.name}",') == 1, op.name


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_cuda_kernel_is_declared_and_defined(op):
    assert op.cuda_kernel, f"{op.name} names no CUDA entry point"
    for name in (op.cuda_kernel, f"{op.cuda_kernel}_workspace_size"):
        assert re.search(rf"\b{name}\(", HEADER_TEXT), f"{name} is not declared in the header"
        definitions = [
            file
            for file, text in KERNEL_TEXT.items()
            if re.search(rf'extern "C" (int|size_t) {name}\(', text)
        ]
        assert len(definitions) == 1, f"{name} is defined in {definitions or 'no .cu file'}"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_op_has_a_cuda_implementation_checked_against_its_schema(op):
    assert re.search(rf'm\.impl\("{op.name}", &{op.name}_cuda\)', BINDINGS_TEXT), op.name
    compact = re.sub(r"\s+", "", BINDINGS_TEXT)
    assert f"decltype({op.name}_cuda),redcompile_generated::{op.name}_fn" in compact, op.name
    assert f"REDCOMPILE_CUDA_ENTRY_{op.name}(" in BINDINGS_TEXT, op.name


def test_library_sources_are_every_source_in_the_directory():
    assert set(cuda.KERNEL_SOURCES) == set(KERNEL_TEXT)
    assert set(cuda.BINDING_SOURCES) == {p.name for p in SOURCE_DIR.glob("*.cpp")}
    assert all(path.exists() for path in cuda.sources())


def test_sources_ship_in_the_package():
    """pyproject's package data must carry every file load_library compiles or includes."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["redcompile.cuda"]
    needed = [p.name for p in SOURCE_DIR.iterdir() if p.suffix in {".cu", ".cuh", ".h", ".cpp"}]
    for name in needed:
        assert any(Path(name).match(pattern) for pattern in patterns), name


@pytest.mark.parametrize(
    "schema,signature",
    [
        ("(Tensor x, float s) -> Tensor", "at::Tensor(const at::Tensor&, double)"),
        (
            "(Tensor? a, int n, bool b) -> (Tensor, Tensor)",
            "std::tuple<at::Tensor, at::Tensor>(const std::optional<at::Tensor>&, int64_t, bool)",
        ),
        ("(Tensor(a!) x) -> ()", "void(const at::Tensor&)"),
        ("(Tensor h, int[] sizes) -> Tensor", "at::Tensor(const at::Tensor&, at::IntArrayRef)"),
    ],
)
def test_schema_to_cpp_signature(schema, signature):
    assert gen_registrations.cpp_signature(schema) == signature


@pytest.mark.parametrize("schema", ["(Tensor[] xs) -> Tensor", "(Tensor x) -> int", "Tensor x"])
def test_unsupported_schemas_fail_loudly(schema):
    with pytest.raises(ValueError):
        gen_registrations.cpp_signature(schema)


def test_generator_check_mode_reports_a_stale_header(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "torch_ops_generated.h"
    stale.write_text("// old\n")
    monkeypatch.setattr(gen_registrations, "HEADER", stale)
    assert gen_registrations.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert gen_registrations.main([]) == 0
    assert gen_registrations.main(["--check"]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_load_library_without_a_gpu_says_why():
    assert not cuda.available() and not cuda.loaded()
    with pytest.raises(RuntimeError, match="CUDA kernels are unavailable: .+"):
        cuda.load_library()


def test_build_script_is_executable_and_documents_its_modes():
    script = SOURCE_DIR / "build.sh"
    assert os.access(script, os.X_OK), "CI runs cuda/build.sh --check only when it is executable"
    text = script.read_text()
    assert "--check" in text and "sm_" in text and "set -euo pipefail" in text


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
def test_c_header_is_plain_c():
    include = _cuda_include()
    if include is None:
        pytest.skip("no CUDA headers (cuda_runtime_api.h)")
    result = subprocess.run(
        [
            "gcc",
            "-fsyntax-only",
            "-x",
            "c",
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-isystem",
            str(include),
            str(cuda.HEADER),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _cuda_include() -> Path | None:
    candidates = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for base in filter(None, candidates):
        if (Path(base) / "include" / "cuda_runtime_api.h").exists():
            return Path(base) / "include"
    return None


def test_cuda_package_imports_without_touching_the_gpu():
    code = "import redcompile.cuda as c; import sys; sys.exit(0 if not c.loaded() else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_acceptance_kernel_reads_temperatures_as_the_contract_does():
    """The kernel's greedy threshold is io_contract.GREEDY_BELOW (a copy in C++ must not drift)."""
    from redcompile.io_contract import GREEDY_BELOW

    found = re.search(
        r"constexpr float kGreedyBelow = ([0-9.e+-]+)f;", KERNEL_TEXT["acceptance.cu"]
    )
    assert found is not None and float(found.group(1)) == GREEDY_BELOW
