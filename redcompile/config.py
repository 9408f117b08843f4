"""User-facing settings with their defaults, defined once; the CLI reads defaults from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from redcompile.errors import InputError

# Runtimes an artifact is compiled for, and the OUT suffix that names each.
TARGETS = ("onnxruntime", "torch", "tensorrt")
SUFFIX_TARGETS = {
    ".onnx": "onnxruntime",
    ".pt2": "torch",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}
# Devices a command can run or compile for.
DEVICES = ("cpu", "cuda")
# Element types of an artifact's weights and compute, and the names `--dtype` accepts for them.
DTYPES = ("float32", "float16", "bfloat16")
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"} | {d: d for d in DTYPES}
# Tokens `verify` decodes per prompt by default.
VERIFY_NEW_TOKENS = 32
# (atol, rtol) per dtype: |artifact - reference| <= atol + rtol * |reference| per float output,
# used by `verify` and by the .pt2 compile check.
TOLERANCES = {"float32": (1e-4, 1e-3), "float16": (2e-2, 2e-2), "bfloat16": (6e-2, 6e-2)}

MAX_BEAM_WIDTH = 64
MAX_BEAM_LENGTH = 9
MAX_TREE_TOKENS = 512
MAX_LOOKUP_BEAMS = 16
MAX_LOOKUP_NGRAM = 8
DEFAULT_LOOKUP_BEAMS = 1
DEFAULT_LOOKUP_NGRAMS = (3, 2, 1)


@dataclass(frozen=True)
class BeamShape:
    """The draft tree's shape: `width` drafter beams plus `lookup` lookup beams copied from the
    row's own history (ops/prompt_lookup.py, matching the n-gram sizes `ngrams`, longest
    first), all of `length` tokens. `length` counts the root token, as Apple's beam_length
    does: length 5 drafts four tokens per beam. width 0 with lookup > 0 is a lookup-only tree
    (no drafter)."""

    width: int = 4
    length: int = 5
    lookup: int = DEFAULT_LOOKUP_BEAMS
    ngrams: tuple[int, ...] = DEFAULT_LOOKUP_NGRAMS

    @property
    def drafts(self) -> int:
        """Drafted tokens per beam (length - 1)."""
        return self.length - 1

    @property
    def beams(self) -> int:
        """Beams in the tree: drafter beams and lookup beams."""
        return self.width + self.lookup

    @property
    def is_chain(self) -> bool:
        """Whether every decoding row is one chain (a single beam, drafter's or lookup's)."""
        return self.beams == 1

    @property
    def tree_tokens(self) -> int:
        """Packed tokens of a decoding row before deduplication: beams * drafts + 1."""
        return self.beams * self.drafts + 1

    def validate(self) -> BeamShape:
        """Refuse shapes outside the supported range, naming the option."""
        if not 0 <= self.lookup <= MAX_LOOKUP_BEAMS:
            raise InputError(
                f"--lookup-beams must be between 0 and {MAX_LOOKUP_BEAMS}, got {self.lookup}"
            )
        if self.lookup and (
            not self.ngrams or not all(1 <= k <= MAX_LOOKUP_NGRAM for k in self.ngrams)
        ):
            raise InputError(
                f"--lookup-ngram sizes must be between 1 and {MAX_LOOKUP_NGRAM}, got "
                f"{','.join(map(str, self.ngrams)) or 'none'}"
            )
        low = 0 if self.lookup else 1
        if not low <= self.width <= MAX_BEAM_WIDTH:
            raise InputError(
                f"--beam-width must be between 1 and {MAX_BEAM_WIDTH}, got {self.width}"
            )
        if not 2 <= self.length <= MAX_BEAM_LENGTH:
            raise InputError(
                f"--beam-length must be between 2 and {MAX_BEAM_LENGTH} (it counts the root "
                f"token: 5 drafts four tokens), got {self.length}"
            )
        if self.tree_tokens > MAX_TREE_TOKENS:
            raise InputError(
                f"{self.beams} beams x --beam-length {self.length} gives a tree of "
                f"{self.tree_tokens} tokens, more than {MAX_TREE_TOKENS}; use a smaller shape"
            )
        return self

    @property
    def lookup_only(self) -> bool:
        """No drafter beams: every draft comes from lookup."""
        return self.width == 0 and self.lookup > 0

    def lookup_manifest(self) -> dict:
        """The lookup part of a manifest's `beam` entry (no n-gram sizes without lookup)."""
        ngrams = sorted(set(self.ngrams), reverse=True) if self.lookup else []
        return {"lookup_beams": self.lookup, "lookup_ngrams": ngrams}


def parse_ngrams(text: str) -> tuple[int, ...]:
    """`--lookup-ngram 3,2,1` (or one size) -> (3, 2, 1); one clear line for anything else."""
    try:
        sizes = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or not all(1 <= k <= MAX_LOOKUP_NGRAM for k in sizes):
        raise InputError(
            f"--lookup-ngram takes n-gram sizes between 1 and {MAX_LOOKUP_NGRAM}, one or a "
            f"comma list such as 3,2,1; got {text!r}"
        )
    return tuple(sorted(set(sizes), reverse=True))


AUTOREGRESSIVE = BeamShape(width=1, length=1, lookup=0)


@dataclass(frozen=True)
class ModelFolderOptions:
    """How a model folder becomes a step (redcompile/step_builder.py): the drafter and tree
    shape, dtype and length, draft vocabulary, quantized weights. One type for every command
    that loads a folder (generate, bench, verify's reference, convert); defaults defined here."""

    drafter_dir: Path | str | None = None  # None: MODEL_DIR/drafter
    beam: BeamShape = field(default_factory=BeamShape)
    autoregressive: bool = False
    random_drafter: bool = False
    allow_pickle: bool = False
    dtype: str | None = None  # None: the checkpoint's dtype
    max_seq_len: int | None = None  # None: the model's max_position_embeddings
    draft_vocab: int | None = None  # None: draft from the whole vocabulary
    drafter_weights: str = "float"  # or int8 / int4 (models/weight_quant.py)
    base_weights: Any = None  # a models.weight_quant.BaseWeights; None: float weights

    # What only a model folder takes: an artifact has these compiled in.
    FOLDER_ONLY: ClassVar[tuple[str, ...]] = (
        "drafter_dir",
        "random_drafter",
        "allow_pickle",
        "dtype",
        "draft_vocab",
        "drafter_weights",
        "base_weights",
    )

    @property
    def rows_are_chains(self) -> bool:
        """Whether every packed row of the step is a chain: autoregressive or a single beam
        (what exact int8 activations need, models/weight_quant.py)."""
        return self.autoregressive or self.beam.is_chain

    @classmethod
    def of(cls, beam: BeamShape | None = None, **options: Any) -> ModelFolderOptions:
        """From keyword options as the API takes them (`beam=None`: the default shape)."""
        return cls(beam=beam or BeamShape(), **options)
