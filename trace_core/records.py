"""Typed inputs and outputs of the encoder, and the checks on what a caller passes in.

A `Query` may reason; a `Candidate` never does. `FirstStep` is the encoder's record of the first decoding step
(the top next tokens, P(`<|emb|>`), the margin and the route it decided); `QueryResult` is what one query
produced: that first step, the chain of thought, and the embedding. Images are accepted as PIL images or file
paths and are checked here once (readable, not absurdly large) so every backbone gets clean RGB images. The
argument checks (`check_reasoning`, `check_routing_bias`, `check_k`) are the one place each rule and its
message live; the encoder, the index, the metrics, the analysis and the app all call them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
from PIL import Image, UnidentifiedImageError

Route = Literal["direct", "reason"]
ReasoningMode = Literal["auto", "always", "never"]
# "auto": the model decides at the first step; "always": `<|emb|>` is masked there; "never": direct for all.
REASONING_MODES: tuple[ReasoningMode, ...] = get_args(ReasoningMode)
StopReason = Literal["direct", "emb", "max_tokens", "eos"]
Precision = Literal["fp32", "int8"]
# TRACE-mini's serving precision: "int8" holds every weight of its LM in int8 (`backbones/weight_int8.py`).
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


def precision_revision(revision: str, precision: str) -> str:
    """The fingerprint of weights served at `precision`: int8 moves every embedding a little, so caches of
    float32 embeddings (indexes, the map) must not be taken for int8 ones, nor the other way round."""
    return revision if precision == "fp32" else f"{revision}-{precision}"

# Decoding a 20000 x 20000 RGB image takes 1.2 GB; anything beyond this is refused before decoding.
MAX_IMAGE_PIXELS = 64_000_000
# Images are downscaled by every backbone anyway; keep the working copy small.
MAX_IMAGE_SIDE = 2048


class InputError(ValueError):
    """A query or candidate the encoder cannot use; the message is meant for the person who gave it."""


def check_reasoning(mode: object) -> ReasoningMode:
    """The reasoning mode, or InputError naming the allowed ones."""
    if mode not in REASONING_MODES:
        raise InputError(f"reasoning must be one of {', '.join(REASONING_MODES)}; got {mode!r}.")
    return mode  # type: ignore[return-value]


def check_routing_bias(bias: object) -> float:
    """The routing bias as a float, or InputError when it is not a finite number."""
    try:
        value = float(bias)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if isinstance(bias, bool) or not math.isfinite(value):
        raise InputError(f"routing_bias must be a finite number; got {bias!r}.")
    return value


MAX_NO_REPEAT_NGRAM = 8


def _whole_number(x: object) -> int | None:
    """`x` as an int when it holds a whole number (UI sliders and API calls send 10.0 or "7"), else None;
    booleans are not numbers here."""
    if isinstance(x, bool):
        return None
    try:
        number = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if not number.is_integer():
        return None
    return x if isinstance(x, int) else int(number)


def check_no_repeat_ngram(n: object) -> int:
    """The repetition guard's n-gram length: 0 (off) or a whole number from 1 to MAX_NO_REPEAT_NGRAM."""
    value = _whole_number(n)
    if value is None or not 0 <= value <= MAX_NO_REPEAT_NGRAM:
        raise InputError(f"no_repeat_ngram must be 0 (off) or a whole number from 1 to {MAX_NO_REPEAT_NGRAM}; "
                         f"got {n!r}.")
    return value


def check_k(k: object) -> int:
    """`k` of a top-k or a recall@k as an int: a whole number >= 1 (floats and strings holding one are taken)."""
    value = _whole_number(k)
    if value is None or value < 1:
        raise InputError(f"k must be a whole number >= 1; got {k!r}.")
    return value


ImageInput = Image.Image | str | os.PathLike | None


def load_image(image: ImageInput) -> Image.Image | None:
    """Open, validate and convert an image to RGB, downscaled to at most MAX_IMAGE_SIDE on its long side."""
    if image is None:
        return None
    if isinstance(image, Image.Image):
        img = image
    else:
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise InputError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_IMAGE_PIXELS:
                    raise InputError(
                        f"image is too large ({opened.width}x{opened.height} pixels; limit {MAX_IMAGE_PIXELS:,})"
                    )
                opened.load()
                img = opened.copy()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise InputError(f"cannot read image {path}: {exc}") from exc
    if img.width < 1 or img.height < 1:
        raise InputError("image is empty (0 pixels)")
    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise InputError(f"image is too large ({img.width}x{img.height} pixels; limit {MAX_IMAGE_PIXELS:,})")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels (emoji, clip art) go on white, as they are shown; a plain convert would expose
        # whatever colour the transparent pixels happen to store (often black).
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode != "RGB":
        img = img.convert("RGB")
    if max(img.size) > MAX_IMAGE_SIDE:
        img = img.copy()
        img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return img


@dataclass(frozen=True)
class Query:
    text: str | None = None  # the query text (may be None for an image-only query)
    image: ImageInput = None  # PIL image or path (None for a text-only query)
    instruction: str = ""  # the task instruction, e.g. an M-BEIR query instruction
    qid: str = ""  # identifier carried through to the result (M-BEIR qid when from the benchmark)

    def validate(self) -> None:
        has_text = bool(self.text and self.text.strip())
        if not has_text and self.image is None:
            raise InputError("the query is empty: give a text, an image, or both")


@dataclass(frozen=True)
class Candidate:
    text: str | None = None  # candidate text (caption, passage, product description)
    image: ImageInput = None  # PIL image or path
    did: str = ""  # M-BEIR candidate id

    @property
    def modality(self) -> str:
        has_text = bool(self.text and self.text.strip())
        if has_text and self.image is not None:
            return "image,text"
        if self.image is not None:
            return "image"
        if has_text:
            return "text"
        raise InputError(f"candidate {self.did or '(no id)'} has neither text nor image")


@dataclass(frozen=True)
class TokenScore:
    """One candidate for the first generated token."""

    rank: int  # 1 = most likely, over the full vocabulary (ties: lower id first)
    token_id: int
    prob: float  # softmax over the full vocabulary, before any routing bias
    logit: float


@dataclass(frozen=True)
class FirstStep:
    """The first decoding step of one query: the routing decision and what it was made from.

    Made by `trace_core.encoder.decide_route` from the prefill's next-token logits [V]; the encoder yields it
    (`stream_query(..., first_step=True)`) and keeps it in `QueryResult.first_step`, so that the walkthrough
    and the analyses read the decision instead of recomputing it.
    """

    top: tuple[TokenScore, ...]  # the most likely next tokens, descending
    vocab_size: int  # V: the number of logits
    emb_token_id: int
    emb_rank: int  # rank of `<|emb|>` among all V tokens (1 = the model's own first choice)
    p_emb: float  # P(<|emb|>), before any bias
    emb_logit: float
    best_other: TokenScore  # best token neither `<|emb|>` nor a stop: the CoT's first token if it reasons
    margin: float  # emb_logit - best_other.logit
    routing_bias: float  # added to the `<|emb|>` logit
    reasoning: ReasoningMode
    can_reason: bool  # False for prompt styles that never write a CoT
    prefers_direct: bool  # `<|emb|>` wins the biased first step: margin + routing_bias > 0 (a tie reasons)
    route: Route  # the route after the reasoning mode: what the encoder does

    @property
    def first_token(self) -> int:
        """The token the encoder feeds first: `<|emb|>` on the direct route, else the CoT's first token."""
        return self.emb_token_id if self.route == "direct" else self.best_other.token_id


@dataclass(frozen=True)
class QueryResult:
    qid: str  # the query's id
    route: Route  # "direct": embedded at the first step; "reason": wrote a chain of thought first
    p_emb: float  # probability of <|emb|> at the first decoding step (before any routing bias)
    emb_margin: float  # first-step logit of <|emb|> minus the best other (non-stop) logit: the route is
    # direct exactly when emb_margin + routing_bias > 0, so a bias sweep can be replayed from one run
    # (p_emb and emb_margin are `first_step`'s, kept as plain fields for the evaluation tables)
    cot: str  # the chain of thought ("" on the direct route)
    cot_tokens: int  # number of generated CoT tokens
    cot_token_ids: tuple[int, ...]  # the generated CoT token ids (what the pre-token hidden state saw)
    stop_reason: StopReason  # how decoding ended: direct, <|emb|> emitted, token cap, or end-of-sequence
    embedding: np.ndarray = field(repr=False)  # [D] float32, L2-normalised pre-token hidden state
    direct_embedding: np.ndarray | None = field(default=None, repr=False)  # [D] what the direct route would
    # have embedded (the first-step pre-token); free from the same prefill, kept for counterfactual analysis
    latency_s: float = 0.0  # wall time from the start of the query's batch until its embedding was ready
    reasoning: ReasoningMode = "auto"  # the mode it was encoded with
    routing_bias: float = 0.0  # offset that was added to the <|emb|> logit at the first step
    first_step: FirstStep | None = field(default=None, repr=False)  # the decision's record (None for encoders
    # that do not route, and for CoTs given as text to `encode_with_cot`)
    no_repeat_ngram: int = 0  # the repetition guard it was decoded with (0: plain greedy decoding)

    @property
    def truncated(self) -> bool:
        """True when the model did not end its reasoning itself and <|emb|> was forced."""
        return self.stop_reason in ("max_tokens", "eos")


@dataclass(frozen=True)
class CotDelta:
    """A piece of chain-of-thought text, yielded by `stream_query` as it is generated."""

    text: str  # new text since the previous delta
    n_tokens: int  # tokens generated so far
