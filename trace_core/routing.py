"""The route decision of TRACE: embed now (`<|emb|>` wins the first step) or reason first.

Its one owner: the encoder calls `decide_route` on each query's first-step logits, and the analysis replays the
rule (`prefers_direct`, `p_emb_with_bias`) from the margins it stored. No model here: pure functions of logits.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import numpy as np

from .records import FirstStep, ReasoningMode, Route, TokenScore, check_reasoning, check_routing_bias

if TYPE_CHECKING:  # torch is imported where it runs: the app serves its page before torch is imported
    import torch


def prefers_direct(margin, routing_bias):
    """The routing rule: `<|emb|>` wins the first step exactly when margin + bias > 0 (a tie reasons).

    `margin` is the first-step logit of `<|emb|>` minus the best other non-stop logit (`FirstStep.margin`,
    `QueryResult.emb_margin`); floats or arrays, so a bias sweep replays the decision from stored margins.
    """
    return margin + routing_bias > 0


def p_emb_with_bias(p_emb, routing_bias):
    """P(`<|emb|>`) at the first step once `routing_bias` is added to its logit: p·e^b / (p·e^b + 1 - p), from
    the unbiased `p_emb` (`QueryResult.p_emb`); floats or arrays, as `prefers_direct`. For display: the route
    follows the margin, not this. e^b never overflows; p = 0 and 1 stay put, NaN stays NaN."""
    p, b = np.asarray(p_emb, dtype=np.float64), np.asarray(routing_bias, dtype=np.float64)
    with np.errstate(all="ignore"):
        odds = p * np.exp(b)  # used for b < 0 only (e^b < 1); b >= 0 divides by e^b instead
        out = np.where(b >= 0, p / (p + (1 - p) * np.exp(-b)), odds / (odds + 1 - p))
        out = np.where(p <= 0, 0.0, np.where(p >= 1, 1.0, out))  # NaN compares False: stays NaN
    return float(out) if out.ndim == 0 else out


def _rank(logits: torch.Tensor, token_id: int) -> int:
    """1-based rank of `token_id` among all logits [V] (ties: the lower id ranks first, as a stable sort)."""
    value = logits[token_id]
    return 1 + int((logits > value).sum()) + int((logits[:token_id] == value).sum())


def decide_route(
    logits: torch.Tensor,
    emb_token_id: int,
    stop_token_ids: Collection[int],
    reasoning: ReasoningMode = "auto",
    routing_bias: float = 0.0,
    can_reason: bool = True,
    top: int = 10,
) -> FirstStep:
    """The route of one query from its first-step logits [V] (a pure function: the encoder's only decision).

    The first step chooses between embedding now (`<|emb|>`) and starting a CoT with the best other token;
    ending the turn (a stop token) is not an option. `<|emb|>` wins when margin + routing_bias > 0. Then the
    reasoning mode overrides: "never" (or a style that cannot reason) is direct, "always" reasons. `top` next
    tokens are recorded for display (0 for none).
    """
    import torch

    check_reasoning(reasoning)
    routing_bias = check_routing_bias(routing_bias)
    logits = logits.detach().float().cpu()
    vocab = int(logits.shape[0])
    probs = torch.softmax(logits, dim=-1)

    def score(token_id: int, rank: int | None = None) -> TokenScore:
        rank = _rank(logits, token_id) if rank is None else rank
        return TokenScore(rank, token_id, float(probs[token_id]), float(logits[token_id]))

    others = logits.clone()
    others[[emb_token_id, *stop_token_ids]] = -torch.inf
    best = score(int(others.argmax()))  # argmax: the lowest id among equal logits
    margin = float(logits[emb_token_id] - others[best.token_id])
    direct = bool(prefers_direct(margin, routing_bias))
    if reasoning == "never" or not can_reason:
        route: Route = "direct"
    elif reasoning == "always":
        route = "reason"
    else:
        route = "direct" if direct else "reason"
    n = min(max(int(top), 0), vocab)
    values, ids = torch.topk(logits, n) if n else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    order = [t for _, t in sorted(zip(values.tolist(), ids.tolist(), strict=True), key=lambda x: (-x[0], x[1]))]
    return FirstStep(
        top=tuple(score(t, r) for r, t in enumerate(order, start=1)), vocab_size=vocab,
        emb_token_id=emb_token_id, emb_rank=_rank(logits, emb_token_id), p_emb=float(probs[emb_token_id]),
        emb_logit=float(logits[emb_token_id]), best_other=best, margin=margin, routing_bias=routing_bias,
        reasoning=reasoning, can_reason=can_reason, prefers_direct=direct, route=route,
    )
