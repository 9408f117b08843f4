"""The library API: everything the CLI does is a call into this module.

gen = redcompile.open_generator("model_dir", beam=BeamShape(4, 5))
report = gen.generate(["def fib(n):"], GenerationConfig(max_new_tokens=64))
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from redcompile.config import BeamShape
from redcompile.errors import InputError
from redcompile.models.config import DecoderConfig, read_json, token_ids
from redcompile.runtime.generator import GenerationReport, Generator, TextCallback
from redcompile.tokenizer import TextCodec

__all__ = ["GenerationReport", "Generator", "TextCallback", "open_generator", "open_model_folder"]


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


def open_model_folder(
    model_dir: Path | str,
    drafter_dir: Path | str | None = None,
    beam: BeamShape | None = None,
    autoregressive: bool = False,
    random_drafter: bool = False,
    allow_pickle: bool = False,
    dtype: str | None = None,
    max_seq_len: int | None = None,
    draft_vocab: int | None = None,
    drafter_weights: str = "float",
    base_weights: Any = None,
    threads: int | None = None,
) -> Generator:
    """A Generator running the PyTorch reference step on a Hugging Face folder (+ drafter).

    `draft_vocab` N drafts only from the N tokens the drafter was trained to predict most often
    (models/draft_vocab.py); a random drafter takes the N lowest ids. `drafter_weights` int8 /
    int4 drafts with the weights an artifact compiled with `--drafter-weights` holds
    (models/weight_quant.py), so the reference drafts exactly as that artifact does.
    `base_weights` (a models.weight_quant.BaseWeights) decodes with the base weights an
    artifact compiled with `--weights int8|int4` holds. `threads` sets PyTorch's intra-op
    threads (None or 0: unchanged).
    """
    import torch

    from redcompile.models.loader import check_model_dir, load_decoder
    from redcompile.models.step import SpeculativeStep
    from redcompile.models.weight_quant import parse_drafter_weights
    from redcompile.runtime.torch_backend import TorchBackend

    model_dir = check_model_dir(Path(model_dir))
    beam = (beam or BeamShape()).validate()
    if threads:
        torch.set_num_threads(threads)
    base = load_decoder(model_dir, dtype=dtype, max_seq_len=max_seq_len)
    if base_weights is not None and base_weights.fmt is not None:
        from redcompile.models.weight_quant import INT8_ACTIVATIONS

        base.quantize_weights(
            base_weights.fmt, int8_activations=base_weights.accuracy_level == INT8_ACTIVATIONS
        )
    max_len = max_seq_len or base.config.max_position_embeddings
    codec = TextCodec.from_file(model_dir / "tokenizer.json", base.config.vocab_size)
    if autoregressive:
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
        beam = resolve_lookup_only(model_dir, drafter_dir, random_drafter, beam)
        drafter = None
        if beam.lookup_only:
            check_lookup_only(drafter_dir, random_drafter, draft_vocab, drafter_weights)
        else:
            drafter, draft_vocab = _load_drafter(
                model_dir, drafter_dir, base, random_drafter, allow_pickle, draft_vocab
            )
            fmt = parse_drafter_weights(drafter_weights)
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
            "drafter": None if drafter is None else drafter.describe(random_drafter),
        }
    info = {"source": str(model_dir), "runtime": "torch", "dtype": base.config.dtype, **mode}
    return Generator(TorchBackend(step), codec, stop_tokens_of(model_dir, base.config), info)


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


def open_generator(source: Path | str, **options: Any) -> Generator:
    """Open a model folder or an artifact file (by suffix) as a Generator."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"source: {path} does not exist (give a model folder or an artifact)")
    if path.is_dir():
        return open_model_folder(path, **options)
    from redcompile.runtime.loading import open_artifact

    return open_artifact(path, **options)
