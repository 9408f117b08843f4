"""Build the step module of a model folder: base model, drafter (trained, random or none),
draft vocabulary, quantized weights, tree shape. The one place a model folder becomes a
`SpeculativeStep`: the API's PyTorch generator, `convert` (which exports it) and `verify` (its
reference) all build it here, from one `ModelFolderOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from redcompile.config import BeamShape, ModelFolderOptions
from redcompile.errors import InputError
from redcompile.models.config import DecoderConfig, read_json, token_ids
from redcompile.runtime.generator import Generator
from redcompile.tokenizer import TextCodec


@dataclass
class BuiltStep:
    """A model folder's step module with what a host needs beside it."""

    step: Any  # models.step.SpeculativeStep
    codec: TextCodec
    stop_tokens: tuple[int, ...]
    info: dict[str, Any]  # mode, beam shape, draft vocabulary, drafter description


def stop_tokens_of(model_dir: Path, cfg: DecoderConfig) -> tuple[int, ...]:
    """EOS ids from config.json and, when present, generation_config.json (each checked to
    lie inside the model's vocabulary)."""
    ids = list(cfg.eos_token_ids)
    gen_cfg = Path(model_dir) / "generation_config.json"
    if gen_cfg.is_file():
        extra = token_ids(
            read_json(gen_cfg, "generation config"), "eos_token_id", gen_cfg, cfg.vocab_size
        )
        ids += [token for token in extra if token not in ids]
    return tuple(ids)


def build_step(model_dir: Path | str, options: ModelFolderOptions | None = None) -> BuiltStep:
    """The step module of `model_dir` as `options` describe it (see ModelFolderOptions)."""
    from redcompile.models.loader import check_model_dir, load_decoder
    from redcompile.models.step import SpeculativeStep
    from redcompile.models.weight_quant import parse_drafter_weights

    o = options or ModelFolderOptions()
    model_dir = check_model_dir(Path(model_dir))
    beam = o.beam.validate()
    if not o.autoregressive:  # the shape built decides which rows are chains
        beam = resolve_lookup_only(model_dir, o.drafter_dir, o.random_drafter, beam)
        o = replace(o, beam=beam)
    base = load_decoder(model_dir, dtype=o.dtype, max_seq_len=o.max_seq_len)
    if o.base_weights is not None and o.base_weights.fmt is not None:
        weights = o.base_weights.resolved(o.rows_are_chains)
        base.quantize_weights(weights.fmt, int8_activations=weights.rounds_activations)
    max_len = o.max_seq_len or base.config.max_position_embeddings
    codec = TextCodec.from_file(model_dir / "tokenizer.json", base.config.vocab_size)
    if o.autoregressive:
        step = SpeculativeStep(base, None, 1, 1, max_len)
        mode = {
            "mode": "autoregressive",
            "beam_width": 1,
            "beam_length": 1,
            "lookup_beams": 0,
            "draft_vocab": None,
            "drafter": None,
        }
    else:
        drafter, draft_vocab = None, o.draft_vocab
        if beam.lookup_only:
            check_lookup_only(o.drafter_dir, o.random_drafter, o.draft_vocab, o.drafter_weights)
        else:
            drafter, draft_vocab = _load_drafter(
                model_dir, o.drafter_dir, base, o.random_drafter, o.allow_pickle, o.draft_vocab
            )
            fmt = parse_drafter_weights(o.drafter_weights)
            if fmt is not None:
                drafter.quantize_weights(fmt)
        step = SpeculativeStep(
            base,
            drafter,
            beam.width,
            beam.length,
            max_len,
            lookup_beams=beam.lookup,
            lookup_ngrams=beam.ngrams,
        )
        mode = {
            "mode": "lookup" if beam.lookup_only else "redrafter",
            "beam_width": beam.width,
            "beam_length": beam.length,
            **beam.lookup_manifest(),
            "draft_vocab": draft_vocab,
            "drafter": None if drafter is None else drafter.describe(o.random_drafter),
        }
    info = {"source": str(model_dir), "runtime": "torch", "dtype": base.config.dtype, **mode}
    return BuiltStep(step, codec, stop_tokens_of(model_dir, base.config), info)


def reference_generator(
    model_dir: Path | str, options: ModelFolderOptions | None = None, threads: int | None = None
) -> Generator:
    """A Generator running the PyTorch reference step of `model_dir` (eager); `threads` sets
    PyTorch's intra-op threads (None or 0: unchanged)."""
    import torch

    from redcompile.runtime.torch_backend import TorchBackend

    if threads:
        torch.set_num_threads(threads)
    built = build_step(model_dir, options)
    return Generator(TorchBackend(built.step), built.codec, built.stop_tokens, built.info)


def resolve_lookup_only(
    model_dir: Path, drafter_dir: Path | str | None, random_drafter: bool, beam: BeamShape
) -> BeamShape:
    """The shape to build: lookup beams with no drafter given or found (no `drafter_dir`, no
    MODEL_DIR/drafter, no random drafter) make a lookup-only tree (width 0)."""
    if beam.lookup and drafter_dir is None and not random_drafter:
        if not (Path(model_dir) / "drafter").exists():
            return replace(beam, width=0).validate()
    return beam


def check_lookup_only(
    drafter_dir: Path | str | None, random_drafter: bool, draft_vocab: int | None, weights: str
) -> None:
    """A lookup-only tree has no drafter: options that configure one are refused, one line."""
    for given, flag in (
        (drafter_dir is not None, "--drafter"),
        (random_drafter, "--random-drafter"),
        (draft_vocab is not None, "--draft-vocab"),
        (weights not in (None, "float"), "--drafter-weights"),
    ):
        if given:
            raise InputError(
                f"{flag} configures a drafter, and this tree drafts by lookup only "
                f"(--beam-width 0, or --lookup-beams with no drafter folder); drop {flag}, or "
                f"give a drafter and a beam width"
            )


def _load_drafter(model_dir, drafter_dir, base, random_drafter, allow_pickle, draft_vocab):
    """The drafter (trained, from its folder, or random) restricted to its draft vocabulary,
    and the draft vocabulary size actually used."""
    import torch

    from redcompile.models.draft_vocab import (
        check_draft_vocab_size,
        most_frequent,
        read_token_frequencies,
    )
    from redcompile.models.drafter_io import load_drafter
    from redcompile.models.drafter_io import random_drafter as make_random_drafter

    draft_vocab = check_draft_vocab_size(draft_vocab, base.config.vocab_size)
    if random_drafter:
        drafter = make_random_drafter(base.config)
        if draft_vocab is not None:
            drafter.restrict_vocabulary(torch.arange(draft_vocab))
        return drafter, draft_vocab
    path = Path(drafter_dir) if drafter_dir else model_dir / "drafter"
    if drafter_dir is None and not path.exists():
        raise InputError(
            f"drafter: no drafter at {path}; pass --drafter DIR, --random-drafter, "
            f"--lookup-beams N (drafts copied from the context) or --autoregressive (train "
            f"one with `redcompile train-drafter`)"
        )
    drafter = load_drafter(path, base.config, allow_pickle=allow_pickle)
    if draft_vocab is not None:
        counts = read_token_frequencies(path, base.config.vocab_size)
        drafter.restrict_vocabulary(most_frequent(counts, draft_vocab))
    return drafter, draft_vocab
