"""How the app names and describes things, in plain words, for every tab (no Gradio here).

One place for the sentences more than one tab shows: what a candidate is (its text, or "image" and its file
name when it has no text), what the route badge means when the reasoning mode was forced or a routing bias was
set (P(<|emb|>) before and after it), the warning for a chain of thought that ran into the token cap, a
ranking as table rows, and how a chain of thought edited by hand moved the gold (Search and Walkthrough).
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from trace_core.records import QueryResult
from trace_core.routing import p_emb_with_bias

if TYPE_CHECKING:  # usecases imports this module: its records are named here for the type checker only
    from .usecases import CotEdit, Hit

NAME_CHARS = 90  # a candidate's name in a caption or a table cell is cut after this many characters
# A query image box (gr.Image) keeps the image as it is: lossless PNG (not Gradio's default lossy WebP) and its own
# mode (RGBA stays RGBA), so that `trace_core.records.load_image` puts transparent pixels on white exactly as the
# evaluation did. A plain convert("RGB") would turn an emoji's transparent background black, and WebP would change
# its pixels: the same benchmark query would then land elsewhere than in the evaluation.
QUERY_IMAGE = {"image_mode": None, "format": "png"}


def candidate_name(text: str | None, image: str | None, limit: int | None = NAME_CHARS,
                   shows: str | None = None) -> str:
    """What a candidate is, for a caption or a table cell: its text, else "image · <what it shows>" when the
    data names the image (`shows`, see `services.image_names`), else "image · <file name>"."""
    text = " ".join((text or "").split())
    if not text and image:
        text = "image · " + (" ".join((shows or "").split()) or os.path.basename(image))
    if text:
        return text if limit is None or len(text) <= limit else text[: limit - 1].rstrip() + "…"
    return "(no text, no image)"


def own_choice(result: QueryResult) -> str:
    """The route the model itself would have taken at the first step ("direct" or "reason")."""
    step = result.first_step
    if step is not None:
        return "direct" if step.prefers_direct else "reason"
    return "direct" if result.emb_margin + result.routing_bias > 0 else "reason"


def p_emb_words(result: QueryResult) -> str:
    """P(<|emb|> first), and with a routing bias what it becomes once the bias is added to the <|emb|> logit:
    "P(<|emb|> first) = 0.12 → 0.47 with bias +2.0"."""
    p = f"P(<|emb|> first) = {result.p_emb:.2f}"
    bias = result.routing_bias
    if not bias:
        return p
    shown = f"{bias:+.1f}" if round(bias, 1) == bias else f"{bias:+g}"  # +2.0 from the slider; +0.05 kept
    return f"{p} → {p_emb_with_bias(result.p_emb, bias):.2f} with bias {shown}"


def route_words(result: QueryResult) -> str:
    """The route badge in words. A forced mode says what the model itself would have done, so that
    "reasoned" next to P(<|emb|> first) = 1.00 does not read as a contradiction; in mode auto, a routing bias
    that changed the route is named as the reason."""
    p = p_emb_words(result)
    step = result.first_step
    if step is not None and not step.can_reason:
        return f"direct: embedded at once (this model never reasons) · {p}"
    if result.reasoning == "auto":
        # a bias that changed the route: the unbiased rule (margin > 0) would have gone the other way
        tipped = bool(result.routing_bias) and (result.emb_margin > 0) != (result.route == "direct")
        if result.route == "direct":
            if tipped:
                return ("direct: embedded at once because of your routing bias (the model alone would have "
                        f"reasoned) · {p}")
            return f"direct: the model chose to embed at once · {p}"
        if tipped:
            return ("reasoned: thought first because of your routing bias (the model alone would have embedded "
                    f"at once) · {p}")
        return f"reasoned: the model chose to think before embedding · {p}"
    own = own_choice(result)
    if result.reasoning == "always":
        head = "reasoned before embedding, because you forced reasoning (always)"
        own_words = ("the model itself would have embedded at once" if own == "direct"
                     else "the model itself would have reasoned too")
    else:
        head = "direct: embedded at once, because you turned reasoning off (never)"
        own_words = ("the model itself would have reasoned first" if own == "reason"
                     else "the model itself would have embedded at once too")
    if result.routing_bias:
        own_words += " with your routing bias"
    return f"{head} · {own_words} ({p})"


def cap_warning(result: QueryResult, cap: int | None = None) -> str:
    """One sentence when the chain of thought did not end by itself (token cap or end of sequence), else ""."""
    if result.stop_reason == "max_tokens":
        limit = f"the {cap}-token cap" if cap else "the token cap"
        guard = ("" if result.no_repeat_ngram else
                 " It may have been looping; the repetition guard can stop that.")
        return (f"The chain of thought ran into {limit} without ending by itself: it is cut off there and "
                f"<|emb|> was forced.{guard}")
    if result.stop_reason == "eos":
        return "The model tried to stop before writing <|emb|>: its chain of thought ends there and <|emb|> was forced."
    return ""


def cap_warning_html(result: QueryResult, cap: int | None = None) -> str:
    note = cap_warning(result, cap)
    return f"<div class='cap-warning'>⚠ {html.escape(note)}</div>" if note else ""


STOP_NOTES = {  # a stored stop reason (the evaluation tables) in a few words, for a CoT shown from a table
    "max_tokens": "cut off at the token cap: <|emb|> was forced",
    "eos": "the model tried to stop before <|emb|>: <|emb|> was forced",
}


def example_cell(text: str | None, image: str | None) -> str:
    """An example query as HTML (an examples table's "html" cell, never cut): a thumbnail of its image (an
    absolute path under a static folder of the app), then its text."""
    parts = []
    if image:
        parts.append(f'<img src="gradio_api/file={html.escape(image)}" alt="{html.escape(os.path.basename(image))}" '
                     'class="example-thumb">')
    if text:
        parts.append(f"<span>{html.escape(text)}</span>")
    return " ".join(parts) or "(empty)"


def example_samples(examples: Sequence, image_path: Callable[[str], str | None]) -> list[list[str]]:
    """The rows of an examples table: the query (thumbnail and text) and how the model did on it.
    `examples` are `first_visit.Example`s; `image_path` turns a data-relative path into an absolute one."""
    return [[example_cell(e.text, image_path(e.image) if e.image else None), e.result] for e in examples]


# ------------------------------------------------------------------------------------------ rankings
HIT_HEADERS = ["rank", "score", "gold", "candidate", "id"]


def hits_table(hits: Sequence[Hit]) -> list[list]:
    """A ranking as table rows (`HIT_HEADERS`): rank, cosine, ✓ for a gold candidate, what it is, its id."""
    return [[h.rank, round(h.score, 4), "✓" if h.gold else "", h.name, h.did] for h in hits]


def cot_edit_markdown(e: CotEdit, before: str = "search") -> str:
    """How the edited chain of thought moved the query: the gold's rank before and after for a benchmark query,
    else how many of the top-k stayed. `before`: what ranked the query first ("search", "walkthrough")."""
    how = "with the edited CoT" if e.after.result.cot else "with a blank CoT (embedded at once)"
    stayed = f"**{e.kept}/{e.k}** of the {before}'s top-{e.k} stayed in the top-{e.k}"
    if e.gold_before is None or e.gold_after is None:
        return f"Free query: there is no gold to compare. {stayed} {how}."
    b, a = e.gold_before, e.gold_after
    word = "up" if a < b else ("down" if a > b else "unchanged")
    return f"Gold rank **{b} → {a}** {how} ({word}); {stayed}."


BEFORE_AFTER_HEADERS = ["rank", "with the model's own thought", "with your thought"]


def before_after_rows(e: CotEdit) -> list[list]:
    """The top-k before and after the edit side by side, one row per rank: "✓" marks a gold candidate, "new"
    one that was not in the top-k before."""
    before = {h.did for h in e.before.hits}

    def cell(h: Hit | None, mark_new: bool) -> str:
        if h is None:
            return ""
        new = " (new)" if mark_new and h.did not in before else ""
        return f"{'✓ ' if h.gold else ''}{h.caption} ({h.score:.3f}){new}"

    n = max(len(e.before.hits), len(e.after.hits))
    return [[r + 1, cell(e.before.hits[r] if r < len(e.before.hits) else None, False),
             cell(e.after.hits[r] if r < len(e.after.hits) else None, True)] for r in range(n)]


def borrowed_words(qid: str, query: str) -> str:
    """Where a borrowed chain of thought comes from ("Another query's CoT"), in one sentence."""
    return f"The chain of thought the model wrote for query {qid} ({query[:80]}) in the evaluation."
