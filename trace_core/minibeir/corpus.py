"""What a TRACE-mini corpus build accumulates before it is written: queries, pairs, candidates, images.

Shared by the per-source pair builders (emoji.py, and clip art / Fashion-MNIST in build.py): ids are assigned
here (same content -> same did), items are split here, pools are filled here, and teacher CoTs pass the
paper's filters here.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import teacher

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # of the items, in SPLITS order
DATASET_IDS = {"emoji": 10, "clipart": 11, "fashionmnist": 12}


@dataclass(frozen=True)
class Query:
    qid: str  # "<dataset id>:<n>"
    txt: str | None  # query text, None for image-only queries
    img: str | None  # image key registered in the corpus, None for text-only queries
    positives: tuple[str, ...]  # candidate dids
    task_id: int  # M-BEIR task id
    route: str  # "direct" or "reason"
    cot: str | None  # teacher CoT with tags removed; None for direct queries
    items: tuple[str, ...]  # underlying item ids this query touches (for leakage checks and logs)
    target_name: str | None = None  # canonical name of the target: a correct CoT names it
    ref_name: str | None = None  # composed edits: the reference's name, which a correct CoT names too
    kind: str = "plain"  # caption, name, similar, plain, edit-image, edit-text, definition
    negatives: tuple[str, ...] = ()  # hard negatives in the pair's pool (neg_cand_list)


@dataclass
class Pair:
    dataset: str  # "emoji", "clipart", "fashionmnist"
    task_id: int  # M-BEIR task id
    queries: dict[str, list[Query]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    pool: list[str] = field(default_factory=list)  # dids in insertion order

    @property
    def name(self) -> str:
        return f"{self.dataset}_task{self.task_id}"


class Corpus:
    """Ids, images and candidates shared by all pairs of the build; same content -> same did."""

    def __init__(self) -> None:
        self.images: dict[str, Callable[[], bytes | None]] = {}  # rel path -> loader of PNG bytes
        self.cands: dict[str, dict[str, Any]] = {}  # did -> candidate record
        self.image_names: dict[str, str] = {}  # image path -> what it shows, in words
        self._cand_ids: dict[tuple[str, str | None, str | None], str] = {}
        self._next_did: dict[str, int] = {}
        self._next_qid: dict[str, int] = {}
        self.pairs: list[Pair] = []

    def image(self, dataset: str, key: str, loader: Callable[[], bytes | None], name: str | None = None) -> str:
        """Register an image file (written later by `loader`); `name`: what it shows, in words ("dog face"),
        written into the `src_content` of candidates that are this image alone, so an app can call them by
        name rather than by file name."""
        rel = f"mbeir_images/{dataset}/{key}.png"
        self.images.setdefault(rel, loader)
        if name:
            self.image_names.setdefault(rel, name)
        return rel

    def cand_record(self, did: str) -> dict[str, Any]:
        """The candidate line as written: an image-only candidate's `src_content` names what it shows
        ('{"name": "dog face"}'), when its image was registered with a name."""
        rec = self.cands[did]
        name = self.image_names.get(rec["img_path"]) if rec["img_path"] and not rec["txt"] else None
        return {**rec, "src_content": json.dumps({"name": name}) if name else rec["src_content"]}

    def cand(self, dataset: str, txt: str | None, img: str | None) -> str:
        k = (dataset, txt, img)
        if k not in self._cand_ids:
            n = self._next_did.get(dataset, 0)
            self._next_did[dataset] = n + 1
            did = f"{DATASET_IDS[dataset]}:{n}"
            modality = "image,text" if txt and img else ("image" if img else "text")
            self._cand_ids[k] = did
            self.cands[did] = {
                "did": did,
                "txt": txt,
                "img_path": img,
                "modality": modality,
                "src_content": None,
            }
        return self._cand_ids[k]

    def qid(self, dataset: str) -> str:
        n = self._next_qid.get(dataset, 0)
        self._next_qid[dataset] = n + 1
        return f"{DATASET_IDS[dataset]}:{n}"


def split_items(keys: Iterable[str], seed: int, salt: str) -> dict[str, str]:
    """Item -> split, 70/10/20, deterministic in (seed, salt) and independent of input order."""
    ordered = sorted(set(keys))
    random.Random(f"{seed}:{salt}:split").shuffle(ordered)
    n = len(ordered)
    n_train = round(n * SPLIT_FRACTIONS[0])
    n_val = round(n * SPLIT_FRACTIONS[1])
    out = {k: "train" for k in ordered[:n_train]}
    out.update({k: "val" for k in ordered[n_train : n_train + n_val]})
    out.update({k: "test" for k in ordered[n_train + n_val :]})
    return out


def rng_for(seed: int, *salt: object) -> random.Random:
    return random.Random(":".join([str(seed), *map(str, salt)]))


def fill_pool(
    pair: Pair,
    positives: Iterable[str],
    distractors: Sequence[str],
    limit: int,
    rng: random.Random,
    prefer: set[str] | None = None,
) -> None:
    """Pool = all positives (never dropped) + shuffled distractors up to ``limit``: the queries' hard negatives
    first, then ``prefer``red ones. A hard negative that still does not fit is dropped from its query, so every
    neg_cand_list names candidates of the pool."""
    negatives = {d for qs in pair.queries.values() for q in qs for d in q.negatives}
    pool: list[str] = []
    seen: set[str] = set()
    for did in positives:
        if did not in seen:
            seen.add(did)
            pool.append(did)
    if len(pool) > limit:
        logger.warning(
            "%s: %d positives exceed the pool limit %d; keeping all positives", pair.name, len(pool), limit
        )
    extra = [d for d in dict.fromkeys(distractors) if d not in seen]  # two emoji may share a caption
    rng.shuffle(extra)
    if prefer or negatives:
        prefer = prefer or set()
        extra.sort(key=lambda d: (d not in negatives, d not in prefer))  # stable: shuffled order kept per group
    for did in extra[: max(0, limit - len(pool))]:
        seen.add(did)
        pool.append(did)
    pair.pool = sorted(pool, key=lambda d: int(d.split(":")[1]))
    for split, qs in pair.queries.items():
        pair.queries[split] = [
            q if seen.issuperset(q.negatives) else replace(q, negatives=tuple(d for d in q.negatives if d in seen))
            for q in qs
        ]


def take(pair: Pair, split: str, queries: list[Query], n: int, rng: random.Random) -> None:
    rng.shuffle(queries)
    pair.queries[split] = sorted(queries[:n], key=lambda q: int(q.qid.split(":")[1]))


class CotMaker:
    """Runs the teacher with retries until a CoT passes the filters; dedups across the whole corpus."""

    def __init__(self, seed: int) -> None:
        self.seen: set[str] = set()
        self.rejected: dict[str, int] = {}
        self.seed = seed

    def make(
        self,
        salt: str,
        gen: Callable[[random.Random], teacher.TeacherOutput],
        gold: str,
        source_caption: str | None = None,
        query: str = "",
    ) -> str | None:
        """A filtered CoT for one query (the query's text keys the deduplication), or None."""
        for attempt in range(6):
            out = gen(rng_for(self.seed, "cot", salt, attempt))
            ok, reason = teacher.filter_cot(out.raw, gold, source_caption, out.keywords, seen=self.seen, query=query)
            if ok:
                return teacher.strip_tags(out.raw)
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return None


