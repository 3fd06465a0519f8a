"""One query taken apart step by step, through the encoder's own code paths (the app's Walkthrough tab).

`stream_explain` runs `TraceEncoder.stream_query(..., first_step=True)`: the encoder's own `FirstStep` (the
routing decision of `decide_route`, read off its prefill, never recomputed here), then the CoT as it streams,
then the real `QueryResult`. What this module adds is bookkeeping for a reader: the prompt and its tokens
(`Backbone.tokenize`, images expanded), the strings of the top next tokens, and which position's hidden state
became the embedding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .records import CotDelta, FirstStep, InputError, Query, QueryResult, ReasoningMode, Route, TokenScore

if TYPE_CHECKING:  # annotations only: the app's page imports this module before torch is imported
    from .encoder import TraceEncoder

# Token strings that stand for one image token in `Backbone.tokenize` (TRACE-mini, Qwen-VL): display only.
IMAGE_TOKENS = frozenset({"<image>", "<|image_pad|>"})
EMBEDDING_HEAD = 8  # how many leading embedding values a walkthrough keeps


@dataclass(frozen=True)
class TokenProb:
    """One candidate for the first generated token, with its string."""

    rank: int  # 1 = most likely, over the full vocabulary
    token_id: int
    text: str  # the token's string (`Backbone.token_text`)
    prob: float  # softmax over the full vocabulary, before any routing bias
    logit: float
    is_emb: bool  # the embedding token `<|emb|>`
    is_stop: bool  # an end-of-sequence token: masked at the first step


@dataclass(frozen=True)
class PromptStep:
    """The prompt as the model reads it and the encoder's first step on it, with token strings for display."""

    query: Query
    prompt: str  # rendered prompt text (image placeholders not expanded)
    n_images: int
    tokens: tuple[str, ...]  # the prompt as the model reads it (images expanded)
    step: FirstStep  # the encoder's own record of the routing decision
    top: tuple[TokenProb, ...]  # `step.top` with strings
    best_other: TokenProb  # `step.best_other` with its string: the CoT's first token if it reasons
    emb_token: str  # the string of `<|emb|>` in this prompt style

    @property
    def route(self) -> Route:
        return self.step.route

    @property
    def prompt_length(self) -> int:
        return len(self.tokens)

    @property
    def n_image_tokens(self) -> int:
        return sum(t in IMAGE_TOKENS for t in self.tokens)


@dataclass(frozen=True)
class Walkthrough:
    """Everything a teaching walkthrough shows for one query."""

    first: PromptStep
    result: QueryResult  # the encoder's own result for the query
    pooling: str  # "pre_token" or "emb_token" (PromptStyle.pooling)
    cot_token_texts: tuple[str, ...]  # the generated CoT tokens as strings
    pooled_index: int  # position (0-based, prompt then CoT then `<|emb|>`) whose hidden state is the embedding
    pooled_token: str  # the token at that position
    pooled_kind: str  # "last prompt token" | "last CoT token" | "the <|emb|> token"
    embedding_head: tuple[float, ...]  # the first values of the (L2-normalised) embedding

    @property
    def query(self) -> Query:
        return self.first.query

    @property
    def route(self) -> Route:
        return self.result.route

    @property
    def p_emb(self) -> float:
        return self.first.step.p_emb

    @property
    def embedding(self) -> np.ndarray:
        return self.result.embedding

    @property
    def dim(self) -> int:
        return int(self.result.embedding.shape[-1])

    @property
    def prompt_length(self) -> int:
        return self.first.prompt_length

    @property
    def direct_cosine(self) -> float | None:
        """Cosine between the embedding and the one the direct route would have given (same prefill)."""
        d = self.result.direct_embedding
        return None if d is None else float(np.dot(d, self.result.embedding))


def _token_text(encoder: TraceEncoder, token_id: int) -> str:
    """A token's string; ids beyond the tokenizer (spare logit rows) get a placeholder."""
    try:
        text = encoder.backbone.token_text(int(token_id))
    except (IndexError, KeyError, ValueError, TypeError, OverflowError):
        text = None
    return text if text else f"<id {token_id}>"


def _prompt_step(encoder: TraceEncoder, query: Query, step: FirstStep) -> PromptStep:
    """The encoder's first step with the prompt, its tokens and the token strings."""
    bb = encoder.backbone
    prompt = encoder.render_query(query)

    def shown(t: TokenScore) -> TokenProb:
        return TokenProb(t.rank, t.token_id, _token_text(encoder, t.token_id), t.prob, t.logit,
                         t.token_id == step.emb_token_id, t.token_id in bb.stop_token_ids)

    return PromptStep(query=query, prompt=prompt.text, n_images=len(prompt.images),
                      tokens=tuple(bb.tokenize(prompt)), step=step, top=tuple(shown(t) for t in step.top),
                      best_other=shown(step.best_other), emb_token=encoder.style.emb_token)


def first_step(encoder: TraceEncoder, query: Query, reasoning: ReasoningMode = "auto", routing_bias: float = 0.0,
               top: int = 10) -> PromptStep:
    """The prompt and the encoder's first step (its prefill only: no CoT is generated)."""
    events = stream_explain(encoder, query, reasoning, routing_bias, top)
    try:
        return next(events)  # type: ignore[return-value]  # the first event is the PromptStep
    finally:
        events.close()  # the decoding loop stops here


def pooled_position(first: PromptStep, result: QueryResult, pooling: str) -> tuple[int, str]:
    """Index of the position whose hidden state is the embedding, and what it is.

    Positions run over the prompt, then the CoT, then `<|emb|>`. Pre-token pooling keeps the last token fed
    before `<|emb|>` (the last prompt token on the direct route, else the last CoT token). `emb_token` pooling
    feeds `<|emb|>` and keeps its own state when the model stopped normally; a capped or cut CoT keeps its
    last token there too, as the encoder does.
    """
    n = first.prompt_length + result.cot_tokens
    if pooling == "emb_token" and result.stop_reason in ("direct", "emb"):
        return n, f"the {first.emb_token} token"
    return n - 1, "last CoT token" if result.cot_tokens else "last prompt token"


def _walkthrough(encoder: TraceEncoder, first: PromptStep, result: QueryResult) -> Walkthrough:
    cot = tuple(_token_text(encoder, t) for t in result.cot_token_ids)
    pooling = encoder.style.pooling
    index, kind = pooled_position(first, result, pooling)
    if index < first.prompt_length:
        token = first.tokens[index]
    elif index < first.prompt_length + len(cot):
        token = cot[index - first.prompt_length]
    else:
        token = first.emb_token
    head = tuple(float(x) for x in result.embedding[:EMBEDDING_HEAD])
    return Walkthrough(first, result, pooling, cot, index, token, kind, head)


def explain_query(encoder: TraceEncoder, query: Query, reasoning: ReasoningMode = "auto", routing_bias: float = 0.0,
                  top: int = 10) -> Walkthrough:
    """The walkthrough of one query: the encoder's first step and result, taken apart."""
    *_, walk = stream_explain(encoder, query, reasoning, routing_bias, top)
    return walk


def stream_explain(encoder: TraceEncoder, query: Query, reasoning: ReasoningMode = "auto",
                   routing_bias: float = 0.0, top: int = 10) -> Iterator[PromptStep | CotDelta | Walkthrough]:
    """Yield the `PromptStep`, then the CoT as `CotDelta`s while `stream_query` generates it, then the
    `Walkthrough`."""
    if int(top) < 1:
        raise InputError("top must be at least 1")
    first: PromptStep | None = None
    for event in encoder.stream_query(query, reasoning, routing_bias, first_step=True, top_tokens=int(top)):
        if isinstance(event, FirstStep):
            first = _prompt_step(encoder, query, event)
            yield first
        elif isinstance(event, CotDelta):
            yield event
        else:
            assert first is not None  # stream_query yields the first step before anything else
            yield _walkthrough(encoder, first, event)
