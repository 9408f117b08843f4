"""The C++ schema library and the Python registration of the ops agree, in either load order.

cuda/torch_registration.cpp needs no CUDA, so it is built here for the CPU with the host
compiler and loaded into fresh interpreters: once before `import redcompile.ops` (C++ defines
the schemas, Python adds CPU references and fakes, which torch accepts only because the C++
side names the Python module) and once after it (C++ must leave Python's definitions alone).
The build takes ~15 s, so these tests run when REDCOMPILE_BUILD_CHECKS=1, which
`cuda/build.sh --check` (and so CI) sets; a plain `pytest` skips them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from redcompile import cuda

pytestmark = pytest.mark.skipif(
    os.environ.get("REDCOMPILE_BUILD_CHECKS") != "1",
    reason="builds C++ (~15 s): set REDCOMPILE_BUILD_CHECKS=1, as cuda/build.sh --check does",
)

CHECK = """
import sys
import torch

library, order = sys.argv[1], sys.argv[2]
if order == "cpp-first":
    torch.ops.load_library(library)
    import redcompile.ops as ops
else:
    import redcompile.ops as ops
    torch.ops.load_library(library)

from torch._C import parse_schema

for op in ops.OPS:
    got = getattr(torch.ops.redcompile, op.name).default._schema
    want = parse_schema(f"redcompile::{op.name}{op.schema}")
    assert str(got) == str(want), (op.name, str(got), str(want))

# Whoever came first defined the schema; the other side did not redefine it.
defined_in = torch._C._dispatch_dump("redcompile::build_tree")
assert ("torch_registration.cpp" in defined_in) == (order == "cpp-first"), defined_in

# CPU reference and fake both work on the op, whoever defined its schema.
beams = torch.tensor([[[7, 1, 2], [7, 1, 3], [7, 4, 2]]])
torch.library.opcheck(
    torch.ops.redcompile.build_tree, (beams,), test_utils=("test_schema", "test_faketensor")
)
print("ok", order)
"""


@pytest.fixture(scope="module")
def registration_library(tmp_path_factory) -> Path:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler})")
    torch_dir = Path(torch.__file__).parent
    out = tmp_path_factory.mktemp("registration") / "libredcompile_registration.so"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [
        compiler,
        "-shared",
        "-fPIC",
        "-std=c++17",
        "-O0",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-I",
        str(cuda.SOURCE_DIR),
        "-isystem",
        str(torch_dir / "include"),
        "-isystem",
        str(torch_dir / "include" / "torch" / "csrc" / "api" / "include"),
        str(cuda.SOURCE_DIR / "torch_registration.cpp"),
        "-L",
        str(torch_dir / "lib"),
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
        "-o",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("order", ["cpp-first", "python-first"])
def test_cpp_schemas_and_python_registration_agree(registration_library, order):
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(registration_library), order],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok {order}" in result.stdout
