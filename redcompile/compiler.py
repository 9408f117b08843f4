"""`convert`: model folder (+ drafter) -> one artifact. Load, export, passes, package.

Memory: weights are loaded once (in the artifact's dtype), exported straight to a temporary
external-data file, and released before the passes run on the weight-free graph; the artifact is
then written from that file one tensor at a time. Peak memory is about one copy of the weights.

The torch target (.pt2) takes another road after loading (`_convert_torch`, redcompile/
torch_target.py): torch.export, one FX pass, AOTInductor, a check run against the eager step,
and a PT2 package with the manifest in its extra files (redcompile/pt2_artifact.py). It holds the
module, the exported program and the compiled package at once, about three copies of the weights.
"""

from __future__ import annotations

import gc
import hashlib
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from redcompile import __version__
from redcompile.artifact import (
    DATA_SUFFIX,
    FORMAT,
    FORMAT_VERSION,
    with_tokenizer_hash,
    write_artifact,
)
from redcompile.config import DTYPE_NAMES, SUFFIX_TARGETS, ModelFolderOptions
from redcompile.errors import InputError, PassError, TargetUnavailableError
from redcompile.io_contract import SPECULATION_LEVELS
from redcompile.models.weight_quant import (
    BaseWeights,
)
from redcompile.output_guard import check_output_file
from redcompile.scratch import scratch_folder

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConvertOptions:
    """Everything `redcompile convert` can set: the model to build (`folder`, the options every
    command that loads a model folder takes) and where to compile it; defaults defined once.

    convert loads the folder with float weights and writes `folder.drafter_weights` and
    `folder.base_weights` as quantize-drafter and quantize-weights passes, so the artifact
    holds exactly the quantized weights the PyTorch reference of the same folder options uses.
    """

    folder: ModelFolderOptions = field(default_factory=ModelFolderOptions)
    target: str | None = None  # None: from OUT's suffix
    device: str | None = None  # torch target only; None: CUDA when available, else the CPU
    dump_passes: Path | None = None

    @classmethod
    def of(
        cls,
        target: str | None = None,
        device: str | None = None,
        dump_passes: Path | None = None,
        **folder: Any,
    ) -> ConvertOptions:
        """From keyword options: the compile ones by name, the rest ModelFolderOptions fields."""
        return cls(ModelFolderOptions.of(**folder), target, device, dump_passes)


@dataclass
class ConvertReport:
    """What convert produced and what it cost."""

    out: Path
    files: list[Path]
    target: str
    manifest: dict[str, Any]
    stage_seconds: dict[str, float]
    peak_rss_bytes: int
    weight_bytes: int
    passes: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """The CLI's --json output."""
        return {
            "out": str(self.out),
            "files": [{"path": str(p), "bytes": p.stat().st_size} for p in self.files],
            "target": self.target,
            "mode": self.manifest["mode"],
            "beam_width": self.manifest["beam"]["width"],
            "beam_length": self.manifest["beam"]["length"],
            "lookup_beams": self.manifest["beam"].get("lookup_beams", 0),
            "dtype": self.manifest["dtype"],
            "max_seq_len": self.manifest["max_seq_len"],
            "weight_bytes": self.weight_bytes,
            "seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "peak_rss_bytes": self.peak_rss_bytes,
            "passes": self.passes,
        }


def resolve_target(out: Path, target: str | None) -> str:
    """The target named by --target or by OUT's suffix; checks its runtime is installed."""
    if target is None:
        target = SUFFIX_TARGETS.get(out.suffix.lower())
        if target is None:
            raise InputError(
                f"convert: cannot tell the target from '{out.name}'; use a .onnx, "
                f".pt2 or .engine name, or pass --target"
            )
    if target == "onnxruntime":
        _require("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu)")
    elif target == "tensorrt":
        # An .engine must be a TensorRT engine; building one is not verified yet, so the ONNX
        # artifact is the way there, and nothing is ever written under an engine's name.
        onnx_name, engine_name = out.with_suffix(".onnx").name, out.with_suffix(".engine").name
        raise TargetUnavailableError(
            f"convert: redcompile does not build TensorRT engines; convert to {onnx_name} "
            f"and build the engine with TensorRT's tools: trtexec --onnx={onnx_name} "
            f"--saveEngine={engine_name}"
        )
    elif target == "torch":
        from redcompile.torch_target import require_compiler

        require_compiler()
    else:
        raise InputError(f"convert: unknown target '{target}' (onnxruntime, torch, tensorrt)")
    return target


def _require(module: str, hint: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise TargetUnavailableError(
            f"convert: this target needs {module}, which is not installed; {hint}"
        )


def sha256_file(path: Path) -> str:
    """Streaming sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def source_hashes(folder: Path) -> dict[str, str]:
    """sha256 of the files of a model or drafter folder that define it."""
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".json", ".safetensors") or p.name == "model.pt")
    )
    return {name: sha256_file(folder / name) for name in names}


def command_line(
    model_dir: Path,
    drafter_dir: Path | None,
    o: ConvertOptions,
    target: str,
    width: int | None = None,
) -> str:
    """The convert command that reproduces this artifact (OUT written as <out>); `width` is
    the drafter beam width actually built (0 for a lookup-only tree). Folders appear by name
    (their contents by hash in `sources`), so the bytes of an artifact do not depend on how
    MODEL_DIR was spelled or where it lives."""
    f = o.folder
    parts = ["redcompile", "convert", model_dir.resolve().name, "<out>", "--target", target]
    if drafter_dir is not None:
        parts += ["--drafter", drafter_dir.resolve().name]
    if f.autoregressive:
        parts.append("--autoregressive")
    else:
        beam = f.beam if width is None else replace(f.beam, width=width)
        parts += ["--beam-width", str(beam.width), "--beam-length", str(beam.length)]
        if beam.lookup:
            ngrams = ",".join(map(str, sorted(set(beam.ngrams), reverse=True)))
            parts += ["--lookup-beams", str(beam.lookup), "--lookup-ngram", ngrams]
    options = (("--dtype", f.dtype), ("--max-seq-len", f.max_seq_len))
    if not f.autoregressive:
        options += (("--draft-vocab", f.draft_vocab),)
        if f.drafter_weights != "float":
            options += (("--drafter-weights", f.drafter_weights),)
    base = f.base_weights
    if base is not None and base.fmt is not None:
        options += (
            ("--weights", base.name),
            ("--weight-block-size", base.fmt.block_size),
            ("--accuracy-level", base.accuracy_level),
        )
    for flag, value in options:
        if value is not None:
            parts += [flag, str(value)]
    if target == "torch" and o.device is not None:
        parts += ["--device", o.device]
    for flag, on in (("--random-drafter", f.random_drafter), ("--allow-pickle", f.allow_pickle)):
        if on:
            parts.append(flag)
    return " ".join(parts)


def convert(
    model_dir: Path | str,
    out: Path | str,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    """Compile `model_dir` (+ drafter: `options.folder.drafter_dir`, default MODEL_DIR/drafter)
    into the artifact `out`; see the module docstring."""
    from redcompile.models.loader import check_model_dir
    from redcompile.step_builder import check_lookup_only, resolve_lookup_only

    o = options or ConvertOptions()
    f = o.folder
    model_dir, out = Path(model_dir), Path(out)
    drafter_path = Path(f.drafter_dir) if f.drafter_dir else None
    target = resolve_target(out, o.target)  # before any work
    if target == "torch":
        from redcompile.torch_target import resolve_device

        device = resolve_device(o.device)
    elif o.device is not None:
        raise InputError(f"--device applies to the torch (.pt2) target, not to {target}")
    if not f.autoregressive:
        # the shape actually built, before anything depends on it: with no drafter, lookup
        # beams make a lookup-only tree, a chain when one lookup beam (the default accuracy
        # level of --weights is chosen by that)
        beam = resolve_lookup_only(model_dir, f.drafter_dir, f.random_drafter, f.beam.validate())
        o = replace(o, folder=replace(f, beam=beam))
        f = o.folder
    dtype = DTYPE_NAMES.get(f.dtype) if f.dtype else None
    if f.dtype and dtype is None:
        raise InputError(f"--dtype must be fp32, fp16 or bf16, got {f.dtype!r}")
    _check_drafter_weights(f, target)
    base_weights = _check_base_weights(f, target)
    if f.max_seq_len is not None and f.max_seq_len < 2:
        raise InputError(f"--max-seq-len must be at least 2, got {f.max_seq_len}")
    if not out.parent.is_dir():
        raise InputError(f"convert: output folder {out.parent} does not exist")
    if out.is_dir():
        raise InputError(f"convert: {out} is a folder; OUT must be a file name like model.onnx")
    check_model_dir(model_dir)
    check_output_file("convert", out, [model_dir, drafter_path], sidecars=(DATA_SUFFIX,))
    if o.dump_passes is not None:
        if o.dump_passes.exists() and not o.dump_passes.is_dir():
            raise InputError(f"--dump-passes {o.dump_passes} is a file; name a folder")
        check_output_file("--dump-passes", o.dump_passes, [model_dir, drafter_path])
    say = progress or (lambda _msg: None)
    times: dict[str, float] = {}
    # The scratch folder sits next to OUT: it holds a copy of the weights, so it needs the
    # output's disk, not /tmp's. A killed convert leaves it behind; the next one removes it.
    with scratch_folder(out.parent) as workdir:
        start = time.perf_counter()
        say("loading model and drafter")
        step, codec, manifest = _load(model_dir, o, dtype)
        manifest["target"] = target
        times["load"] = time.perf_counter() - start
        if manifest["mode"] == "lookup":
            check_lookup_only(None, False, None, f.drafter_weights)
        if f.drafter_weights != "float" and manifest["dtype"] == "bfloat16":
            raise InputError(
                "--drafter-weights quantizes fp32 and fp16 weights, and this model loads as "
                "bf16; add --dtype fp16 or --dtype fp32"
            )
        _check_weight_blocks(base_weights, step.base.config, manifest["dtype"])
        manifest["base_weights"] = base_weights.to_manifest()
        if target == "torch":
            return _convert_torch(
                step, codec, manifest, device, model_dir, drafter_path, out, workdir, o, say, times
            )

        start = time.perf_counter()
        say("exporting the step with torch.onnx.export")
        exported = _export_to(workdir, step)
        signature = step.signature
        rope = _chain_rope_tables(step)
        lean = None  # its autoregressive branch (passes/speculation_levels.py)
        if step.speculative:
            say("exporting its autoregressive branch")
            ar_step = autoregressive_step(step)
            lean = (
                _export_to(workdir, ar_step, "autoregressive_step"),
                ar_step.signature,
                _chain_rope_tables(ar_step),
            )
            del ar_step
        del step
        gc.collect()
        times["export"] = time.perf_counter() - start

        start = time.perf_counter()
        if manifest["drafter"] is not None and f.drafter_weights != "float":
            from redcompile.models.weight_quant import weight_format

            # written by quantize-drafter; the block size tells other runtimes and `verify`
            # exactly which quantization the artifact carries
            manifest["drafter"]["quantized"] = f.drafter_weights
            manifest["drafter"]["quantized_block_size"] = weight_format(
                f.drafter_weights
            ).block_size
        model, records = _run_passes(
            exported, workdir, signature, manifest, target, o, say, rope, base_weights
        )
        if lean is not None:
            model, shared = _merge_autoregressive_branch(
                model, lean, workdir, signature, manifest, target, o, say, base_weights
            )
            manifest["autoregressive_branch"] = shared
        if base_weights.rounds_activations and manifest["mode"] != "autoregressive":
            _check_chain_attention(model)
        times["passes"] = time.perf_counter() - start

        start = time.perf_counter()
        say(f"writing {out}")
        _record_sources(manifest, model_dir, drafter_path, o, target)
        manifest["passes"] = [{"name": r.name, "matches": r.matches} for r in records]
        manifest["min_onnxruntime"] = _min_onnxruntime(model)
        weights = sum(_weight_bytes(t, workdir) for t in model.graph.initializer)
        manifest.update(with_tokenizer_hash(manifest, codec.to_json()))
        files = write_artifact(
            model, manifest, codec.to_json(), out, weights_dir=workdir, scratch=workdir
        )
        times["write"] = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return ConvertReport(
        out, files, target, manifest, times, peak, weights, [r.to_dict() for r in records]
    )


def _min_onnxruntime(model: onnx.ModelProto) -> str:
    """The oldest ONNX Runtime that runs `model` (docs/artifact.md, "Runtimes"), after checking
    that the model kept the ONNX versions every release from there loads: an exporter or
    optimizer that floats to a newer IR or opset must not write what no runtime reads."""
    from redcompile.ops.opdef import ONNX_IR_VERSION, ONNX_OPSET
    from redcompile.passes.contrib import min_onnxruntime

    opsets = {o.domain: o.version for o in model.opset_import}
    if model.ir_version != ONNX_IR_VERSION or opsets.get("", opsets.get("ai.onnx")) != ONNX_OPSET:
        raise PassError(
            f"the step graph has IR version {model.ir_version} and opset "
            f"{opsets.get('', '?')}, not the {ONNX_IR_VERSION} and {ONNX_OPSET} artifacts are "
            f"written in; a newer exporter changed them (a redcompile bug to report)"
        )
    return min_onnxruntime({n.domain for n in model.graph.node})


def _check_base_weights(f: ModelFolderOptions, target: str) -> BaseWeights:
    """--weights / --weight-block-size / --accuracy-level (parsed by parse_base_weights):
    int8 activations only where every row is a chain (a tree's attention is not the same
    computation for a token verified alone and in the tree; `_check_chain_attention` checks
    after the passes that every layer of such a step is GroupQueryAttention), and quantized
    weights only where MatMulNBits runs (ONNX Runtime)."""
    base = (f.base_weights or BaseWeights(None)).resolved(f.rows_are_chains)
    if base.rounds_activations and not f.rows_are_chains:
        raise InputError(
            f"--accuracy-level 4 rounds activations to int8, and ReDrafter then decodes exactly "
            f"as autoregressive decoding only where every row is one chain; this tree has "
            f"{f.beam.beams} beams: use one beam (--beam-width 1 --lookup-beams 0, or "
            f"--beam-width 0 --lookup-beams 1) or --accuracy-level 1"
        )
    if base.fmt is not None and target != "onnxruntime":
        raise InputError(
            f"--weights {base.name} writes ONNX Runtime's MatMulNBits and applies to .onnx "
            f"artifacts for onnxruntime, not to the {target} target"
        )
    return base


def _check_weight_blocks(base: BaseWeights, cfg, dtype: str) -> None:
    """Every quantized matrix's input size must be whole blocks, and the dtype fp32/fp16."""
    if base.fmt is None:
        return
    if dtype == "bfloat16":
        raise InputError(
            f"--weights {base.name} quantizes fp32 and fp16 weights, and this model loads as "
            f"bf16; add --dtype fp16 or --dtype fp32"
        )
    bs = base.fmt.block_size
    for what, size in (
        ("hidden_size", cfg.hidden_size),
        ("num_attention_heads x head_dim", cfg.num_heads * cfg.head_dim),
        ("intermediate_size", cfg.intermediate_size),
    ):
        if size % bs:
            raise InputError(
                f"--weight-block-size {bs} does not divide the model's {what} ({size}); "
                f"choose a block size that divides it"
            )


def _check_drafter_weights(f: ModelFolderOptions, target: str) -> None:
    """--drafter-weights int8/int4: ONNX targets with a drafter (the dtype is checked after
    loading: a checkpoint's own dtype is known only then)."""
    from redcompile.models.weight_quant import parse_drafter_weights

    if parse_drafter_weights(f.drafter_weights) is None:
        return
    if f.autoregressive:
        raise InputError("--drafter-weights needs a drafter; --autoregressive compiles none")
    if target == "torch":
        raise InputError(
            "--drafter-weights applies to ONNX artifacts (.onnx, .engine); the .pt2 target "
            "compiles float weights"
        )


def _record_sources(
    manifest: dict[str, Any],
    model_dir: Path,
    drafter_path: Path | None,
    o: ConvertOptions,
    target: str,
) -> None:
    manifest["sources"] = {"model": source_hashes(model_dir)}
    if manifest["drafter"] is not None and not o.folder.random_drafter:
        manifest["sources"]["drafter"] = source_hashes(drafter_path or model_dir / "drafter")
    manifest["command"] = command_line(
        model_dir, drafter_path, o, target, manifest["beam"]["width"]
    )


def _convert_torch(
    step,
    codec,
    manifest: dict[str, Any],
    device: str,
    model_dir: Path,
    drafter_path: Path | None,
    out: Path,
    workdir: Path,
    o: ConvertOptions,
    say: Progress,
    times: dict[str, float],
) -> ConvertReport:
    """The torch target after loading: export, pass, AOTInductor, check, package (.pt2)."""
    import torch

    from redcompile.pt2_artifact import write_pt2_artifact
    from redcompile.torch_target import (
        PASS_NAME,
        check_package,
        compile_package,
        export_step,
        make_op_inputs_contiguous,
        weight_stats,
    )

    start = time.perf_counter()
    say(f"exporting the step with torch.export ({device})")
    program = export_step(step, device)
    times["export"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"pass {PASS_NAME}")
    nodes_before = len(program.graph.nodes)
    _dump_program(o.dump_passes, "00_export", program)
    copies = make_op_inputs_contiguous(program)
    _dump_program(o.dump_passes, f"01_{PASS_NAME}", program)
    record = {
        "name": PASS_NAME,
        "matches": copies,
        "rejected": 0,
        "seconds": round(time.perf_counter() - start, 4),
        "nodes_before": nodes_before,
        "nodes_after": len(program.graph.nodes),
    }
    times["passes"] = time.perf_counter() - start

    start = time.perf_counter()
    say("compiling with AOTInductor")
    package = compile_package(program, workdir / "step.pt2")
    del program
    gc.collect()
    times["compile"] = time.perf_counter() - start

    start = time.perf_counter()
    say("checking the compiled step against the eager step")
    check_package(package, step, device, manifest["dtype"])
    times["check"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"writing {out}")
    weights = weight_stats(step)
    del step
    manifest["device"] = device
    manifest["torch_version"] = torch.__version__
    manifest["weights"] = weights
    _record_sources(manifest, model_dir, drafter_path, o, "torch")
    manifest["passes"] = [{"name": PASS_NAME, "matches": copies}]
    files = write_pt2_artifact(package, manifest, codec.to_json(), out, workdir)
    times["write"] = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return ConvertReport(out, files, "torch", manifest, times, peak, weights["bytes"], [record])


def _dump_program(folder: Path | None, name: str, program) -> None:
    """--dump-passes for the torch target: the exported program's graph as text."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(str(program.graph_module.code), encoding="utf-8")


def _weight_bytes(tensor: onnx.TensorProto, workdir: Path) -> int:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return int({e.key: e.value for e in tensor.external_data}["length"])
    return len(tensor.raw_data) or tensor.ByteSize()


def _load(model_dir: Path, o: ConvertOptions, dtype: str | None):
    """The step module, tokenizer and the manifest's model part."""
    from redcompile.step_builder import build_step

    # float weights: quantize-weights and quantize-drafter write the quantized ones
    f = replace(o.folder, dtype=dtype, base_weights=None, drafter_weights="float")
    if f.autoregressive:
        f = replace(f, draft_vocab=None)
    built = build_step(model_dir, f)
    step = built.step
    base_cfg = step.base.config
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "redcompile_version": __version__,
        "mode": built.info["mode"],
        "target": "onnxruntime",
        "model": base_cfg.to_dict(),
        "drafter": None if step.drafter is None else step.drafter.describe(f.random_drafter),
        "beam": {
            "width": step.beam_width,
            "length": step.beam_length,
            "lookup_beams": step.lookup_beams,
            "lookup_ngrams": list(built.info.get("lookup_ngrams", [])),
        },
        "draft_top_k": step.draft_top_k,
        "max_seq_len": step.max_seq_len,
        "dtype": base_cfg.dtype,
        "stop_token_ids": list(built.stop_tokens),
        "io": step.signature.to_dict(),
        # what the step's `speculation` input can ask for (docs/artifact.md, "Speculation levels")
        "speculation_levels": list(SPECULATION_LEVELS) if step.speculative else [],
    }
    return step, built.codec, manifest


def _export_to(workdir: Path, step, name: str = "step") -> Path:
    """Export and save with every weight in workdir/NAME.onnx.data; returns the model path."""
    from redcompile.export import export_program

    program = export_program(step)
    path = workdir / f"{name}.onnx"
    program.save(str(path), external_data=True)
    del program
    return path


def _inline_index_tables(model: onnx.ModelProto, weights_dir: Path) -> None:
    """Bring integer initializers (index tables such as a draft vocabulary, at most a few MB)
    into the graph: shape inference with data propagation reads constant Gather indices and
    fails on external data. Float weights stay external."""
    from redcompile.artifact import tensor_bytes

    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.data_type in (
            onnx.TensorProto.INT64,
            onnx.TensorProto.INT32,
        ):
            raw = tensor_bytes(tensor, weights_dir)
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw


def _check_chain_attention(model: onnx.ModelProto) -> None:
    """A speculative step with int8 activations must attend with GroupQueryAttention in every
    layer (passes/fuse_chain_attention.py: only there is a token's attention the same
    computation in a chain and alone); a layer the pass left as TreeAttention is refused."""
    from redcompile.onnx_graphs import all_graphs
    from redcompile.ops import TREE_ATTENTION
    from redcompile.passes.fuse_chain_attention import HEAD_SIZE_MULTIPLE

    for graph in all_graphs(model.graph):
        for node in graph.node:
            if node.op_type == TREE_ATTENTION.onnx_name:
                raise InputError(
                    f"--accuracy-level 4: layer {node.name} cannot attend with ONNX Runtime's "
                    f"GroupQueryAttention (it needs a head size that is a multiple of "
                    f"{HEAD_SIZE_MULTIPLE}), and without it ReDrafter would not decode exactly "
                    f"as autoregressive decoding; use --accuracy-level 1"
                )


def _chain_rope_tables(step):
    """The model's RoPE tables (numpy cos, sin [positions, head_dim / 2]) when every packed
    row of the step is a chain (autoregressive or one beam), else None: what
    fuse-chain-attention needs. Positions cover the longest sequence plus one step's padding."""
    import torch

    from redcompile.models.rope import rope_tables

    if step.tree_beams != 1 and step.beam_length != 1:
        return None
    base = step.base
    positions = step.max_seq_len + step.tree_beams * (step.beam_length - 1) + 1
    dtype = base.model.embed_tokens.weight.dtype
    cos, sin = rope_tables(base.inv_freq, base.rope_scale, positions, dtype)
    if cos.dtype not in (torch.float32, torch.float16):
        return None  # GroupQueryAttention has no bf16 CPU kernel
    return cos.numpy(), sin.numpy()


def autoregressive_step(step):
    """The autoregressive step of `step`'s base model (no drafter; the token history kept
    when `step`'s lookup beams read it): the branch a speculative artifact steps with when
    nothing is drafted."""
    from redcompile.models.step import SpeculativeStep

    return SpeculativeStep(
        step.base, None, 1, 1, step.max_seq_len, keep_history=step.lookup_beams > 0
    )


def _merge_autoregressive_branch(
    model, lean, workdir, signature, manifest, target, o, say, base_weights
):
    """The speculative step `model` with the autoregressive step `lean` (path, signature,
    RoPE tables) compiled by the same pipeline as its level-`none` branch; returns the merged
    model (checked) and the manifest's record of what the branch shares."""
    from redcompile.passes.manager import check_model
    from redcompile.passes.speculation_levels import with_autoregressive_branch

    path, lean_signature, lean_rope = lean
    # the same pipeline packs q/k/v alike in both (fuse-chain-attention, pack-qkv), so the
    # branch reads the very matrices the tree step reads
    lean_model, _ = _run_passes(
        path,
        workdir,
        lean_signature,
        manifest,
        target,
        o,
        say,
        lean_rope,
        base_weights,
        dump_name="autoregressive",
        drafter_weights="float",
    )
    say("merging the autoregressive branch")
    merged, shared = with_autoregressive_branch(
        model, lean_model, signature, manifest["beam"]["length"], workdir
    )
    total = len(lean_model.graph.initializer)
    return check_model(merged, "the merged speculation levels", workdir), {
        "weights": total,
        "shared_weights": shared,
    }


def _run_passes(
    path,
    workdir,
    signature,
    manifest,
    target,
    o,
    say,
    rope,
    base_weights,
    dump_name=None,
    drafter_weights=None,
):
    from redcompile.passes.base import PassContext
    from redcompile.passes.manager import PassManager
    from redcompile.passes.pipelines import pipeline

    model = onnx.load(str(path), load_external_data=False)
    _inline_index_tables(model, workdir)
    passes = pipeline(
        target,
        signature,
        manifest["dtype"],
        drafter_weights or o.folder.drafter_weights,
        rope,
        base_weights,
    )
    dump = o.dump_passes
    if dump is not None and dump_name is not None:
        dump = dump / dump_name
    manager = PassManager(passes, dump_dir=dump, on_pass=lambda n: say(f"pass {n}"))
    return manager.run(model, PassContext(target=target, weights_dir=workdir))
