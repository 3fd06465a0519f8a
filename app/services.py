"""What the app loads once per process and every event reuses: the model, the tasks and their indexes.

A *task* is one (dataset, task) pair of an M-BEIR-format folder: its instruction, its local candidate pool
and that pool's index (built on first start, then loaded from the cache in seconds), and its benchmark
queries (for the examples and for marking gold candidates). Nothing here is stored in `gr.State`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.embedding_map import (
    EmbeddingMap,
    MapConfig,
    PoolPoints,
    QueryPoints,
    load_or_build,
    map_fingerprint,
)
from trace_core.batcher import MicroBatcher, ModelGate
from trace_core.embed_pool import encode_in_chunks, pool_index
from trace_core.index import CandidateIndex
from trace_core.instructions import instructions_for
from trace_core.interface import SERVING, Encoder
from trace_core.lazy import LazyEncoder, default_precision
from trace_core.loading import load_model
from trace_core.mbeir import (
    ImagePathError,
    MBEIRCandidate,
    MBEIRQuery,
    check_images,
    discover_pairs,
    load_pair,
    read_cot_labels,
    resolve_image,
)

from .building import Build
from .display import NAME_CHARS, candidate_name

log = logging.getLogger(__name__)

MODALITY_WORDS = {"text": "text", "image": "image", "image,text": "image + text"}

# On a ZeroGPU Space the model may only run inside a `spaces.GPU` call, never on a thread of its own.
ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")

try:  # On a Hugging Face ZeroGPU Space, model calls must run inside `spaces.GPU`; elsewhere it is a no-op.
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the host

    def gpu(fn):
        return fn


@dataclass
class Task:
    name: str  # pair name, e.g. "emoji_task7"
    dataset: str  # dataset title from the instruction table, e.g. "Emoji"
    query_modality: str  # "text" | "image" | "image,text"
    cand_modality: str  # modality of the pool's candidates (the most common one)
    instructions: tuple[str, ...]  # the M-BEIR instructions of this task
    pool: list[MBEIRCandidate]  # the local candidate pool
    index: CandidateIndex | None  # its index (exact inner product for these sizes); None while being built
    queries: list[MBEIRQuery] = field(default_factory=list)  # benchmark queries (test split)
    positives: dict[str, set[str]] = field(default_factory=dict)  # qid -> gold dids
    labels: dict[str, str] = field(default_factory=dict)  # qid -> labelled route ("direct" / "reason")
    shows: dict[str, str] = field(default_factory=dict)  # image path -> what it shows (`image_names`)
    pool_name: str = ""  # the pool file's stem: its cached index's name

    @property
    def label(self) -> str:
        q, c = MODALITY_WORDS[self.query_modality], MODALITY_WORDS[self.cand_modality]
        return f"{self.dataset}: {q} → {c}  ({self.name})"

    @property
    def ready(self) -> bool:
        """Whether its index is built (a server started with `background=True` builds it after it serves)."""
        return self.index is not None

    @property
    def takes_image(self) -> bool:
        return "image" in self.query_modality

    @property
    def takes_text(self) -> bool:
        return "text" in self.query_modality

    def candidate(self, did: str) -> MBEIRCandidate:
        return self._by_id[did]

    def has_candidate(self, did: str) -> bool:
        return did in self._by_id

    def name_of(self, did: str, limit: int | None = NAME_CHARS) -> str:
        """What candidate `did` is, for a caption, a label or a table cell (`display.candidate_name`): its
        text, else what its image shows, else its image's file name."""
        c = self._by_id[did]
        return candidate_name(c.text, c.image_path, limit, self.shows.get(c.image_path or ""))

    def __post_init__(self) -> None:
        self._by_id = {c.did: c for c in self.pool}


@dataclass
class Services:
    encoder: Encoder  # the loaded model (TRACE-mini by default)
    root: Path  # the M-BEIR-format data folder
    tasks: dict[str, Task]  # by pair name
    benchmark: dict | None = None  # results.json of the loaded model's evaluation, if any
    queries: pd.DataFrame | None = None  # per-query table of that evaluation (queries.parquet), if any
    map: EmbeddingMap | None = None  # UMAP of the pools and the benchmark queries (built once, cached)
    notes: list[str] = field(default_factory=list)  # what could not be loaded, in words for the UI
    # Batches of searches hold the model together (up to two at once, `start_batching(workers=2)`), any other
    # model call alone; as a lock (`with services.model_lock:`) it is held alone.
    model_lock: ModelGate = field(default_factory=ModelGate)
    # Searches of concurrent visitors share one prefill and decode (`start_batching`); None: one at a time.
    batcher: MicroBatcher | None = None
    build: Build | None = None  # what is still being built in the background (`load(background=True)`)

    @property
    def search_concurrency(self) -> dict:
        """Gradio concurrency of the events whose model work is searches (search, compare, map placement): with
        the batcher, up to a batch of them at once (they meet in its queue); without it, one at a time together
        with every other model call."""
        if self.batcher is None:
            return {"concurrency_limit": 1, "concurrency_id": "model"}
        return {"concurrency_limit": self.batcher.max_batch * self.batcher.workers, "concurrency_id": "search"}

    def start_batching(self, window_s: float = 0.02, max_batch: int = 16, workers: int = 1) -> bool:
        """Put a micro-batching queue in front of the model for searches, `workers` batches at once (at most the
        gate's limit); False where it cannot run (an encoder without the batched TRACE loop, or a ZeroGPU
        Space)."""
        if ZERO_GPU or not MicroBatcher.supports(self.encoder):
            return False
        if self.batcher is None:
            self.batcher = MicroBatcher(self.encoder, self.model_lock, window_s, max_batch,
                                        min(workers, self.model_lock.limit))
        return True

    @property
    def fingerprint(self) -> dict:
        return self.encoder.fingerprint

    def image_path(self, rel: str | None) -> str | None:
        return str(resolve_image(self.root, rel)) if rel else None

    @classmethod
    def load(cls, model: str, data: str | Path, split: str = "test", cache_dir: str = ".cache/index",
             benchmark: str | Path | None = None, encoder: Encoder | None = None,
             analysis: str | Path | None = None, embedding_map: bool = True,
             shipped: Sequence[str | Path] = (), background: bool = False,
             analysis_job: Callable[[Encoder], tuple[Path, Path]] | None = None) -> Services:
        """`shipped`: read-only folders of prebuilt indexes and maps (the app's `assets/cache`, made by
        `python -m app.ship`), taken before the local cache when their fingerprints match.

        `background=True` (the server): return as soon as the model is loaded and every pool is read; indexes
        and the map that are neither shipped nor cached are built afterwards by one background thread
        (`services.build` says how far it is; a task is `ready` once its index is there).
        `analysis_job(encoder) -> (results.json, queries.parquet)`: an evaluation to run in the background, after
        the indexes and before the map (`app.py --build-analysis`); the analysis tabs fill in when it is done."""
        root = Path(data)
        encoder = encoder or load_model(model, precision=default_precision(model), config=SERVING)  # as app.py serves it
        instructions = instructions_for(root)
        tasks: dict[str, Task] = {}
        notes: list[str] = []
        pairs = discover_pairs(root, split)
        for n, pair in enumerate(pairs, start=1):
            log.info("[%d/%d] preparing %s", n, len(pairs), pair.name)
            queries, pool, positives = load_pair(pair)
            try:  # every image path stays under the data root and exists; a pair that fails is left out
                check_images(root, queries, pool)
            except (ImagePathError, FileNotFoundError) as exc:
                log.error("leaving out %s: %s", pair.name, exc)
                notes.append(f"{pair.name} is left out: {exc}")
                continue
            modalities = [c.modality for c in pool]
            cand_modality = max(set(modalities), key=modalities.count)
            query_modality = queries[0].modality if queries else "text"
            dataset_id = int(pool[0].did.split(":")[0])
            row = instructions.find(query_modality, cand_modality, dataset_id)
            index = pool_index(encoder, pool, root, cache_dir, pair.pool_file.stem, shipped=shipped,
                               build=not background)
            tasks[pair.name] = Task(
                name=pair.name,
                dataset=row.dataset if row else pair.dataset,
                query_modality=query_modality,
                cand_modality=cand_modality,
                instructions=tuple(row.prompts) if row else ("",),
                pool=pool,
                index=index,
                queries=queries,
                positives=positives,
                labels={qid: route for qid, (route, _) in read_cot_labels(pair.query_file).items()},
                pool_name=pair.pool_file.stem,
            )
        if not tasks:
            raise ValueError("no usable (dataset, task) pair in " + str(root) + ": " + "; ".join(notes))
        shows = image_names(tasks.values())
        for t in tasks.values():
            t.shows = shows
        results = None
        if benchmark is not None and Path(benchmark).is_file():
            results = json.loads(Path(benchmark).read_text())
        queries = None
        if analysis is not None and Path(analysis).is_file():
            queries = pd.read_parquet(analysis)
            queries = queries[queries["pair"].isin(tasks)].reset_index(drop=True)
        services = cls(encoder, root, tasks, results, queries, notes=notes)
        missing = [t for t in tasks.values() if not t.ready]
        if embedding_map and not missing and analysis_job is None:
            pools, query_points, gold = map_inputs(services, analysis)
            if not background or _map_cached(pools, query_points, gold, encoder.fingerprint, cache_dir, shipped):
                services.map = load_or_build(pools, query_points, encoder.fingerprint, cache_dir, keep=gold,
                                             shipped=shipped)
                _name_candidates(services.map, tasks)
        if isinstance(encoder, LazyEncoder) and not encoder.ready:
            services._watch_model_load(encoder)
        if missing or analysis_job is not None or (embedding_map and services.map is None):
            services._build_later(missing, cache_dir, analysis, embedding_map, shipped, analysis_job)
        return services

    def _watch_model_load(self, encoder: LazyEncoder) -> None:
        """The model's load (`LazyEncoder`, started after the page is served) as the first stage of the banner."""
        build = self.build = self.build or Build()
        build.add("model", "Loading the model (a search sent meanwhile waits for it)")
        build.start("model")  # shown as loading from the first page on: app.py starts it once the page is served

        def done(error: BaseException | None) -> None:
            if error is None:
                build.finish("model")
            else:
                build.fail("model", f"{type(error).__name__}: {error}")

        encoder.on_load(lambda: None, done)

    def _build_later(self, missing: list[Task], cache_dir, analysis, embedding_map: bool, shipped,
                     analysis_job) -> None:
        """Start the background thread: the missing indexes, then the evaluation, then the map (see `load`)."""
        build = self.build = self.build or Build()
        for t in missing:
            build.add(f"index:{t.name}", f"Index of {t.label}", len(t.pool), "candidates embedded")
        if analysis_job is not None:
            # Every test query twice: as the model chooses, and forced to reason (the counterfactual).
            build.add("analysis", "Evaluation for the analysis tabs (every test query, auto and always-reason)",
                      2 * sum(len(t.queries) for t in self.tasks.values()), "queries encoded")
        if embedding_map:
            build.add("map", "Embedding map (UMAP over every pool and the benchmark queries)")

        def stage(name: str, fn) -> bool:
            build.start(name)
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - shown in the page; what is ready keeps working
                log.exception("background stage %s failed", name)
                build.fail(name, f"{type(exc).__name__}: {exc}")
                return False
            build.finish(name)
            return True

        def index_of(t: Task) -> None:
            name = f"index:{t.name}"
            t.index = pool_index(self.encoder, t.pool, self.root, cache_dir, t.pool_name, shipped=shipped,
                                 lock=self.model_lock, report=lambda done, total: build.report(name, done, total))

        def evaluation() -> None:
            nonlocal analysis
            # The model is lent batch by batch, so that searches go on between the evaluation's batches.
            lent = LockedEncoder(self.encoder, self.model_lock, lambda n: build.advance("analysis", n))
            results, analysis = analysis_job(lent)
            self.benchmark = json.loads(Path(results).read_text())
            table = pd.read_parquet(analysis)
            self.queries = table[table["pair"].isin(self.tasks)].reset_index(drop=True)

        def embedding_map_() -> None:
            if any(not t.ready for t in self.tasks.values()):
                raise RuntimeError("some pool has no index")
            pools, query_points, gold = map_inputs(self, analysis)
            emap = load_or_build(pools, query_points, self.encoder.fingerprint, cache_dir, keep=gold,
                                 shipped=shipped)
            _name_candidates(emap, self.tasks)
            self.map = emap

        def run() -> None:
            for t in missing:
                stage(f"index:{t.name}", lambda t=t: index_of(t))
            if analysis_job is not None:
                stage("analysis", evaluation)
            if embedding_map:
                stage("map", embedding_map_)

        threading.Thread(target=run, name="trace-build", daemon=True).start()


class LockedEncoder:
    """An encoder lent to a long job (an evaluation) a batch at a time: every batch holds `lock`, so that
    visitors' searches run between the job's batches; `report(n)` is told of each batch's n queries done."""

    def __init__(self, encoder: Encoder, lock: ModelGate, report: Callable[[int], None] | None = None,
                 batch: int = 8):
        self._encoder, self._lock, self._report, self._batch = encoder, lock, report, batch

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_queries(self, queries, *args, progress: bool = False, **kwargs):
        out = []
        for start in range(0, len(queries), self._batch):
            with self._lock:
                done = self._encoder.encode_queries(queries[start : start + self._batch], *args, **kwargs)
            out += done
            if self._report is not None:
                self._report(len(done))
        return out

    def encode_candidates(self, candidates, batch_size: int | None = None, progress: bool = False):
        return encode_in_chunks(self._encoder, candidates, self._lock, None)


def _map_cached(pools, query_points, gold, model: dict, cache_dir, shipped) -> bool:
    """Whether the map of these inputs is shipped or cached already (then loading it takes a second)."""
    name = f"embedding-map-{map_fingerprint(pools, query_points, model, MapConfig(), gold)}.parquet"
    return any((Path(f) / name).is_file() for f in [*shipped, cache_dir])


def default_analysis(model: str | Path, precision: str) -> Path:
    """The evaluation beside a model that the analysis tabs read: the one of the precision the app serves it in
    when there is one (`precision-int8/queries.parquet`: its embeddings are those the served model computes),
    else the float32 one (`queries.parquet`)."""
    own = Path(model) / f"precision-{precision}" / "queries.parquet"
    return own if precision != "fp32" and own.is_file() else Path(model) / "queries.parquet"


def map_inputs(services: Services, analysis: str | Path | None) -> tuple[list[PoolPoints], list[QueryPoints], set]:
    """What the embedding map is made of: the pools, the benchmark queries (their embeddings beside
    `analysis`), and the gold candidates that stay on the map when a large pool is sampled."""
    query_points = []
    if services.queries is not None and analysis is not None:
        query_points = _query_points(services.tasks, services.queries, Path(analysis).parent / "embeddings",
                                     services.notes)
    gold = {d for t in services.tasks.values() for ds in t.positives.values() for d in ds}
    return _pool_points(services.tasks), query_points, gold


def image_names(tasks: Iterable[Task]) -> dict[str, str]:
    """Image path -> what it shows, in words, from the data itself, so that an image-only candidate is called
    by name and not by file name: the name its src_content gives (TRACE-mini's corpus writes one), else the
    text of a candidate that pairs the image with text, else the text gold of a query that is the image alone
    (an image -> name task). Images none of these name keep their file name."""
    given: dict[str, str] = {}
    paired: dict[str, str] = {}
    for t in tasks:
        for c in t.pool:
            if c.image_path and c.shown_name:
                given.setdefault(c.image_path, c.shown_name)
            elif c.image_path and c.text:
                paired.setdefault(c.image_path, c.text)
        for q in t.queries:
            if q.image_path and not q.text:
                for did in sorted(d for d in t.positives.get(q.qid, ()) if t.has_candidate(d)):
                    c = t.candidate(did)
                    if c.text and not c.image_path:
                        paired.setdefault(q.image_path, c.text)
    return {**paired, **given}


def _pool_points(tasks: dict[str, Task]) -> list[PoolPoints]:
    return [PoolPoints(t.name, t.index.ids, t.index.embeddings, [c.modality for c in t.pool],
                       [t.name_of(c.did) for c in t.pool], [c.image_path for c in t.pool])
            for t in tasks.values()]


def _name_candidates(emap: EmbeddingMap, tasks: dict[str, Task]) -> None:
    """Every point's label says what it is (its text, or "image · <what it shows>"), also on a map cached
    before points were named that way (the labels are not part of the map's fingerprint)."""
    names = {c.did: t.name_of(c.did) for t in tasks.values() for c in t.pool}
    points = emap.points
    rows = points["kind"] == "candidate"
    points.loc[rows, "label"] = points.loc[rows, "id"].map(names).fillna(points.loc[rows, "label"])
    unnamed = (points["kind"] != "candidate") & (points["label"] == "(image query)")
    shows = next(iter(tasks.values())).shows if tasks else {}
    points.loc[unnamed, "label"] = [candidate_name(None, i if isinstance(i, str) else None, shows=shows.get(i))
                                    for i in points.loc[unnamed, "image"]]


def _query_points(tasks: dict[str, Task], table: pd.DataFrame, folder: Path, notes: list[str],
                  k: int = 5) -> list[QueryPoints]:
    """The benchmark queries' direct and final embeddings (OUT/embeddings/<pair>.npz of the evaluation run).

    They are checked against the loaded model and pools before use: the gold rank recomputed from the stored
    final embeddings must equal the table's `gold_rank`. Embeddings of another model or pool would
    put the queries in the wrong places, so they are left off the map with a note instead.
    """
    out = []
    for pair, rows in table.groupby("pair", sort=True):
        path = folder / f"{pair}.npz"
        if not path.is_file():
            notes.append(f"{pair}: no query embeddings at {path}; its queries are not on the map.")
            continue
        with np.load(path) as npz:
            qids, direct, final = [str(q) for q in npz["qid"]], npz["direct"], npz["final"]
        pos = {q: i for i, q in enumerate(qids)}
        rows = rows[rows["qid"].isin(pos)]
        take = [pos[q] for q in rows["qid"]]
        index = tasks[pair].index
        check = rows[rows["gold_did"].isin(index.ids) & rows["gold_rank"].notna()].head(20)
        if len(check):
            ranks, _ = index.ranks_of(final[[pos[q] for q in check["qid"]]], list(check["gold_did"]))
            if not np.array_equal(ranks, check["gold_rank"].to_numpy(dtype=np.int64)):
                notes.append(f"{pair}: the stored query embeddings do not match this model and pool "
                             "(their gold ranks differ from the table); its queries are not on the map.")
                continue
        out.append(QueryPoints(
            pair, list(rows["qid"]), direct[take], final[take], list(rows["query_modality"]), list(rows["route"]),
            [t if isinstance(t, str) and t else
             candidate_name(None, i if isinstance(i, str) else None, shows=tasks[pair].shows.get(i))
             for t, i in zip(rows["query_txt"], rows["query_img_path"], strict=True)],
            [i if isinstance(i, str) and i else None for i in rows["query_img_path"]],
            list(rows["gold_rank_direct"] <= k), list(rows["gold_rank"] <= k)))
    return out

