"""The ReDrafter head: a recurrent draft model that reads the base model's last hidden state.

Exactly Apple's `recurrent_drafting/modeling_drafter.py` computation (reference/redrafter.md §2):

    s_t    = silu(rnn_w E[x_{t-1}] + rnn_u s_{t-1} + b_u)      (rnn)   or  s_{t-1} + E[x_{t-1}]
    x      = [h, s_t]                                           h first, then the state
    x      = input_proj(x)                                      only when exit_dim != 2 * hidden
    x      = x + silu(W_i x + b_i)                              N residual blocks
    logits = vocab_w x                                          no bias

E is the *base model's* input embedding table, borrowed, never stored in the drafter. The residual
blocks are stored stacked ([N, E, E]) so that the beam-search op takes a fixed set of inputs;
`drafter_io.py` maps them to and from Apple's per-block names.

`restrict_vocabulary` keeps only some rows of vocab_w (a draft vocabulary, chosen at convert
time from the token frequencies training recorded): the drafter then proposes only those tokens,
at a fraction of the projection's cost. Verification is unchanged, so decoding stays exact.
`quantize_weights` does the same for the bytes drafting reads: the matrices the beam search
multiplies by become what an int8 / int4 artifact stores (models/weight_quant.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from redcompile.models.weight_quant import WeightFormat, fake_quantize
from redcompile.ops import DRAFTER_BEAM_SEARCH, call
from redcompile.ops.drafter_beam_search import drafter_features, drafter_state

QUANTIZED_MATRICES = ("rnn_w", "rnn_u_w", "input_proj_w", "vocab_w")
QUANTIZED_STACKS = ("res_w",)
"""Beam-search op inputs that --drafter-weights quantizes: matrices [out, in], and stacks of them
([N, out, in], each block quantized on its own). Biases and the borrowed embedding stay float."""


@dataclass(frozen=True)
class DrafterConfig:
    """Shape of a drafter; field names follow Apple's DrafterConfig."""

    hidden_size: int
    vocab_size: int
    exit_dim: int
    num_draft_layers: int
    rnn: bool = True
    dtype: str = "float32"

    @property
    def has_input_proj(self) -> bool:
        """Apple adds `input_proj` exactly when the MLP width differs from [h, s]'s 2H."""
        return self.exit_dim != 2 * self.hidden_size

    def to_dict(self) -> dict:
        """Plain-JSON form, used in manifests."""
        return asdict(self)


class Drafter(nn.Module):
    """ReDrafter parameters plus its inference (beam search) and training (teacher-forced) forms."""

    def __init__(self, cfg: DrafterConfig) -> None:
        super().__init__()
        self.config = cfg
        h, e, v, n = cfg.hidden_size, cfg.exit_dim, cfg.vocab_size, cfg.num_draft_layers
        if cfg.rnn:
            self.rnn_w = nn.Parameter(torch.empty(h, h))
            self.rnn_u = nn.Linear(h, h, bias=True)
        else:
            self.rnn_w, self.rnn_u = None, None
        self.input_proj = nn.Linear(2 * h, e, bias=True) if cfg.has_input_proj else None
        self.res_w = nn.Parameter(torch.empty(n, e, e))
        self.res_b = nn.Parameter(torch.empty(n, e))
        self.vocab_w = nn.Parameter(torch.empty(v, e))
        # [V'] token id of each vocab_w row when restricted (a buffer: it follows .to(device))
        self.register_buffer("draft_vocab", None, persistent=False)
        self.quantized: str | None = None  # weight format name once quantize_weights ran
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default initialisation for every weight (the state of a fresh drafter)."""
        for weight, bias in self._linears():
            nn.init.kaiming_uniform_(weight, a=5**0.5)
            if bias is not None:
                bound = weight.shape[-1] ** -0.5
                nn.init.uniform_(bias, -bound, bound)

    def init_projection_from(self, lm_head_w: torch.Tensor) -> None:
        """Start the projection as the base model's lm_head [V, H] reading the h half of [h, s].

        Training starts from a projection that already maps the base model's hidden states
        to its vocabulary; the drafter then learns to move its features toward the next
        position's. Without input_proj, vocab_w is lm_head on the h half. With input_proj
        (exit_dim E != 2H), input_proj @ vocab_w starts as the best rank-min(E, H) part of
        lm_head on h (its truncated SVD: input_proj reads h along the top right-singular
        vectors, vocab_w maps them back with U S); feature dimensions beyond H keep their
        random input rows and start unread.
        """
        h = self.config.hidden_size
        lm_head = lm_head_w.detach().to(torch.float32)
        with torch.no_grad():
            self.vocab_w.zero_()
            if self.input_proj is None:
                self.vocab_w[:, :h] = lm_head.to(self.vocab_w.dtype)
                return
            rank = min(self.config.exit_dim, h)
            u, s, vt = torch.linalg.svd(lm_head, full_matrices=False)  # [V, H], [H], [H, H]
            self.vocab_w[:, :rank] = (u[:, :rank] * s[:rank]).to(self.vocab_w.dtype)
            self.input_proj.weight[:rank].zero_()
            self.input_proj.weight[:rank, :h] = vt[:rank].to(self.input_proj.weight.dtype)
            self.input_proj.bias[:rank].zero_()

    def _linears(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        pairs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        if self.rnn_w is not None:
            pairs += [(self.rnn_w, None), (self.rnn_u.weight, self.rnn_u.bias)]
        if self.input_proj is not None:
            pairs.append((self.input_proj.weight, self.input_proj.bias))
        pairs += [(self.res_w[i], self.res_b[i]) for i in range(self.res_w.shape[0])]
        pairs.append((self.vocab_w, None))
        return pairs

    def op_weights(self) -> tuple[torch.Tensor | None, ...]:
        """Weights in the beam-search op's input order (after hidden, root, embedding)."""
        rnn = (
            (self.rnn_w, self.rnn_u.weight, self.rnn_u.bias)
            if self.rnn_w is not None
            else (None, None, None)
        )
        proj = (
            (self.input_proj.weight, self.input_proj.bias)
            if self.input_proj is not None
            else (None, None)
        )
        return (*rnn, *proj, self.res_w, self.res_b, self.vocab_w, self.draft_vocab)

    def describe(self, random: bool) -> dict:
        """The drafter as manifests and engine reports state it: its config, whether it is
        random, and the size of its draft vocabulary (None: the whole vocabulary)."""
        restricted = None if self.draft_vocab is None else int(self.draft_vocab.numel())
        return {
            **self.config.to_dict(),
            "random": random,
            "draft_vocab": restricted,
            "quantized": self.quantized,
        }

    def quantize_weights(self, fmt: WeightFormat) -> None:
        """Replace the QUANTIZED_INPUTS matrices by the values an artifact compiled with
        `--drafter-weights fmt.name` holds, so this module drafts exactly as that artifact does."""
        if self.quantized is not None:
            raise ValueError(f"the drafter's weights are already quantized ({self.quantized})")
        with torch.no_grad():
            matrices = [self.vocab_w, *self.res_w]
            if self.rnn_w is not None:
                matrices += [self.rnn_w, self.rnn_u.weight]
            if self.input_proj is not None:
                matrices.append(self.input_proj.weight)
            for weight in matrices:
                weight.copy_(fake_quantize(weight, fmt))
        self.quantized = fmt.name

    def restrict_vocabulary(self, token_ids: torch.Tensor) -> None:
        """Draft only `token_ids` [V'] (distinct ids): keep their rows of the projection."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        v = self.config.vocab_size
        if ids.numel() == 0 or ids.unique().numel() != ids.numel():
            raise ValueError("a draft vocabulary needs distinct token ids")
        if int(ids.min()) < 0 or int(ids.max()) >= v:
            raise ValueError(f"draft vocabulary ids must lie in [0, {v})")
        if self.draft_vocab is not None:
            raise ValueError("the drafter's vocabulary is already restricted")
        with torch.no_grad():
            self.vocab_w = nn.Parameter(self.vocab_w[ids].clone())
        self.draft_vocab = ids.to(self.vocab_w.device)

    def beam_search(
        self,
        hidden: torch.Tensor,
        root: torch.Tensor,
        embedding: torch.Tensor,
        beam_width: int,
        beam_length: int,
        top_k: int = 50,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """beams [B, W, L] and logprobs [B, W, L - 1, V] from hidden [B, H] and root [B]."""
        return call(
            DRAFTER_BEAM_SEARCH,
            hidden,
            root,
            embedding,
            *self.op_weights(),
            beam_width,
            beam_length,
            top_k,
        )

    def state(self, previous: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        """One recurrent update (shared with the beam search)."""
        rnn_u_w, rnn_u_b = (self.rnn_u.weight, self.rnn_u.bias) if self.rnn_u else (None, None)
        return drafter_state(previous, token_embedding, self.rnn_w, rnn_u_w, rnn_u_b)

    def features(self, hidden: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Features before the vocabulary projection, from context and state ([..., E])."""
        proj_w, proj_b = (
            (self.input_proj.weight, self.input_proj.bias) if self.input_proj else (None, None)
        )
        return drafter_features(hidden, state, proj_w, proj_b, self.res_w, self.res_b)

    def logits(self, hidden: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits from context and state (the beam search computes the same)."""
        return F.linear(self.features(hidden, state), self.vocab_w)

    def teacher_forced_features(
        self, hidden: torch.Tensor, token_embeddings: torch.Tensor, depth: int
    ) -> list[torch.Tensor]:
        """Training form (Apple's train/model.py): every position in parallel.

        hidden [B, T, H] is the base model's final-normed output at position t (the one that
        produced token t+1); token_embeddings [B, T, H] holds E[x_t]. Returns `depth` feature
        tensors [B, T, E]; entry i predicts token t + i + 2 from the state that consumed
        x_{t+1..t+i+1}. Positions whose targets run past T (the roll wraps around) must be
        masked by the caller.
        """
        state = torch.zeros_like(hidden)
        embeddings = token_embeddings
        out = []
        for _ in range(depth):
            embeddings = torch.roll(embeddings, shifts=-1, dims=1)
            state = self.state(state, embeddings)
            out.append(self.features(hidden, state))
        return out

    def teacher_forced_logits(
        self, hidden: torch.Tensor, token_embeddings: torch.Tensor, depth: int
    ) -> list[torch.Tensor]:
        """`teacher_forced_features` projected to the vocabulary ([B, T, V] each)."""
        features = self.teacher_forced_features(hidden, token_embeddings, depth)
        return [F.linear(f, self.vocab_w) for f in features]
