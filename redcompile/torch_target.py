"""The torch target: torch.export of the step, one FX pass, AOTInductor, a check run.

1. **export**: `torch.export.export` of `SpeculativeStep` exactly as the PyTorch generator runs it
   (attention through the TreeAttention op, which reads the cache in place), with the same
   dynamic dims as the ONNX export (batch, packed tokens, cache capacity; `export.dynamic_shapes`).
   The redcompile ops stay `torch.ops.redcompile.*` calls in the graph.
2. **contiguous-op-inputs**: Inductor lays out a custom op's output as the op's fake (shape)
   function says, and the fakes return `empty_like(input)`, which keeps a transposed input's
   strides while the implementations return contiguous tensors. The pass gives every redcompile
   op contiguous tensor inputs (a copy of the few packed-token tensors that are views; the cache
   buffers are contiguous already and are never copied), so fake and implementation agree.
3. **compile**: `torch._inductor.aoti_compile_and_package` into a scratch .pt2. The redcompile ops
   are called from the compiled code through the torch dispatcher, so the process that loads the
   package must have registered them: `import redcompile.ops` (Python) or the C++ library from
   cuda/ (TORCH_LIBRARY; needed to load without Python).
4. **check**: the compiled step runs once on small inputs and must equal the eager step (integer
   outputs exactly, float outputs within the verify tolerances); a difference is a bug in
   redcompile (PassError), never a silently wrong artifact.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from redcompile.config import TOLERANCES
from redcompile.errors import InputError, PassError, TargetUnavailableError
from redcompile.models.step import SpeculativeStep
from redcompile.scratch import process_scratch_folder

PASS_NAME = "contiguous-op-inputs"
LIBRARY = "redcompile"
# Outputs of a prefill step that no argmax decides (plus the cache, `present.*`).
FORCED_OUTPUTS = ("num_new_tokens", "next_forced", "next_cache_lengths")


def resolve_device(device: str | None) -> str:
    """The device to compile for: as given, else CUDA when torch sees a GPU, else the CPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TargetUnavailableError(
            "convert: --device cuda, but torch sees no CUDA device; compile for the CPU "
            "or convert on a GPU machine"
        )
    return device


def require_compiler() -> None:
    """AOTInductor compiles C++: refuse early, with one line, when no compiler is installed."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        compiler = get_cpp_compiler()
    except Exception:  # torch raises several types when none is found
        compiler = None
    if not compiler or shutil.which(compiler) is None:
        raise TargetUnavailableError(
            "convert: the torch (.pt2) target compiles C++ with AOTInductor and needs a C++ "
            "compiler (g++, or $CXX), which was not found; install one or use a .onnx output"
        )


def register_device_kernels(device: str) -> None:
    """Make every redcompile op runnable on `device`.

    CPU runs the pure-torch reference (registered by importing redcompile.ops). On CUDA the
    kernels of cuda/ are built and loaded (`redcompile.cuda.load_library`); when that library
    cannot be built here (no toolkit), each op falls back to its reference, which is written in
    device-agnostic torch: correct, not fast.
    """
    from redcompile.ops import OPS, register_torch_op

    if device != "cuda":
        return
    try:
        from redcompile.cuda import load_library

        load_library()
    except (ImportError, RuntimeError) as exc:
        logging.getLogger(__name__).warning(
            "redcompile: CUDA kernels unavailable (%s); the ops run their torch references",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
    for op in OPS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname, "CUDA"):
            register_torch_op(op, cuda_impl=op.reference)


def example_inputs_on(step: SpeculativeStep, device: str) -> tuple[torch.Tensor, ...]:
    """The export's example inputs (two prefill rows of three tokens) on `device`."""
    from redcompile.export import example_inputs

    return tuple(t.to(device) for t in example_inputs(step))


def export_step(step: SpeculativeStep, device: str) -> torch.export.ExportedProgram:
    """torch.export of the step on `device` with dynamic batch, token and cache dims."""
    from redcompile.export import _quiet, dynamic_shapes

    step = step.to(device).eval()
    if step.base.attention_impl != "op":
        raise PassError(f"torch target: attention_impl is {step.base.attention_impl!r}, not 'op'")
    with _quiet(), torch.no_grad():
        return torch.export.export(
            step,
            example_inputs_on(step, device),
            dynamic_shapes=(dynamic_shapes(step),),  # forward(*args): one varargs tuple
            strict=False,
        )


def _statically_contiguous(value: torch.Tensor) -> bool:
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    expected: Any = 1
    for size, stride in reversed(list(zip(value.shape, value.stride()))):
        if not (statically_known_true(size == 1) or statically_known_true(stride == expected)):
            return False
        expected = expected * size
    return True


def make_op_inputs_contiguous(program: torch.export.ExportedProgram) -> int:
    """The contiguous-op-inputs pass (module docstring, 2.); returns how many copies it added."""
    graph = program.graph_module.graph
    copies: dict[torch.fx.Node, torch.fx.Node] = {}  # one copy per strided tensor, shared
    for node in list(graph.nodes):
        if node.op != "call_function" or getattr(node.target, "namespace", None) != LIBRARY:
            continue
        for arg in dict.fromkeys(a for a in node.args if isinstance(a, torch.fx.Node)):
            value = arg.meta.get("val")
            if not isinstance(value, torch.Tensor) or _statically_contiguous(value):
                continue
            if arg not in copies:
                with graph.inserting_after(arg):
                    copy = graph.call_function(
                        torch.ops.aten.clone.default,
                        (arg,),
                        {"memory_format": torch.contiguous_format},
                    )
                with value.fake_mode:
                    copy.meta["val"] = value.clone(memory_format=torch.contiguous_format)
                copies[arg] = copy
            node.replace_input_with(arg, copies[arg])
    added = len(copies)
    graph.lint()
    program.graph_module.recompile()
    for node in graph.nodes:  # postcondition
        if node.op == "call_function" and getattr(node.target, "namespace", None) == LIBRARY:
            for arg in node.args:
                value = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
                if isinstance(value, torch.Tensor) and not _statically_contiguous(value):
                    raise PassError(f"{PASS_NAME}: {node.name} still has a strided input {arg}")
    return added


def compile_package(program: torch.export.ExportedProgram, path: Path) -> Path:
    """AOTInductor compile of the exported step into the package `path` (a .pt2 name)."""
    with _quiet_inductor():
        return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path)))


def load_package(path: Path | str, device: str) -> Any:
    """The compiled step of a package (AOTICompiledModel); registers the ops it calls."""
    import redcompile.ops  # noqa: F401 - registers torch.ops.redcompile.* for the package

    register_device_kernels(device)
    with _quiet_inductor(), _extracting_into_our_scratch():
        return torch._inductor.aoti_load_package(str(path))


@contextlib.contextmanager
def _extracting_into_our_scratch() -> Iterator[None]:
    """The package loader extracts the package's libraries into an `aotinductor_*` folder of
    the system temporary folder ($TMPDIR) and leaves it there when the process ends without
    unwinding; pointed at a scratch folder of ours, what it extracts is removed at exit, or by
    the next load after a killed run."""
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(_extraction_folder())
    try:
        yield
    finally:
        if before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before


@functools.cache
def _extraction_folder() -> Path:
    """One scratch folder per process for extracted packages (redcompile/scratch.py)."""
    return process_scratch_folder(Path(tempfile.gettempdir()))


def check_package(path: Path, step: SpeculativeStep, device: str, dtype: str) -> dict[str, float]:
    """Run the compiled step once against the eager step; PassError on any difference.

    The inputs are two prefill rows, whose kept path is forced. In float32 every output must
    agree (integers exactly). In float16/bfloat16 a rounding difference may legitimately flip an
    argmax (the next token, the drafted beams and everything built from them), so only the
    outputs the forced path fixes are compared: the emitted-token counts, the cache lengths and
    the cache itself. Returns the largest absolute difference per compared float output.
    """
    compiled = load_package(path, device)
    inputs = list(example_inputs_on(step, device))
    names = step.signature.input_names()
    ids = inputs[names.index("input_ids")]
    vocab = step.base.config.vocab_size
    inputs[names.index("input_ids")] = (
        torch.arange(ids.numel(), device=device).view_as(ids) * 7 + 3
    ) % vocab
    with torch.inference_mode():
        want = step(*inputs)
        got = compiled.loader.boxed_run(list(inputs))
    atol, rtol = TOLERANCES.get(dtype, TOLERANCES["float32"])
    worst: dict[str, float] = {}
    for spec, a, b in zip(step.signature.outputs, got, want):
        if dtype != "float32" and spec.name not in FORCED_OUTPUTS and spec.dtype != "model":
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            raise PassError(
                f"torch target: compiled output {spec.name} is {a.dtype} {list(a.shape)}, "
                f"the eager step's is {b.dtype} {list(b.shape)}"
            )
        if not b.is_floating_point():
            if not torch.equal(a, b):
                raise PassError(f"torch target: compiled output {spec.name} differs from eager")
            continue
        diff = (a.float() - b.float()).abs()
        worst[spec.name] = float(diff.max()) if diff.numel() else 0.0
        if bool((diff > atol + rtol * b.float().abs()).any()):
            raise PassError(
                f"torch target: compiled output {spec.name} differs from the eager step by up "
                f"to {worst[spec.name]:.3g} (atol {atol:g}, rtol {rtol:g})"
            )
    return worst


def weight_stats(step: SpeculativeStep) -> dict[str, int]:
    """Distinct parameter and buffer tensors of the step and their bytes."""
    seen: dict[tuple[int, int], int] = {}
    for t in itertools.chain(step.parameters(), step.buffers()):
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    return {"tensors": len(seen), "bytes": sum(seen.values())}


@contextlib.contextmanager
def _quiet_inductor() -> Iterator[None]:
    """Silence Inductor's and the package loader's warnings (they go to logging)."""
    loggers = [
        logging.getLogger(name)
        for name in ("torch._inductor", "torch.export", "torch._export", "torch._dynamo")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
