"""`redcompile` command line: a thin Click layer over `redcompile.api`.

Exit codes: 0 success, 1 a check failed (e.g. verify found a mismatch), 2 bad input
(one line on stderr, no traceback; `--debug` shows it), 3 an internal error (with traceback).
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from redcompile.benchmarking.report import BENCH_RUNTIMES, BenchConfig
from redcompile.cli_options import (
    DEFAULT_BEAM,
    DEFAULT_GENERATION,
    base_weights_options,
    beam_options,
    debug_option,
    device_option,
    draft_vocab_option,
    drafter_options,
    drafter_weights_option,
    int_list,
    json_flag,
    lookup_options,
    sampling_options,
    speculation_options,
    threads_option,
)
from redcompile.config import (
    DTYPE_NAMES,
    DTYPES,
    SUFFIX_TARGETS,
    TARGETS,
    TOLERANCES,
    VERIFY_NEW_TOKENS,
    BeamShape,
    ModelFolderOptions,
    parse_ngrams,
)
from redcompile.errors import EXIT_BAD_INPUT, RedcompileError
from redcompile.generation import GenerationConfig, is_sampling

EXIT_INTERNAL = 3
_BENCH = BenchConfig()


def _tolerances(which: int) -> str:
    """The default --atol (0) or --rtol (1) of every dtype, for --help."""
    return ", ".join(f"{values[which]:g} {dtype}" for dtype, values in TOLERANCES.items())


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print user errors as one line with their exit code; keep tracebacks for bugs."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except RedcompileError as exc:
            if debug:
                traceback.print_exc()
            # one line whatever a file put into the message (a value with a newline in it)
            click.echo(f"error: {exc}".replace("\r", "\\r").replace("\n", "\\n"), err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # the file system refused: read-only, full, no permission
            if debug:
                traceback.print_exc()
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(
                f"error: {exc.strerror or exc}{where}; check the path, its permissions and "
                f"the free space",
                err=True,
            )
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception:  # everything else is a bug: show it
            traceback.print_exc()
            click.echo(
                "internal error: this is a bug in redcompile; please report it with the "
                "traceback above",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)

    return wrapper


def emit_json(data: Any) -> None:
    """Write one JSON document to stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C so that temporary files are removed on the way out.

    A subclass, not KeyboardInterrupt itself: CPython remembers an exact KeyboardInterrupt that
    escapes code run through its PyRun_* API (which libraries use while converting) and then
    kills the process with SIGINT at exit even though the CLI caught it (exit status -2 instead
    of 130, seen about once in 30 terminated converts). Its check does not match subclasses.
    """


def _terminate(signum: int, _frame: Any) -> None:
    """Turn SIGTERM into `Terminated`."""
    raise Terminated(f"signal {signum}")


class OneLineErrors(click.Group):
    """Click group whose usage errors (bad option values, missing arguments) print one line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # click's entry point
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "redcompile"
            click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except (click.exceptions.Abort, KeyboardInterrupt):  # also one raised outside commands
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="redcompile")
def main() -> None:
    """Compile a Hugging Face causal LM plus a ReDrafter draft head into one artifact that
    decodes speculatively inside ONNX Runtime, PyTorch or TensorRT."""
    signal.signal(signal.SIGTERM, _terminate)


@main.command()
@click.argument("source", type=click.Path(path_type=str))
@click.option("--prompt", help="One prompt.")
@click.option(
    "--prompts-file",
    type=click.Path(path_type=str),
    help="JSONL file, one object with a 'prompt' field per line.",
)
@drafter_options("SOURCE")
@click.option(
    "--max-new-tokens", type=int, default=DEFAULT_GENERATION.max_new_tokens, show_default=True
)
@click.option("--batch-size", type=int, default=DEFAULT_GENERATION.batch_size, show_default=True)
@beam_options("choose")
@click.option("--autoregressive", is_flag=True, help="Plain decoding, one token per step.")
@lookup_options()
@draft_vocab_option
@drafter_weights_option
@sampling_options
@threads_option
@speculation_options
@json_flag("Print a JSON report instead of text.")
@debug_option
@handle_errors
def generate(
    source: str,
    prompt: str | None,
    prompts_file: str | None,
    drafter_dir: str | None,
    random_drafter: bool,
    allow_pickle: bool,
    max_new_tokens: int,
    batch_size: int,
    beam_width: int | None,
    beam_length: int | None,
    autoregressive: bool,
    lookup_beams: int | None,
    lookup_ngram: str,
    draft_vocab: int | None,
    drafter_weights: str,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    threads: int | None,
    speculation: str,
    tuning: str | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Generate text from a model folder (PyTorch reference) or a compiled artifact.

    SOURCE is a Hugging Face model folder or an artifact file (.onnx, .pt2).
    """
    from redcompile.api import open_generator
    from redcompile.errors import InputError
    from redcompile.prompts import check_prompt_text, read_prompts_file

    if (prompt is None) == (prompts_file is None):
        raise InputError("give exactly one of --prompt TEXT or --prompts-file F.jsonl")
    if prompt is not None:
        prompts = [check_prompt_text(prompt, "--prompt")]
    else:
        prompts = read_prompts_file(prompts_file)
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
    )
    cfg.validate()
    options: dict[str, Any] = dict(
        drafter_dir=drafter_dir,
        autoregressive=autoregressive,
        random_drafter=random_drafter,
        allow_pickle=allow_pickle,
        draft_vocab=draft_vocab,
        drafter_weights=drafter_weights,
        threads=threads,
    )
    if beam_width is not None or beam_length is not None or lookup_beams is not None:
        options["beam"] = BeamShape(
            DEFAULT_BEAM.width if beam_width is None else beam_width,
            DEFAULT_BEAM.length if beam_length is None else beam_length,
            DEFAULT_BEAM.lookup if lookup_beams is None else lookup_beams,
            parse_ngrams(lookup_ngram),
        ).validate()
    generator = open_generator(
        source,
        speculation=speculation,
        tuning=tuning,
        sampling=is_sampling(cfg.temperature),
        **options,
    )

    streaming = not as_json and len(prompts) == 1

    def on_text(_index: int, delta: str) -> None:
        click.echo(delta, nl=False)

    report = generator.generate(prompts, cfg, on_text=on_text if streaming else None)
    if as_json:
        emit_json(report.to_json())
        return
    if streaming:
        click.echo()
    else:
        for index, text in enumerate(report.texts()):
            click.echo(f"=== {index}\n{prompts[index]}{text}")
    summary = report.to_json()
    click.echo(
        f"{summary['generated_tokens']} tokens, {summary['tokens_per_step']:.2f} tokens/step, "
        f"{summary['tokens_per_second']:.1f} tokens/s ({summary['mode']}, {summary['runtime']})",
        err=True,
    )


@main.command()
@click.argument("artifact", type=click.Path(path_type=str))
@click.option(
    "--prompts-file",
    type=click.Path(path_type=str),
    help="JSONL prompts to decode while timing [default: a few generic code and text openings].",
)
@click.option(
    "--batch-size",
    "batch_sizes",
    callback=int_list,
    default="1,2,4,8,16",
    show_default=True,
    help="Batch sizes to time every level at (comma-separated).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Timed rounds per level and batch size, after one warm-up round.",
)
@click.option(
    "--out",
    type=click.Path(path_type=str),
    default=None,
    help="Where the tuning goes [default: ARTIFACT.tuning.json, which generate and bench read].",
)
@threads_option
@json_flag("Print the tuning record as JSON.")
@debug_option
@handle_errors
def tune(
    artifact: str,
    prompts_file: str | None,
    batch_sizes: tuple[int, ...],
    max_new_tokens: int,
    repeats: int,
    out: str | None,
    threads: int | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Time ARTIFACT's speculation levels at each batch size on this machine and write the
    level each batch size decodes fastest at: the policy of --speculation auto."""
    from pathlib import Path

    from redcompile.errors import InputError
    from redcompile.output_guard import check_output_file
    from redcompile.prompts import read_prompts_file
    from redcompile.runtime.loading import open_artifact
    from redcompile.speculation import tuning_path
    from redcompile.tuning import DEFAULT_TUNING_PROMPTS, write_tuning
    from redcompile.tuning import tune as run_tune

    path = Path(artifact)
    if path.is_dir() or not path.exists():
        raise InputError(f"tune: {path} is not an artifact file (give a .onnx or .pt2)")
    target = Path(out) if out else tuning_path(path)
    if target.is_dir():
        raise InputError(f"--out {target} is a folder; name a file")
    if not target.parent.is_dir():
        raise InputError(f"--out: folder {target.parent} does not exist")
    check_output_file("tune", target, [path] + ([Path(prompts_file)] if prompts_file else []))
    prompts = read_prompts_file(prompts_file) if prompts_file else list(DEFAULT_TUNING_PROMPTS)
    generator = open_artifact(path, threads=threads)
    generator.info["threads"] = threads
    record = run_tune(
        generator,
        prompts,
        batch_sizes,
        max_new_tokens,
        repeats,
        progress=lambda m: click.echo(m, err=True),
    )
    write_tuning(record, target)
    if as_json:
        emit_json(record)
    else:
        levels = ", ".join(f"{rows} rows: {level}" for rows, level in record["levels"].items())
        click.echo(f"wrote {target}: {levels}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@drafter_options("MODEL_DIR")
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    help="Runtime to compile for [default: from OUT's suffix: " + ", ".join(SUFFIX_TARGETS) + "].",
)
@beam_options("compile")
@click.option(
    "--dtype",
    type=click.Choice([name for name in DTYPE_NAMES if name not in DTYPES]),
    help="Weights and compute dtype [default: the checkpoint's].",
)
@click.option(
    "--max-seq-len",
    type=int,
    help="Longest prompt + generation the artifact accepts "
    "[default: the model's max_position_embeddings].",
)
@click.option(
    "--autoregressive", is_flag=True, help="Compile the plain decoding baseline (no drafter)."
)
@lookup_options()
@draft_vocab_option
@drafter_weights_option
@base_weights_options
@device_option("Device a .pt2 is compiled for [default: cuda when available, else cpu].")
@click.option(
    "--dump-passes",
    type=click.Path(path_type=str),
    help="Write the graph after each pass (.onnx and .txt) to this folder.",
)
@json_flag()
@debug_option
@handle_errors
def convert(
    model_dir: str,
    out: str,
    drafter_dir: str | None,
    target: str | None,
    beam_width: int,
    beam_length: int,
    dtype: str | None,
    max_seq_len: int | None,
    autoregressive: bool,
    lookup_beams: int | None,
    lookup_ngram: str,
    draft_vocab: int | None,
    drafter_weights: str,
    weights: str,
    weight_block_size: int,
    accuracy_level: int | None,
    random_drafter: bool,
    allow_pickle: bool,
    device: str | None,
    dump_passes: str | None,
    as_json: bool,
    debug: bool,
) -> None:
    """Compile MODEL_DIR (a Hugging Face causal LM) and its drafter into the artifact OUT.

    The artifact runs the whole speculative step (verify, accept, update the cache, draft, build
    the next tree) in one graph; `redcompile generate OUT` runs it.
    """
    from pathlib import Path

    from tqdm import tqdm

    from redcompile.compiler import ConvertOptions
    from redcompile.compiler import convert as run_convert
    from redcompile.models.weight_quant import parse_base_weights

    folder = ModelFolderOptions(
        drafter_dir=drafter_dir,
        beam=BeamShape(
            beam_width,
            beam_length,
            DEFAULT_BEAM.lookup if lookup_beams is None else lookup_beams,
            parse_ngrams(lookup_ngram),
        ),
        autoregressive=autoregressive,
        random_drafter=random_drafter,
        allow_pickle=allow_pickle,
        dtype=dtype,
        max_seq_len=max_seq_len,
        draft_vocab=draft_vocab,
        drafter_weights=drafter_weights,
        base_weights=parse_base_weights(weights, weight_block_size, accuracy_level),
    )
    options = ConvertOptions(folder, target, device, Path(dump_passes) if dump_passes else None)
    with tqdm(
        total=9, desc="convert", unit="stage", file=sys.stderr, leave=False, disable=None
    ) as bar:

        def progress(stage: str) -> None:
            bar.set_description(stage)
            bar.update(1)

        report = run_convert(model_dir, out, options, progress)
    if as_json:
        emit_json(report.to_json())
        return
    summary = report.to_json()
    sizes = ", ".join(f"{f['path']} ({f['bytes'] / 1e6:.1f} MB)" for f in summary["files"])
    seconds = sum(summary["seconds"].values())
    click.echo(
        f"wrote {sizes}: {summary['mode']} W={summary['beam_width']} "
        f"L={summary['beam_length']} lookup={summary['lookup_beams']} {summary['dtype']} "
        f"for {summary['target']} in {seconds:.1f}s"
    )


@main.command()
@click.argument("artifact", type=click.Path(path_type=str))
@click.argument("model_dir", type=click.Path(path_type=str))
@click.option(
    "--prompts-file",
    type=click.Path(path_type=str),
    help="JSONL prompts to decode (default: four built-in prompts).",
)
@click.option("--max-new-tokens", type=int, default=VERIFY_NEW_TOKENS, show_default=True)
@click.option("--atol", type=float, help=f"Absolute tolerance [default: {_tolerances(0)}].")
@click.option("--rtol", type=float, help=f"Relative tolerance [default: {_tolerances(1)}].")
@drafter_options("MODEL_DIR", random=False)
@json_flag()
@debug_option
@handle_errors
def verify(
    artifact: str,
    model_dir: str,
    prompts_file: str | None,
    max_new_tokens: int,
    atol: float | None,
    rtol: float | None,
    drafter_dir: str | None,
    allow_pickle: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Check ARTIFACT against the PyTorch reference of MODEL_DIR.

    Compares the source hashes, every output of the first step (per-output error statistics
    with --atol/--rtol) and the generated tokens of the artifact, the reference and the
    autoregressive baseline. Exit 0 when everything matches, 1 on any mismatch.
    """
    from redcompile.errors import CheckFailed, InputError
    from redcompile.prompts import read_prompts_file
    from redcompile.verification import verify as run_verify

    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not value >= 0:
            raise InputError(f"{name} must be >= 0, got {value}")
    prompts = read_prompts_file(prompts_file) if prompts_file else None
    report = run_verify(
        artifact, model_dir, prompts, max_new_tokens, atol, rtol, drafter_dir, allow_pickle
    )
    if as_json:
        emit_json(report.to_json())
    else:
        for line in report.lines():
            click.echo(line)
    if not report.passed:
        raise CheckFailed(f"verify: {artifact} does not match {model_dir}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=str))
@json_flag("Print the stable JSON description.")
@debug_option
@handle_errors
def inspect(artifact: str, as_json: bool, debug: bool) -> None:
    """Describe ARTIFACT: manifest, inputs and outputs, ops by domain, custom ops and their
    function bodies, weight size, and the command that made it."""
    from redcompile.inspection import describe_artifact, format_description

    info = describe_artifact(artifact)
    if as_json:
        emit_json(info)
    else:
        click.echo(format_description(info))


def _train_defaults():
    from redcompile.training.config import TrainConfig

    return TrainConfig()


@main.command("train-drafter")
@click.argument("model_dir", type=click.Path(path_type=str))
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    type=click.Path(path_type=str),
    help="Text file, JSONL file (a 'text' field per line) or folder; repeatable.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=str),
    help="Folder for the drafter (Apple's format: config.json + model.safetensors).",
)
@click.option("--steps", type=int, default=_train_defaults().steps, show_default=True)
@click.option(
    "--self-distill",
    is_flag=True,
    help="Train on the base model's own greedy continuations of corpus prefixes.",
)
@click.option(
    "--soft-labels",
    is_flag=True,
    help="With --self-distill: match the base model's whole distribution, not its argmax.",
)
@click.option(
    "--beam-length-train",
    type=int,
    default=_train_defaults().beam_length_train,
    show_default=True,
    help="Longest beam length trained for, counting the root (5 supervises four drafted tokens).",
)
@click.option(
    "--layers",
    type=int,
    default=_train_defaults().layers,
    show_default=True,
    help="Residual blocks of the drafter.",
)
@click.option(
    "--exit-dim",
    type=int,
    default=None,
    help="Width of the drafter's blocks and projection (Apple's exit_dim; default 2 x the "
    "base model's hidden size). Smaller drafts cheaper per position.",
)
@click.option(
    "--depth-decay",
    type=float,
    default=_train_defaults().depth_decay,
    show_default=True,
    help="Share of rows trained at drafted position i is DECAY**i: shallow drafts weigh more "
    "(1: all positions equally).",
)
@click.option("--batch-size", type=int, default=_train_defaults().batch_size, show_default=True)
@click.option("--seq-len", type=int, default=_train_defaults().seq_len, show_default=True)
@click.option("--lr", type=float, default=_train_defaults().lr, show_default=True)
@click.option(
    "--distill-examples",
    type=int,
    default=_train_defaults().distill_examples,
    show_default=True,
    help="Continuations generated for --self-distill.",
)
@click.option("--eval-every", type=int, default=_train_defaults().eval_every, show_default=True)
@click.option(
    "--save-every",
    type=int,
    default=_train_defaults().save_every,
    show_default=True,
    help="Steps between resumable checkpoints in OUT/checkpoint (0: none).",
)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option("Device to train on.", default=_train_defaults().device)
@click.option("--no-bf16", is_flag=True, help="Train in float32 instead of bfloat16 autocast.")
@json_flag("Print the training report as JSON.")
@debug_option
@handle_errors
def train_drafter(
    model_dir: str,
    data: tuple[str, ...],
    out_dir: str,
    steps: int,
    self_distill: bool,
    soft_labels: bool,
    beam_length_train: int,
    layers: int,
    exit_dim: int | None,
    depth_decay: float,
    batch_size: int,
    seq_len: int,
    lr: float,
    distill_examples: int,
    eval_every: int,
    save_every: int,
    resume: bool,
    seed: int,
    device: str,
    no_bf16: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Train a ReDrafter head for MODEL_DIR (frozen) on --data.

    Apple's recipe: T future tokens per position, cross-entropy, AdamW with warm-up and cosine
    decay; --self-distill trains on the base model's greedy continuations instead of the text.
    Runs unchanged under torchrun (DistributedDataParallel).
    """
    import os

    from tqdm import tqdm

    from redcompile.training.config import TrainConfig
    from redcompile.training.trainer import train_drafter as run_training

    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        layers=layers,
        exit_dim=exit_dim,
        depth_decay=depth_decay,
        beam_length_train=beam_length_train,
        self_distill=self_distill,
        soft_labels=soft_labels,
        distill_examples=distill_examples,
        eval_every=eval_every,
        save_every=save_every,
        seed=seed,
        device=device,
        bf16=not no_bf16,
    )
    leader = int(os.environ.get("RANK", "0")) == 0
    with tqdm(
        total=steps,
        desc="train-drafter",
        unit="step",
        file=sys.stderr,
        disable=None if leader else True,
    ) as bar:

        def on_step(step: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(0)

        def log(message: str) -> None:
            if leader:
                bar.write(message, file=sys.stderr)

        report = run_training(
            model_dir, list(data), out_dir, cfg, resume=resume, log=log, on_step=on_step
        )
    if not leader:
        return
    if as_json:
        emit_json(report.to_json())
        return
    final = report.evals[-1]["top1_by_position"] if report.evals else []
    click.echo(
        f"wrote {out_dir}: {report.steps} steps in {report.train_seconds:.0f}s on "
        f"{report.world_size} process(es); held-out top-1 by drafted position {final}"
    )


@main.command()
@click.argument("source", type=click.Path(path_type=str))
@click.option(
    "--prompts-file",
    required=True,
    type=click.Path(path_type=str),
    help="JSONL prompts (a 'prompt' field per line).",
)
@click.option(
    "--batch-size",
    "batch_sizes",
    default="1",
    callback=int_list,
    show_default=True,
    help="Comma-separated batch sizes, e.g. 1,4,8.",
)
@beam_options("sweep")
@click.option("--max-new-tokens", type=int, default=_BENCH.max_new_tokens, show_default=True)
@click.option(
    "--repeats",
    type=int,
    default=_BENCH.repeats,
    show_default=True,
    help="Timed rounds after the warm-up round; medians are reported.",
)
@click.option("--limit", type=int, help="Use only the first N prompts.")
@click.option(
    "--runtime",
    type=click.Choice(BENCH_RUNTIMES),
    default=_BENCH.runtime,
    show_default=True,
    help="Runtime for model folders (artifacts: ONNX Runtime).",
)
@click.option(
    "--baseline",
    type=click.Path(path_type=str),
    help="Autoregressive artifact to compare an artifact SOURCE against.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=str),
    help="Where converted artifacts are kept (and reused) for --runtime onnxruntime.",
)
@drafter_options("SOURCE", pickle=False)
@lookup_options(sweep=True)
@click.option(
    "--draft-vocab",
    "draft_vocabs",
    callback=int_list,
    help="Comma-separated draft vocabulary sizes: every beam shape drafts from the N most "
    "frequent tokens, for each N (model folders) [default: the whole vocabulary].",
)
@drafter_weights_option
@base_weights_options
@threads_option
@speculation_options
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=str),
    help="Write the full JSON record to this file.",
)
@click.option(
    "--plot",
    "plot_out",
    type=click.Path(path_type=str),
    help="Write speedup and tokens-per-step plots (PNG).",
)
@debug_option
@handle_errors
def bench(
    source: str,
    prompts_file: str,
    batch_sizes: tuple[int, ...],
    widths: tuple[int, ...],
    lengths: tuple[int, ...],
    max_new_tokens: int,
    repeats: int,
    limit: int | None,
    runtime: str,
    baseline: str | None,
    work_dir: str | None,
    drafter_dir: str | None,
    random_drafter: bool,
    lookups: tuple[int, ...],
    lookup_ngram: str,
    draft_vocabs: tuple[int, ...] | None,
    drafter_weights: str,
    weights: str,
    weight_block_size: int,
    accuracy_level: int | None,
    threads: int | None,
    speculation: str,
    tuning: str | None,
    json_out: str | None,
    plot_out: str | None,
    debug: bool,
) -> None:
    """Measure ReDrafter against autoregressive decoding in the same runtime.

    For each batch size, the baseline and every beam shape decode the same prompts in turn,
    alternating, after a warm-up round; medians of --repeats rounds. Reports tokens per second,
    tokens per step, tokens verified per step, step latency and its split, and the speedup.
    An artifact with speculation levels runs twice: at full speculation, and as "adaptive"
    at the levels --speculation / --tuning choose per step (the steps per level are reported).
    """
    from pathlib import Path

    from redcompile.benchmarking.plot import plot
    from redcompile.benchmarking.run import bench as run_bench
    from redcompile.prompts import read_prompts_file

    prompts = read_prompts_file(prompts_file, limit)
    ngrams = parse_ngrams(lookup_ngram)
    # width 0 is a lookup-only tree: it pairs with the lookup counts above 0 only
    beams = tuple(
        BeamShape(w, length, lookup, ngrams)
        for lookup in lookups
        for w in widths
        for length in lengths
        if w or lookup or widths == (0,)
    )
    cfg = BenchConfig(
        batch_sizes=batch_sizes,
        beams=beams,
        max_new_tokens=max_new_tokens,
        repeats=repeats,
        runtime=runtime,
        draft_vocabs=draft_vocabs or (None,),
    )
    report = run_bench(
        source,
        prompts,
        cfg,
        baseline=baseline,
        work_dir=work_dir,
        progress=lambda m: click.echo(m, err=True),
        drafter_dir=drafter_dir,
        random_drafter=random_drafter,
        drafter_weights=drafter_weights,
        threads=threads,
        weights=weights,
        weight_block_size=weight_block_size,
        accuracy_level=accuracy_level,
        speculation=speculation,
        tuning=tuning,
    )
    report.command = "redcompile bench " + " ".join(sys.argv[2:])
    click.echo(report.table())
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if plot_out:
        plot(report, plot_out)


@main.command()
@click.argument("out_dir", type=click.Path(path_type=str))
@click.option("--seed", type=int, default=0, show_default=True)
@debug_option
@handle_errors
def example(out_dir: str, seed: int, debug: bool) -> None:
    """Write a small random model folder (with a random drafter) to OUT_DIR to try commands on.

    No network needed. The weights are random, so the text is gibberish and few drafts are
    accepted; it exercises every command end to end.
    """
    from redcompile.example import write_example

    path = write_example(out_dir, seed=seed)
    click.echo(f"wrote {path} (config.json, model.safetensors, tokenizer.json, drafter/)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
