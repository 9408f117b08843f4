"""A loaded step with its tokenizer: `Generator`, and `GenerationReport`, what a run returns.

Every way of opening a model (a model folder through `redcompile.api`, an artifact through
`runtime/loading.py`) ends in a `Generator`; it lives in the runtime package so that loading
needs nothing from the API layer above it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redcompile.generation import GenerationConfig, GenerationResult, StepBackend, generate_ids
from redcompile.speculation import SpeculationPolicy
from redcompile.tokenizer import StreamDecoder, TextCodec

TextCallback = Callable[[int, str], None]  # (prompt index, text delta)


@dataclass
class Generator:
    """A loaded step (model folder or artifact) with its tokenizer and stop tokens."""

    backend: StepBackend
    codec: TextCodec
    stop_token_ids: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)
    speculation: SpeculationPolicy | None = None  # None: full speculation every step

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        cfg: GenerationConfig,
        on_tokens: Callable[[int, list[int]], None] | None = None,
    ) -> GenerationResult:
        """Generate from token ids; the model's stop tokens apply unless cfg names others."""
        if not cfg.stop_token_ids:
            cfg = GenerationConfig(**{**cfg.__dict__, "stop_token_ids": self.stop_token_ids})
        return generate_ids(self.backend, prompts, cfg, on_tokens, speculation=self.speculation)

    def generate(
        self, prompts: Sequence[str], cfg: GenerationConfig, on_text: TextCallback | None = None
    ) -> GenerationReport:
        """Generate from text prompts; `on_text` receives text deltas as they are decoded."""
        ids = [self.codec.encode(p) for p in prompts]
        streams = [StreamDecoder(self.codec) for _ in prompts]

        def on_tokens(index: int, tokens: list[int]) -> None:
            delta = streams[index].push(tokens)
            if delta and on_text is not None:
                on_text(index, delta)

        result = self.generate_ids(ids, cfg, on_tokens if on_text else None)
        if on_text is not None:
            for index, stream in enumerate(streams):
                if tail := stream.flush():
                    on_text(index, tail)
        return GenerationReport(list(prompts), result, self.codec, dict(self.info))


@dataclass
class GenerationReport:
    """Texts, token ids and counters of a run; `to_json` is the CLI's --json output."""

    prompts: list[str]
    result: GenerationResult
    codec: TextCodec
    info: dict[str, Any]

    def texts(self) -> list[str]:
        """Decoded completions, in prompt order."""
        return [self.codec.decode(c.token_ids) for c in self.result.completions]

    def to_json(self) -> dict[str, Any]:
        """Per prompt: text, token ids, steps and tokens per step; then run totals."""
        r = self.result
        return {
            **self.info,
            "completions": [
                {
                    "prompt": prompt,
                    "text": text,
                    "token_ids": c.token_ids,
                    "num_tokens": len(c.token_ids),
                    "finish_reason": c.finish_reason,
                    "steps": c.steps,
                    "tokens_per_step": round(c.tokens_per_step, 4),
                }
                for prompt, text, c in zip(self.prompts, self.texts(), r.completions)
            ],
            "steps": r.steps,
            "generated_tokens": r.generated_tokens,
            "tokens_per_step": round(r.tokens_per_step, 4),
            "tokens_per_second": round(r.tokens_per_second, 2),
            "seconds": round(r.seconds, 4),
        }
