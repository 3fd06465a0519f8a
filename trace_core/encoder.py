"""The TRACE encoder: route, reason if needed, and embed the pre-token.

For a batch of queries (TRACE, arXiv 2603.02929, Sec. 3):
1. One prefill over the left-padded prompts gives, at the last prompt position, the hidden state h0 [B, H] and
   the next-token logits [B, V].
2. Routing is implicit: a query is *direct* when `<|emb|>` wins the first step, i.e. when its logit beats the
   best other non-stop token after an optional bias on the `<|emb|>` logit (`decide_route`, the one place
   the decision is made). Its embedding is h0 itself: the hidden state of the token just before `<|emb|>`.
   Routing and embedding come out of the same forward pass.
3. The other queries continue, alone, with greedy decoding on the KV cache until each emits `<|emb|>`; the
   embedding is the hidden state of the last CoT token (whose greedy successor is `<|emb|>`). A row that
   reaches the token cap or an end-of-sequence token gets `<|emb|>` forced and is marked truncated.
4. Embeddings are L2-normalised float32.
Candidates never reason: one forward pass each, pooled at the last prompt position.

`reasoning="always"` masks `<|emb|>` at the first step; `"never"` takes the direct route for every query;
`routing_bias` shifts the decision, which traces the cost-benefit curve between the two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .backbones.base import Backbone, RenderedPrompt
from .interface import CotStream, Encoder, EncoderConfig, batches  # noqa: F401 - re-exported
from .prompts import query_prefix, render_candidate, render_query
from .records import (
    Candidate,
    CotDelta,
    FirstStep,
    InputError,
    Query,
    QueryResult,
    ReasoningMode,
    check_no_repeat_ngram,
    check_reasoning,
    check_routing_bias,
    load_image,
)
from .routing import decide_route, p_emb_with_bias, prefers_direct  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


@dataclass
class _Event:
    kind: str  # "first": row's `first` step decided; "token": row generated `token`; "done": row finished
    row: int
    token: int = -1
    result: QueryResult | None = None
    first: FirstStep | None = None


def repeated_ngram_tokens(toks: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete, after `toks`, an n-gram that `toks` already contains."""
    if n < 1 or len(toks) < n:
        return set()
    prefix = tuple(toks[len(toks) - n + 1 :]) if n > 1 else ()
    return {toks[k + n - 1] for k in range(len(toks) - n + 1) if tuple(toks[k : k + n - 1]) == prefix}


def _greedy(logits: torch.Tensor, toks: list[int], no_repeat_ngram: int, best: int | None = None) -> int:
    """The next CoT token: the argmax, except a token that would repeat an n-gram already in the CoT when the
    repetition guard is on (`<|emb|>` and stop tokens never enter a CoT, so they are never blocked). `best`: the
    argmax, when the backbone's step computed it."""
    blocked = repeated_ngram_tokens(toks, no_repeat_ngram) if no_repeat_ngram else set()
    if best is not None and best not in blocked:
        return best
    if blocked:
        logits = logits.clone()
        logits[torch.tensor(sorted(blocked))] = float("-inf")
    return int(logits.argmax())


def _per_row(value, n: int, name: str) -> list:
    """One setting per query: a str, number or None is shared by the batch; a sequence must have n items."""
    if value is None or isinstance(value, (str, int, float)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise InputError(f"{name}: {len(values)} values for {n} queries")
    return values


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


class TraceEncoder:
    """Encodes queries (which may reason) and candidates (which never do) with one backbone."""

    def __init__(self, backbone: Backbone, config: EncoderConfig = EncoderConfig()):
        self.backbone = backbone
        self.config = config
        self.style = backbone.style
        self.max_cot_tokens = config.max_cot_tokens or self.style.max_cot_tokens

    @property
    def fingerprint(self) -> dict:
        """What identifies the embeddings this encoder produces (for manifests and exports)."""
        return {
            "model_id": self.backbone.model_id,
            "revision": self.backbone.revision,
            "style": self.style.name,
            "prompt_hash": self.style.hash(),
            "candidate_prompt_hash": self.style.candidate_hash(),
            "dim": self.backbone.hidden_size,
        }

    # ------------------------------------------------------------------ prompts
    def render_query(self, query: Query) -> RenderedPrompt:
        image = load_image(query.image)
        text = render_query(self.style, query, self.backbone.image_placeholder)
        prefix = query_prefix(self.style, query) if self.config.share_prefixes else ""
        return RenderedPrompt(text, [image] if image is not None else [], prefix)

    def render_candidate(self, candidate: Candidate) -> RenderedPrompt:
        image = load_image(candidate.image)
        text = render_candidate(self.style, candidate, self.backbone.image_placeholder)
        return RenderedPrompt(text, [image] if image is not None else [])

    # ------------------------------------------------------------------ queries
    def encode_queries(
        self,
        queries: Sequence[Query],
        reasoning: ReasoningMode = "auto",
        routing_bias: float = 0.0,
        batch_size: int | None = None,
        progress: bool = False,
        no_repeat_ngram: int | None = None,
    ) -> list[QueryResult]:
        """Encode queries; each result carries its route, CoT, embedding [D] and latency. `no_repeat_ngram`
        overrides the config's repetition guard for this call."""
        results: list[QueryResult] = []
        for chunk in batches(queries, batch_size or self.config.query_batch_size, "queries", progress):
            done: dict[int, QueryResult] = {}
            for ev in self._run(chunk, reasoning, routing_bias, no_repeat_ngram=no_repeat_ngram):
                if ev.kind == "done":
                    done[ev.row] = ev.result
            results.extend(done[i] for i in range(len(chunk)))
        return results

    def stream_query(
        self, query: Query, reasoning: ReasoningMode = "auto", routing_bias: float = 0.0, *,
        first_step: bool = False, top_tokens: int | None = None, no_repeat_ngram: int | None = None,
    ) -> Iterator[FirstStep | CotDelta | QueryResult]:
        """Yield the CoT as `CotDelta`s while it is generated, then the `QueryResult`.

        With `first_step=True` the query's `FirstStep` (the routing decision, with its `top_tokens` most likely
        next tokens) comes first, as soon as the prefill is done.
        """
        deltas = CotStream(self.backbone.decode)
        for ev in self._run([query], reasoning, routing_bias, top_tokens, no_repeat_ngram):
            if ev.kind == "first":
                if first_step:
                    yield ev.first
            else:
                yield from deltas.feed(ev)

    def _run(self, queries: list[Query], reasoning: ReasoningMode | Sequence[ReasoningMode],
             bias: float | Sequence[float], top_tokens: int | None = None,
             no_repeat_ngram: int | None | Sequence[int | None] = None,
             prompts: Sequence[RenderedPrompt] | None = None) -> Iterator[_Event]:
        """The TRACE decoding loop for one batch; yields first steps, generated tokens and finished results.

        `reasoning`, `bias` and `no_repeat_ngram` are one value for the whole batch or one per query: queries of
        different visitors, each with its own settings, share one prefill and one batched decode
        (`trace_core.batcher`). `prompts`: the queries' rendered prompts when the caller has them already."""
        n = len(queries)
        modes = [check_reasoning(m) for m in _per_row(reasoning, n, "reasoning")]
        biases = [check_routing_bias(b) for b in _per_row(bias, n, "routing_bias")]
        guards = [check_no_repeat_ngram(self.config.no_repeat_ngram if g is None else g)
                  for g in _per_row(no_repeat_ngram, n, "no_repeat_ngram")]
        bb, emb = self.backbone, self.backbone.emb_token_id
        top = self.config.top_tokens if top_tokens is None else top_tokens
        t0 = time.perf_counter()
        prompts = list(prompts) if prompts is not None else [self.render_query(q) for q in queries]
        out = bb.prefill(prompts, with_logits=True)  # hidden [B, H], logits [B, V]
        steps = [decide_route(row, emb, bb.stop_token_ids, modes[i], biases[i], self.style.can_reason, top)
                 for i, row in enumerate(out.logits.float().cpu())]
        for i, step in enumerate(steps):
            yield _Event("first", i, first=step)
        direct = torch.tensor([s.route == "direct" for s in steps])  # [B]
        direct_emb = _normalise(out.hidden)  # [B, D] the direct route's embedding of every query

        def result(i: int, hidden: torch.Tensor, toks: list[int], stop: str) -> QueryResult:
            return QueryResult(
                qid=queries[i].qid,
                route=steps[i].route,
                p_emb=steps[i].p_emb,
                emb_margin=steps[i].margin,
                cot=bb.decode(toks) if toks else "",
                cot_tokens=len(toks),
                cot_token_ids=tuple(toks),
                stop_reason=stop,
                embedding=_normalise(hidden[None])[0],  # hidden: [H]
                direct_embedding=direct_emb[i],
                latency_s=time.perf_counter() - t0,
                reasoning=modes[i],
                routing_bias=biases[i],
                first_step=steps[i],
                no_repeat_ngram=guards[i],
            )

        pool_emb_token = self.style.pooling == "emb_token"
        if not pool_emb_token:
            for i in torch.nonzero(direct).flatten().tolist():
                yield _Event("done", i, result=result(i, out.hidden[i], [], "direct"))

        # Rows that go on decoding. `rows[j]` is the query index of batch row j of the decoding state.
        cont = torch.arange(len(queries)) if pool_emb_token else torch.nonzero(~direct).flatten()
        if len(cont) == 0:
            return
        state = out.state if len(cont) == len(queries) else bb.select(out.state, cont)
        hidden, logits, best = out.hidden[cont], None, None
        rows = cont.tolist()
        toks: dict[int, list[int]] = {i: [] for i in rows}
        # Rows whose embedding is the hidden state of one more fed token: capped rows (their last CoT token)
        # and emb_token pooling (the <emb> token itself). Maps query index -> stop reason.
        pending: dict[int, str] = {}
        first_step = True
        while rows:
            feed: list[int] = []
            keep: list[int] = []  # batch positions that are fed another token
            for j, i in enumerate(rows):
                if i in pending:  # its final token was fed at the previous step
                    yield _Event("done", i, result=result(i, hidden[j], toks[i], pending.pop(i)))
                    continue
                # The first token is the decision's (`<|emb|>` or the CoT's first token); then greedy decoding.
                nxt = steps[i].first_token if first_step else \
                    _greedy(logits[j], toks[i], guards[i], None if best is None else int(best[j]))
                if nxt == emb:
                    if pool_emb_token:
                        pending[i] = "direct" if first_step else "emb"
                        feed.append(emb)
                        keep.append(j)
                    else:
                        yield _Event("done", i, result=result(i, hidden[j], toks[i], "emb"))
                elif nxt in bb.stop_token_ids:
                    yield _Event("done", i, result=result(i, hidden[j], toks[i], "eos"))
                else:
                    toks[i].append(nxt)
                    yield _Event("token", i, token=nxt)
                    if len(toks[i]) >= self.max_cot_tokens:
                        pending[i] = "max_tokens"  # feed this token; its hidden state is the pre-token
                    feed.append(nxt)
                    keep.append(j)
            first_step = False
            if not keep:
                return
            if len(keep) < len(rows):
                state = bb.select(state, torch.tensor(keep))
            rows = [rows[j] for j in keep]
            step = bb.step(state, torch.tensor(feed))
            state, hidden, logits, best = step.state, step.hidden, step.logits, step.best

    @torch.inference_mode()
    def encode_with_cot(
        self, queries: Sequence[Query], cots: Sequence[str | Sequence[int]], batch_size: int | None = None
    ) -> list[QueryResult]:
        """Embed each query as if the model had written `cots[i]` as its chain of thought (teacher forcing).

        For oracle analyses (does the content of the CoT matter?): the query's prompt is rendered exactly as
        `encode_queries` renders it, the given CoT follows the assistant prefix, and the embedding is the
        normalised last-layer hidden state of the last CoT token, the pre-token before `<|emb|>` (for
        `emb_token` pooling, `<|emb|>` is fed once more and its own state is pooled, as in decoding).

        - A CoT given as text is appended to the prompt text and the batch runs as one forward pass
          (`backbone.prefill` on the extended prompts). At the boundary this tokenises as the training code
          tokenises a teacher CoT (`tokenizer(cot)` after the prompt): the prompt ends in a newline, which
          BPE pre-tokenisation never merges with the following word.
        - A CoT given as token ids (e.g. `QueryResult.cot_token_ids`) is fed token by token on the KV cache,
          exactly as decoding fed it: this reproduces a generated CoT even where the model produced a
          non-canonical tokenisation that its decoded text would not give back.
        - An empty CoT ("" or ()) embeds the end of the prompt: the direct route's embedding, i.e. what
          `reasoning="never"` gives.

        Results carry route "reason" (stop_reason "emb") for a non-empty CoT, else "direct"; p_emb, emb_margin
        and first_step (the first-step routing record) are NaN / None on the text path, which never computes
        the prompt-end logits.
        """
        if len(cots) != len(queries):
            raise InputError(f"got {len(cots)} chains of thought for {len(queries)} queries")
        bb = self.backbone
        emb = bb.emb_token_id
        pool_emb_token = self.style.pooling == "emb_token"
        placeholders = {bb.image_placeholder, "<|image_pad|>"}
        bs = batch_size or self.config.query_batch_size
        tokenizer = getattr(bb, "tokenizer", None)
        results: list[QueryResult | None] = [None] * len(queries)

        def finish(i: int, hidden: torch.Tensor, cot: str, ids: tuple[int, ...], t0: float,
                   first: FirstStep | None = None, direct=None) -> None:
            results[i] = QueryResult(
                qid=queries[i].qid, route="reason" if cot or ids else "direct",
                p_emb=first.p_emb if first else float("nan"), emb_margin=first.margin if first else float("nan"),
                cot=cot, cot_tokens=len(ids), cot_token_ids=ids,
                stop_reason="emb" if cot or ids else "direct", embedding=_normalise(hidden[None])[0],
                direct_embedding=direct, latency_s=time.perf_counter() - t0,
                reasoning="always" if cot or ids else "never", first_step=first,
            )

        text_rows = [i for i, c in enumerate(cots) if isinstance(c, str)]
        id_rows = [i for i, c in enumerate(cots) if not isinstance(c, str)]
        # Text CoTs: one forward pass over prompt + CoT per batch.
        for start in range(0, len(text_rows), bs):
            rows = text_rows[start : start + bs]
            t0 = time.perf_counter()
            prompts = []
            for i in rows:
                if any(p and p in cots[i] for p in placeholders):
                    raise InputError(f"the chain of thought of query {queries[i].qid or i} holds an image "
                                     "placeholder")
                p = self.render_query(queries[i])
                prompts.append(RenderedPrompt(p.text + cots[i], p.images))
            out = bb.prefill(prompts, with_logits=pool_emb_token)
            hidden = out.hidden
            if pool_emb_token:
                hidden = bb.step(out.state, torch.full((len(rows),), emb)).hidden
            for j, i in enumerate(rows):
                ids = tuple(tokenizer(cots[i], add_special_tokens=False)["input_ids"]) if tokenizer and cots[i] \
                    else ()
                finish(i, hidden[j], cots[i], ids, t0)
        # Token-id CoTs: prefill the prompts, then feed each row's ids on the KV cache.
        for start in range(0, len(id_rows), bs):
            rows = id_rows[start : start + bs]
            t0 = time.perf_counter()
            feeds = {i: [int(t) for t in cots[i]] + ([emb] if pool_emb_token else []) for i in rows}
            out = bb.prefill([self.render_query(queries[i]) for i in rows], with_logits=True)
            direct = _normalise(out.hidden)
            modes = ["always" if len(cots[i]) else "never" for i in rows]
            first = {i: (decide_route(out.logits[j], emb, bb.stop_token_ids, modes[j], 0.0,
                                      self.style.can_reason, self.config.top_tokens), direct[j])
                     for j, i in enumerate(rows)}
            state, hidden, live, t = out.state, out.hidden, list(rows), 0
            while live:
                done = [j for j, i in enumerate(live) if len(feeds[i]) == t]
                for j in done:
                    i = live[j]
                    finish(i, hidden[j], bb.decode(list(cots[i])), tuple(int(x) for x in cots[i]), t0, *first[i])
                keep = [j for j, i in enumerate(live) if len(feeds[i]) > t]
                if not keep:
                    break
                if len(keep) < len(live):
                    state = bb.select(state, torch.tensor(keep))
                live = [live[j] for j in keep]
                step = bb.step(state, torch.tensor([feeds[i][t] for i in live]))
                state, hidden, t = step.state, step.hidden, t + 1
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ candidates
    @torch.inference_mode()
    def encode_candidates(
        self, candidates: Sequence[Candidate], batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """Embed candidates [N, D]: forced `<|emb|>`, one forward pass, no generation."""
        bs = batch_size or self.config.candidate_batch_size
        n = len(candidates)
        out = np.zeros((n, self.backbone.hidden_size), dtype=np.float32)
        # Sort by size so a batch pads little; results go back to their original rows.
        order = sorted(range(n), key=lambda i: (candidates[i].image is not None, len(candidates[i].text or "")))
        for idx in batches(order, bs, "candidates", progress):
            prompts = [self.render_candidate(candidates[i]) for i in idx]
            res = self.backbone.prefill(prompts, with_logits=self.style.pooling == "emb_token")
            hidden = res.hidden
            if self.style.pooling == "emb_token":  # pool the <emb> token itself: feed it once
                hidden = self.backbone.step(res.state, torch.full((len(idx),), self.backbone.emb_token_id)).hidden
            out[idx] = _normalise(hidden)
        return out
