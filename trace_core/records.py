"""Typed inputs and outputs of the encoder.

A `Query` may reason; a `Candidate` never does. `QueryResult` is what one query produced: the route it took,
how sure the model was at the first step, the chain of thought, and the embedding. Images are accepted as
PIL images or file paths and are checked here once (readable, not absurdly large) so every backbone gets
clean RGB images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

Route = Literal["direct", "reason"]
ReasoningMode = Literal["auto", "always", "never"]
StopReason = Literal["direct", "emb", "max_tokens", "eos"]

# Decoding a 20000 x 20000 RGB image takes 1.2 GB; anything beyond this is refused before decoding.
MAX_IMAGE_PIXELS = 64_000_000
# Images are downscaled by every backbone anyway; keep the working copy small.
MAX_IMAGE_SIDE = 2048


class InputError(ValueError):
    """A query or candidate the encoder cannot use; the message is meant for the person who gave it."""


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
class QueryResult:
    qid: str  # the query's id
    route: Route  # "direct": embedded at the first step; "reason": wrote a chain of thought first
    p_emb: float  # probability of <|emb|> at the first decoding step (before any routing bias)
    emb_margin: float  # first-step logit of <|emb|> minus the best other (non-stop) logit: the route is
    # direct exactly when emb_margin + routing_bias > 0, so a bias sweep can be replayed from one run
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

    @property
    def truncated(self) -> bool:
        """True when the model did not end its reasoning itself and <|emb|> was forced."""
        return self.stop_reason in ("max_tokens", "eos")


@dataclass(frozen=True)
class CotDelta:
    """A piece of chain-of-thought text, yielded by `stream_query` as it is generated."""

    text: str  # new text since the previous delta
    n_tokens: int  # tokens generated so far
