"""What a person can do with the app, as plain functions of the services: search (with a routing bias),
re-embed a query after a chain of thought edited by hand, compare, place a query on the embedding map, explain
a query step by step. What a first visit sees (examples, the default task) is `first_visit.py`'s.

No Gradio here. The tabs (`*_tab.py`) build components, wire events to these functions and turn their results
into Markdown, tables and figures; the API endpoints call the same functions; the tests call them directly.
A mistake in the input raises `UserError` with the sentence to show.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

from trace_core.explain import PromptStep, Walkthrough, stream_explain
from trace_core.lazy import LazyEncoder, LoadError, is_trace_encoder
from trace_core.records import (
    CotDelta,
    InputError,
    Query,
    QueryResult,
    check_k,
    check_no_repeat_ngram,
    check_reasoning,
    check_routing_bias,
    load_image,
)
from trace_core.routing import p_emb_with_bias

from .display import candidate_name
from .services import Services, Task, gpu

MAX_QUERY_CHARS = 2000
MAX_COT_CHARS = 2000  # a chain of thought written by hand (`search_with_cot`)


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
    image: str | None  # absolute path of the candidate's image (for the UI; never sent to an API client)
    gold: bool
    image_rel: str | None = None  # the same image's path relative to the data root (what the API returns)
    shows: str | None = None  # what its image shows, when the data names it (`services.image_names`)

    @property
    def name(self) -> str:
        """What the candidate is: its whole text, else "image · <what it shows>" or "image · <file name>"."""
        return candidate_name(self.text, self.image_rel or self.image, None, self.shows)

    @property
    def caption(self) -> str:
        """Its name, cut to a caption's length."""
        return candidate_name(self.text, self.image_rel or self.image, shows=self.shows)


@dataclass
class SearchResult:
    result: QueryResult
    hits: list[Hit]
    gold: list[tuple[str, int, float]]  # (did, exact rank, score) of every gold candidate, if known
    task: str
    query: Query | None = field(default=None, repr=False)  # what was searched (to re-embed it, `edit_cot`)

    @property
    def routing_bias(self) -> float:
        """The bias that was added to the `<|emb|>` logit at the first step (the result's own record)."""
        return self.result.routing_bias

    @property
    def p_emb_biased(self) -> float:
        """P(<|emb|> first) once the routing bias is added to its logit (`result.p_emb` is before it)."""
        return p_emb_with_bias(self.result.p_emb, self.result.routing_bias)

    @property
    def gold_rank(self) -> int | None:
        """The best gold candidate's exact rank in the whole pool; None for a free query."""
        return self.gold[0][1] if self.gold else None

    def to_json(self, fingerprint: dict) -> dict:
        r = self.result
        return {
            "model": fingerprint,
            "task": self.task,
            "route": r.route,
            "p_emb": r.p_emb,  # before the routing bias
            "routing_bias": r.routing_bias,
            "p_emb_with_bias": self.p_emb_biased,
            "cot": r.cot,
            "cot_tokens": r.cot_tokens,
            "truncated": r.truncated,
            "stop_reason": r.stop_reason,
            "no_repeat_ngram": r.no_repeat_ngram,
            "latency_s": r.latency_s,
            "reasoning": r.reasoning,
            "hits": [{"rank": h.rank, "did": h.did, "score": h.score, "gold": h.gold, "name": h.name,
                      "text": h.text, "image": h.image_rel} for h in self.hits],
            "gold": [{"did": d, "rank": k, "score": s} for d, k, s in self.gold],
        }


def not_ready(services: Services, task: Task) -> str:
    """Why a task cannot search yet, with how far its index is, and which tasks can."""
    stage = f"index:{task.name}"
    where = services.build.describe(stage) if services.build and services.build.state_of(stage) else ""
    ready = [t.name for t in services.tasks.values() if t.ready]
    return (f"The index of {task.name} is still being built ({where or 'waiting'}); it searches once that is done."
            + (f" Ready now: {', '.join(ready)}." if ready else ""))


def make_query(services: Services, task_name: str, text: str | None, image, instruction: str | None,
               qid: str | None = None) -> tuple[Task, Query]:
    """Check the inputs against the task and build the encoder's query; clear messages for mistakes."""
    if not isinstance(task_name, str) or task_name not in services.tasks:
        raise UserError(f"unknown task {task_name!r}")
    task = services.tasks[task_name]
    if isinstance(services.encoder, LazyEncoder):  # loading after the page was served: wait, or say why not
        try:
            services.encoder.wait()
        except LoadError as exc:
            raise UserError(str(exc)) from exc
    if not task.ready:
        raise UserError(not_ready(services, task))
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


def rank(services: Services, task: Task, result: QueryResult, k: int, qid: str | None,
         query: Query | None = None) -> SearchResult:
    """A query embedding's top-k in its task's pool, and the exact rank of every gold candidate."""
    scores, ids = task.index.search(result.embedding, k)
    gold_ids = task.positives.get(qid or "", set())
    hits = []
    for n, (did, score) in enumerate(zip(ids[0], scores[0], strict=True), start=1):
        c = task.candidate(did)
        hits.append(Hit(n, did, float(score), c.text, services.image_path(c.image_path), did in gold_ids,
                        c.image_path or None, task.shows.get(c.image_path or "")))
    [gold] = task.index.positive_ranks(result.embedding[None], [gold_ids])  # every gold's exact rank, best first
    return SearchResult(result, hits, gold, task.name, query)


@gpu
def stream_search(services: Services, task_name: str, text, image, instruction, mode: str, k: int,
                  qid: str | None = None, no_repeat_ngram: int = 0,
                  routing_bias: float | None = 0.0) -> Iterator[CotDelta | SearchResult]:
    """Yield CoT deltas while the model reasons, then the ranked result. `no_repeat_ngram` > 0 turns on the
    repetition guard (plain greedy decoding, as in the paper and the benchmark, when 0). `routing_bias` is
    added to the `<|emb|>` logit at the first step: > 0 favours embedding at once, < 0 reasoning (mode auto)."""
    mode = checked(check_reasoning, mode)
    guard = checked(check_no_repeat_ngram, no_repeat_ngram)
    bias = checked(check_routing_bias, 0.0 if routing_bias is None else routing_bias)
    task, query = make_query(services, task_name, text, image, instruction, qid)
    k = top_k(k, task)
    if services.batcher is not None:  # shares a batch with other visitors' searches; it takes the lock itself
        events = services.batcher.stream(query, mode, bias, no_repeat_ngram=guard)
        lock = contextlib.nullcontext()
    else:
        events = services.encoder.stream_query(query, reasoning=mode, routing_bias=bias, no_repeat_ngram=guard)
        lock = services.model_lock
    with lock:
        for event in events:
            if isinstance(event, CotDelta):
                yield event
            else:
                yield rank(services, task, event, k, qid, query)


def search(services: Services, task_name: str, text, image, instruction, mode: str, k: int,
           qid: str | None = None, no_repeat_ngram: int = 0, routing_bias: float | None = 0.0) -> SearchResult:
    *_, last = stream_search(services, task_name, text, image, instruction, mode, k, qid, no_repeat_ngram,
                             routing_bias)
    return last


@gpu
def search_with_cot(services: Services, task_name: str, text, image, instruction, cot: str, k: int,
                    qid: str | None = None) -> SearchResult:
    """The query embedded after a chain of thought given by hand instead of one the model writes (teacher
    forcing, `TraceEncoder.encode_with_cot`): does the content of the thought matter, or only its presence?
    An empty chain embeds at once, as the direct route does."""
    if not isinstance(cot, str):
        raise UserError("The chain of thought must be a string.")
    if len(cot) > MAX_COT_CHARS:
        raise UserError(f"The chain of thought is too long (over {MAX_COT_CHARS:,} characters).")
    task, query = make_query(services, task_name, text, image, instruction, qid)  # (waits for a loading model)
    encode = getattr(services.encoder, "encode_with_cot", None)
    if encode is None:
        raise UserError("This model never reasons, so it cannot embed a query after a chain of thought.")
    k = top_k(k, task)
    with services.model_lock:
        try:
            [result] = encode([query], [cot.strip()])
        except InputError as exc:
            raise UserError(str(exc)) from exc
    return rank(services, task, result, k, qid, query)


# ------------------------------------------------------------------------------------------ the CoT, by hand
@dataclass
class CotEdit:
    """The same query ranked after the model's own chain of thought (`before`, a search) and after one given by
    hand (`after`, `search_with_cot`): does the content of the thought move the gold, or the top-k?"""

    before: SearchResult
    after: SearchResult

    @property
    def k(self) -> int:
        return len(self.after.hits)

    @property
    def gold_before(self) -> int | None:
        return self.before.gold_rank

    @property
    def gold_after(self) -> int | None:
        return self.after.gold_rank

    @property
    def kept(self) -> int:
        """How many of the search's top-k are still in the top-k after the edited chain of thought."""
        return len({h.did for h in self.before.hits} & {h.did for h in self.after.hits})


def edit_cot(services: Services, before: SearchResult | None, cot: str) -> CotEdit:
    """Re-embed the query of a search (`before`) after the chain of thought `cot` ("" embeds at once) and
    rank it with the same top-k. UserError before any search, or for a chain `search_with_cot` refuses."""
    if before is None or before.query is None:
        raise UserError("Search first: the chain of thought is edited for the query of the last search.")
    q = before.query
    after = search_with_cot(services, before.task, q.text, q.image, q.instruction, cot, len(before.hits),
                            q.qid or None)
    return CotEdit(before, after)


@dataclass(frozen=True)
class BorrowedCot:
    """The chain of thought another benchmark query of the task was given in the loaded evaluation."""

    qid: str
    query: str  # that query's text (or "(image only)")
    cot: str


def another_cot(services: Services, task_name: str, qid: str | None = None) -> BorrowedCot:
    """"Another query's CoT": the evaluation's (`services.queries`, column `cot`) non-empty chain of thought of
    the next benchmark query of the task after `qid`, in the task's query order, wrapping around (the first one
    for a free query); never the query's own. Deterministic, so a lesson can be replayed."""
    table = services.queries
    if task_name not in services.tasks:
        raise UserError(f"unknown task {task_name!r}")
    if table is None or not len(table) or "cot" not in table:
        raise UserError("No evaluation is loaded, so there is no other query's chain of thought to borrow.")
    rows = table[table["pair"] == task_name]
    cots = {str(q): c.strip() for q, c in zip(rows["qid"], rows["cot"], strict=True)
            if isinstance(c, str) and c.strip()}
    queries = services.tasks[task_name].queries
    order = [q for q in queries if q.qid in cots and q.qid != qid]
    if not order:
        raise UserError("No other query of this task has a chain of thought in the loaded evaluation (the model "
                        "embedded them at once, or its thoughts were blank).")
    pos = {q.qid: n for n, q in enumerate(queries)}
    here = pos.get(qid or "", -1)  # a free query starts from the top
    nxt = next((q for q in order if pos[q.qid] > here), order[0])
    return BorrowedCot(nxt.qid, nxt.text or "(image only)", cots[nxt.qid])


@dataclass
class HitQuery:
    """A retrieved candidate turned into a new query: the task that takes it, and the query's parts."""

    task: str
    text: str
    image: str | None  # absolute path


def query_from_hit(services: Services, task_name: str, hit_text: str | None, hit_image: str | None,
                   current_text: str | None = None) -> HitQuery:
    """"Search with this result": a query made of the result, on a task that takes it.

    An image result becomes an image query: on the current task when it takes one (a composed task keeps the
    current text as the modification), else on a task of the same dataset that takes an image alone, else any
    such task. A text-only result becomes a text query the same way. UserError when no task takes it.
    """
    tasks = services.tasks
    if task_name not in tasks:
        raise UserError(f"unknown task {task_name!r}")
    current_text = (current_text or "").strip()
    if hit_image:
        options = [("image", "", hit_image)] + ([("image,text", current_text, hit_image)] if current_text else [])
    elif hit_text and hit_text.strip():
        options = [("text", hit_text.strip(), None)]
    else:
        raise UserError("This result has neither text nor an image to search with.")
    cur = tasks[task_name]
    for modality, text, image in options:
        if cur.query_modality == modality:
            return HitQuery(task_name, text, image)
    prefix = cur.pool[0].did.split(":")[0] if cur.pool else ""
    others = sorted((t for n, t in tasks.items() if n != task_name),
                    key=lambda t: not (t.pool and t.pool[0].did.split(":")[0] == prefix))
    for modality, text, image in options:
        for t in others:
            if t.query_modality == modality:
                return HitQuery(t.name, text, image)
    kind = "an image" if hit_image else "a text"
    raise UserError(f"No task here takes {kind} query, so this result cannot be searched with.")


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
        build = services.build
        state = build.state_of("map") if build is not None else None
        if state == "failed":
            raise UserError(f"The embedding map could not be built ({build.describe('map')}).")
        if state not in (None, "done"):
            raise UserError(f"The embedding map is not ready yet ({build.describe('map')}); "
                            "try again when it is built.")
        raise UserError("No embedding map is loaded (the app was started with --no-map).")
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
    if not is_trace_encoder(services.encoder):
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
