"""The step: verify a packed tree, accept, update the cache, draft the next tree. One module.

The PyTorch generator runs this module eagerly and the compiler exports exactly this module, so
a token-level difference between them is a bug in export or in the passes. Each batch row is
either idle (num_tokens = 0), a prefill row (a prompt chunk, every token forced) or a decoding row
(a deduplicated beam tree whose root the base model already chose, forced = 1); rows of all kinds
share one batch, which is in-flight batching. With beam_length = 1 and no drafter the same module
is the autoregressive baseline (a tree of one token per step).

Every tensor the next step needs comes out as `next_<name>` (and `present.N.*` for the cache), so
a runtime only feeds outputs back as inputs. `StepSignature` lists the contract; docs/artifact.md
documents it for runtimes that load the artifact without redcompile.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from redcompile.io_contract import HISTORY, SPECULATION, SPECULATION_LEVELS, step_signature
from redcompile.models.drafter import Drafter
from redcompile.models.llama import Decoder
from redcompile.ops import ACCEPT, ANCESTOR_MASK, BUILD_TREE, KV_COMPACTION, PROMPT_LOOKUP, call
from redcompile.ops.tree_building import lifting_steps


def section(name: str) -> contextlib.AbstractContextManager:
    """A named profiler range for `bench`'s step split (nothing while exporting)."""
    if (
        torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    ):
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"redcompile.{name}")


class SpeculativeStep(nn.Module):
    """One ReDrafter (or autoregressive) step over a batch of packed rows; see module doc.

    The tree holds `beam_width` drafter beams (0 without a drafter) and `lookup_beams` beams
    copied from each row's history (`lookup_ngrams`: the n-gram sizes matched, longest first).
    A speculative step reads its speculation level (io_contract.SPECULATION): `full` drafts the
    whole tree, `chain` only its first beam, `none` no tree (the next step verifies the root
    alone). `keep_history` gives an autoregressive step the token history of an artifact with
    lookup beams (the autoregressive branch of such an artifact, passes/speculation_levels.py).
    """

    def __init__(
        self,
        base: Decoder,
        drafter: Drafter | None,
        beam_width: int,
        beam_length: int,
        max_seq_len: int,
        draft_top_k: int = 50,
        lookup_beams: int = 0,
        lookup_ngrams: tuple[int, ...] = (),
        keep_history: bool = False,
    ) -> None:
        super().__init__()
        if drafter is None and beam_length > 1 and lookup_beams == 0:
            raise ValueError("a speculative step needs a drafter or lookup beams")
        if (drafter is not None or lookup_beams > 0) and beam_length == 1:
            raise ValueError("drafting needs beam_length > 1")
        if lookup_beams > 0 and not lookup_ngrams:
            raise ValueError("lookup beams need at least one n-gram size")
        if keep_history and beam_length > 1:
            raise ValueError("keep_history is for autoregressive steps; lookup beams keep it")
        self.base, self.drafter = base, drafter
        self.beam_width = 0 if drafter is None and lookup_beams else beam_width
        self.beam_length = beam_length
        self.lookup_beams, self.lookup_ngrams = lookup_beams, tuple(lookup_ngrams)
        self.max_seq_len, self.draft_top_k = max_seq_len, draft_top_k
        self.lifting_steps = lifting_steps(max_seq_len)
        self.keep_history = keep_history or lookup_beams > 0
        self.signature = step_signature(
            base.config.num_layers, self.tree_beams, beam_length, history=self.keep_history
        )

    @property
    def tree_beams(self) -> int:
        """Beams of the draft tree: drafter beams plus lookup beams (1 when autoregressive)."""
        return max(self.beam_width + self.lookup_beams, 1)

    @property
    def speculative(self) -> bool:
        """Whether the step drafts (beam_length > 1)."""
        return self.beam_length > 1

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Positional inputs and outputs in `self.signature` order."""
        named = dict(zip(self.signature.input_names(), args))
        num_layers = self.base.config.num_layers
        past = [
            (named[f"past_key_values.{i}.key"], named[f"past_key_values.{i}.value"])
            for i in range(num_layers)
        ]
        input_ids, num_tokens, forced = named["input_ids"], named["num_tokens"], named["forced"]
        cache_lengths = named["cache_lengths"]
        if self.speculative:
            # Level none verifies the forced tokens alone: drafts a row still holds when the
            # level drops are discarded unverified (exact; an ONNX artifact's autoregressive
            # branch, passes/speculation_levels.py, does the same).
            none = named[SPECULATION] == SPECULATION_LEVELS["none"]
            num_tokens = torch.where(none, forced, num_tokens)

        with section("tree"):
            tree_mask = call(
                ANCESTOR_MASK, named["parent_ids"], named["depths"], self.lifting_steps
            )
            positions = cache_lengths.unsqueeze(1) + named["depths"]
        with section("base"):
            logits, hidden, new_kv = self.base(input_ids, positions, tree_mask, cache_lengths, past)
        with section("acceptance"):
            keep_idx, keep_len, last_idx, new_tokens, num_new = call(
                ACCEPT,
                logits,
                input_ids,
                num_tokens,
                forced,
                named["temperature"],
                named["top_k"],
                named["top_p"],
                named["sample_uniforms"],
                named.get("beam_paths"),
            )
        present = []
        with section("kv"):
            for (past_k, past_v), (k, v) in zip(past, new_kv):
                present.append(call(KV_COMPACTION, past_k, k, cache_lengths, keep_idx, keep_len))
                present.append(call(KV_COMPACTION, past_v, v, cache_lengths, keep_idx, keep_len))

        if not self.speculative:
            # One token per row: new_tokens is the next root ([B, 1]; 0 for idle rows), and a
            # row is active next step exactly when it emitted a token (num_new is 1 or 0).
            history = ()
            if self.keep_history:
                tokens_so_far, _ = self._append_history(
                    named[HISTORY],
                    input_ids,
                    None,  # every kept token is forced, in order: no index to gather by
                    keep_len,
                    cache_lengths,
                    new_tokens,
                    num_new > 0,
                )
                history = (tokens_so_far,)
            # The next tree is the root: parent -1, depth 0. Made from new_tokens by two
            # elementwise ops (full_like/zeros_like export as a Shape and two Expands: a
            # kernel more in every autoregressive step).
            depth_zero = new_tokens * 0
            return (
                new_tokens,
                num_new,
                new_tokens,
                depth_zero - 1,
                depth_zero,
                num_new,
                num_new,
                cache_lengths + keep_len,
                *history,
                *present,
            )
        b = input_ids.shape[0]
        next_token = torch.gather(new_tokens, 1, (num_new - 1).clamp(min=0).unsqueeze(1))
        active = num_new > 0
        level = named[SPECULATION]
        beams, history = [], ()
        if self.drafter is not None:
            h = torch.gather(hidden, 1, last_idx.view(b, 1, 1).expand(b, 1, hidden.shape[-1]))
            with section("drafting"):
                # Acceptance needs no draft probabilities: the beams are deterministic drafts.
                drafted, _ = self.drafter.beam_search(
                    h.squeeze(1),
                    next_token.squeeze(1),
                    self.base.embedding,
                    self.beam_width,
                    self.beam_length,
                    self.draft_top_k,
                )
            beams.append(drafted)
        if self.lookup_beams:
            with section("lookup"):
                tokens_so_far, lengths = self._append_history(
                    named[HISTORY], input_ids, keep_idx, keep_len, cache_lengths, next_token, active
                )
                looked_up = call(
                    PROMPT_LOOKUP,
                    tokens_so_far,
                    lengths,
                    list(self.lookup_ngrams),
                    self.lookup_beams,
                    self.beam_length,
                )
            beams.append(looked_up)
            history = (tokens_so_far,)
        beams = beams[0] if len(beams) == 1 else torch.cat(beams, dim=1)
        # chain: every beam becomes the first one, and the tree deduplicates them into a chain
        chain = level == SPECULATION_LEVELS["chain"]
        beams = torch.where(chain, beams[:, :1].expand_as(beams), beams)
        with section("tree"):
            tokens, parents, depths, tree_size, paths = call(BUILD_TREE, beams)
        zero = torch.zeros_like(num_new)
        root_only = torch.ones_like(num_new)  # none: the next tree is its root, forced
        drafted = torch.where(level == SPECULATION_LEVELS["none"], root_only, tree_size)
        return (
            new_tokens,
            num_new,
            tokens,
            parents,
            depths,
            torch.where(active, drafted, zero),
            torch.where(active, root_only, zero),
            cache_lengths + keep_len,
            paths,
            *history,
            *present,
        )

    @staticmethod
    def _append_history(
        history_bs: torch.Tensor,
        input_ids: torch.Tensor,
        keep_idx: torch.Tensor | None,
        keep_len: torch.Tensor,
        cache_lengths: torch.Tensor,
        next_token: torch.Tensor,
        active: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The history after this step and its lengths: the kept tokens (prompt chunk, root,
        accepted drafts) land where their K/V did, at cache_lengths + i, and the next root
        after them; an idle row's length is 0.

        One scatter of T + 1 values per row, so the work is the step's tokens, not the
        history's length: slots past the root write the root again, an idle row writes back
        what it holds (equal values, so repeated indices are harmless)."""
        s, t = history_bs.shape[1], input_ids.shape[1]
        # keep_idx None: the row's kept tokens are its first keep_len (an autoregressive step)
        kept = input_ids if keep_idx is None else torch.gather(input_ids, 1, keep_idx)
        kept_bt = torch.nn.functional.pad(kept, (0, 1))
        slot_1t = torch.arange(t + 1, device=history_bs.device).unsqueeze(0)
        keep_b1 = keep_len.unsqueeze(1)
        target_bt = (cache_lengths.unsqueeze(1) + torch.minimum(slot_1t, keep_b1)).clamp(max=s - 1)
        value_bt = torch.where(slot_1t < keep_b1, kept_bt, next_token)
        held_bt = torch.gather(history_bs, 1, target_bt)
        value_bt = torch.where(active.unsqueeze(1), value_bt, held_bt)
        history_bs = history_bs.scatter(1, target_bt, value_bt)
        new_len = cache_lengths + keep_len
        return history_bs, torch.where(active, new_len + 1, torch.zeros_like(new_len))
