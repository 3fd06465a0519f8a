"""What the encoder's users need of it without torch: the `Encoder` contract, its config, the stream of a CoT
as a visitor reads it, and batching. `trace_core.encoder` (which imports torch) re-exports them; the app imports
them from here, so that its page is served before torch is imported (about 1.3 s of a warm start).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .records import Candidate, CotDelta, Query, QueryResult, ReasoningMode

if TYPE_CHECKING:
    from .encoder import _Event


@runtime_checkable
class Encoder(Protocol):
    """What the evaluator, the pool embedder and the app need of a model: `TraceEncoder`, or a baseline
    (`trace_core.baselines.BridgeEncoder`) that never reasons. `trace_core.load_model` returns one."""

    @property
    def fingerprint(self) -> dict:
        """What identifies the embeddings (model id, revision, style, prompt hashes, dim): for manifests."""
        ...

    def encode_queries(self, queries: Sequence[Query], reasoning: ReasoningMode = "auto",
                       routing_bias: float = 0.0, batch_size: int | None = None, progress: bool = False,
                       no_repeat_ngram: int | None = None) -> list[QueryResult]:
        """One `QueryResult` per query (route, CoT, embedding [D], latency). `no_repeat_ngram`: the repetition
        guard of CoT decoding for this call (None: the encoder's default)."""
        ...

    def stream_query(self, query: Query, reasoning: ReasoningMode = "auto", routing_bias: float = 0.0, *,
                     no_repeat_ngram: int | None = None) -> Iterator[CotDelta | QueryResult]:
        """The CoT as `CotDelta`s while it is generated, then the `QueryResult`."""
        ...

    def encode_candidates(self, candidates: Sequence[Candidate], batch_size: int | None = None,
                          progress: bool = False) -> np.ndarray:
        """Candidate embeddings [N, D] float32, L2-normalised."""
        ...


@dataclass(frozen=True)
class EncoderConfig:
    query_batch_size: int = 8  # queries per prefill (and per batched CoT decode)
    candidate_batch_size: int = 16  # candidates per forward pass
    max_cot_tokens: int | None = None  # token cap on the CoT; None takes the prompt style's cap
    top_tokens: int = 5  # most likely first-step tokens kept in each `FirstStep` (for display)
    # Repetition guard: greedy decoding never writes an n-gram of this length twice in one CoT (0: off, the
    # paper's plain greedy decoding, which evaluation keeps). A looping CoT ("... van van van") then has to
    # move on instead of running to the token cap. Queries only (candidates never decode), so it is not part of
    # the fingerprint that keys candidate caches; each QueryResult records the value it was decoded with.
    no_repeat_ngram: int = 0
    # Queries of one instruction share the start of their prompt (the template and the instruction: 40-60 % of a
    # text query's tokens). On, a backbone that can (TRACE-mini) keeps the KV cache of each such start and runs a
    # prefill only over the rest. The numbers are those of a whole prefill to float rounding, not bit for bit, so
    # it is off by default (evaluations reproduce exactly) and on in the app, where it cuts what every search waits.
    share_prefixes: bool = False


# How the app serves a model: queries share the KV cache of their prompt's start. Measured on TRACE-mini int8, one
# thread: a text query's prefill 106 -> 87 ms alone, 16 of them in one batch 0.94-1.00 -> 0.58-0.61 s.
SERVING = EncoderConfig(share_prefixes=True)


class CotStream:
    """One query's decoding events as a visitor reads them: `CotDelta`s of new text, then the `QueryResult`."""

    def __init__(self, decode):
        self.decode = decode  # token ids -> text (the backbone's tokenizer)
        self.tokens: list[int] = []
        self.shown = ""

    def feed(self, ev: _Event) -> Iterator[CotDelta | QueryResult]:
        if ev.kind == "token":
            self.tokens.append(ev.token)
            text = self.decode(self.tokens)
            # Byte-level BPE can end mid-character; hold the tail back until it decodes cleanly.
            if text.startswith(self.shown) and not text.endswith("\ufffd") and len(text) > len(self.shown):
                yield CotDelta(text[len(self.shown) :], len(self.tokens))
                self.shown = text
        elif ev.kind == "done":
            final = ev.result
            if final.cot.startswith(self.shown) and len(final.cot) > len(self.shown):
                yield CotDelta(final.cot[len(self.shown) :], final.cot_tokens)
            yield final


def batches(items: Sequence, size: int, unit: str, progress: bool = False) -> Iterator[list]:
    """`items` in consecutive lists of `size`, with a progress bar over them ("encoding <unit>") if asked."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), unit=unit, desc=f"encoding {unit}")
    try:
        for start in range(0, len(items), size):
            chunk = list(items[start : start + size])
            yield chunk
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
