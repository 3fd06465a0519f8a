"""What a person can do with the app, as plain functions of the services: search, compare, place a query on
the embedding map, explain a query step by step.

No Gradio here. The tabs (`*_tab.py`) build components, wire events to these functions and turn their results
into Markdown, tables and figures; the API endpoints call the same functions; the tests call them directly.
A mistake in the input raises `UserError` with the sentence to show.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

from trace_core.encoder import TraceEncoder
from trace_core.explain import PromptStep, Walkthrough, stream_explain
from trace_core.metrics import headline_metric
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
            "stop_reason": r.stop_reason,
            "no_repeat_ngram": r.no_repeat_ngram,
            "latency_s": r.latency_s,
            "reasoning": r.reasoning,
            "hits": [{"rank": h.rank, "did": h.did, "score": h.score, "gold": h.gold, "name": h.name,
                      "text": h.text, "image": h.image_rel} for h in self.hits],
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
        hits.append(Hit(n, did, float(score), c.text, services.image_path(c.image_path), did in gold_ids,
                        c.image_path or None, task.shows.get(c.image_path or "")))
    [gold] = task.index.positive_ranks(result.embedding[None], [gold_ids])  # every gold's exact rank, best first
    return SearchResult(result, hits, gold, task.name)


@gpu
def stream_search(services: Services, task_name: str, text, image, instruction, mode: str, k: int,
                  qid: str | None = None, no_repeat_ngram: int = 0) -> Iterator[CotDelta | SearchResult]:
    """Yield CoT deltas while the model reasons, then the ranked result. `no_repeat_ngram` > 0 turns on the
    repetition guard (plain greedy decoding, as in the paper and the benchmark, when 0)."""
    mode = checked(check_reasoning, mode)
    guard = checked(check_no_repeat_ngram, no_repeat_ngram)
    task, query = make_query(services, task_name, text, image, instruction, qid)
    k = top_k(k, task)
    with services.model_lock:
        for event in services.encoder.stream_query(query, reasoning=mode, no_repeat_ngram=guard):
            if isinstance(event, CotDelta):
                yield event
            else:
                yield rank(services, task, event, k, qid)


def search(services: Services, task_name: str, text, image, instruction, mode: str, k: int,
           qid: str | None = None, no_repeat_ngram: int = 0) -> SearchResult:
    *_, last = stream_search(services, task_name, text, image, instruction, mode, k, qid, no_repeat_ngram)
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
    encode = getattr(services.encoder, "encode_with_cot", None)
    if encode is None:
        raise UserError("This model never reasons, so it cannot embed a query after a chain of thought.")
    task, query = make_query(services, task_name, text, image, instruction, qid)
    k = top_k(k, task)
    with services.model_lock:
        try:
            [result] = encode([query], [cot.strip()])
        except InputError as exc:
            raise UserError(str(exc)) from exc
    return rank(services, task, result, k, qid)


# ------------------------------------------------------------------------------------------ first visit
DIFFICULTY = {"direct": "simple", "reason": "complex"}  # the data's routing label, in a visitor's words


@dataclass
class Example:
    """A benchmark query offered as a one-click example, with how the loaded model did on it."""

    task: str
    qid: str
    text: str | None
    image: str | None  # path relative to the data root
    instruction: str | None  # the instruction it was evaluated with (None: the task's first)
    difficulty: str  # "simple" | "complex" (the data's routing label), or "" when unlabelled
    gold_rank: int | None = None  # where the loaded model's evaluation ranked its gold (None: not evaluated)
    route: str | None = None  # the route the model took in that evaluation

    @property
    def query(self) -> str:
        if self.text and self.image:
            return f"{self.text} (+ image {os.path.basename(self.image)})"
        return self.text or f"image {os.path.basename(self.image or '')}"

    @property
    def result(self) -> str:
        """How the evaluation went, in words: difficulty, route, gold rank."""
        parts = [self.difficulty] if self.difficulty else []
        if self.route:
            parts.append("reasons" if self.route == "reason" else "embeds at once")
        parts.append(f"gold at #{self.gold_rank}" if self.gold_rank is not None else "not evaluated")
        return " · ".join(parts)


def _rank_or_none(x) -> int | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return int(x) if math.isfinite(x) else None


def example_queries(services: Services, task_name: str, n: int = 4) -> list[Example]:
    """A few benchmark queries of a task that the loaded model gets right, for one-click examples.

    Chosen from the evaluation beside the model (`services.queries`), so they follow the model: the queries
    whose gold it ranks best (first, when any), a CoT that ended by itself before one cut at the token cap,
    the clearest win (score margin over the runner-up) first; simple and complex queries alternate. Without
    an evaluation: the task's first benchmark queries, marked "not evaluated".
    """
    task = services.tasks[task_name]
    by_qid = {q.qid: q for q in task.queries}
    table = services.queries
    rows: list[tuple] = []
    if table is not None and len(table):
        t = table[(table["pair"] == task_name) & table["qid"].astype(str).isin(by_qid)]
        for _, r in t.iterrows():
            rank = _rank_or_none(r.get("gold_rank"))
            if rank is None:
                continue
            scores = list(r.get("top_scores", []) if r.get("top_scores") is not None else [])
            margin = float(scores[0] - scores[1]) if rank == 1 and len(scores) > 1 else 0.0
            capped = r.get("stop_reason") in ("max_tokens", "eos")
            instr = r.get("instruction") if isinstance(r.get("instruction"), str) else None
            rows.append(((rank, capped, -margin), str(r["qid"]), rank, str(r.get("route") or "") or None, instr))
        rows.sort(key=lambda x: x[0])
    if not rows:  # no evaluation: the first queries, unranked
        rows = [((0,), q.qid, None, None, None) for q in task.queries]
    groups: dict[str, list[Example]] = {}
    for _, qid, rank, route, instr in rows:
        q = by_qid[qid]
        label = DIFFICULTY.get(task.labels.get(qid, ""), "")
        groups.setdefault(label, []).append(
            Example(task_name, qid, q.text, q.image_path, instr, label, rank, route))
    out: list[Example] = []
    lists = list(groups.values())  # in the order of their best example
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
        if len(out) >= n:
            break
    return out[:n]


def _auto_run(services: Services) -> dict:
    """The loaded model's own evaluation run (a report's first run, or a plain results.json); {} when none."""
    report = services.benchmark or {}
    run = next(iter(report["runs"].values()), None) if "runs" in report else report
    return run or {}


def _headline_by_task(services: Services) -> dict[str, float]:
    """Each task's headline score in the loaded evaluation (the auto run), when there is one."""
    pairs = _auto_run(services).get("pairs", {})
    out = {}
    for name, m in pairs.items():
        head = m.get(headline_metric(name))
        if isinstance(head, (int, float)):
            out[name] = float(head)
    if not out and services.queries is not None and len(services.queries):
        t = services.queries
        out = {p: float((g["gold_rank"] <= 5).mean()) for p, g in t.groupby("pair")}
    return out


def default_task(services: Services) -> str:
    """The task a first visit opens on: one where a typed query finds things. Among the tasks that take a text
    query alone, the one the loaded model scores best on in its evaluation; else the first text task."""
    tasks = services.tasks
    typed = [n for n, t in tasks.items() if t.query_modality == "text"] or list(tasks)
    scores = _headline_by_task(services)
    return max(typed, key=lambda n: (scores.get(n, -1.0), -typed.index(n)))


def reasoning_rates(services: Services) -> dict[str, float]:
    """Each task's share of queries the model chose to reason on in its evaluation (auto), when known."""
    t = services.queries
    if t is not None and len(t) and "route" in t:
        return {p: float((g["route"] == "reason").mean()) for p, g in t.groupby("pair") if p in services.tasks}
    return {p: float(m["reason_rate"]) for p, m in _auto_run(services).get("pairs", {}).items()
            if p in services.tasks and "reason_rate" in m}


@dataclass
class ModelAbout:
    """What the page header says about the loaded model."""

    name: str  # e.g. "trace-mini"
    demo: bool  # a TRACE-mini (this project's small demo model), not a published checkpoint
    parts: str  # its language model and image encoder, when known ("" otherwise)


def about_model(services: Services) -> ModelAbout:
    from trace_core.backbones.mini import MiniBackbone

    backbone = getattr(services.encoder, "backbone", None)
    name = os.path.basename(str(services.fingerprint.get("model_id", "model")).rstrip("/")) or "model"
    if not isinstance(backbone, MiniBackbone):
        return ModelAbout(name, False, "")
    cfg = getattr(getattr(backbone, "model", None), "config", None)
    lm, vision = getattr(cfg, "lm", ""), getattr(cfg, "vision", "")
    return ModelAbout(name, True, f"{lm} + {vision}" if lm and vision else "")


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
