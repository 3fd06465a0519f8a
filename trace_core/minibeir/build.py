"""Build the TRACE-mini corpus (mini M-BEIR with M-BEIR-CoT labels) from openly licensed sources.

    python -m trace_core.minibeir.build --out assets/minibeir [--emoji-dir DIR] [--seed 0]

Output follows the M-BEIR release layout (query/, cand_pool/local/, qrels/, instructions/, mbeir_images/)
with dataset ids 10 (emoji), 11 (clipart), 12 (fashionmnist), so it can sit next to M-BEIR's 0-9. Query
lines carry two extra keys for training: ``route`` ("direct" / "reason") and ``cot`` (teacher chain of
thought, tags removed; null for direct queries).

Leakage: the underlying items (emoji families, clip-art pictures, Fashion-MNIST images) are split 70/10/20
into train/val/test first, and a query of a split only ever involves items of that split, so no test target
is seen in training. Local pools hold the positives of all splits' queries plus distractors (as in M-BEIR).
Everything is derived from ``--seed`` through per-purpose RNGs, so equal seeds give identical files. The
corpus is written into a temporary sibling directory and renamed into place, so a failed build leaves the
previous corpus intact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_core.minibeir import sources as src
from trace_core.minibeir import teacher

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # of the items, in SPLITS order
DATASET_IDS = {"emoji": 10, "clipart": 11, "fashionmnist": 12}
DATASET_TITLES = {"emoji": "Emoji", "clipart": "OpenClipart", "fashionmnist": "FashionMNIST"}
TASK_MODALITIES = {  # M-BEIR task id -> (query modality, candidate modality)
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
# Task types whose queries reason (paper: composed, knowledge; here also multi-constraint questions).
REASON_PAIRS = frozenset({"emoji_task1", "emoji_task6", "emoji_task7"})

# Query instructions, same columns as M-BEIR's query_instructions.tsv. Where the task type exists in M-BEIR
# the wording is M-BEIR's (MSCOCO t->i / i->t, NIGHTS i->i, CIRR composed, OVEN/InfoSeek knowledge, WebQA)
# with the domain word swapped; the others are new, written in the same style.
INSTRUCTIONS: dict[tuple[str, int], tuple[str, str, str, str]] = {
    ("emoji", 0): (
        "Find me an emoji image that matches the given caption.",
        "Identify the emoji image showcasing the described subject.",
        "I want to retrieve an emoji image of this description.",
        "Show me an emoji image that best captures the following description.",
    ),
    ("emoji", 1): (
        "Retrieve the emoji reference entry that answers the following question.",
        "You have to find an emoji catalogue paragraph that provides the answer to the question.",
        "I want to find an answer to the question. Can you find the emoji entry that satisfies all its conditions?",
        "I'm looking for an emoji reference snippet that answers this question.",
    ),
    ("emoji", 2): (
        "Find an emoji image and its name that match this shortcode.",
        "Identify the emoji picture-name pair for the given shortcode.",
        "Can you pair this shortcode with the right emoji image and name?",
        "I'm looking for the emoji image and name that this shortcode stands for.",
    ),
    ("emoji", 3): (
        "Find an emoji name describing the following emoji image.",
        "Retrieve the name for the displayed emoji.",
        "Can you find a caption talking about this emoji image?",
        "I want to locate the name that best describes this emoji image.",
    ),
    ("emoji", 6): (
        "Retrieve an emoji reference paragraph that provides an answer to the given query about the image.",
        "Determine the emoji catalogue snippet that matches the question of this image.",
        "I want to find a paragraph from the emoji catalogue that answers my question about this image.",
        "You have to find an emoji catalogue segment that answers the question about the displayed image.",
    ),
    ("emoji", 7): (
        "Retrieve an emoji image that aligns with the modification instructions of the provided emoji.",
        "Pull up an emoji like this one, but with the modifications I asked for.",
        "Can you help me find an emoji that meets the modification from the given emoji?",
        "I'm looking for a similar emoji with the described changes.",
    ),
    ("clipart", 0): (
        "Find me a clip art image that matches the given caption.",
        "Identify the clip art image showcasing the described subject.",
        "I want to retrieve a clip art image of this description.",
        "Show me a clip art image that best captures the following description.",
    ),
    ("clipart", 3): (
        "Find a caption describing the following clip art image.",
        "Retrieve the caption for the displayed clip art.",
        "Can you find a caption talking about this clip art image?",
        "I want to locate the caption that best describes this clip art image.",
    ),
    ("fashionmnist", 4): (
        "Find a clothing image that looks similar to the provided image.",
        "Which clothing image is the most similar to the reference image?",
        "Find a fashion image of the same kind of item as the given one.",
        "You need to identify the clothing image that aligns most with this reference image.",
    ),
}


@dataclass(frozen=True)
class Sizes:
    """Queries per split and pool size, per pair; small because CPU evaluation encodes ~10 candidates/s."""

    train: int = 400  # training queries per pair (fewer when the pair's items run out)
    val: int = 40  # validation queries per pair
    test: int = 150  # test queries per pair
    pool: int = 1000  # maximum candidates in a pair's local pool

    def of(self, split: str) -> int:
        return {"train": self.train, "val": self.val, "test": self.test}[split]


@dataclass(frozen=True)
class BuildConfig:
    out: Path  # corpus root to (re)place, e.g. assets/minibeir
    emoji_dir: Path  # emoji-datasource-google package folder (required source)
    clipart_dir: Path | None  # openclipart svg folder; None skips the clipart pairs
    fashion_dir: Path | None  # Fashion-MNIST IDX folder; None skips the fashionmnist pairs
    words_file: Path = src.DEFAULT_WORDS_FILE  # English word list vetting clip-art titles
    seed: int = 0  # the only source of randomness
    sizes: Sizes = field(default_factory=Sizes)  # per-pair query and pool sizes
    max_clipart: int = 400  # clip-art items rendered (rendering is the slow part)
    fashion_pool: int = 150  # Fashion-MNIST pool images (split 70/10/20 per class like the queries)
    fashion_queries: int = 400  # Fashion-MNIST query images before the per-split caps


# ----------------------------------------------------------------------------------------------------
# Corpus accumulation


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
        self._cand_ids: dict[tuple[str, str | None, str | None], str] = {}
        self._next_did: dict[str, int] = {}
        self._next_qid: dict[str, int] = {}
        self.pairs: list[Pair] = []

    def image(self, dataset: str, key: str, loader: Callable[[], bytes | None]) -> str:
        rel = f"mbeir_images/{dataset}/{key}.png"
        self.images.setdefault(rel, loader)
        return rel

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


def _rng(seed: int, *salt: object) -> random.Random:
    return random.Random(":".join([str(seed), *map(str, salt)]))


def _fill_pool(
    pair: Pair,
    positives: Iterable[str],
    distractors: Sequence[str],
    limit: int,
    rng: random.Random,
    prefer: set[str] | None = None,
) -> None:
    """Pool = all positives (never dropped) + shuffled distractors up to ``limit``, ``prefer``red ones first."""
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
    if prefer:
        extra.sort(key=lambda d: d not in prefer)  # stable: shuffled order kept within each group
    for did in extra[: max(0, limit - len(pool))]:
        seen.add(did)
        pool.append(did)
    pair.pool = sorted(pool, key=lambda d: int(d.split(":")[1]))


def _take(pair: Pair, split: str, queries: list[Query], n: int, rng: random.Random) -> None:
    rng.shuffle(queries)
    pair.queries[split] = sorted(queries[:n], key=lambda q: int(q.qid.split(":")[1]))


class _CotMaker:
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
    ) -> str | None:
        for attempt in range(6):
            out = gen(_rng(self.seed, "cot", salt, attempt))
            ok, reason = teacher.filter_cot(out.raw, gold, source_caption, out.keywords, seen=self.seen)
            if ok:
                return teacher.strip_tags(out.raw)
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return None


# ----------------------------------------------------------------------------------------------------
# Emoji pairs


def _file_loader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _tone_caption(e: src.Emoji, tone: str | None) -> str:
    return e.name if tone is None else f"{e.name}: {tone} skin tone"


def _passage(e: src.Emoji) -> str:
    return (
        f"{e.name.capitalize()} (shortcode :{e.short_name}:) is an emoji in the {e.category} category, "
        f"{e.subcategory.replace('-', ' ')} group. It was introduced in Emoji {e.added_in}."
    )


_T0_TEMPLATES = ("{n}", "{n} emoji", "an emoji of {n}", "a {n} icon", "{n}, as an emoji")
_KNOWLEDGE_QUESTIONS = (
    ("category", "Which category does this emoji belong to?", "it is in the {c} category"),
    ("group", "In which emoji group is this listed?", "it is listed in the {g} group"),
    ("version", "In which Emoji version was this symbol introduced?", "it was introduced in Emoji {v}"),
    ("shortcode", "What shortcode do chat apps use for this emoji?", "its shortcode is :{s}:"),
    ("name", "What is the official name of this symbol?", "its official name is {n}"),
)
_TONE_EDITS = (
    "same one but with {t} skin tone",
    "make the skin tone {t}",
    "change it to {t} skin",
    "show it with a {t} skin tone instead",
)
_DEFAULT_TONE_EDITS = (
    "remove the skin tone, use the default yellow",
    "same one in the default yellow colour",
)
_GENDER_EDITS = {
    "man": ("make it a man", "same but as a man", "show a man instead"),
    "woman": ("make it a woman", "same but as a woman", "show a woman instead"),
    "person": (
        "make it a gender-neutral person",
        "same but as a neutral person",
        "show a person of no specific gender",
    ),
}


def build_emoji(corpus: Corpus, emoji: list[src.Emoji], cfg: BuildConfig, cots: _CotMaker) -> None:
    seed, sizes = cfg.seed, cfg.sizes
    emoji = [e for e in emoji if e.category != "Component"]  # bare skin-tone swatches and hair parts
    split_of = split_items((e.family for e in emoji), seed, "emoji")

    def img(e: src.Emoji, tone: str | None = None) -> str:
        path = e.image if tone is None else dict(e.tones)[tone]
        return corpus.image("emoji", path.stem, _file_loader(path))

    def by_split(items: Iterable[src.Emoji]) -> dict[str, list[src.Emoji]]:
        out: dict[str, list[src.Emoji]] = {s: [] for s in SPLITS}
        for e in items:
            out[split_of[e.family]].append(e)
        return out

    # Flags are a quarter of the set and nearly identical at 64 px; cap them so they do not dominate.
    flags = [e for e in emoji if e.category == "Flags"]
    core = [e for e in emoji if e.category != "Flags"] + _rng(seed, "flags").sample(
        flags, min(60, len(flags))
    )
    core.sort(key=lambda e: e.code)
    groups = by_split(core)

    # One shared sample of items per split for the simple pairs, so they reuse the same images (size budget).
    chosen: dict[str, list[src.Emoji]] = {}
    for s in SPLITS:
        items = list(groups[s])
        _rng(seed, "emoji-simple", s).shuffle(items)
        chosen[s] = items[: sizes.of(s)]
    image_distractors = [img(e) for e in core]
    # Composed edits first: the simple pairs then draw distractors from images already shipped (size budget).
    simple_imgs = {img(e) for s in SPLITS for e in chosen[s]}
    shipped = _emoji_task7(corpus, emoji, split_of, image_distractors, simple_imgs, img, cfg, cots)
    shipped.update(img(e) for s in SPLITS for e in chosen[s])

    # task0: caption -> image; task3: image -> name; task2: shortcode -> (image, name). All direct.
    for task in (0, 3, 2):
        pair = Pair("emoji", task)
        rng = _rng(seed, "emoji", task)
        positives: list[str] = []
        for s in SPLITS:
            qs = []
            for e in chosen[s]:
                if task == 0:
                    did = corpus.cand("emoji", None, img(e))
                    q = Query(
                        corpus.qid("emoji"),
                        _pick(rng, _T0_TEMPLATES).format(n=e.name),
                        None,
                        (did,),
                        0,
                        "direct",
                        None,
                        (e.family,),
                    )
                elif task == 3:
                    did = corpus.cand("emoji", e.name, None)
                    q = Query(corpus.qid("emoji"), None, img(e), (did,), 3, "direct", None, (e.family,))
                else:
                    did = corpus.cand("emoji", e.name, img(e))
                    q = Query(
                        corpus.qid("emoji"), f":{e.short_name}:", None, (did,), 2, "direct", None, (e.family,)
                    )
                qs.append(q)
                positives.append(did)
            _take(pair, s, qs, sizes.of(s), rng)
        if task == 0:
            distractors = image_distractors
        elif task == 3:
            distractors = [corpus.cand("emoji", e.name, None) for e in core]
        else:
            distractors = []  # mixed candidates: distractors would add images beyond the size budget
        distractor_dids = (
            [corpus.cand("emoji", None, d) for d in distractors] if task == 0 else list(distractors)
        )
        prefer = {corpus.cand("emoji", None, rel) for rel in shipped} if task == 0 else None
        _fill_pool(pair, positives, distractor_dids, sizes.pool, rng, prefer=prefer)
        corpus.pairs.append(pair)

    # task6: image + knowledge question -> catalogue passage (reason); task1: multi-constraint text -> passage.
    passages = {e.code: corpus.cand("emoji", _passage(e), None) for e in core}
    for task in (6, 1):
        pair = Pair("emoji", task)
        rng = _rng(seed, "emoji", task)
        positives = []
        for s in SPLITS:
            qs = []
            for e in chosen[s]:
                if task == 6:
                    topic, question, fact = _pick(rng, _KNOWLEDGE_QUESTIONS)  # type: ignore[misc]
                    fact = fact.format(
                        c=e.category,
                        g=e.subcategory.replace("-", " "),
                        v=e.added_in,
                        s=e.short_name,
                        n=e.name,
                    )
                    cot = cots.make(
                        f"e6:{e.code}",
                        lambda r, e=e, topic=topic, fact=fact: teacher.knowledge_cot(
                            r, e.name, topic, fact, _name_keywords(e.name)
                        ),
                        e.name,
                    )
                    txt, qimg = question, img(e)
                else:
                    constraints = _unique_constraints(e, core)
                    if constraints is None:
                        continue
                    cot = cots.make(
                        f"e1:{e.code}",
                        lambda r, e=e, c=constraints: teacher.constraint_cot(
                            r, c, e.name, _name_keywords(e.name)
                        ),
                        e.name,
                    )
                    txt, qimg = "Which emoji is " + ", ".join(constraints) + "?", None
                if cot is None:
                    continue
                did = passages[e.code]
                qs.append(Query(corpus.qid("emoji"), txt, qimg, (did,), task, "reason", cot, (e.family,)))
                positives.append(did)
            _take(pair, s, qs, sizes.of(s), rng)
        _fill_pool(pair, positives, list(passages.values()), sizes.pool, rng)
        corpus.pairs.append(pair)


def _emoji_task7(
    corpus: Corpus,
    emoji: list[src.Emoji],
    split_of: dict[str, str],
    image_distractors: list[str],
    prefer_imgs: set[str],
    img: Callable[..., str],
    cfg: BuildConfig,
    cots: _CotMaker,
) -> set[str]:
    """Composed edits (skin tone, gender, both) -> target image; returns the image paths the pool uses.

    Beyond its positives and a few hard negatives (other tones / genders of the same families), the pool
    takes distractors from ``prefer_imgs`` (images the simple pairs ship anyway) to stay within the size budget.
    """
    seed, sizes = cfg.seed, cfg.sizes
    # task7: composed edits (skin tone, gender, both) -> target image (reason).
    pair = Pair("emoji", 7)
    rng = _rng(seed, "emoji", 7)
    families: dict[str, list[src.Emoji]] = {}
    for e in emoji:
        families.setdefault(e.family, []).append(e)
    edits: dict[str, list[Query]] = {s: [] for s in SPLITS}
    for fam in sorted(families):
        members = families[fam]
        s = split_of[fam]
        for a in members:
            states_a = [None, *[t for t, _ in a.tones]]
            for b in members:
                genders_ok = a is b or (a.gender and b.gender and a.gender != b.gender)
                if not genders_ok:
                    continue
                states_b = [None, *[t for t, _ in b.tones]]
                for ta in states_a:
                    for tb in states_b:
                        if a is b and ta == tb:
                            continue
                        if a is not b and rng.random() > 0.35:
                            continue  # gender edits are combinatorial; thin them
                        if a is b and rng.random() > 0.5:
                            continue
                        q = _edit_query(corpus, a, ta, b, tb, img, rng, cots)
                        if q is not None:
                            edits[s].append(q)
    positives = []
    for s in SPLITS:
        # Edits starting from an image the simple pairs ship anyway come first (size budget), order kept random.
        rng.shuffle(edits[s])
        edits[s].sort(key=lambda q: q.img not in prefer_imgs)
        pair.queries[s] = sorted(edits[s][: sizes.of(s)], key=lambda q: int(q.qid.split(":")[1]))
        positives.extend(d for q in pair.queries[s] for d in q.positives)
    # Hard distractors first (other tones / genders of used families), then other emoji.
    used_fams = {q.items[0] for s in SPLITS for q in pair.queries[s]}
    hard_dids = [
        corpus.cand("emoji", None, img(m, t))
        for f in sorted(used_fams)
        for m in families[f]
        for t in [None, *[x for x, _ in m.tones]]
    ]
    budget = max(0, sizes.pool - len(set(positives)))
    _fill_pool(
        pair,
        positives + _rng(seed, "hard7").sample(hard_dids, min(len(hard_dids), budget // 4)),
        [corpus.cand("emoji", None, d) for d in image_distractors],
        sizes.pool,
        rng,
        prefer={corpus.cand("emoji", None, rel) for rel in prefer_imgs},
    )
    corpus.pairs.append(pair)
    return {corpus.cands[d]["img_path"] for d in pair.pool}


def _pick(rng: random.Random, options: Sequence[Any]) -> Any:
    return options[rng.randrange(len(options))]


def _name_keywords(name: str) -> tuple[str, ...]:
    stop = {"with", "and", "the", "of", "face", "sign", "symbol", "a", "in", "on"}
    words = [w for w in name.replace(":", " ").replace(",", " ").split() if w not in stop and len(w) > 2]
    return tuple(words) or (name,)


def _unique_constraints(e: src.Emoji, pool: Sequence[src.Emoji]) -> list[str] | None:
    """Constraints (group, a name word, version) that single out ``e`` among all emoji, or None."""
    words = [w for w in _name_keywords(e.name) if w.isalpha()]
    if not words:
        return None
    word = max(words, key=len)
    group = e.subcategory.replace("-", " ")
    cands = [x for x in pool if x.subcategory == e.subcategory and word in x.name.split()]
    constraints = [f"in the {group} group", f"named with the word '{word}'"]
    if len(cands) > 1:
        cands = [x for x in cands if x.added_in == e.added_in]
        constraints.append(f"introduced in Emoji {e.added_in}")
    if len(cands) > 1:
        cands = [x for x in cands if x.category == e.category and len(x.name) == len(e.name)]
        return None
    return constraints if cands == [e] else None


def _edit_query(
    corpus: Corpus,
    a: src.Emoji,
    ta: str | None,
    b: src.Emoji,
    tb: str | None,
    img: Callable[[src.Emoji, str | None], str],
    rng: random.Random,
    cots: _CotMaker,
) -> Query | None:
    parts, unchanged, keywords = [], [], []
    if a is not b:
        assert b.gender is not None
        parts.append(_pick(rng, _GENDER_EDITS[b.gender]))
        keywords.append(b.gender)
    else:
        unchanged.append("person" if a.gender else "subject")
    if ta != tb:
        if tb is None:
            parts.append(_pick(rng, _DEFAULT_TONE_EDITS))
            keywords.append("default")
        else:
            parts.append(_pick(rng, _TONE_EDITS).format(t=tb))
            keywords.append(tb)
    else:
        unchanged.append("skin tone")
    unchanged += ["pose", "props"]
    text = " and ".join(parts) if len(parts) < 3 else ", ".join(parts)
    src_cap = _tone_caption(a, ta)
    tgt_cap = _tone_caption(b, tb) if tb is not None else f"{b.name} in the default yellow"
    ops = []
    if a is not b:
        ops.append(f"turn the {a.gender} into a {b.gender}")
    if ta != tb:
        ops.append(f"set the skin tone to {tb}" if tb else "drop the skin tone for the default yellow")
    unchanged_txt = ", ".join(unchanged[:-1]) + " and " + unchanged[-1]
    cot = cots.make(
        f"e7:{a.code}:{ta}:{b.code}:{tb}",
        lambda r: teacher.composed_cot(
            r, src_cap, " and ".join(ops), unchanged_txt, tgt_cap, [*keywords, *_name_keywords(b.name)]
        ),
        tgt_cap,
        source_caption=src_cap,
    )
    if cot is None:
        return None
    did = corpus.cand("emoji", None, img(b, tb))
    return Query(corpus.qid("emoji"), text, img(a, ta), (did,), 7, "reason", cot, (a.family,))


# ----------------------------------------------------------------------------------------------------
# Clip art and Fashion-MNIST


def _clip_caption(c: src.Clipart) -> str:
    topic = c.topics[-1] if c.topics else "clip art"
    return f"{c.title} ({topic})"


def build_clipart(corpus: Corpus, cfg: BuildConfig) -> None:
    assert cfg.clipart_dir is not None
    items = src.load_clipart(cfg.clipart_dir, cfg.words_file)
    _rng(cfg.seed, "clip-order").shuffle(items)
    rendered: list[tuple[src.Clipart, str]] = []
    for c in items:
        if len(rendered) >= cfg.max_clipart:
            break
        png = src.render_svg(c.svg)
        if png is None:
            continue
        rendered.append((c, corpus.image("clipart", c.key, lambda png=png: png)))
    split_of = split_items((c.key for c, _ in rendered), cfg.seed, "clipart")
    for task in (0, 3):
        pair = Pair("clipart", task)
        rng = _rng(cfg.seed, "clipart", task)
        positives: list[str] = []
        for s in SPLITS:
            qs = []
            for c, rel in rendered:
                if split_of[c.key] != s:
                    continue
                if task == 0:
                    did = corpus.cand("clipart", None, rel)
                    q = Query(
                        corpus.qid("clipart"), _clip_caption(c), None, (did,), 0, "direct", None, (c.key,)
                    )
                else:
                    did = corpus.cand("clipart", _clip_caption(c), None)
                    q = Query(corpus.qid("clipart"), None, rel, (did,), 3, "direct", None, (c.key,))
                qs.append(q)
            _take(pair, s, qs, cfg.sizes.of(s), rng)
            positives.extend(d for q in pair.queries[s] for d in q.positives)
        _fill_pool(pair, positives, [], cfg.sizes.pool, rng)
        corpus.pairs.append(pair)


def build_fashion(corpus: Corpus, cfg: BuildConfig) -> None:
    """fashionmnist_task4: image -> images of the same class; pool images and queries split alike."""
    assert cfg.fashion_dir is not None
    images = src.load_fashion(cfg.fashion_dir)
    rng = _rng(cfg.seed, "fashion")
    by_class: dict[int, list[src.FashionImage]] = {}
    for im in images:
        by_class.setdefault(im.label, []).append(im)
    # Few images per class: every file costs a filesystem block, and class-level positives need few.
    per_class_pool = min(cfg.sizes.pool, cfg.fashion_pool) // len(src.FASHION_CLASSES)
    per_class_queries = cfg.fashion_queries // len(src.FASHION_CLASSES)
    pair = Pair("fashionmnist", 4)
    pool: list[str] = []
    targets: dict[tuple[str, int], list[str]] = {}
    query_imgs: dict[str, list[src.FashionImage]] = {s: [] for s in SPLITS}
    for label in sorted(by_class):
        ims = list(by_class[label])
        rng.shuffle(ims)
        n_pool = per_class_pool
        pool_ims, rest = ims[:n_pool], ims[n_pool:]
        splits = split_items((im.key for im in pool_ims), cfg.seed, f"fashion-pool-{label}")
        for im in pool_ims:
            rel = corpus.image("fashionmnist", im.key, lambda im=im: src.fashion_png(im))
            did = corpus.cand("fashionmnist", None, rel)
            pool.append(did)
            targets.setdefault((splits[im.key], label), []).append(did)
        q_split = split_items((im.key for im in rest[:per_class_queries]), cfg.seed, f"fashion-query-{label}")
        for im in rest[:per_class_queries]:
            query_imgs[q_split[im.key]].append(im)
    for s in SPLITS:
        qs = []
        for im in query_imgs[s]:
            rel = corpus.image("fashionmnist", im.key, lambda im=im: src.fashion_png(im))
            pos = tuple(targets[(s, im.label)])
            qs.append(Query(corpus.qid("fashionmnist"), None, rel, pos, 4, "direct", None, (im.key,)))
        _take(pair, s, qs, cfg.sizes.of(s), rng)
    pair.pool = pool
    corpus.pairs.append(pair)


# ----------------------------------------------------------------------------------------------------
# Writing


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _query_record(q: Query, pair: Pair) -> dict[str, Any]:
    return {
        "qid": q.qid,
        "query_txt": q.txt,
        "query_img_path": q.img,
        "query_modality": TASK_MODALITIES[pair.task_id][0],
        "query_src_content": None,
        "pos_cand_list": list(q.positives),
        "neg_cand_list": [],
        "task_id": q.task_id,
        "route": q.route,
        "cot": q.cot,
    }


def write_corpus(corpus: Corpus, root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write every file under ``root`` (which must be empty); returns the manifest written with them."""
    files: dict[str, str] = {}
    used_images: set[str] = set()
    for pair in corpus.pairs:
        for s in SPLITS:
            recs = [_query_record(q, pair) for q in pair.queries[s]]
            files[f"query/{s}/mbeir_{pair.name}_{s}.jsonl"] = _jsonl(recs)
            files[f"qrels/{s}/mbeir_{pair.name}_{s}_qrels.txt"] = "".join(
                f"{q.qid} Q0 {d} 1 {q.task_id}\n" for q in pair.queries[s] for d in q.positives
            )
            used_images.update(q.img for q in pair.queries[s] if q.img)
        cands = [corpus.cands[d] for d in pair.pool]
        files[f"cand_pool/local/mbeir_{pair.name}_cand_pool.jsonl"] = _jsonl(cands)
        used_images.update(c["img_path"] for c in cands if c["img_path"])
    rows = ["query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\tprompt_4"]
    for pair in corpus.pairs:
        qm, cm = TASK_MODALITIES[pair.task_id]
        prompts = INSTRUCTIONS[(pair.dataset, pair.task_id)]
        rows.append(
            "\t".join([qm, cm, DATASET_TITLES[pair.dataset], str(DATASET_IDS[pair.dataset]), *prompts])
        )
    files["instructions/query_instructions.tsv"] = "\n".join(rows) + "\n"

    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    n_img = 0
    for rel in sorted(used_images):
        data = corpus.images[rel]()
        if data is None:
            raise RuntimeError(f"image {rel} could not be produced")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        n_img += 1

    pairs_meta = {}
    for pair in corpus.pairs:
        counts = {s: len(pair.queries[s]) for s in SPLITS}
        n_q = sum(counts.values())
        n_reason = sum(q.route == "reason" for s in SPLITS for q in pair.queries[s])
        pairs_meta[pair.name] = {
            "task_id": pair.task_id,
            "queries": counts,
            "pool": len(pair.pool),
            "reason_rate": round(n_reason / n_q, 3) if n_q else 0.0,
        }
    manifest = {
        **meta,
        "pairs": pairs_meta,
        "images": n_img,
        "sha256": {
            rel: hashlib.sha256(text.encode("utf-8")).hexdigest()
            for rel, text in sorted(files.items())
            if rel.endswith(".jsonl")
        },
    }
    (root / "manifest.json").write_text(
        json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    return manifest


def build(cfg: BuildConfig) -> dict[str, Any]:
    """Build the corpus into ``cfg.out`` atomically; returns the manifest."""
    emoji = src.load_emoji(cfg.emoji_dir)  # load (and fail on missing sources) before touching the output
    if cfg.clipart_dir is not None and not cfg.clipart_dir.is_dir():
        raise src.SourceMissingError("clipart", cfg.clipart_dir, "no svg folder")
    if cfg.fashion_dir is not None and not cfg.fashion_dir.is_dir():
        raise src.SourceMissingError("fashionmnist", cfg.fashion_dir, "no folder")
    corpus = Corpus()
    cots = _CotMaker(cfg.seed)
    build_emoji(corpus, emoji, cfg, cots)
    versions = {"emoji-datasource-google": src.emoji_version(cfg.emoji_dir)}
    if cfg.clipart_dir is not None:
        build_clipart(corpus, cfg)
        versions["openclipart-svg"] = src.clipart_version()
    if cfg.fashion_dir is not None:
        build_fashion(corpus, cfg)
        versions["dataset-fashion-mnist"] = src.fashion_version()
    if cots.rejected:
        logger.info("teacher outputs rejected by the filters: %s", cots.rejected)

    out = cfg.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # SOURCES.md is written by hand; carry it over so a rebuild does not lose it.
        if (out / "SOURCES.md").is_file():
            shutil.copy2(out / "SOURCES.md", tmp / "SOURCES.md")
        meta = {
            "seed": cfg.seed,
            "sizes": {
                "train": cfg.sizes.train,
                "val": cfg.sizes.val,
                "test": cfg.sizes.test,
                "pool": cfg.sizes.pool,
            },
            "sources": versions,
            "dataset_ids": {
                k: v for k, v in DATASET_IDS.items() if any(p.dataset == k for p in corpus.pairs)
            },
            "cot_rejections": dict(sorted(cots.rejected.items())),
        }
        manifest = write_corpus(corpus, tmp, meta)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def summary_table(manifest: dict[str, Any]) -> str:
    lines = [f"{'pair':<20}{'train':>7}{'val':>6}{'test':>6}{'pool':>7}{'reason':>8}"]
    for name, p in sorted(manifest["pairs"].items()):
        q = p["queries"]
        lines.append(
            f"{name:<20}{q['train']:>7}{q['val']:>6}{q['test']:>6}{p['pool']:>7}{p['reason_rate']:>8.2f}"
        )
    tot = {s: sum(p["queries"][s] for p in manifest["pairs"].values()) for s in SPLITS}
    lines.append(f"{'total':<20}{tot['train']:>7}{tot['val']:>6}{tot['test']:>6}")
    lines.append(f"images: {manifest['images']}; seed {manifest['seed']}; sources {manifest['sources']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("assets/minibeir"))
    p.add_argument("--emoji-dir", type=Path, default=src.DEFAULT_EMOJI_DIR)
    p.add_argument("--clipart-dir", type=Path, default=src.DEFAULT_CLIPART_DIR)
    p.add_argument("--fashion-dir", type=Path, default=src.DEFAULT_FASHION_DIR)
    p.add_argument("--words-file", type=Path, default=src.DEFAULT_WORDS_FILE)
    p.add_argument("--no-clipart", action="store_true", help="skip the openclipart pairs")
    p.add_argument("--no-fashionmnist", action="store_true", help="skip the Fashion-MNIST pair")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=Sizes.train, help="training queries per pair")
    p.add_argument("--val", type=int, default=Sizes.val, help="validation queries per pair")
    p.add_argument("--test", type=int, default=Sizes.test, help="test queries per pair")
    p.add_argument("--pool", type=int, default=Sizes.pool, help="maximum candidates per pool")
    p.add_argument("--max-clipart", type=int, default=400, help="clip-art pictures to render")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    cfg = BuildConfig(
        out=args.out,
        emoji_dir=args.emoji_dir,
        clipart_dir=None if args.no_clipart else args.clipart_dir,
        fashion_dir=None if args.no_fashionmnist else args.fashion_dir,
        words_file=args.words_file,
        seed=args.seed,
        sizes=Sizes(train=args.train, val=args.val, test=args.test, pool=args.pool),
        max_clipart=args.max_clipart,
    )
    try:
        manifest = build(cfg)
    except src.SourceMissingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
