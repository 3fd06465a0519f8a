"""What a first visit sees: one-click benchmark examples that the loaded model gets right, the task the page
opens on, each task's reasoning rate, and what the header says about the model.

Plain functions of the services, read from the loaded model's own evaluation (`services.queries`,
`services.benchmark`); no Gradio here (the tabs render them).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from trace_core.metrics import headline_metric

from .services import Services

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
        for r in t.to_dict("records"):  # plain dicts: iterrows built a Series a row (0.4 s of a warm start)
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
    from trace_core.lazy import LazyEncoder

    name = os.path.basename(str(services.fingerprint.get("model_id", "model")).rstrip("/")) or "model"
    if isinstance(services.encoder, LazyEncoder):  # a TRACE-mini still loading: its files say what it is
        lm, vision = services.encoder.model_parts
        return ModelAbout(name, True, f"{lm} + {vision}" if lm and vision else "")
    from trace_core.backbones.mini import MiniBackbone  # (its imports are the loaded model's, not the page's)
    backbone = getattr(services.encoder, "backbone", None)
    if not isinstance(backbone, MiniBackbone):
        return ModelAbout(name, False, "")
    cfg = getattr(getattr(backbone, "model", None), "config", None)
    lm, vision = getattr(cfg, "lm", ""), getattr(cfg, "vision", "")
    return ModelAbout(name, True, f"{lm} + {vision}" if lm and vision else "")
