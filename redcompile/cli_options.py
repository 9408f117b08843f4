"""The command line's shared options: each option that several commands take is defined once
here, with its default read from the library's settings (`--help` shows it), so the commands in
cli.py only stack decorators. Torch-free: `redcompile --help` loads no runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from redcompile.config import DEVICES, BeamShape
from redcompile.generation import GenerationConfig

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
DEFAULT_BEAM = BeamShape()
DEFAULT_GENERATION = GenerationConfig()


def stack(*options: Decorator) -> Decorator:
    """One decorator applying `options` in the order they are listed (as `--help` shows them)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def json_flag(what: str = "Print a JSON report.") -> Decorator:
    """--json: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help=what)


def drafter_options(folder: str, random: bool = True, pickle: bool = True) -> Decorator:
    """--drafter DIR (default FOLDER/drafter), and where the command loads one, --random-drafter
    and --allow-pickle."""
    options = [
        click.option(
            "--drafter",
            "drafter_dir",
            type=click.Path(path_type=str),
            help=f"Drafter folder (Apple's format) [default: {folder}/drafter].",
        )
    ]
    if random:
        options.append(
            click.option(
                "--random-drafter",
                is_flag=True,
                help="Use a randomly initialised drafter (pipeline checks; ~1 token/step).",
            )
        )
    if pickle:
        options.append(
            click.option(
                "--allow-pickle",
                is_flag=True,
                help="Allow loading a drafter model.pt pickle (it can run code).",
            )
        )
    return stack(*options)


def beam_options(kind: str) -> Decorator:
    """--beam-width and --beam-length: `convert` compiles one shape (defaults shown);
    `generate` takes one that an artifact must match (None: the default or as compiled);
    `bench` takes comma lists to sweep."""
    length_help = "Tokens per beam counting the root (5 drafts four)"
    if kind == "sweep":
        return stack(
            click.option(
                "--beam-width",
                "widths",
                default=str(DEFAULT_BEAM.width),
                callback=int_list,
                show_default=True,
                help="Comma-separated beam widths (model folders).",
            ),
            click.option(
                "--beam-length",
                "lengths",
                default=str(DEFAULT_BEAM.length),
                callback=int_list,
                show_default=True,
                help=f"Comma-separated beam lengths. {length_help}.",
            ),
        )
    compiled = kind == "compile"
    as_compiled = "" if compiled else "; artifacts: as compiled"
    return stack(
        click.option(
            "--beam-width",
            type=int,
            default=DEFAULT_BEAM.width if compiled else None,
            help=f"Beams drafted per step [default: {DEFAULT_BEAM.width}{as_compiled}].",
        ),
        click.option(
            "--beam-length",
            type=int,
            default=DEFAULT_BEAM.length if compiled else None,
            help=f"{length_help} [default: {DEFAULT_BEAM.length}{as_compiled}].",
        ),
    )


def sampling_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--temperature, --top-k, --top-p, --seed: the same sampling in every runtime
    (docs/artifact.md, "Sampling")."""
    return stack(
        click.option(
            "--temperature",
            type=float,
            default=DEFAULT_GENERATION.temperature,
            show_default=True,
            help="0 is greedy; above 0 samples exactly the model's distribution at this "
            "temperature.",
        ),
        click.option(
            "--top-k",
            type=int,
            default=DEFAULT_GENERATION.top_k,
            show_default=True,
            help="Sample among the k most likely tokens (0: all).",
        ),
        click.option(
            "--top-p",
            type=float,
            default=DEFAULT_GENERATION.top_p,
            show_default=True,
            help="Sample from the most likely tokens holding this probability mass, in (0, 1] "
            "(1: all).",
        ),
        click.option(
            "--seed",
            type=int,
            default=DEFAULT_GENERATION.seed,
            show_default=True,
            help="0 ... 2**63 - 1; prompt i of a run draws from the stream (seed, i).",
        ),
    )(command)


def device_option(what: str, default: str | None = None) -> Decorator:
    """--device cpu|cuda for `what` (None: the command decides, as its help says)."""
    return click.option(
        "--device",
        type=click.Choice(DEVICES),
        default=default,
        show_default=default is not None,
        help=what,
    )


def debug_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--debug: show tracebacks for user errors too."""
    return click.option("--debug", is_flag=True, help="Show tracebacks for errors.")(command)


def lookup_options(sweep: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--lookup-beams N (bench: a comma list to compare) and --lookup-ngram SIZES: draft beams
    copied from each row's own context (ops/prompt_lookup.py)."""
    from redcompile.config import DEFAULT_LOOKUP_BEAMS, DEFAULT_LOOKUP_NGRAMS, MAX_LOOKUP_BEAMS

    ngrams = ",".join(map(str, DEFAULT_LOOKUP_NGRAMS))

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        beams_help = (
            f"Lookup beams: drafts copied from the continuation of the latest earlier "
            f"occurrence of the row's last n-gram, verified in the same tree (0 to "
            f"{MAX_LOOKUP_BEAMS}; 0 turns lookup off). With no drafter, a lookup-only tree."
        )
        if sweep:
            option = click.option(
                "--lookup-beams",
                "lookups",
                default=str(DEFAULT_LOOKUP_BEAMS),
                callback=int_list,
                show_default=True,
                help="Comma-separated lookup beam counts, each with every beam shape "
                "(model folders). " + beams_help,
            )
        else:
            option = click.option(
                "--lookup-beams",
                "lookup_beams",
                type=int,
                default=None,
                help=beams_help + f" [default: {DEFAULT_LOOKUP_BEAMS}; artifacts: as compiled]",
            )
        command = click.option(
            "--lookup-ngram",
            "lookup_ngram",
            default=ngrams,
            show_default=True,
            help="N-gram sizes lookup matches, one or a comma list; the longest that occurs "
            "earlier in the row wins (backoff).",
        )(command)
        return option(command)

    return decorate


def draft_vocab_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--draft-vocab N: draft only from the N tokens the drafter was trained to predict most."""
    return click.option(
        "--draft-vocab",
        type=int,
        help="Draft only from the N most frequent tokens of the drafter's training (its "
        "token_frequencies.json): a V/N times cheaper vocabulary projection; decoding stays "
        "exact. Model folders only [default: the whole vocabulary].",
    )(command)


def drafter_weights_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--drafter-weights float|int8|int4: how the drafter's matrices are stored."""
    from redcompile.models.weight_quant import FLOAT, WEIGHT_FORMAT_NAMES

    return click.option(
        "--drafter-weights",
        type=click.Choice(WEIGHT_FORMAT_NAMES),
        default=FLOAT,
        show_default=True,
        help="Store the drafter's matrices as blockwise int8 or int4 (weight-only): drafting "
        "reads 4x / 8x fewer bytes; decoding stays exact, only the drafts may change. Model "
        "folders and ONNX artifacts.",
    )(command)


def base_weights_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--weights float|int8|int4, --weight-block-size, --accuracy-level: the base model's
    matrices as blockwise MatMulNBits weights (ONNX Runtime)."""
    from redcompile.models.weight_quant import (
        BASE_WEIGHT_FORMAT_NAMES,
        DEFAULT_ACCURACY_LEVEL,
        DEFAULT_BASE_BLOCK_SIZE,
        FLOAT,
    )

    options = [
        click.option(
            "--weights",
            type=click.Choice(BASE_WEIGHT_FORMAT_NAMES),
            default=FLOAT,
            show_default=True,
            help="Store the base model's matrices (attention, MLP, lm_head; not the "
            "embedding) as blockwise symmetric int8 or int4 for ONNX Runtime's MatMulNBits. "
            "Exactness is then defined against these weights: ReDrafter decodes exactly as the "
            "autoregressive artifact with the same --weights.",
        ),
        click.option(
            "--weight-block-size",
            type=int,
            default=DEFAULT_BASE_BLOCK_SIZE,
            show_default=True,
            help="Inputs sharing one scale (a power of two >= 16 that divides every matrix's "
            "input size).",
        ),
        click.option(
            "--accuracy-level",
            type=int,
            default=DEFAULT_ACCURACY_LEVEL,
            help="ONNX Runtime's MatMulNBits compute: 1 float32 (every beam shape decodes "
            "exactly as autoregressive decoding); 4 int8 activations, ONNX Runtime's fastest "
            "CPU path, for autoregressive and single-chain artifacts (one drafter beam with "
            "--lookup-beams 0, or one lookup beam alone), where it is exact too. Default: the "
            "fastest exact level, 4 for those artifacts and 1 for trees.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def threads_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--threads N: ONNX Runtime's intra-op threads for artifacts (PyTorch's for folders)."""
    return click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=None,
        help="Intra-op threads of ONNX Runtime (artifacts) or PyTorch (model folders); 0 is "
        "the runtime's own default [default: redcompile's, see docs/cli.md].",
    )(command)


def int_list(_ctx: Any, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Parse '1,4,8' into (1, 4, 8) for list options."""
    if value is None:
        return None
    try:
        numbers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not numbers:
        raise click.BadParameter("expected at least one integer")
    return numbers


def speculation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--speculation MODE and --tuning FILE: the level each step drafts at
    (redcompile/speculation.py; docs/artifact.md, "Speculation levels")."""
    from redcompile.speculation import MODES

    command = click.option(
        "--tuning",
        type=click.Path(path_type=str),
        default=None,
        help="Tuning file of `redcompile tune` for --speculation auto [default: "
        "ARTIFACT.tuning.json when it exists].",
    )(command)
    return click.option(
        "--speculation",
        type=click.Choice(MODES),
        default="auto",
        show_default=True,
        help="Speculation level per step: auto follows the tuned (or default) policy by the "
        "rows decoding; off never drafts; chain drafts one beam; full the compiled tree.",
    )(command)
