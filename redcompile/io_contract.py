"""The step's I/O contract: tensor names, element types, symbolic dims, what feeds back.

The one torch-free place that says what a step graph reads and writes, so the host loop, the
runtimes, the graph checks and the CLI know the contract without importing PyTorch; the step
module (models/step.py) and the manifest (`io`) are built from it, and docs/artifact.md
documents it for runtimes that load an artifact without redcompile.
"""

from __future__ import annotations

from dataclasses import dataclass

INT64, FLOAT32 = "int64", "float32"

# Sampling semantics every runtime of an artifact shares (docs/artifact.md, "Sampling").
GREEDY_BELOW = 1e-5  # a temperature below this (0 included) is greedy decoding
# The If that only sampling rows need is named `<Op>.sampling` in every op body (Accept's;
# `<Op>.sampling__N` where ONNX's inliner copied the body into a graph); a host whose rows
# are all greedy may run its else branch in its place (docs/artifact.md).
SAMPLING_ROLE = "sampling"
DEFAULT_TOP_K = 50  # 0 keeps every token
DEFAULT_TOP_P = 1.0  # 1 keeps every token
MAX_SEED = 2**63 - 1  # seeds are 0 ... MAX_SEED


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and symbolic shape of one step input or output."""

    name: str
    dtype: str  # "int64", "float32", or "model" for the model's dtype
    dims: tuple[str | int, ...]

    def to_dict(self) -> dict:
        """JSON form for the manifest."""
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @property
    def batched(self) -> bool:
        """Whether the tensor holds one slice per batch row (its first dim is the batch)."""
        return bool(self.dims) and self.dims[0] == "batch"


@dataclass(frozen=True)
class StepSignature:
    """The step's I/O contract: inputs, outputs, and which output feeds which input next step."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    feedback: dict[str, str]  # output name -> input name

    def input_names(self) -> list[str]:
        """Input names in positional order."""
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        """Output names in positional order."""
        return [t.name for t in self.outputs]

    def initial_inputs(
        self, model: dict, batch_size: int, capacity: int
    ) -> list[tuple[str, list[int], str]]:
        """(name, shape, dtype name) of every input before the first step: one idle packed
        token per row and a cache of `capacity` slots; dtype "model" is the artifact's dtype.
        `model` is the manifest's model config."""
        sizes = {
            "batch": batch_size,
            "tokens": 1,
            "cache": capacity,
            "vocab": model["vocab_size"],
            "kv_heads": model["num_kv_heads"],
            "head_dim": model["head_dim"],
        }
        return [(t.name, [sizes.get(d, d) for d in t.dims], t.dtype) for t in self.inputs]

    def initial_value(self, name: str) -> int:
        """The value every element of input `name` starts at: 0, but the speculation level,
        which starts at full speculation (a host that never writes it drafts the whole tree)."""
        return FULL_SPECULATION if name == SPECULATION else 0

    def to_dict(self) -> dict:
        """JSON form for the manifest."""
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "feedback": dict(self.feedback),
        }


# Row state fed back every step, in input order (before the cache tensors).
ROW_STATE = ("input_ids", "parent_ids", "depths", "num_tokens", "forced", "cache_lengths")
TREE_STATE = ("beam_paths",)
# Per-row inputs the host writes: the sampling controls and one U[0, 1) per tree depth.
HOST_INPUTS = ("temperature", "top_k", "top_p", "sample_uniforms")
# Each row's tokens (prompt, accepted tokens, then the next root), written by the step itself;
# present when the tree has lookup beams (ops/prompt_lookup.py).
HISTORY = "token_history"
# The speculation level of a step (a speculative step's scalar input, docs/artifact.md,
# "Speculation levels"): what the step drafts for the next one. `none` drafts nothing (the next
# tree is the root alone: the next step is an autoregressive step), `chain` drafts one beam
# (the tree's first), `full` the compiled tree.
SPECULATION = "speculation"
SPECULATION_LEVELS = {"none": 0, "chain": 1, "full": 2}
FULL_SPECULATION = SPECULATION_LEVELS["full"]


def step_signature(
    num_layers: int, beam_width: int, beam_length: int, history: bool = False
) -> StepSignature:
    """The contract of a step graph (speculative when beam_length > 1); `beam_width` counts
    every beam of the tree, `history` adds the token history lookup beams read (an
    autoregressive step with `history` writes it too: the autoregressive branch of a
    speculative artifact keeps the history its lookup beams read later)."""
    w, length = beam_width, beam_length
    n = beam_width * (beam_length - 1) + 1
    speculative = length > 1
    row_dims = {
        "input_ids": ("batch", "tokens"),
        "parent_ids": ("batch", "tokens"),
        "depths": ("batch", "tokens"),
        "num_tokens": ("batch",),
        "forced": ("batch",),
        "cache_lengths": ("batch",),
    }
    inputs = [TensorSpec(name, INT64, dims) for name, dims in row_dims.items()]
    inputs += [
        TensorSpec("temperature", FLOAT32, ("batch",)),
        TensorSpec("top_k", INT64, ("batch",)),
        TensorSpec("top_p", FLOAT32, ("batch",)),
        TensorSpec("sample_uniforms", FLOAT32, ("batch", length)),
    ]
    if speculative:
        inputs.append(TensorSpec("beam_paths", INT64, ("batch", w, length)))
        inputs.append(TensorSpec(SPECULATION, INT64, ()))
    if history:
        inputs.append(TensorSpec(HISTORY, INT64, ("batch", "cache")))
    outputs = [
        TensorSpec("new_tokens", INT64, ("batch", length)),
        TensorSpec("num_new_tokens", INT64, ("batch",)),
    ]
    next_dims = {
        "input_ids": ("batch", n),
        "parent_ids": ("batch", n),
        "depths": ("batch", n),
        "num_tokens": ("batch",),
        "forced": ("batch",),
        "cache_lengths": ("batch",),
    }
    outputs += [TensorSpec(f"next_{name}", INT64, dims) for name, dims in next_dims.items()]
    if speculative:
        outputs.append(TensorSpec("next_beam_paths", INT64, ("batch", w, length)))
    if history:
        outputs.append(TensorSpec(f"next_{HISTORY}", INT64, ("batch", "cache")))
    feedback = {t.name: t.name.removeprefix("next_") for t in outputs if t.name.startswith("next_")}
    for i in range(num_layers):
        for kind in ("key", "value"):
            inputs.append(
                TensorSpec(
                    f"past_key_values.{i}.{kind}",
                    "model",
                    ("batch", "kv_heads", "cache", "head_dim"),
                )
            )
            outputs.append(
                TensorSpec(
                    f"present.{i}.{kind}", "model", ("batch", "kv_heads", "cache", "head_dim")
                )
            )
            feedback[f"present.{i}.{kind}"] = f"past_key_values.{i}.{kind}"
    return StepSignature(tuple(inputs), tuple(outputs), feedback)
