"""Text <-> token ids through a Hugging Face `tokenizer.json` (the `tokenizers` library)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from redcompile.errors import InputError, ModelLoadError


class TextCodec:
    """Encode prompts and decode completions, including incremental decoding for streaming.

    `vocab_size` is the model's vocabulary: a prompt that encodes to an id outside it (a
    tokenizer that does not belong to the model) is refused before it reaches the model.
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    @classmethod
    def from_file(cls, path: Path, vocab_size: int | None = None) -> TextCodec:
        """Load `tokenizer.json`; a one-line error when it is missing or unreadable."""
        if not path.is_file():
            raise ModelLoadError(f"tokenizer: {path} not found; the model folder must contain it")
        try:
            return cls(Tokenizer.from_file(str(path)), vocab_size)
        except Exception as exc:  # the library raises bare Exceptions
            raise ModelLoadError(
                f"tokenizer: {path} is not a valid tokenizer.json ({_first_line(exc)})"
            ) from None

    @classmethod
    def from_json(cls, text: str, vocab_size: int | None = None, where: str = "") -> TextCodec:
        """Load from the JSON text of a tokenizer.json (as stored in artifacts)."""
        try:
            return cls(Tokenizer.from_str(text), vocab_size)
        except Exception as exc:  # the library raises bare Exceptions
            raise ModelLoadError(
                f"tokenizer: the one in {where or 'the artifact'} is not a valid tokenizer.json "
                f"({_first_line(exc)}); re-convert the model"
            ) from None

    def to_json(self) -> str:
        """The tokenizer.json text."""
        return self.tokenizer.to_str()

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, with the tokenizer's own special-token template."""
        ids = self.tokenizer.encode(text).ids
        if self.vocab_size is not None and ids and max(ids) >= self.vocab_size:
            raise InputError(
                f"tokenizer: the prompt {text[:40]!r} encodes to token id {max(ids)}, outside "
                f"the model's vocabulary of {self.vocab_size}; the tokenizer does not belong "
                f"to this model"
            )
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids (special tokens skipped)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class StreamDecoder:
    """Turns growing token lists into text deltas, holding back incomplete UTF-8 sequences."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, new_ids: list[int]) -> str:
        """Add tokens; return the text that is now final."""
        self.ids.extend(new_ids)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens
            return ""
        delta = text[self.emitted :]
        self.emitted = len(text)
        return delta

    def flush(self) -> str:
        """Whatever text is still held back (at the end of generation)."""
        text = self.codec.decode(self.ids)
        delta = text[self.emitted :]
        self.emitted = len(text)
        return delta
