"""The Walkthrough's words, token strips and figure: one query's five steps rendered for a class.

1. the prompt the model reads and its tokens; 2. the first-step decision (embed now or think first);
3. the chain of thought; 4. which hidden state becomes the embedding; 5. the closest candidates.
Everything comes from `usecases.stream_explanation` (`trace_core.explain`, the encoder's own code paths, and the
task's index); this module turns it into Markdown, HTML and a plotly figure with the table it is drawn from.
No Gradio here: `walkthrough_tab.py` wires these to components.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from trace_core.explain import IMAGE_TOKENS, PromptStep, Walkthrough
from trace_core.records import CotDelta
from trace_core.routing import p_emb_with_bias

from .display import hits_table
from .services import Services, Task
from .usecases import Explained, SearchResult, stream_explanation

TOP = 10  # next tokens shown at the first step
STRIP_CAP = 160  # token spans shown in a strip; the middle of a longer sequence is hidden
RUN_COLLAPSE = 4  # a run of this many identical tokens (image patches) is shown as one span "×n"
EMB_COLOUR = "#1d4ed8"  # the <|emb|> bar: the direct route (the search tab's blue)
WORD_COLOUR = "#f59e0b"  # an ordinary token: it would start a chain of thought
STOP_COLOUR = "#9ca3af"  # end-of-sequence tokens: not allowed at the first step

# Scoped to each token-strip component (gr.HTML css_template), so assets/app.css needs nothing for it.
STRIP_CSS = """
.wt-strip { display: flex; flex-wrap: wrap; gap: 3px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
  font-size: 13px; line-height: 1.15; }
.wt-tok { display: inline-flex; flex-direction: column; align-items: center; padding: 2px 5px; border-radius: 4px;
  background: #f3f4f6; border: 1px solid #d1d5db; color: #111827; white-space: pre; }
.wt-idx { font-size: 9px; color: #6b7280; }
.wt-special { background: #ede9fe; border-color: #c4b5fd; }
.wt-image { background: #dcfce7; border-color: #86efac; }
.wt-cot { background: #fef3c7; border-color: #fcd34d; }
.wt-emb { background: #dbeafe; border-color: #93c5fd; font-weight: 600; }
.wt-pooled { outline: 3px solid #dc2626; outline-offset: 1px; }
.wt-gap { background: transparent; border: 1px dashed #9ca3af; color: #6b7280; font-style: italic; }
.wt-note { font-size: 12px; color: #6b7280; margin-top: 4px; }
"""


@dataclass
class WalkthroughView:
    """What the tab shows for one query: one field per output component, in `outputs()` order."""

    walk: Walkthrough
    search: SearchResult
    prompt_md: str  # step 1
    tokens_html: str
    decision_md: str  # step 2
    figure: go.Figure
    cot_md: str  # step 3
    cot_html: str
    pooling_md: str  # step 4
    pooling_html: str
    ranking_md: str  # step 5
    table: list[list]
    gallery: list[tuple[str, str]]
    frame: pd.DataFrame | None = None  # the first-step figure's data (`decision_frame`), for its CSV

    def outputs(self) -> list:
        return [self.prompt_md, self.tokens_html, self.decision_md, self.figure, self.cot_md, self.cot_html,
                self.pooling_md, self.pooling_html, self.ranking_md, self.table, self.gallery]


# ------------------------------------------------------------------------------------------ tokens
def show_token(token: str) -> str:
    """A token string made readable: byte-level BPE's space / newline / tab marks as visible symbols."""
    return (token.replace("Ġ", "␣").replace("▁", "␣").replace("Ċ", "↵").replace("ĉ", "⇥")
            .replace("\n", "↵").replace("\t", "⇥").replace(" ", "␣"))


def _kind(token: str, emb_token: str) -> str:
    if token == emb_token:
        return "wt-emb"
    if token in IMAGE_TOKENS:
        return "wt-image"
    if token.startswith("<") and token.endswith(">") and len(token) > 2:
        return "wt-special"
    return ""


def token_strip(tokens: Sequence[str], emb_token: str, start: int = 0, pooled: int | None = None,
                cot_from: int | None = None, cap: int = STRIP_CAP) -> str:
    """Tokens as HTML spans with their index; runs of identical image tokens collapsed, long strips cut.

    start: index of tokens[0]; pooled: index to outline; cot_from: first index that is a CoT token.
    """
    groups: list[tuple[int, int, str]] = []  # (first index, last index, token)
    for i, tok in enumerate(tokens, start=start):
        if groups and groups[-1][2] == tok and tok in IMAGE_TOKENS:
            groups[-1] = (groups[-1][0], i, tok)
        else:
            groups.append((i, i, tok))
    spans = []
    for a, b, tok in groups:
        if b - a + 1 < RUN_COLLAPSE and a != b:  # a short run: show each token
            spans.extend((j, j, tok) for j in range(a, b + 1))
        else:
            spans.append((a, b, tok))
    hidden_note = ""
    if len(spans) > cap:
        head, tail = cap // 3, cap - cap // 3
        cut = spans[head:-tail]
        n_hidden = sum(b - a + 1 for a, b, _ in cut)
        spans = [*spans[:head], (-1, n_hidden, ""), *spans[-tail:]]
        hidden_note = f"<div class='wt-note'>{n_hidden} tokens in the middle are hidden.</div>"
    out = []
    for a, b, tok in spans:
        if a < 0:
            out.append(f"<span class='wt-tok wt-gap'>… {b} hidden …<span class='wt-idx'>&nbsp;</span></span>")
            continue
        classes = ["wt-tok", _kind(tok, emb_token)]
        if cot_from is not None and a >= cot_from and tok != emb_token:
            classes.append("wt-cot")
        if pooled is not None and a <= pooled <= b:
            classes.append("wt-pooled")
        label = html.escape(show_token(tok)) + (f" ×{b - a + 1}" if b > a else "")
        idx = f"{a}" if a == b else f"{a}–{b}"
        out.append(f"<span class='{' '.join(c for c in classes if c)}' title='token {idx}'>{label}"
                   f"<span class='wt-idx'>{idx}</span></span>")
    return f"<div class='wt-strip'>{''.join(out)}</div>{hidden_note}"


# ------------------------------------------------------------------------------------------ steps
def _code(text: str) -> str:
    return "```text\n" + text.replace("```", "`\u200b``") + "\n```"


def prompt_markdown(first: PromptStep) -> str:
    """Step 1: the rendered prompt and what it is made of."""
    q = first.query
    parts: list[str | None] = [f"the task instruction (*{html.escape(q.instruction)}*)" if q.instruction else None,
             "your query text" if q.text else None, "your image" if first.n_images else None]
    parts = [p for p in parts if p]
    made_of = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    image_line = ""
    if first.n_images:
        image_line = (f" The image becomes **{first.n_image_tokens} image tokens** (green below): pieces of the "
                      "picture turned into vectors the language model can read like words.")
    return (
        "### Step 1 · What the model reads\n"
        "The model never sees the query alone. It is wrapped in a chat prompt that holds "
        f"{made_of}, and it ends exactly where the assistant's answer would begin, so the next thing the model "
        "writes is its first decision.\n\n"
        f"{_code(first.prompt)}\n\n"
        f"The model reads this as **{first.prompt_length} tokens** (pieces of words, numbered from 0).{image_line} "
        "Special tokens (purple) mark the turns of the chat. ␣ is a space, ↵ a line break."
    )


def code_span(text: str, in_table: bool = False) -> str:
    """Markdown inline code for any token string (backticks inside, pipes in a table cell)."""
    text = text.replace("\n", " ")
    span = f"`` {text} ``" if "`" in text else f"`{text}`"
    return span.replace("|", "\\|") if in_table else span


def decision_words(first: PromptStep) -> str:
    """The first-step decision in one plain sentence."""
    d = first.step  # the encoder's record of the decision
    emb, best = code_span(first.emb_token), code_span(show_token(first.best_other.text))
    score = f"margin + bias = {d.margin + d.routing_bias:+.2f}"
    if not d.can_reason:
        return f"This prompt style never reasons: every query is embedded at once ({score})."
    if d.reasoning == "never":
        return (f"Reasoning is switched off (*never*): the query is embedded at once, whatever the model prefers "
                f"({score}).")
    if d.reasoning == "always":
        return (f"Reasoning is forced (*always*): {emb} is not allowed at the first step, so the model starts its "
                f"chain of thought with {best} ({score}).")
    if d.prefers_direct:
        return f"{emb} wins ({score} > 0): the query is embedded at once."
    return f"{best} beats {emb} ({score} ≤ 0): the model writes a chain of thought before embedding."


def decision_markdown(first: PromptStep) -> str:
    """Step 2: the first-step decision in words and numbers."""
    d = first.step
    emb, emb_t = code_span(first.emb_token), code_span(first.emb_token, in_table=True)
    route = ("**direct**: embed at once" if first.route == "direct"
             else "**reason**: write a chain of thought first")
    emb_place = ("the model's first choice" if d.emb_rank == 1
                 else f"rank {d.emb_rank:,} of {d.vocab_size:,}")
    biased = f" → {p_emb_with_bias(d.p_emb, d.routing_bias):.4f} with the bias" if d.routing_bias else ""
    return (
        "### Step 2 · The first decision: embed now, or think first?\n"
        f"After reading the prompt, the model gives every one of its {d.vocab_size:,} tokens a score (a logit) "
        "and turns the scores into probabilities for the next token. TRACE added one special token, "
        f"{emb}, which means *I am ready to embed*. If {emb} wins, the query is embedded at once (the direct "
        "route). If an ordinary token wins, the model first writes a chain of thought (the reason route), starting "
        "with that token. Ending the answer (grey bars) is not allowed at this step.\n\n"
        f"| | |\n|---|---|\n"
        f"| P({emb_t}) | **{d.p_emb:.4f}** ({emb_place}){biased} |\n"
        f"| best other token | {code_span(show_token(first.best_other.text), in_table=True)} "
        f"(P = {first.best_other.prob:.4f}) |\n"
        f"| margin = logit({emb_t}) − logit(best other) | {d.margin:+.3f} |\n"
        f"| routing bias (added to the logit of {emb_t}) | {d.routing_bias:+.2f} |\n"
        f"| margin + bias | {d.margin + d.routing_bias:+.3f} (direct when > 0) |\n"
        f"| reasoning mode | {d.reasoning} |\n"
        f"| route | {route} |\n\n"
        f"{decision_words(first)}"
    )


FRAME_COLUMNS = ["rank", "token", "probability", "token_id", "kind"]


def decision_frame(first: PromptStep) -> pd.DataFrame:
    """The first step's top next tokens, one row per bar of `decision_figure` (its CSV): rank in the whole
    vocabulary, token text, probability, token id and kind ("emb": embed now, "word": start a chain of thought,
    "stop": end the answer, not allowed at this step). `<|emb|>` is added at the end when not in the top."""
    d = first.step
    rows = [(t.rank, t.text, t.prob, t.token_id, "emb" if t.is_emb else "stop" if t.is_stop else "word")
            for t in first.top]
    if not any(t.is_emb for t in first.top):
        rows.append((d.emb_rank, first.emb_token, d.p_emb, d.emb_token_id, "emb"))
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


KIND_COLOURS = {"emb": EMB_COLOUR, "word": WORD_COLOUR, "stop": STOP_COLOUR}


def decision_figure(first: PromptStep, frame: pd.DataFrame | None = None) -> go.Figure:
    """Bars of the top next-token probabilities (`decision_frame`); `<|emb|>` highlighted."""
    d = first.step
    f = decision_frame(first) if frame is None else frame
    n_top = len(first.top)  # a row after the top ones is <|emb|>, added: named as it is
    labels = [f"{r}. {t if i >= n_top else show_token(t)[:18]}" for i, (r, t) in enumerate(zip(f["rank"], f["token"],
                                                                                              strict=True))]
    probs = [float(p) for p in f["probability"]]
    fig = go.Figure()
    fig.add_bar(x=labels, y=probs, marker_color=[KIND_COLOURS[k] for k in f["kind"]],
                customdata=[int(t) for t in f["token_id"]], text=[f"{p:.3f}" for p in probs],
                textposition="outside", hovertemplate="%{x}<br>P = %{y:.4f}<br>token id %{customdata}<extra></extra>")
    title = f"First step: the next token the model would write (P({first.emb_token}) = {d.p_emb:.3f})"
    top = max(probs, default=1.0)
    fig.update_layout(title=title, yaxis={"title": "probability", "range": [0, min(1.0, top * 1.2 + 1e-6)]},
                      xaxis={"title": "token (blue: embed now · amber: start a chain of thought · grey: stop)",
                             "type": "category"},
                      margin={"t": 50, "b": 10}, showlegend=False)
    return fig


_STOP_WORDS = {
    "direct": "No chain of thought: the model embedded at once.",
    "emb": "The model ended its reasoning itself by writing `{emb}`.",
    "max_tokens": "⚠ **The reasoning ran into the cap of {cap} tokens without ending by itself, so `{emb}` was "
                  "forced and the CoT is cut short.**",
    "eos": "The model tried to end its answer before writing `{emb}`; the reasoning stops there and `{emb}` "
           "is forced.",
}


def quoted(text: str) -> str:
    """Text as a markdown block quote, every line quoted."""
    lines = [html.escape(line) for line in text.strip().splitlines() if line.strip()]
    return "\n".join(f"> {line}" for line in lines) or "> (only whitespace or special tokens)"


def cot_markdown(walk: Walkthrough, cap: int | None = None) -> str:
    """Step 3: the chain of thought (or its absence) and why it stopped."""
    r = walk.result
    emb = walk.first.emb_token
    head = "### Step 3 · The chain of thought\n"
    stop = _STOP_WORDS[r.stop_reason].format(emb=emb, cap=cap or r.cot_tokens)
    if r.route == "direct":
        extra = ""
        if walk.pooling == "emb_token":
            extra = f" This prompt style then feeds `{emb}` once more to read its own vector (step 4)."
        return head + f"{stop}{extra} No token was generated, so the answer costs a single pass over the prompt."
    cot = quoted(r.cot)
    return (
        head + "The model writes greedily, one token at a time, always taking the most likely next token, until it "
        f"writes `{emb}`. Each new token is read back in, so the thought can build on itself.\n\n"
        f"{cot}\n\n"
        f"**{r.cot_tokens} tokens** generated (amber below; the first one is the best ordinary token of step 2). "
        f"{stop} Time for the whole query: {r.latency_s:.2f} s."
    )


def pooling_markdown(walk: Walkthrough) -> str:
    """Step 4: which hidden state becomes the embedding, and what it looks like."""
    emb = walk.first.emb_token
    tok = code_span(show_token(walk.pooled_token))
    if walk.pooling == "emb_token":
        how = (f"This prompt style pools the `{emb}` token itself: `{emb}` is fed to the model once more, and the "
               "vector at that position is kept.")
        if walk.pooled_kind != f"the {emb} token":
            how += f" Here the reasoning was cut before `{emb}`, so the vector of the {walk.pooled_kind} is kept."
    else:
        how = (f"TRACE keeps the vector at the token **just before** `{emb}`: the position whose prediction was "
               f"`{emb}`. The model reads left to right and no position looks ahead, so nothing written later "
               "could change this vector.")
    values = ", ".join(f"{v:+.3f}" for v in walk.embedding_head)
    lines = [
        "### Step 4 · Which hidden state becomes the embedding?",
        "At every position the model computes a vector, its *hidden state*, that sums up everything read so far. "
        + how,
        "",
        f"Here that is **token {walk.pooled_index}** {tok}, the {walk.pooled_kind} "
        f"(outlined in red below).",
        "",
        f"The embedding has **{walk.dim} numbers**. It is scaled to length 1 (L2-normalised), so comparing two "
        f"embeddings is a cosine similarity. Its first values: `[{values}, …]`.",
    ]
    cos = walk.direct_cosine
    if walk.route == "reason" and cos is not None:
        lines += ["", f"Had the model embedded at once, it would have used the vector of the last prompt token "
                      f"instead. Cosine between the two: **{cos:.3f}** (1 = reasoning did not move the embedding)."]
    return "\n".join(lines)


def pooling_strip(walk: Walkthrough, context: int = 12) -> str:
    """The end of the sequence: last prompt tokens, the CoT, then `<|emb|>`; the pooled token outlined."""
    n = walk.prompt_length
    start = max(0, n - context)
    tokens = [*walk.first.tokens[start:], *walk.cot_token_texts, walk.first.emb_token]
    return token_strip(tokens, walk.first.emb_token, start=start, pooled=walk.pooled_index, cot_from=n)


def ranking_markdown(task: Task, res: SearchResult, k: int) -> str:
    """Step 5: how candidates are scored, and where the gold is."""
    r = res.result
    lines = [
        "### Step 5 · Finding the closest candidates",
        f"Every candidate in the pool ({len(task.pool)} items) was embedded once, in advance, without reasoning. "
        "The query's embedding is compared with each of them by cosine similarity: 1 means the same direction, 0 "
        f"unrelated. The {k} highest scores are the results.",
        "",
    ]
    if res.hits:
        lines.append(f"Top-1: *{html.escape(res.hits[0].name)}* (`{res.hits[0].did}`) with score "
                     f"{res.hits[0].score:.3f}.")
    if res.gold:
        d, g, s = res.gold[0]
        name = f"*{html.escape(task.name_of(d))}* " if task.has_candidate(d) else ""
        where = "in the top-k (✓ in the table)" if g <= k else f"outside the top-{k}"
        lines.append(f"This is benchmark query `{r.qid}`: its correct answer {name}(`{d}`) is at rank **{g}** "
                     f"({where}), score {s:.3f}.")
    else:
        lines.append("A free query: there is no known correct answer to mark. Pick an example to see where the "
                     "gold lands.")
    if r.route == "reason" and r.direct_embedding is not None and len(task.index):
        scores, ids = task.index.search(r.direct_embedding, 1)
        alt = f"Without reasoning, top-1 would have been `{ids[0][0]}` ({float(scores[0][0]):.3f})"
        if res.gold:
            d = res.gold[0][0]
            g0, s0 = task.index.rank_of(r.direct_embedding, d)
            alt += f" and the gold would be at rank {int(g0)} ({float(s0):.3f})"
        lines.append(alt + ".")
    return "\n".join(lines)


def ranking_table(res: SearchResult) -> list[list]:
    return hits_table(res.hits)


def ranking_gallery(res: SearchResult) -> list[tuple[str, str]]:
    return [(h.image, f"#{h.rank} · {h.score:.3f}{' · ✓ gold' if h.gold else ''} · {h.caption}")
            for h in res.hits if h.image]



# ------------------------------------------------------------------------------------------ handlers
def stream_walkthrough(services: Services, task_name: str, text, image, instruction, mode: str, bias: float,
                       k: int, qid: str | None = None, top: int = TOP
                       ) -> Iterator[PromptStep | CotDelta | WalkthroughView]:
    """Yield the first step, the CoT as it is generated, then the full view; UserError for bad input."""
    for event in stream_explanation(services, task_name, text, image, instruction, mode, bias, k, qid, top):
        yield render(services, event) if isinstance(event, Explained) else event


def render(services: Services, done: Explained) -> WalkthroughView:
    """All five steps of a finished walkthrough. Its search keeps the query (`walk.query`), so that the
    chain of thought can be edited and the query re-embedded after it (`usecases.edit_cot`)."""
    walk, first = done.walk, done.walk.first
    res = dataclasses.replace(done.search, query=walk.query)
    frame = decision_frame(first)
    return WalkthroughView(
        walk=walk, search=res, frame=frame,
        prompt_md=prompt_markdown(first), tokens_html=token_strip(first.tokens, first.emb_token),
        decision_md=decision_markdown(first), figure=decision_figure(first, frame),
        cot_md=cot_markdown(walk, services.encoder.max_cot_tokens),
        cot_html=(token_strip(walk.cot_token_texts, first.emb_token, start=walk.prompt_length,
                              cot_from=walk.prompt_length) if walk.cot_token_texts else ""),
        pooling_md=pooling_markdown(walk), pooling_html=pooling_strip(walk),
        ranking_md=ranking_markdown(done.task, res, done.k), table=ranking_table(res),
        gallery=ranking_gallery(res),
    )


def walkthrough(services: Services, task_name: str, text, image, instruction, mode: str = "auto", bias: float = 0.0,
                k: int = 10, qid: str | None = None) -> WalkthroughView:
    """The whole walkthrough of one query (what the tab shows once the model is done)."""
    *_, last = stream_walkthrough(services, task_name, text, image, instruction, mode, bias, k, qid)
    return last

