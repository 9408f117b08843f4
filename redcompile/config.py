"""User-facing settings with their defaults, defined once; the CLI reads defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

from redcompile.errors import InputError

MAX_BEAM_WIDTH = 64
MAX_BEAM_LENGTH = 9
MAX_TREE_TOKENS = 512


@dataclass(frozen=True)
class BeamShape:
    """Drafter beam search shape. `length` counts the root token, as Apple's beam_length does:
    length 5 drafts four tokens per beam."""

    width: int = 4
    length: int = 5

    @property
    def drafts(self) -> int:
        """Drafted tokens per beam (length - 1)."""
        return self.length - 1

    @property
    def tree_tokens(self) -> int:
        """Packed tokens of a decoding row before deduplication: width * drafts + 1."""
        return self.width * self.drafts + 1

    def validate(self) -> BeamShape:
        """Refuse shapes outside the supported range, naming the option."""
        if not 1 <= self.width <= MAX_BEAM_WIDTH:
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
                f"--beam-width {self.width} x --beam-length {self.length} gives a tree of "
                f"{self.tree_tokens} tokens, more than {MAX_TREE_TOKENS}; use a smaller shape"
            )
        return self


AUTOREGRESSIVE = BeamShape(width=1, length=1)
