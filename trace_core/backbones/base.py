"""The contract between the encoder and a backbone.

The encoder owns the TRACE logic (routing, greedy CoT, pooling); a backbone only turns rendered prompts into
hidden states. It must support three operations on a batch:

- `prefill(prompts)`: one forward pass over left-padded prompts; returns the last-layer hidden state at the
  last prompt position [B, H], optionally the next-token logits there [B, V], and a decoding state (KV cache).
- `step(state, tokens)`: feed one token per row [B]; returns the new last hidden state and logits.
- `select(state, rows)`: keep only some rows of the state (queries that continue reasoning).

Hidden states are those after the final norm (what `hidden_states[-1]` is in transformers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from PIL import Image

from ..prompts import PromptStyle

if TYPE_CHECKING:  # torch is imported where it runs: the app's page is served before torch is imported
    import torch


@dataclass
class RenderedPrompt:
    text: str  # prompt text with one image placeholder per image
    images: list[Image.Image]  # RGB images, in placeholder order
    # The start of `text` that other prompts share (a query's template and instruction, `prompts.query_prefix`):
    # a backbone may reuse its KV cache across prefills. "" for none.
    prefix: str = ""


@dataclass
class StepOutput:
    hidden: torch.Tensor  # [B, H] last-layer hidden state at the newest position
    logits: torch.Tensor | None  # [B, V] next-token logits there (None when not requested)
    state: Any  # backbone-specific decoding state (KV cache, attention mask, positions)
    best: torch.Tensor | None = None  # [B] each row's argmax over the logits, where the step computed it


class Backbone(ABC):
    style: PromptStyle  # prompt style (special tokens, templates, pooling)
    model_id: str  # name or path it was loaded from
    revision: str  # weights fingerprint, recorded in index manifests
    image_placeholder: str  # what {image} in a template becomes
    emb_token_id: int
    stop_token_ids: frozenset[int]  # end-of-sequence tokens: reasoning that reaches one is cut there
    hidden_size: int
    precision: str = "fp32"  # "int8": TRACE-mini's LM weights in int8 (`mini.quantise_weights`)

    @abstractmethod
    def prefill(self, prompts: list[RenderedPrompt], with_logits: bool = True) -> StepOutput: ...

    @abstractmethod
    def step(self, state: Any, tokens: torch.Tensor) -> StepOutput: ...

    @abstractmethod
    def select(self, state: Any, rows: torch.Tensor) -> Any: ...

    @abstractmethod
    def decode(self, token_ids: list[int]) -> str:
        """Token ids to text, special tokens dropped."""

    @abstractmethod
    def tokenize(self, prompt: RenderedPrompt) -> list[str]:
        """The prompt as token strings (images expanded), for the teaching walkthrough."""

    def token_text(self, token_id: int) -> str:
        return self.decode([token_id]) or f"<{token_id}>"


class TrainForward(NamedTuple):
    """What a teacher-forced training forward pass yields (see `pool_and_score`)."""

    pooled: torch.Tensor  # [B, H] pre-token state: the position that predicts the last target (<|emb|>)
    direct: torch.Tensor  # [B, H] state at the end of the prompt, where the direct route would embed
    ce_sum: torch.Tensor  # summed cross-entropy over all target tokens (0 without targets)
    n_tokens: int  # how many target tokens were scored


def cache_layer_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A transformers cache's keys and values of one layer [B, KV, S, D]."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


def pool_and_score(hidden: torch.Tensor, targets: list[list[int]] | None, head) -> TrainForward:
    """The training objective's view of a teacher-forced, left-padded batch.

    hidden [B, S, H]: last-layer states of prompt + all targets but the last. The last position predicts the
    last target (<|emb|>), so it is the pooled pre-token [B, H]. Row i's targets are predicted by its last
    len(targets[i]) positions; the first of them is the end of the prompt, the direct route's embedding (equal
    to the pre-token for a direct target). `head` maps those states to logits, and the summed CE and the target
    count are returned (0 and 0 without targets, for candidates).
    """
    import torch

    pooled = hidden[:, -1]
    if targets is None:
        return TrainForward(pooled, pooled, pooled.new_zeros(()), 0)
    length = hidden.shape[1]
    direct = hidden[torch.arange(len(targets)), torch.tensor([length - len(t) for t in targets])]
    rows = torch.cat([torch.full((len(t),), i) for i, t in enumerate(targets)])
    cols = torch.cat([torch.arange(length - len(t), length) for t in targets])
    labels = torch.tensor([x for t in targets for x in t], device=hidden.device)
    logits = head(hidden[rows, cols]).float()  # [T, V]: only where a target is predicted
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    return TrainForward(pooled, direct, ce, int(labels.numel()))
