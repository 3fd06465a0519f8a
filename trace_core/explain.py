"""One query taken apart step by step, through the encoder's own code paths (the app's Walkthrough tab).

`explain_query` renders the prompt with `TraceEncoder.render_query`, lists its tokens with `Backbone.tokenize`
(images expanded), runs one `Backbone.prefill` to read the first-step logits (the routing decision, exactly as
`TraceEncoder._run` takes it), then gets the real `QueryResult` from `TraceEncoder.encode_queries` (or
`stream_query` in `stream_explain`), so the CoT, route and embedding are the encoder's and not a copy of them.
What it adds is bookkeeping: the top next tokens and their probabilities, `<|emb|>`'s rank, and which position's
hidden state became the embedding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .encoder import REASONING_MODES, TraceEncoder
from .records import CotDelta, InputError, Query, QueryResult, ReasoningMode, Route

# Token strings that stand for one image token in `Backbone.tokenize` (TRACE-mini, Qwen-VL): display only.
IMAGE_TOKENS = frozenset({"<image>", "<|image_pad|>"})
EMBEDDING_HEAD = 8  # how many leading embedding values a walkthrough keeps


@dataclass(frozen=True)
class TokenProb:
    """One candidate for the first generated token."""

    rank: int  # 1 = most likely, over the full vocabulary
    token_id: int
    text: str  # the token's string (`Backbone.token_text`)
    prob: float  # softmax over the full vocabulary, before any routing bias
    logit: float
    is_emb: bool  # the embedding token `<|emb|>`
    is_stop: bool  # an end-of-sequence token: masked at the first step


@dataclass(frozen=True)
class FirstStep:
    """The prompt and the first-step decision, from one prefill."""

    query: Query
    prompt: str  # rendered prompt text (image placeholders not expanded)
    n_images: int
    tokens: tuple[str, ...]  # the prompt as the model reads it (images expanded)
    vocab_size: int  # V: the number of logits
    top: tuple[TokenProb, ...]  # the most likely next tokens, descending
    emb_token: str
    emb_token_id: int
    emb_rank: int  # rank of `<|emb|>` among all V tokens (1 = the model's own first choice)
    p_emb: float  # P(<|emb|>) at the first step, before any bias
    emb_logit: float
    best_other: TokenProb  # best token that is neither `<|emb|>` nor a stop: the CoT's first token if it reasons
    margin: float  # emb_logit - best_other.logit: the route is direct (in auto) exactly when margin + bias > 0
    routing_bias: float
    reasoning: ReasoningMode
    can_reason: bool  # False for prompt styles that never write a CoT
    prefers_direct: bool  # `<|emb|>` wins the (biased, stop-masked) first step
    route: Route  # the route after the reasoning mode
    why: str  # the decision in one plain sentence

    @property
    def prompt_length(self) -> int:
        return len(self.tokens)

    @property
    def n_image_tokens(self) -> int:
        return sum(t in IMAGE_TOKENS for t in self.tokens)


@dataclass(frozen=True)
class Walkthrough:
    """Everything a teaching walkthrough shows for one query."""

    first: FirstStep
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
        return self.first.p_emb

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


def _check(reasoning: str, routing_bias: float, top: int) -> None:
    if reasoning not in REASONING_MODES:
        raise InputError(f"reasoning must be one of {REASONING_MODES}, not {reasoning!r}")
    if not np.isfinite(routing_bias):
        raise InputError("routing_bias must be a finite number")
    if int(top) < 1:
        raise InputError("top must be at least 1")


@torch.inference_mode()
def first_step(encoder: TraceEncoder, query: Query, reasoning: ReasoningMode = "auto", routing_bias: float = 0.0,
               top: int = 10) -> FirstStep:
    """Render the prompt, tokenize it, and read the first-step decision off one prefill (as `_run` does)."""
    _check(reasoning, routing_bias, top)
    bb, emb = encoder.backbone, encoder.backbone.emb_token_id
    prompt = encoder.render_query(query)
    tokens = tuple(bb.tokenize(prompt))
    logits = bb.prefill([prompt], with_logits=True).logits[0].float()  # [V]
    probs = torch.softmax(logits, dim=-1)
    stops = sorted(bb.stop_token_ids)

    def choice(rank: int, tid: int) -> TokenProb:
        return TokenProb(rank, tid, _token_text(encoder, tid), float(probs[tid]), float(logits[tid]), tid == emb,
                         tid in bb.stop_token_ids)

    order = torch.argsort(logits, descending=True, stable=True)
    n = min(int(top), logits.shape[0])
    top_list = tuple(choice(r, int(t)) for r, t in enumerate(order[:n].tolist(), start=1))
    emb_rank = int((order == emb).nonzero()[0, 0]) + 1

    # The decision, as TraceEncoder._run takes it.
    first = logits.clone()
    first[emb] += routing_bias
    first[stops] = -torch.inf
    if reasoning == "always":
        first[emb] = -torch.inf
    others = logits.clone()
    others[[emb, *stops]] = -torch.inf
    best = int(others.argmax())
    margin = float(logits[emb] - others[best])
    prefers_direct = int(first.argmax()) == emb
    can_reason = encoder.style.can_reason
    if reasoning == "never" or not can_reason:
        route: Route = "direct"
    elif reasoning == "always":
        route = "reason"
    else:
        route = "direct" if prefers_direct else "reason"

    emb_text = encoder.style.emb_token
    best_tok = choice(int((order == best).nonzero()[0, 0]) + 1, best)
    score = f"margin {margin:+.2f} + bias {routing_bias:+.2f} = {margin + routing_bias:+.2f}"
    if not can_reason:
        why = f"This prompt style never reasons: every query is embedded at once ({score})."
    elif reasoning == "never":
        why = (f"Reasoning is switched off ('never'): the query is embedded at once, whatever the model prefers "
               f"({score}).")
    elif reasoning == "always":
        why = (f"Reasoning is forced ('always'): {emb_text} is forbidden at the first step, so the model starts its "
               f"chain of thought with {best_tok.text!r} ({score}).")
    elif prefers_direct:
        why = f"{emb_text} wins the first step ({score} > 0): the query is embedded at once."
    else:
        why = (f"{best_tok.text!r} beats {emb_text} ({score} <= 0): the model starts a chain of thought before "
               "embedding.")
    return FirstStep(
        query=query, prompt=prompt.text, n_images=len(prompt.images), tokens=tokens, vocab_size=int(logits.shape[0]),
        top=top_list, emb_token=emb_text, emb_token_id=emb, emb_rank=emb_rank, p_emb=float(probs[emb]),
        emb_logit=float(logits[emb]), best_other=best_tok, margin=margin, routing_bias=float(routing_bias),
        reasoning=reasoning, can_reason=can_reason, prefers_direct=prefers_direct, route=route, why=why,
    )


def pooled_position(first: FirstStep, result: QueryResult, pooling: str) -> tuple[int, str]:
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


def _walkthrough(encoder: TraceEncoder, first: FirstStep, result: QueryResult) -> Walkthrough:
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
    """The walkthrough of one query: first-step decision from a prefill, then the encoder's own result."""
    first = first_step(encoder, query, reasoning, routing_bias, top)
    [result] = encoder.encode_queries([query], reasoning=reasoning, routing_bias=routing_bias)
    return _walkthrough(encoder, first, result)


def stream_explain(encoder: TraceEncoder, query: Query, reasoning: ReasoningMode = "auto",
                   routing_bias: float = 0.0, top: int = 10) -> Iterator[FirstStep | CotDelta | Walkthrough]:
    """Yield the `FirstStep`, then the CoT as `CotDelta`s while `stream_query` generates it, then the walkthrough."""
    first = first_step(encoder, query, reasoning, routing_bias, top)
    yield first
    result: QueryResult | None = None
    for event in encoder.stream_query(query, reasoning=reasoning, routing_bias=routing_bias):
        if isinstance(event, CotDelta):
            yield event
        else:
            result = event
    assert result is not None  # stream_query always ends with the result
    yield _walkthrough(encoder, first, result)
