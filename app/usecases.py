"""What a person can do with the app, as plain functions of the services: search, compare, place a query on
the embedding map, explain a query step by step.

No Gradio here. The tabs (`*_tab.py`) build components, wire events to these functions and turn their results
into Markdown, tables and figures; the API endpoints call the same functions; the tests call them directly.
A mistake in the input raises `UserError` with the sentence to show.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

from trace_core.encoder import TraceEncoder
from trace_core.explain import PromptStep, Walkthrough, stream_explain
from trace_core.records import (
    CotDelta,
    InputError,
    Query,
    QueryResult,
    check_k,
    check_reasoning,
    check_routing_bias,
    load_image,
)

from .services import Services, Task, gpu

MAX_QUERY_CHARS = 2000


class UserError(ValueError):
    """A mistake in the query: shown to the person as it is (gr.Error in the UI)."""


def checked(check, value):
    """`value` through one of `trace_core.records`' checks (`check_k`, `check_reasoning`, ...): the one rule and
    message of each; a refusal becomes a UserError."""
    try:
        return check(value)
    except InputError as exc:
        raise UserError(str(exc)) from None


def top_k(k, task: Task) -> int:
    """The top-k of a search: a whole number >= 1 (`check_k`), at most the task's pool size."""
    return min(checked(check_k, k), len(task.pool))


# ------------------------------------------------------------------------------------------ search
@dataclass
class Hit:
    rank: int
    did: str
    score: float
    text: str | None
    image: str | None  # absolute path of the candidate's image
    gold: bool


@dataclass
class SearchResult:
    result: QueryResult
    hits: list[Hit]
    gold: list[tuple[str, int, float]]  # (did, exact rank, score) of every gold candidate, if known
    task: str

    def to_json(self, fingerprint: dict) -> dict:
        r = self.result
        return {
            "model": fingerprint,
            "task": self.task,
            "route": r.route,
            "p_emb": r.p_emb,
            "cot": r.cot,
            "cot_tokens": r.cot_tokens,
            "truncated": r.truncated,
            "latency_s": r.latency_s,
            "reasoning": r.reasoning,
            "hits": [{"rank": h.rank, "did": h.did, "score": h.score, "text": h.text, "gold": h.gold}
                     for h in self.hits],
            "gold": [{"did": d, "rank": k, "score": s} for d, k, s in self.gold],
        }


def make_query(services: Services, task_name: str, text: str | None, image, instruction: str | None,
               qid: str | None = None) -> tuple[Task, Query]:
    """Check the inputs against the task and build the encoder's query; clear messages for mistakes."""
    if not isinstance(task_name, str) or task_name not in services.tasks:
        raise UserError(f"unknown task {task_name!r}")
    task = services.tasks[task_name]
    if text is not None and not isinstance(text, str):
        raise UserError("The query text must be a string.")
    text = (text or "").strip()
    if not text and image is None:
        raise UserError("The query is empty: type a text, upload an image, or both.")
    if image is not None and not task.takes_image:
        raise UserError(f"{task.label} takes a text query; remove the image or pick a task with image queries.")
    if image is None and task.takes_image and not task.takes_text:
        raise UserError(f"{task.label} takes an image query; upload an image.")
    if image is None and task.query_modality == "image,text":
        raise UserError(f"{task.label} takes an image and a text; upload the reference image.")
    if len(text) > MAX_QUERY_CHARS:
        raise UserError(f"The query text is too long (over {MAX_QUERY_CHARS:,} characters).")
    try:
        img = load_image(image) if image is not None else None
    except InputError as exc:
        raise UserError(f"The image cannot be used: {exc}") from exc
    instruction = (instruction or "").strip() or task.instructions[0]
    return task, Query(text=text or None, image=img, instruction=instruction, qid=qid or "")


def rank(services: Services, task: Task, result: QueryResult, k: int, qid: str | None) -> SearchResult:
    """A query embedding's top-k in its task's pool, and the exact rank of every gold candidate."""
    scores, ids = task.index.search(result.embedding, k)
    gold_ids = task.positives.get(qid or "", set())
    hits = []
    for n, (did, score) in enumerate(zip(ids[0], scores[0], strict=True), start=1):
        c = task.candidate(did)
        hits.append(Hit(n, did, float(score), c.text, services.image_path(c.image_path), did in gold_ids))
    [gold] = task.index.positive_ranks(result.embedding[None], [gold_ids])  # every gold's exact rank, best first
    return SearchResult(result, hits, gold, task.name)


@gpu
def stream_search(services: Services, task_name: str, text, image, instruction, mode: str, k: int,
                  qid: str | None = None) -> Iterator[CotDelta | SearchResult]:
    """Yield CoT deltas while the model reasons, then the ranked result."""
    mode = checked(check_reasoning, mode)
    task, query = make_query(services, task_name, text, image, instruction, qid)
    k = top_k(k, task)
    with services.model_lock:
        for event in services.encoder.stream_query(query, reasoning=mode):
            if isinstance(event, CotDelta):
                yield event
            else:
                yield rank(services, task, event, k, qid)


def search(services: Services, task_name: str, text, image, instruction, mode: str, k: int,
           qid: str | None = None) -> SearchResult:
    *_, last = stream_search(services, task_name, text, image, instruction, mode, k, qid)
    return last


# ------------------------------------------------------------------------------------------ compare
@dataclass
class Comparison:
    """The same query with reasoning forced off and on."""

    off: SearchResult
    on: SearchResult

    @property
    def k(self) -> int:
        return len(self.off.hits)

    @property
    def overlap(self) -> int:
        return len({h.did for h in self.off.hits} & {h.did for h in self.on.hits})

    @property
    def entered(self) -> list[str]:
        """Candidates in the top-k with reasoning but not without, in their order."""
        before = {h.did for h in self.off.hits}
        return [h.did for h in self.on.hits if h.did not in before]

    @property
    def left(self) -> list[str]:
        after = {h.did for h in self.on.hits}
        return [h.did for h in self.off.hits if h.did not in after]


def compare(services: Services, task_name: str, text, image, instruction, k: int,
            qid: str | None = None) -> Comparison:
    off = search(services, task_name, text, image, instruction, "never", k, qid)
    on = search(services, task_name, text, image, instruction, "always", k, qid)
    return Comparison(off, on)


# ------------------------------------------------------------------------------------------ the map
@dataclass
class Placement:
    """A new query on the embedding map: where it lands (from its nearest candidates), and for a reasoned
    query where its direct embedding would have landed."""

    search: SearchResult
    focus: tuple[float, float]
    neighbours: list[dict]  # the map points of its top-k candidates that the map shows
    start: tuple[float, float] | None = None  # the direct embedding's place (reasoned queries)
    moved: int | None = None  # how many of the top-k reasoning changed (reasoned queries)


@gpu
def place_query(services: Services, task_name: str, text, image, mode: str, k: int) -> Placement:
    """Encode a new query and place it from its nearest neighbours in its task's pool (not UMAP.transform)."""
    emap = services.map
    if emap is None:
        raise UserError("No embedding map is loaded.")
    res = search(services, task_name, text, image, None, mode, k)
    task, k = services.tasks[task_name], len(res.hits)
    dids, scores = [h.did for h in res.hits], [h.score for h in res.hits]
    try:
        focus = emap.place(dids, scores)
    except ValueError as exc:  # a large pool is sampled on the map; none of the hits may be on it
        raise UserError(f"Cannot place this query: {exc} (the map shows a sample of this pool).") from exc
    placement = Placement(res, (focus[0], focus[1]),
                          [p for d in dids if (p := emap.candidate_point(d)) is not None])
    r = res.result
    if r.route == "reason" and r.direct_embedding is not None:
        s, ids = task.index.search(r.direct_embedding, k)
        try:
            start = emap.place(ids[0], s[0].tolist())
            placement.start = (start[0], start[1])
        except ValueError:
            pass
        placement.moved = len(set(ids[0]) - set(dids))
    return placement


# ------------------------------------------------------------------------------------------ explain
@dataclass
class Explained:
    """A finished walkthrough and the ranking of its embedding."""

    walk: Walkthrough
    search: SearchResult
    task: Task = field(repr=False)
    k: int = 10


@gpu
def stream_explanation(services: Services, task_name: str, text, image, instruction, mode: str, bias: float,
                       k: int, qid: str | None = None, top: int = 10
                       ) -> Iterator[PromptStep | CotDelta | Explained]:
    """Yield the first step, the CoT as it is generated, then the finished walkthrough with its ranking."""
    if not isinstance(services.encoder, TraceEncoder):
        raise UserError("The walkthrough needs a TRACE model (one that routes and reasons); this app runs a "
                        "baseline encoder.")
    mode = checked(check_reasoning, mode)
    bias = checked(check_routing_bias, 0.0 if bias is None else bias)
    task, query = make_query(services, task_name, text, image, instruction, qid)
    k = top_k(k, task)
    try:
        with services.model_lock:
            for event in stream_explain(services.encoder, query, mode, bias, top):
                if isinstance(event, Walkthrough):
                    yield Explained(event, rank(services, task, event.result, k, qid), task, k)
                else:
                    yield event
    except InputError as exc:
        raise UserError(f"The query cannot be used: {exc}") from exc


# ------------------------------------------------------------------------------------------ API input
def open_api_image(services: Services, image, upload_folder: str) -> Image.Image | None:
    """The image of an API call: FileData (gradio_client's handle_file), its dict, or a path string.

    Only files under the upload folder (where uploads land) or under the data root are opened: a client
    cannot make the server read any other file.
    """
    if image is None or image == "":
        return None
    if isinstance(image, dict):
        image = image.get("path")
    elif not isinstance(image, str):
        image = getattr(image, "path", None)
    if not isinstance(image, str) or not image:
        raise UserError("The image must be an uploaded file (gradio_client.handle_file).")
    path = os.path.realpath(image)
    allowed = [os.path.realpath(upload_folder), os.path.realpath(services.root)]
    if not any(os.path.commonpath([path, a]) == a for a in allowed):
        raise UserError("The image must be an uploaded file (gradio_client.handle_file), not a server path.")
    try:
        return load_image(path)
    except InputError as exc:  # its message names the file: never show a server path, only the file's name
        raise UserError(f"The image cannot be used: {str(exc).replace(path, os.path.basename(path))}") from None
