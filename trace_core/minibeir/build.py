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
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_core.atomic import atomic_directory
from trace_core.minibeir import emoji as emoji_pairs
from trace_core.minibeir import sources as src
from trace_core.minibeir.corpus import (
    DATASET_IDS,
    SPLITS,
    Corpus,
    CotMaker,
    Pair,
    Query,
    fill_pool,
    rng_for,
    split_items,
    take,
)
from trace_core.minibeir.reach import DEFAULT_CACHE as DEFAULT_REACH_CACHE
from trace_core.minibeir.reach import BaseLMReach
from trace_core.minibeir.wordnet import DEFAULT_WORDNET_DIR, WordNet

logger = logging.getLogger(__name__)

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
# Pairs that mix plainly stated (direct) and complex (reason) queries; difficulty is labelled per query.
MIXED_PAIRS = frozenset({"emoji_task1", "emoji_task2", "emoji_task8"})

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
        "I want to find the emoji entry this question is about. Can you find it?",
        "I'm looking for an emoji reference snippet that answers this question.",
    ),
    ("emoji", 2): (
        "Find the emoji image and its name that this description refers to.",
        "Identify the emoji picture-name pair for the given request.",
        "Can you pair this request with the right emoji image and name?",
        "I'm looking for the emoji image and name that this text stands for.",
    ),
    ("emoji", 3): (
        "Find an emoji name describing the following emoji image.",
        "Retrieve the name for the displayed emoji.",
        "Can you find a caption talking about this emoji image?",
        "I want to locate the name that best describes this emoji image.",
    ),
    ("emoji", 8): (
        "Retrieve an emoji image and its name that align with the modification instructions of the provided emoji.",
        "Pull up an emoji like this one, but with the modifications I asked for, and its name.",
        "Can you help me find an emoji, with its name, that meets the modification from the given emoji?",
        "I'm looking for a similar emoji with the described changes; show me its image and name.",
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

    train: int = 400  # training queries per simple pair (fewer when the pair's items run out)
    val: int = 40  # validation queries per pair
    test: int = 150  # test queries per simple pair
    pool: int = 1000  # maximum candidates in a pair's local pool
    mixed_train: int = 1200  # training queries per mixed pair (complex and plainly stated)
    mixed_test: int = 250  # test queries per mixed pair: enough complex ones for an interval on the gain
    edit_pool: int = 1900  # the edit pairs' pool: all positives and every variant of the test families

    def of(self, split: str) -> int:
        return {"train": self.train, "val": self.val, "test": self.test}[split]


@dataclass(frozen=True)
class BuildConfig:
    out: Path  # corpus root to (re)place, e.g. assets/minibeir
    emoji_dir: Path  # emoji-datasource-google package folder (required source)
    clipart_dir: Path | None  # openclipart svg folder; None skips the clipart pairs
    fashion_dir: Path | None  # Fashion-MNIST IDX folder; None skips the fashionmnist pairs
    wordnet_dir: Path | None = DEFAULT_WORDNET_DIR  # WordNet database; None skips the definition pair
    words_file: Path = src.DEFAULT_WORDS_FILE  # English word list vetting clip-art titles
    seed: int = 0  # the only source of randomness
    sizes: Sizes = field(default_factory=Sizes)  # per-pair query and pool sizes
    max_clipart: int = 400  # clip-art items rendered (rendering is the slow part)
    fashion_pool: int = 150  # Fashion-MNIST pool images (split 70/10/20 per class like the queries)
    fashion_queries: int = 400  # Fashion-MNIST query images before the per-split caps
    # (questions, targets) -> whether the untrained base LM answers each definition question
    # (reach.BaseLMReach); None: emoji_task1 is split like the other pairs and not filtered
    reach: Callable[[list[str], list[str]], list[bool]] | None = None
    tone_step: str = "plain"  # how a relative skin-tone edit's CoT takes its step (emoji.TONE_STEPS)
    relative_drill: int = 0  # extra training queries per edit pair, all relative tone edits (emoji._relative_drill)
    knowledge: bool = False  # emoji_task1's country knowledge questions (emoji._knowledge, minibeir/countries.py)


# ----------------------------------------------------------------------------------------------------
# Clip art and Fashion-MNIST


def _clip_caption(c: src.Clipart) -> str:
    topic = c.topics[-1] if c.topics else "clip art"
    return f"{c.title} ({topic})"


def build_clipart(corpus: Corpus, cfg: BuildConfig) -> None:
    assert cfg.clipart_dir is not None
    items = src.load_clipart(cfg.clipart_dir, cfg.words_file)
    rng_for(cfg.seed, "clip-order").shuffle(items)
    rendered: list[tuple[src.Clipart, str]] = []
    for c in items:
        if len(rendered) >= cfg.max_clipart:
            break
        png = src.render_svg(c.svg)
        if png is None:
            continue
        rendered.append((c, corpus.image("clipart", c.key, lambda png=png: png, c.title)))
    split_of = split_items((c.key for c, _ in rendered), cfg.seed, "clipart")
    for task in (0, 3):
        pair = Pair("clipart", task)
        rng = rng_for(cfg.seed, "clipart", task)
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
            take(pair, s, qs, cfg.sizes.of(s), rng)
            positives.extend(d for q in pair.queries[s] for d in q.positives)
        fill_pool(pair, positives, [], cfg.sizes.pool, rng)
        corpus.pairs.append(pair)


def build_fashion(corpus: Corpus, cfg: BuildConfig) -> None:
    """fashionmnist_task4: image -> images of the same class; pool images and queries split alike."""
    assert cfg.fashion_dir is not None
    images = src.load_fashion(cfg.fashion_dir)
    rng = rng_for(cfg.seed, "fashion")
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
            rel = corpus.image("fashionmnist", im.key, lambda im=im: src.fashion_png(im),
                               src.FASHION_CLASSES[im.label])
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
        take(pair, s, qs, cfg.sizes.of(s), rng)
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
        "neg_cand_list": list(q.negatives),
        "task_id": q.task_id,
        "route": q.route,
        "cot": q.cot,
        "target_name": q.target_name,
        "ref_name": q.ref_name,
        "kind": q.kind,
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
        cands = [corpus.cand_record(d) for d in pair.pool]
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
    wordnet = WordNet(cfg.wordnet_dir) if cfg.wordnet_dir is not None else None
    corpus = Corpus()
    cots = CotMaker(cfg.seed)
    emoji_pairs.build_emoji(corpus, emoji, cfg.sizes, cfg.seed, cots, wordnet, cfg.reach, cfg.tone_step,
                           cfg.relative_drill, cfg.knowledge)
    versions = {"emoji-datasource-google": src.emoji_version(cfg.emoji_dir)}
    if wordnet is not None:
        versions["wordnet-base"] = src.dpkg_version("wordnet-base")
    if cfg.clipart_dir is not None:
        build_clipart(corpus, cfg)
        versions["openclipart-svg"] = src.clipart_version()
    if cfg.fashion_dir is not None:
        build_fashion(corpus, cfg)
        versions["dataset-fashion-mnist"] = src.fashion_version()
    if cots.rejected:
        logger.info("teacher outputs rejected by the filters: %s", cots.rejected)

    out = cfg.out.resolve()
    with atomic_directory(out) as tmp:
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
                "mixed_train": cfg.sizes.mixed_train,
                "mixed_test": cfg.sizes.mixed_test,
                "edit_pool": cfg.sizes.edit_pool,
            },
            "sources": versions,
            # emoji_task1's val / test ask only what the untrained base LM answers (minibeir/reach.py)
            "definition_reach": None if cfg.reach is None else getattr(cfg.reach, "lm_name", "custom"),
            "dataset_ids": {
                k: v for k, v in DATASET_IDS.items() if any(p.dataset == k for p in corpus.pairs)
            },
            "cot_rejections": dict(sorted(cots.rejected.items())),
        }
        if cfg.tone_step != "plain":  # a plain build's manifest stays as corpus v3's
            meta["tone_step"] = cfg.tone_step
        if cfg.relative_drill:
            meta["relative_drill"] = cfg.relative_drill
        if cfg.knowledge:
            meta["knowledge"] = True
        manifest = write_corpus(corpus, tmp, meta)
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
    p.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR)
    p.add_argument("--no-wordnet", action="store_true", help="skip the definition questions (emoji_task1)")
    p.add_argument("--no-reach", action="store_true",
                   help="do not ask the base LM which definition questions it answers (emoji_task1 val/test "
                        "then also hold questions it cannot answer)")
    p.add_argument("--reach-cache", type=Path, default=DEFAULT_REACH_CACHE, help="the base LM's cached answers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=Sizes.train, help="training queries per pair")
    p.add_argument("--val", type=int, default=Sizes.val, help="validation queries per pair")
    p.add_argument("--test", type=int, default=Sizes.test, help="test queries per pair")
    p.add_argument("--pool", type=int, default=Sizes.pool, help="maximum candidates per pool")
    p.add_argument("--mixed-train", type=int, default=Sizes.mixed_train, help="training queries per mixed pair")
    p.add_argument("--mixed-test", type=int, default=Sizes.mixed_test, help="test queries per mixed pair")
    p.add_argument("--edit-pool", type=int, default=Sizes.edit_pool, help="maximum candidates of the edit pools")
    p.add_argument("--max-clipart", type=int, default=400, help="clip-art pictures to render")
    p.add_argument("--tone-step", choices=emoji_pairs.TONE_STEPS, default="plain",
                   help="how the CoT of a relative skin-tone edit takes its step: plain (corpus v3: the tone "
                        "reached), step (v4: 'one shade darker than light: ...'), scale (v5: the scale written "
                        "out, then the tone after the reference's)")
    p.add_argument("--relative-drill", type=int, default=0, metavar="N",
                   help="up to N more training queries per edit pair, each a relative skin-tone edit ('one "
                        "shade darker'); val, test, the pools and the other queries stay those of the build "
                        "without them (default 0)")
    p.add_argument("--knowledge", action="store_true",
                   help="add emoji_task1's country knowledge questions ('The flag of the country whose capital is "
                        "Windhoek.'), made after every other query: the rest of the corpus stays that of the "
                        "build without them")
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
        wordnet_dir=None if args.no_wordnet else args.wordnet_dir,
        words_file=args.words_file,
        seed=args.seed,
        sizes=Sizes(train=args.train, val=args.val, test=args.test, pool=args.pool,
                    mixed_train=args.mixed_train, mixed_test=args.mixed_test, edit_pool=args.edit_pool),
        max_clipart=args.max_clipart,
        reach=None if args.no_reach or args.no_wordnet else BaseLMReach(cache=args.reach_cache),
        tone_step=args.tone_step,
        relative_drill=args.relative_drill,
        knowledge=args.knowledge,
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
