"""The command line starts without PyTorch: `--help` of every command, and the I/O contract
the host loop reads, import neither torch nor the model code (issue 27: `--help` took ~10 s)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from click.testing import CliRunner
from redcompile.cli import main
runner = CliRunner()
for args in [["--help"], *[[name, "--help"] for name in main.commands]]:
    result = runner.invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
import redcompile.io_contract, redcompile.generation
heavy = sorted(m for m in ("torch", "onnx", "redcompile.models.step") if m in sys.modules)
print(",".join(heavy))
"""


def test_every_help_and_the_io_contract_import_no_torch():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"
