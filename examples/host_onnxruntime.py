"""A host for redcompile artifacts written from docs/artifact.md alone: onnxruntime, numpy and
tokenizers, no redcompile code. It decodes a prompts file in batches, admitting a waiting prompt
into a row as soon as the row's prompt finishes, greedily or by sampling.

    python examples/host_onnxruntime.py model.onnx --prompts-file prompts.jsonl --batch-size 4

Prints one JSON object per prompt: prompt_index, token_ids, text, finish_reason.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

NUMPY = {"int64": np.int64, "float32": np.float32, "float16": np.float16}
FILL = {"input_ids": 0, "parent_ids": -1, "depths": 0}  # pad value of packed tensors
ROW_STATE = ("num_tokens", "forced", "cache_lengths")  # all zero: an idle row
LEVELS = {"off": 0, "chain": 1, "full": 2}  # the `speculation` input ("Speculation levels")


class Artifact:
    """The session, the manifest's contract and the tokenizer carried in the metadata."""

    def __init__(self, path: str) -> None:
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.manifest = json.loads(meta["redcompile.manifest"])
        self.tokenizer = Tokenizer.from_str(meta["redcompile.tokenizer"])
        beam, model = self.manifest["beam"], self.manifest["model"]
        self.length = beam["length"]  # L: tokens per beam counting the root (1: autoregressive)
        beams = max(beam["width"] + beam.get("lookup_beams", 0), 1)
        self.tree = beams * (self.length - 1) + 1  # N: packed tokens of a decoding row
        self.sizes = {"kv_heads": model["num_kv_heads"], "head_dim": model["head_dim"]}
        self.inputs = self.manifest["io"]["inputs"]
        self.feedback = self.manifest["io"]["feedback"]  # output name -> input name
        self.stops = set(self.manifest["stop_token_ids"])

    def dtype(self, spec: dict) -> type:
        return NUMPY[self.manifest["dtype"] if spec["dtype"] == "model" else spec["dtype"]]

    def zeros(self, batch: int, tokens: int, cache: int) -> dict[str, np.ndarray]:
        """Every input of the contract, zero-filled (packed tensors padded as FILL says)."""
        dims = {"batch": batch, "tokens": tokens, "cache": cache, **self.sizes}
        state = {}
        for spec in self.inputs:
            shape = [dims.get(d, d) for d in spec["dims"]]
            state[spec["name"]] = np.full(shape, FILL.get(spec["name"], 0), self.dtype(spec))
        return state

    def batched(self, name: str) -> bool:  # a slice per row (`speculation` is one scalar)
        return next(s["dims"][:1] == ["batch"] for s in self.inputs if s["name"] == name)

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds)))


class Row:
    """One prompt in flight: its tokens, its uniforms and why it finished."""

    def __init__(self, index: int, prompt: list[int], args: argparse.Namespace) -> None:
        self.index, self.prompt, self.tokens, self.finish = index, prompt, [], None
        n = args.max_new_tokens + 64
        self.uniforms = np.random.default_rng([args.seed, index]).random(n, dtype=np.float32)

    def emit(self, new: list[int], stops: set[int], budget: int) -> None:
        """Append a step's tokens: a stop token ends the row (and is not emitted), so does the
        budget; tokens after either in the same step are dropped."""
        for token in new:
            if token in stops:
                self.finish = "stop"
                return
            self.tokens.append(token)
            if len(self.tokens) >= budget:
                self.finish = "length"
                return


def controls(rows: list[Row | None], args: argparse.Namespace, length: int) -> dict:
    """temperature, top_k, top_p [B] and sample_uniforms [B, L]: a row's values for its next L
    tokens, indexed by how many it has emitted; idle and greedy rows get zeros."""
    batch = len(rows)
    uniforms = np.zeros((batch, length), np.float32)
    for b, row in enumerate(rows):
        if row is not None:
            uniforms[b] = row.uniforms[len(row.tokens) : len(row.tokens) + length]
    temperature = [0.0 if row is None else args.temperature for row in rows]
    return {
        "temperature": np.array(temperature, np.float32),
        "top_k": np.full(batch, args.top_k, np.int64),
        "top_p": np.full(batch, args.top_p, np.float32),
        "sample_uniforms": uniforms,
    }


def admit(art: Artifact, state: dict, b: int, row: Row, args: argparse.Namespace) -> list[int]:
    """Prefill `row` into batch row b as a batch of one over b's cache slice (rows are
    independent); b's state becomes the step's next_* row. Returns the first token(s)."""
    p = len(row.prompt)
    feeds = {n: v[b : b + 1] if art.batched(n) else v for n, v in state.items()}
    feeds.update(
        input_ids=np.array([row.prompt], np.int64),
        parent_ids=np.arange(-1, p - 1, dtype=np.int64)[None],
        depths=np.arange(p, dtype=np.int64)[None],
        num_tokens=np.array([p], np.int64),
        forced=np.array([p], np.int64),
        cache_lengths=np.zeros(1, np.int64),
    )
    for name in ("beam_paths", "token_history"):  # a prefill row reads neither
        if name in feeds:
            feeds[name] = np.zeros_like(feeds[name])
    feeds.update(controls([row], args, art.length))
    out = art.step(feeds)
    for output, name in art.feedback.items():
        state[name][b] = out[output][0]
    return out["new_tokens"][0, : out["num_new_tokens"][0]].tolist()


def generate(art: Artifact, prompts: list[str], args: argparse.Namespace) -> list[Row]:
    """The loop of docs/artifact.md: admit, step, emit, stop or admit the next prompt."""
    encoded = [art.tokenizer.encode(text).ids for text in prompts]
    longest = max(len(ids) for ids in encoded)
    cache = longest + args.max_new_tokens + art.length + max(art.tree, longest)
    batch = min(args.batch_size, len(prompts))
    state = art.zeros(batch, art.tree, cache)  # every row idle until admitted
    if "speculation" in state:  # what each step drafts for the next one
        state["speculation"] = np.array(LEVELS[args.speculation], np.int64)
    waiting = [Row(i, ids, args) for i, ids in enumerate(encoded)]
    done, slots = [], [None] * batch

    def fill(b: int) -> None:
        while waiting:
            row = waiting.pop(0)
            row.emit(admit(art, state, b, row, args), art.stops, args.max_new_tokens)
            if row.finish is None:
                slots[b] = row
                return
            done.append(row)
        slots[b] = None
        for name in ROW_STATE:
            state[name][b] = 0

    for b in range(batch):
        fill(b)
    while any(slots):
        out = art.step({**state, **controls(slots, args, art.length)})
        for output, name in art.feedback.items():  # first feed back, then edit rows
            state[name] = out[output]
        for b, row in enumerate(slots):
            if row is None:
                continue
            new = out["new_tokens"][b, : out["num_new_tokens"][b]].tolist()
            row.emit(new, art.stops, args.max_new_tokens)
            if row.finish is not None:
                done.append(row)
                fill(b)
    return sorted(done, key=lambda row: row.index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--prompts-file", required=True, help="JSONL, a 'prompt' per line")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speculation", choices=list(LEVELS), default="full")
    args = parser.parse_args()
    with open(args.prompts_file, encoding="utf-8") as handle:
        prompts = [json.loads(line)["prompt"] for line in handle if line.strip()]
    art = Artifact(args.artifact)
    for row in generate(art, prompts, args):
        text = art.tokenizer.decode(row.tokens, skip_special_tokens=True)
        record = {"prompt_index": row.index, "token_ids": row.tokens, "text": text}
        print(json.dumps({**record, "finish_reason": row.finish}))


if __name__ == "__main__":
    main()
