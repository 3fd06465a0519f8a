"""Tests of the TRACE-mini corpus builder (trace_core.minibeir) and of the committed corpus.

Offline and fast: the builder runs on a tiny synthetic emoji source (plain items named by WordNet nouns and
edit families of people with skin tones and man/woman/person variants, 64 px PNGs in the npm package's
layout), a tiny WordNet (index.noun / data.noun in WordNet's own format) and a tiny Fashion-MNIST IDX set,
all written here; the real sources are not needed. The committed assets/minibeir corpus is validated with
the same checks when it is present.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import random
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from trace_core import mbeir
from trace_core.minibeir import build as mb
from trace_core.minibeir import emoji as me
from trace_core.minibeir import sources, teacher
from trace_core.minibeir.wordnet import WordNet

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets" / "minibeir"
TONES = list(sources.SKIN_TONES)
TONE_WORDS = list(sources.SKIN_TONES.values())  # light .. dark
EDIT_PAIRS = {"emoji_task2", "emoji_task8"}
QUERY_KEYS = [
    "qid",
    "query_txt",
    "query_img_path",
    "query_modality",
    "query_src_content",
    "pos_cand_list",
    "neg_cand_list",
    "task_id",
    "route",
    "cot",
    "target_name",
    "ref_name",
    "kind",
]
REASON_KINDS = {"emoji_task1": "definition", "emoji_task2": "edit-text", "emoji_task8": "edit-image"}
MAX_COT_WORDS = 45


# ----------------------------------------------------------------------------------------------------
# Synthetic sources

# Plain emoji (no skin tones, no gender variants) named by WordNet nouns: (name, category, subcategory).
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "kiwi",
          "melon", "coconut", "olive", "avocado", "strawberry", "tomato", "blueberry", "tangerine",
          "pineapple", "watermelon"]
DISHES = ["hot dog", "pizza", "taco", "burrito", "bagel", "pretzel", "pancake", "waffle", "croissant", "baguette",
          "fortune cookie"]
TOOLS = ["hammer", "wrench", "lantern", "umbrella", "telescope", "microscope", "compass", "magnet",
         "scissors", "candle", "t-shirt"]
PLAIN = ([(n, "Food & Drink", "food-fruit") for n in FRUITS] + [(n, "Food & Drink", "food-prepared") for n in DISHES]
         + [(n, "Objects", "tool") for n in TOOLS])
NO_WORDNET = "olive"  # a plain item WordNet does not know: it never gets a definition question
JOBS = ["pilot", "judge", "farmer", "cook", "singer", "artist", "teacher", "mechanic", "scientist", "astronaut"]
HANDS = ["waving hand", "raised fist", "thumbs up"]  # skin tones, no gender variants
# Families whose neutral base emoji carries a gendered legacy Unicode name (as 1F935 and 1F473 do): the base
# shares its name, or its gender, with a ZWJ variant, and must give way. (code, name, obsoletes link)
LEGACY = [
    ("04000", "MAN IN TUXEDO", {}),
    ("04000-200D-2642-FE0F", "MAN IN TUXEDO", {}),
    ("04000-200D-2640-FE0F", "WOMAN IN TUXEDO", {}),
    ("04100", "MAN WITH TURBAN", {"obsoleted_by": "04100-200D-2642-FE0F"}),
    ("04100-200D-2642-FE0F", "MAN WEARING TURBAN", {"obsoletes": "04100"}),
    ("04100-200D-2640-FE0F", "WOMAN WEARING TURBAN", {}),
]
LEGACY_BASES = {"04000", "04100"}

# WordNet lexicographer file numbers (wordnet.LEXFILES).
LEX_ARTIFACT, LEX_FOOD, LEX_PERSON, LEX_PLANT = 6, 13, 18, 20
_ADJ = ["sweet", "sour", "small", "large", "round", "oblong", "soft", "firm", "juicy", "dry", "bitter"]
_COLOUR = ["red", "yellow", "green", "purple", "orange", "brown", "pale", "dark", "golden"]
_FEATURE = ["thin skin", "a hard pit", "many seeds", "a tough rind", "a handle", "a long shaft", "a flat base"]


def _gloss(i: int, cls: str) -> str:
    """A made-up definition that names no plain item (unique per i)."""
    return f"{_ADJ[i % len(_ADJ)]} {_COLOUR[i % len(_COLOUR)]} {cls} with {_FEATURE[i % len(_FEATURE)]}"


def wordnet_entries() -> dict[str, list[tuple[int, str, str | None]]]:
    """Lemma -> its noun senses in frequency order: (lexfile number, gloss, hypernym lemma)."""
    senses: dict[str, list[tuple[int, str, str | None]]] = {}
    for i, (name, cat, _) in enumerate(PLAIN):
        if name == NO_WORDNET:
            continue
        if cat == "Objects":
            senses[name] = [(LEX_ARTIFACT, _gloss(i, "implement"), "hand tool")]
        elif name in DISHES:
            senses[name] = [(LEX_FOOD, _gloss(i, "dish"), None)]
        else:
            senses[name] = [(LEX_FOOD, _gloss(i, "edible fruit"), "edible fruit")]
    # Edge cases of definition_senses: a first sense that names its lemma, one in a lexicographer file that
    # does not fit the category, and an example sentence (after ';') that names the lemma.
    senses["lemon"].insert(0, (LEX_PLANT, "yellow oval lemon fruit of a small evergreen tree", "edible fruit"))
    senses["mango"].insert(0, (LEX_PERSON, "a slang word for a person of no importance", None))
    senses["bagel"] = [(LEX_FOOD, 'glazed yeast-raised doughnut-shaped roll with hard crust; "a bagel with lox"',
                        "bread")]
    # Glosses that name the target in a plural or across a hyphen, and a hypernym that names it.
    senses["cherry"].insert(0, (LEX_FOOD, "a small fruit like the other cherries of its genus", "edible fruit"))
    senses["t-shirt"] = [(LEX_ARTIFACT, "a close-fitting pullover shirt", "shirt"),
                         (LEX_ARTIFACT, "a collarless short-sleeved garment for the upper body", "garment")]
    senses["fortune cookie"] = [(LEX_FOOD, "thin folded wafer containing a maxim on a slip of paper", "cookie")]
    for hyper, lex in (("edible fruit", LEX_FOOD), ("hand tool", LEX_ARTIFACT), ("bread", LEX_FOOD),
                       ("shirt", LEX_ARTIFACT), ("garment", LEX_ARTIFACT), ("cookie", LEX_FOOD)):
        senses.setdefault(hyper, []).append((lex, f"a general class named {hyper.replace(' ', '-')}", None))
    return senses


def make_wordnet(root: Path) -> Path:
    """index.noun and data.noun in WordNet 3.0's format, records addressed by their byte offset."""
    root.mkdir(parents=True, exist_ok=True)
    header = "  1 This is a synthetic WordNet for tests (licence header lines start with two spaces).\n"
    entries = wordnet_entries()
    synsets = [(lemma.replace(" ", "_"), lex, gloss, hyper) for lemma, ss in entries.items() for lex, gloss, hyper in ss]
    first_of = {}  # lemma -> index of its first synset, for hypernym pointers

    for k, (lemma, *_rest) in enumerate(synsets):
        first_of.setdefault(lemma, k)

    def line(k: int, offsets: list[int]) -> str:
        lemma, lex, gloss, hyper = synsets[k]
        ptrs = f"001 @ {offsets[first_of[hyper.replace(' ', '_')]]:08d} n 0000" if hyper else "000"
        return f"{offsets[k]:08d} {lex:02d} n 01 {lemma} 0 {ptrs} | {gloss}  \n"

    # Offsets are fixed-width, so the lengths do not depend on their values: measure, then fill in.
    offsets = [0] * len(synsets)
    pos = len(header.encode())
    for k in range(len(synsets)):
        offsets[k] = pos
        pos += len(line(k, [0] * len(synsets)).encode())
    (root / "data.noun").write_bytes((header + "".join(line(k, offsets) for k in range(len(synsets)))).encode())
    index = {}
    for k, (lemma, *_rest) in enumerate(synsets):
        index.setdefault(lemma, []).append(offsets[k])
    rows = [f"{lemma} n {len(offs)} 1 @ {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}  \n"
            for lemma, offs in sorted(index.items())]
    (root / "index.noun").write_text(header + "".join(rows))
    return root


def _png(path: Path, color: tuple[int, int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (64, 64), color).save(path)


def _record(
    code: str, name: str, short: str, cat: str, sub: str, tones: bool, **extra: Any
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "name": name.upper(),
        "unified": code,
        "image": f"{code.lower()}.png",
        "short_name": short,
        "short_names": [short],
        "category": cat,
        "subcategory": sub,
        "added_in": "1.0",
        "has_img_google": True,
        "sort_order": int(code.split("-")[0], 16) % 100000,
        **extra,
    }
    if tones:
        rec["skin_variations"] = {
            t: {"unified": f"{code}-{t}", "image": f"{code.lower()}-{t.lower()}.png", "has_img_google": True}
            for t in TONES
        }
    return rec


def make_emoji_source(root: Path, n_plain: int = len(PLAIN), n_people: int = 12) -> Path:
    """An emoji-datasource-google look-alike: emoji.json, package.json and img/google/64/*.png.

    Plain items are named by WordNet nouns (PLAIN); edit families are people in three gender variants
    ("pilot", "man pilot", "woman pilot"), each in the default yellow and five skin tones, and hands with
    skin tones only; one Component record (a bare skin-tone swatch) must be ignored."""
    records: list[dict[str, Any]] = []
    for i, (name, cat, sub) in enumerate(PLAIN[:n_plain]):
        records.append(_record(f"1F{i:03X}", name, name.replace(" ", "_"), cat, sub, False))
    for i in range(n_people):
        job = JOBS[i % len(JOBS)] + ("" if i < len(JOBS) else f" {i}")
        base = 0x2000 + 16 * i
        for k, prefix in enumerate(("", "MAN ", "WOMAN ")):
            records.append(
                _record(
                    f"{base + k:05X}",
                    f"{prefix}{job}",
                    f"{prefix.strip().lower()}{job}".replace(" ", "_"),
                    "People & Body",
                    "person-role",
                    True,
                )
            )
    for i, hand in enumerate(HANDS):
        records.append(_record(f"{0x3000 + i:05X}", hand, hand.replace(" ", "_"), "People & Body", "hand-fingers",
                               True))
    for code, name, links in LEGACY:
        records.append(_record(code, name, name.lower().replace(" ", "_"), "People & Body", "person-role", True,
                               **links))
    records.append(
        _record("1F3FB", "emoji modifier fitzpatrick type-1-2", "skin-tone-2", "Component", "skin-tone", False)
    )
    img = root / "img" / "google" / "64"
    rng = random.Random(0)
    for rec in records:
        _png(img / rec["image"], (rng.randrange(256), rng.randrange(256), rng.randrange(256), 255))
        for var in (rec.get("skin_variations") or {}).values():
            _png(img / var["image"], (rng.randrange(256), rng.randrange(256), rng.randrange(256), 255))
    (root / "emoji.json").write_text(json.dumps(records))
    (root / "package.json").write_text(
        json.dumps({"name": "emoji-datasource-google", "version": "0.0.0-test"})
    )
    return root


def make_fashion_source(root: Path, per_class: int = 30) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    n = 10 * per_class
    labels = bytes(i % 10 for i in range(n))
    pixels = bytes((i * 7 + j) % 256 for i in range(n) for j in range(784))
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + pixels)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + labels)
    return root


SIZES = mb.Sizes(train=30, val=5, test=10, pool=60, mixed_train=40, mixed_test=20, edit_pool=220)


def _config(tmp: Path, out: Path, seed: int = 0) -> mb.BuildConfig:
    return mb.BuildConfig(
        out=out,
        emoji_dir=tmp / "emoji-src",
        clipart_dir=None,
        fashion_dir=tmp / "fashion-src",
        wordnet_dir=tmp / "wordnet",
        seed=seed,
        sizes=SIZES,
        fashion_pool=60,
        fashion_queries=100,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("minibeir")
    make_emoji_source(tmp / "emoji-src")
    make_fashion_source(tmp / "fashion-src")
    make_wordnet(tmp / "wordnet")
    out = tmp / "corpus"
    mb.build(_config(tmp, out))
    return out


# ----------------------------------------------------------------------------------------------------
# Corpus checks, shared by the synthetic build and the committed corpus


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _pair_names(root: Path) -> list[str]:
    return sorted(
        p.name[len("mbeir_") : -len("_cand_pool.jsonl")] for p in (root / "cand_pool" / "local").iterdir()
    )


def _queries(root: Path, name: str, split: str) -> list[dict[str, Any]]:
    return _jsonl(root / "query" / split / f"mbeir_{name}_{split}.jsonl")


def _pool(root: Path, name: str) -> list[dict[str, Any]]:
    return _jsonl(root / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _tone(name: str) -> str | None:
    """The skin tone of a variant name ("man pilot: medium-dark skin tone"), None for the default yellow."""
    m = re.search(r": ([a-z-]+) skin tone$", name)
    return m.group(1) if m else None


def check_layout(root: Path) -> None:
    names = _pair_names(root)
    assert names, "no pools"
    header = (root / "instructions" / "query_instructions.tsv").read_text().splitlines()
    assert header[0].split("\t") == [
        "query_modality",
        "cand_modality",
        "dataset",
        "dataset_id",
        "prompt_1",
        "prompt_2",
        "prompt_3",
        "prompt_4",
    ]
    rows = {(r.split("\t")[0], r.split("\t")[1], int(r.split("\t")[3])) for r in header[1:]}
    resolved_root = root.resolve()
    for name in names:
        task = int(name.rsplit("_task", 1)[1])
        qmod, cmod = mb.TASK_MODALITIES[task]
        pool = _pool(root, name)
        # The edit pools hold every variant of the test families (hard negatives), so they may pass 1000.
        assert len(pool) <= (mb.Sizes().edit_pool if name in EDIT_PAIRS else 1000), (name, len(pool))
        by_id = {c["did"]: c for c in pool}
        assert len(by_id) == len(pool), f"{name}: duplicate dids"
        for c in pool:
            assert list(c) == ["did", "txt", "img_path", "modality", "src_content"]
            assert (c["txt"] is not None, c["img_path"] is not None) == {
                "text": (True, False),
                "image": (False, True),
                "image,text": (True, True),
            }[c["modality"]]
        if name in EDIT_PAIRS:  # a name shared by two variants would make the plain and text queries ambiguous
            assert len({c["txt"] for c in pool}) == len(pool), f"{name}: two candidates share a name"
        dataset_id = int(pool[0]["did"].split(":")[0])
        assert dataset_id >= 10, "dataset ids must not collide with M-BEIR's 0-9"
        assert (qmod, cmod, dataset_id) in rows, f"{name}: no instruction row"
        for split in mb.SPLITS:
            qpath = root / "query" / split / f"mbeir_{name}_{split}.jsonl"
            queries = _jsonl(qpath)
            assert queries, f"{qpath} is empty"
            qrels = (root / "qrels" / split / f"mbeir_{name}_{split}_qrels.txt").read_text().splitlines()
            assert len(qrels) == sum(len(q["pos_cand_list"]) for q in queries)
            for line in qrels:
                qid, q0, did, rel, tid = line.split()
                assert q0 == "Q0" and rel == "1" and int(tid) == task and did in by_id
            for q in queries:
                assert list(q) == QUERY_KEYS
                assert q["task_id"] == task and q["query_modality"] == qmod
                assert int(q["qid"].split(":")[0]) == dataset_id
                assert (q["query_txt"] is not None) == ("text" in qmod)
                assert (q["query_img_path"] is not None) == ("image" in qmod)
                assert q["pos_cand_list"] and all(d in by_id for d in q["pos_cand_list"])
                assert all(by_id[d]["modality"] == cmod for d in q["pos_cand_list"])
                negs = q["neg_cand_list"]
                assert len(set(negs)) == len(negs), q["qid"]
                assert all(d in by_id for d in negs), f"{name} {q['qid']}: negative not in the pool"
                assert not set(negs) & set(q["pos_cand_list"]), f"{name} {q['qid']}: a positive is a negative"
                assert isinstance(q["kind"], str) and q["kind"]
                assert q["target_name"] is None or isinstance(q["target_name"], str)
        images = [c["img_path"] for c in pool if c["img_path"]]
        images += [q["query_img_path"] for s in mb.SPLITS for q in _queries(root, name, s) if q["query_img_path"]]
        for rel in images:
            assert rel.startswith("mbeir_images/") and not rel.startswith("/") and ".." not in rel.split("/")
            path = (root / rel).resolve()
            assert path.is_relative_to(resolved_root) and path.is_file(), rel


def check_no_leak(root: Path) -> None:
    """No test target is seen in training, across all pairs of its dataset (dids are shared by content).

    A test target (its did, its image, its name) never occurs in a training query of any pair of the dataset
    as a positive, a hard negative, the query image (an edit's reference), a target name or a reference name.
    For the edits this means a test-only variant is never a target, reference or negative in training; for
    the definitions that a test target is an item no training query of any pair names as its target."""
    by_dataset: dict[int, list[str]] = {}
    for name in _pair_names(root):
        by_dataset.setdefault(int(_pool(root, name)[0]["did"].split(":")[0]), []).append(name)
    for names in by_dataset.values():
        cands = {c["did"]: c for name in names for c in _pool(root, name)}

        def things(dids: list[str], cands: dict[str, dict[str, Any]] = cands) -> set[str]:
            return {f"did:{d}" for d in dids} | {f"img:{cands[d]['img_path']}" for d in dids if cands[d]["img_path"]}

        train: set[str] = set()
        for name in names:
            for q in _queries(root, name, "train"):
                train |= things(q["pos_cand_list"] + q["neg_cand_list"])
                train |= {f"img:{q['query_img_path']}"} if q["query_img_path"] else set()
                train |= {f"name:{n}" for n in (q["target_name"], q["ref_name"]) if n}
        for name in names:
            for q in _queries(root, name, "test"):
                target = things(q["pos_cand_list"])
                target |= {f"name:{q['target_name']}"} if q["target_name"] else set()
                assert not target & train, f"{name}: test query {q['qid']} target seen in training: {target & train}"


def check_routes(root: Path) -> None:
    """Difficulty per query: mixed pairs hold ~PLAIN_SHARE plainly stated (direct) queries and complex ones
    (reason) with a short CoT that names the reference and, last, the target; other pairs are all direct."""
    for name in _pair_names(root):
        for split in mb.SPLITS:
            queries = _queries(root, name, split)
            if name not in mb.MIXED_PAIRS:
                for q in queries:
                    assert q["route"] == "direct" and q["cot"] is None, (name, q["qid"])
                continue
            n_plain = sum(q["route"] == "direct" for q in queries)
            assert 0 < n_plain < len(queries), f"{name} {split}: not both routes"
            share = n_plain / len(queries)
            assert abs(share - me.PLAIN_SHARE) <= 0.08 + 1 / len(queries), (name, split, share)
            for q in queries:
                assert q["route"] in ("direct", "reason"), q["qid"]
                target, ref, txt = q["target_name"], q["ref_name"], q["query_txt"]
                assert target, q["qid"]
                if q["route"] == "direct":
                    assert q["cot"] is None and q["kind"] == "plain", q["qid"]
                    assert target in txt, f"{q['qid']}: a plain query states its target"
                    continue
                cot = q["cot"]
                assert q["kind"] == REASON_KINDS[name], q["qid"]
                assert isinstance(cot, str) and "<reasoning>" not in cot and "<answer>" not in cot, q["qid"]
                assert len(cot.split()) <= MAX_COT_WORDS, (q["qid"], len(cot.split()))
                # The CoT ends with the target sentence: the target is named last.
                assert re.search(rf"Target: (the )?{re.escape(target)}( emoji)?\.$", cot), (q["qid"], cot)
                if name in EDIT_PAIRS:
                    assert ref and ref != target and ref in cot.rsplit("Target:", 1)[0], (q["qid"], cot)
                    # The edit does not write the target out (task2 quotes the reference, which may contain it;
                    # a target named by a bare gender word, "man" of adult/man/woman, is said by the edit).
                    if target not in ("man", "woman", "person"):
                        assert target not in txt.replace(ref, ""), (q["qid"], txt)
                else:
                    assert ref is None, q["qid"]


def check_edits(root: Path) -> None:
    """Edit queries resolve to the right variant: relative tone edits to the adjacent tone, named tones to
    that tone, removal to the default yellow, and the target belongs to the reference's family."""
    for name in sorted(EDIT_PAIRS & set(_pair_names(root))):
        for split in mb.SPLITS:
            for q in _queries(root, name, split):
                if q["route"] != "reason":
                    continue
                txt, ref, tgt = q["query_txt"], q["ref_name"], q["target_name"]
                said = txt[len(ref) + len(", but "):] if name == "emoji_task2" else txt
                if name == "emoji_task2":
                    assert txt.startswith(f"{ref}, but "), q["qid"]
                ref_tone, tgt_tone = _tone(ref), _tone(tgt)
                if "darker" in said or "lighter" in said:
                    assert ref_tone and tgt_tone and tgt_tone not in said.split(), (q["qid"], txt)
                    step = 1 if "darker" in said else -1
                    assert TONE_WORDS.index(tgt_tone) - TONE_WORDS.index(ref_tone) == step, (q["qid"], txt, tgt)
                elif tgt_tone is not None and tgt_tone != ref_tone:
                    assert re.search(rf"(?<![a-z-]){re.escape(tgt_tone)}(?![a-z-])", said), (q["qid"], txt, tgt)
                if tgt_tone is None and ref_tone is not None:
                    assert re.search("without the skin tone|default yellow|remove the skin tone", said), q["qid"]


def check_definitions(root: Path) -> None:
    """A definition question never contains a word of its target's name (nor its plural): neither in the
    gloss nor in the hypernym some questions quote."""
    if "emoji_task1" not in _pair_names(root):
        return
    n = 0
    for split in mb.SPLITS:
        for q in _queries(root, "emoji_task1", split):
            if q["kind"] != "definition":
                continue
            n += 1
            words = set(_words(q["query_txt"]))
            for w in _words(q["target_name"]):
                forms = {w, w + "s", w + "es"} | ({w[:-1] + "ies"} if w.endswith("y") else set())
                assert not forms & words, (q["qid"], q["query_txt"], q["target_name"])
    assert n, "no definition questions"


def check_all(root: Path) -> None:
    check_layout(root)
    check_no_leak(root)
    check_routes(root)
    check_edits(root)
    check_definitions(root)


# ----------------------------------------------------------------------------------------------------
# Synthetic build


def test_layout(built: Path) -> None:
    check_layout(built)
    names = set(_pair_names(built))
    assert names == {"emoji_task0", "emoji_task1", "emoji_task2", "emoji_task3", "emoji_task8", "fashionmnist_task4"}
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["sources"]["emoji-datasource-google"] == "0.0.0-test"
    assert "wordnet-base" in manifest["sources"]
    assert manifest["sizes"]["edit_pool"] == SIZES.edit_pool and manifest["sizes"]["mixed_test"] == SIZES.mixed_test
    assert set(manifest["pairs"]) == names
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((built / rel).read_bytes()).hexdigest() == digest


def test_reader_accepts_corpus(built: Path) -> None:
    """The project's M-BEIR reader loads every pair (extra keys route/cot/target_name/... are tolerated)."""
    for split in mb.SPLITS:
        pairs = mbeir.discover_pairs(built, split)
        assert {p.name for p in pairs} == set(_pair_names(built))
        for p in pairs:
            queries, pool, positives = mbeir.load_pair(p)
            dids = {c.did for c in pool}
            assert queries and all(positives[q.qid] <= dids for q in queries)
            assert all(set(q.negatives) <= dids for q in queries)
            mbeir.check_images(built, queries, pool)


def test_no_test_target_in_training(built: Path) -> None:
    check_no_leak(built)


def test_routes(built: Path) -> None:
    check_routes(built)
    # Every kind of query the design promises occurs.
    kinds = {(n, q["kind"]) for n in _pair_names(built) for s in mb.SPLITS for q in _queries(built, n, s)}
    for name, kind in REASON_KINDS.items():
        assert {(name, kind), (name, "plain")} <= kinds


def test_edits_resolve(built: Path) -> None:
    check_edits(built)


def test_definitions_never_name_target(built: Path) -> None:
    check_definitions(built)
    defined = {q["target_name"] for s in mb.SPLITS for q in _queries(built, "emoji_task1", s)}
    assert NO_WORDNET not in defined, "an item WordNet does not know got a definition question"
    glosses = {q["query_txt"] for s in mb.SPLITS for q in _queries(built, "emoji_task1", s)
               if q["kind"] == "definition"}
    assert not any("person of no importance" in g for g in glosses), "a sense of the wrong lexicographer file"


def test_image_candidates_carry_their_names(built: Path) -> None:
    """Every image-only candidate names what it shows in src_content (the app calls it by that name, not by
    its file name), and the name is the right one: an emoji_task0 positive is named as its query's target."""
    for name in _pair_names(built):
        for c in _pool(built, name):
            cand = mbeir.MBEIRCandidate(c["did"], c["txt"], c["img_path"], c["modality"], c["src_content"])
            if c["modality"] == "image":
                assert cand.shown_name, c
            else:
                assert cand.shown_name is None, c  # text says it already
    pool = {c["did"]: c for c in _pool(built, "emoji_task0")}
    for q in _queries(built, "emoji_task0", "test"):
        assert json.loads(pool[q["pos_cand_list"][0]]["src_content"]) == {"name": q["target_name"]}


def test_reach_keeps_val_and_test_to_answerable_questions(tmp_path: Path) -> None:
    """With a reach rule (the base LM's answers in the real build), emoji_task1's val and test ask only what
    it accepts, and only about their own targets; training keeps two questions per target either way."""
    make_emoji_source(tmp_path / "emoji-src")
    make_wordnet(tmp_path / "wordnet")
    asked: list[str] = []

    def reach(questions: list[str], targets: list[str]) -> list[bool]:
        asked.extend(questions)
        return [q.startswith("Which") for q in questions]

    out = tmp_path / "corpus"
    cfg = _config(tmp_path, out)
    manifest = mb.build(dataclasses.replace(cfg, fashion_dir=None, reach=reach))
    assert manifest["definition_reach"] == "custom"
    held = [q for s in ("val", "test") for q in _queries(out, "emoji_task1", s) if q["route"] == "reason"]
    assert held and all(q["query_txt"].startswith("Which") for q in held)
    assert set(asked) >= {q["query_txt"] for q in held}
    train = [q for q in _queries(out, "emoji_task1", "train") if q["route"] == "reason"]
    assert any(not q["query_txt"].startswith("Which") for q in train)
    assert not {q["query_txt"] for q in train} & set(asked), "training questions were asked of the reach rule"
    check_no_leak(out)
    check_definitions(out)


def _families(built: Path) -> dict[str, set[str]]:
    """Variant name -> names of all variants of its family, from the synthetic source."""
    emoji = sources.load_emoji(built.parent / "emoji-src")
    fams: dict[str, set[str]] = {}
    for e in emoji:
        if e.code in LEGACY_BASES:
            continue
        fams.setdefault(e.family, set()).update({e.name, *(f"{e.name}: {t} skin tone" for t, _ in e.tones)})
    return {v: names for names in fams.values() for v in names}


def test_edit_variant_split(built: Path) -> None:
    """Test targets of the edits are test-only variants; every family keeps its references in training; the
    pool holds all variants of the test families; negatives are siblings of the target's family."""
    family = _families(built)
    for name in sorted(EDIT_PAIRS):
        pool = {c["did"]: c for c in _pool(built, name)}
        pool_names = {c["txt"] for c in pool.values()}
        train = _queries(built, name, "train")
        train_targets = {q["target_name"] for q in train}
        test = _queries(built, name, "test")
        assert test and {q["target_name"] for q in test}.isdisjoint(train_targets)
        assert all(_tone(q["target_name"]) for q in test), "default-yellow variants are references, never test-only"
        variants = {v for q in train + test for v in family[q["target_name"]]}
        assert len(pool) < len(variants), "the pool holds every variant: the check below would be vacuous"
        for q in test:
            assert family[q["target_name"]] <= pool_names, f"{name}: a variant of a test family is not in the pool"
        for q in train + test:
            assert q["ref_name"] is None or q["ref_name"] in family[q["target_name"]]
            assert q["ref_name"] is None or q["ref_name"] not in {t["target_name"] for t in test}
            negs = [pool[d]["txt"] for d in q["neg_cand_list"]]
            assert negs and all(n in family[q["target_name"]] and n != q["target_name"] for n in negs), q["qid"]
        # Gender edits occur (man/woman/person variants), as do tone edits.
        said = [q["query_txt"].replace(q["ref_name"], "") for q in train if q["route"] == "reason"]
        assert any(re.search(r"\b(man|woman|person)\b", t) for t in said)
        assert any("skin" in t for t in said)
    # The same variant split holds for both pairs: a task8 test target is not a task2 training target.
    t8 = {q["target_name"] for q in _queries(built, "emoji_task8", "test")}
    assert t8.isdisjoint(q["target_name"] for q in _queries(built, "emoji_task2", "train"))


def test_legacy_bases_give_way(built: Path) -> None:
    """A neutral base with a gendered legacy name (a second "man in tuxedo", a second man in the turban
    family) is left out, so every gender edit and every name has one answer; its ZWJ siblings stay."""
    from trace_core.minibeir.corpus import Corpus, CotMaker

    corpus = Corpus()
    emoji = sources.load_emoji(built.parent / "emoji-src")
    me.build_emoji(corpus, emoji, SIZES, 0, CotMaker(0), None)
    edit_cands = [c for c in corpus.cands.values() if c["modality"] == "image,text"]  # every variant
    names = [c["txt"] for c in edit_cands]
    assert len(set(names)) == len(names), "two variants share a name"
    assert {"man in tuxedo", "woman in tuxedo", "man wearing turban", "woman wearing turban"} <= set(names)
    assert not any(n.startswith("man with turban") for n in names)
    bases = {b.lower() for b in LEGACY_BASES}
    assert not [c["img_path"] for c in edit_cands if Path(c["img_path"]).stem.split("-")[0] in bases
                and "-200d-" not in c["img_path"]]


def test_fill_pool_keeps_negatives_in_pool() -> None:
    """Hard negatives are preferred over other distractors; one that does not fit leaves its query."""
    from trace_core.minibeir.corpus import Pair, Query, fill_pool

    pair = Pair("emoji", 1)
    pair.queries["train"] = [Query("10:0", "q", None, ("10:0",), 1, "direct", None, ("a",),
                                   negatives=("10:5", "10:7")),
                             Query("10:1", "q", None, ("10:1",), 1, "direct", None, ("b",),
                                   negatives=("10:9", "10:8"))]
    distractors = [f"10:{i}" for i in range(2, 10)]
    fill_pool(pair, ["10:0", "10:1"], distractors, 6, random.Random(0))
    assert {"10:0", "10:1", "10:5", "10:7", "10:8", "10:9"} == set(pair.pool)
    fill_pool(pair, ["10:0", "10:1"], distractors, 5, random.Random(0))
    kept = [d for q in pair.queries["train"] for d in q.negatives]
    assert len(kept) == 3 and set(kept) <= set(pair.pool) and len(pair.pool) == 5


def test_check_no_leak_catches_a_leak(built: Path, tmp_path: Path) -> None:
    """The leakage check is not vacuous: a test target variant used as a training negative is caught."""
    import shutil

    root = tmp_path / "c"
    shutil.copytree(built, root)
    test_q = _queries(root, "emoji_task8", "test")[0]
    path = root / "query" / "train" / "mbeir_emoji_task8_train.jsonl"
    train = _jsonl(path)
    train[0]["neg_cand_list"] = [test_q["pos_cand_list"][0]]
    path.write_text("".join(json.dumps(q) + "\n" for q in train))
    with pytest.raises(AssertionError, match="seen in training"):
        check_no_leak(root)


def test_determinism(built: Path, tmp_path: Path) -> None:
    tmp = built.parent
    again = tmp_path / "again"
    mb.build(_config(tmp, again))
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (built / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    mb.build(_config(tmp, other, seed=1))
    assert (other / "manifest.json").read_text() != (built / "manifest.json").read_text()


def test_rebuild_replaces_atomically(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "SOURCES.md").write_text("kept")
    (out / "stale.txt").write_text("gone")
    mb.build(_config(built.parent, out))
    assert (out / "SOURCES.md").read_text() == "kept" and not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"


def test_missing_source_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = mb.main(
        [
            "--out",
            str(tmp_path / "o"),
            "--emoji-dir",
            str(tmp_path / "nope"),
            "--no-clipart",
            "--no-fashionmnist",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "npm install emoji-datasource-google" in err
    assert not (tmp_path / "o").exists()


def test_missing_wordnet_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_emoji_source(tmp_path / "emoji-src", n_plain=4, n_people=2)
    args = ["--out", str(tmp_path / "o"), "--emoji-dir", str(tmp_path / "emoji-src"), "--no-clipart",
            "--no-fashionmnist", "--wordnet-dir", str(tmp_path / "no-wordnet")]
    assert mb.main(args) == 2
    err = capsys.readouterr().err
    assert "wordnet" in err and "apt-get install -y wordnet-base" in err
    assert not (tmp_path / "o").exists()


def test_emoji_families(tmp_path: Path) -> None:
    recs = sources.load_emoji(make_emoji_source(tmp_path / "src", n_plain=2, n_people=2))
    by_name = {e.name: e for e in recs}
    assert by_name["man pilot"].family == by_name["woman pilot"].family == by_name["pilot"].family
    assert by_name["man pilot"].gender == "man" and by_name["pilot"].gender == "person"
    assert [t for t, _ in by_name["pilot"].tones] == list(sources.SKIN_TONES.values())
    assert by_name["apple"].gender is None and not by_name["apple"].tones
    assert by_name["waving hand"].gender is None and by_name["waving hand"].tones


# ----------------------------------------------------------------------------------------------------
# Edits and definitions, unit level


def _member(name: str, gender: str | None, code: str = "2000") -> sources.Emoji:
    return sources.Emoji(code=code, name=name, short_name=name, category="People & Body", subcategory="person-role",
                         added_in="1.0", image=Path("x.png"), tones=(), family=code, stem="pilot", gender=gender)


@pytest.mark.parametrize(("ref_tone", "tgt_tone", "word"), [("medium", "medium-dark", "darker"),
                                                           ("medium-light", "light", "lighter"),
                                                           ("medium-dark", "dark", "darker")])
def test_relative_edit_resolves_to_adjacent_tone(ref_tone: str, tgt_tone: str, word: str) -> None:
    m = _member("man pilot", "man")
    ref, tgt = me.Variant(m, ref_tone), me.Variant(m, tgt_tone)
    seen_relative = seen_named = False
    for seed in range(200):
        said, resolved = me.edit_text(ref, tgt, random.Random(seed))
        assert resolved == f"{tgt_tone} skin tone"
        if "shade" in said:
            seen_relative = True
            assert word in said and tgt_tone not in said.split(), said
        else:
            seen_named = True
            assert tgt_tone in said.split(), said
    assert seen_relative and seen_named


def test_non_adjacent_tone_edits_name_the_tone() -> None:
    m = _member("man pilot", "man")
    for ref_tone, tgt_tone in (("light", "medium"), ("dark", "light"), ("medium-light", "medium-dark")):
        for seed in range(50):
            said, resolved = me.edit_text(me.Variant(m, ref_tone), me.Variant(m, tgt_tone), random.Random(seed))
            assert "shade" not in said and tgt_tone in said.split() and resolved == f"{tgt_tone} skin tone", said


def test_gender_and_default_edits() -> None:
    man, woman = _member("man pilot", "man"), _member("woman pilot", "woman", "2002")
    said, resolved = me.edit_text(me.Variant(man, "dark"), me.Variant(woman, "dark"), random.Random(0))
    assert "woman" in said and "skin" not in said and resolved == "woman"
    said, resolved = me.edit_text(me.Variant(man, "dark"), me.Variant(man, None), random.Random(0))
    assert "dark" not in said and resolved == "default yellow"
    said, resolved = me.edit_text(me.Variant(man, None), me.Variant(woman, "light"), random.Random(0))
    assert "woman" in said and "light" in said and resolved == "woman, light skin tone"


def test_definition_sense(tmp_path: Path) -> None:
    wn = WordNet(make_wordnet(tmp_path / "wn"))

    def plain(name: str, cat: str = "Food & Drink") -> sources.Emoji:
        return sources.Emoji(code="1F000", name=name, short_name=name, category=cat, subcategory="food-fruit",
                             added_in="1.0", image=Path("x.png"), tones=(), family="1F000", stem=name,
                             gender=None)

    def first_sense(e: sources.Emoji):
        senses = me.definition_senses(wn, e, most=1)
        return senses[0] if senses else None

    banana = first_sense(plain("banana"))
    assert banana is not None and banana.hypernym == "edible fruit" and "banana" not in banana.gloss
    lemon = first_sense(plain("lemon"))  # first sense names the lemon: skipped
    assert lemon is not None and "lemon" not in lemon.gloss and lemon.lexfile == "food"
    mango = first_sense(plain("mango"))  # first sense is a person: wrong lexicographer file
    assert mango is not None and mango.lexfile == "food"
    bagel = first_sense(plain("bagel"))  # the example after ';' is dropped, so it may name it
    assert bagel is not None and bagel.gloss == "glazed yeast-raised doughnut-shaped roll with hard crust"
    assert bagel.hypernym == "bread"
    hot_dog = first_sense(plain("hot dog"))  # multi-word lemma: hot_dog
    assert hot_dog is not None and hot_dog.lemma == "hot dog"
    cherry = first_sense(plain("cherry"))  # first sense says "cherries": skipped
    assert cherry is not None and "cherries" not in cherry.gloss
    t_shirt = first_sense(plain("t-shirt", "Objects"))  # "shirt" in the first sense: skipped
    assert t_shirt is not None and t_shirt.gloss.startswith("a collarless") and t_shirt.hypernym == "garment"
    cookie = first_sense(plain("fortune cookie"))  # the hypernym "cookie" names it: dropped
    assert cookie is not None and cookie.gloss.startswith("thin folded") and cookie.hypernym is None
    assert first_sense(plain(NO_WORDNET)) is None
    assert first_sense(plain("hammer", "Flags")) is None  # no sense files for the category
    assert first_sense(plain("hammer", "People & Body")) is None  # artifact does not fit people


def test_v2_cots_pass_filters() -> None:
    """The builder's CoT templates pass the paper's filters, are short, and name the target last."""
    man, woman = _member("man pilot", "man"), _member("woman pilot", "woman", "2002")
    for seed in range(30):
        rng = random.Random(seed)
        ref, tgt = me.Variant(man, TONE_WORDS[seed % 5]), me.Variant(woman, TONE_WORDS[(seed + 2) % 5])
        said, resolved = me.edit_text(ref, tgt, rng)
        for from_image in (True, False):
            out = me.edit_cot(ref, tgt, resolved, rng, from_image)
            assert teacher.filter_cot(out.raw, tgt.name, ref.name, out.keywords) == (True, "ok")
            cot = teacher.strip_tags(out.raw)
            assert cot.endswith(f"Target: {tgt.name}.") and ref.name in cot and len(cot.split()) <= MAX_COT_WORDS
        e = _member("hot dog", None, "1F000")
        out = me.definition_cot(e, rng)
        assert teacher.filter_cot(out.raw, e.name, None, out.keywords) == (True, "ok")
        assert teacher.strip_tags(out.raw).endswith("Target: the hot dog emoji.")


# ----------------------------------------------------------------------------------------------------
# Filters


def _raw(reasoning: str, answer: str) -> str:
    return f"<reasoning>{reasoning}</reasoning><answer>{answer}</answer>"


GOOD_REASONING = (
    "The reference image shows the man pilot emoji. The instruction asks me to set the skin tone to dark. "
    "The pose and the props stay the same."
)
GOOD_ANSWER = "The target is the man pilot: dark skin tone emoji."


def test_filter_accepts_good() -> None:
    ok, reason = teacher.filter_cot(
        _raw(GOOD_REASONING, GOOD_ANSWER), "man pilot: dark skin tone", "man pilot", ["dark"]
    )
    assert ok, reason
    assert teacher.strip_tags(_raw(GOOD_REASONING, GOOD_ANSWER)) == f"{GOOD_REASONING} {GOOD_ANSWER}"
    # The lower bound is 4 words: a one-step CoT passes.
    assert teacher.REASONING_WORDS[0] == 4
    assert teacher.filter_cot(_raw("This describes a banana.", "Target: the banana emoji."), "banana", None,
                              ["banana"]) == (True, "ok")


@pytest.mark.parametrize(
    ("raw", "source", "keywords", "why"),
    [
        (GOOD_REASONING + " " + GOOD_ANSWER, None, ["dark"], "tag pair"),
        (_raw(GOOD_REASONING, GOOD_ANSWER) + _raw(GOOD_REASONING, GOOD_ANSWER), None, ["dark"], "tag pair"),
        (f"<reasoning>{GOOD_REASONING}</reasoning>", None, ["dark"], "tag pair"),
        (_raw("Too short.", GOOD_ANSWER), None, ["dark"], "reasoning length"),
        (_raw(GOOD_REASONING, "Dark."), None, ["dark"], "answer length"),
        (
            _raw(GOOD_REASONING + " The pose and the props stay the same.", GOOD_ANSWER),
            None,
            ["dark"],
            "repeated",
        ),
        (
            _raw("the man pilot " * 6 + "is what I see here in this image today", GOOD_ANSWER),
            None,
            ["dark"],
            "3-gram loop",
        ),
        (_raw(GOOD_REASONING, GOOD_ANSWER), None, ["woman"], "keyword"),
        (
            _raw(GOOD_REASONING, "The target is the man pilot emoji."),
            "man pilot",
            ["pilot"],
            "source caption",
        ),
        (_raw(GOOD_REASONING + " I'm sorry, I cannot help.", GOOD_ANSWER), None, ["dark"], "refusal"),
    ],
)
def test_filter_rejects(raw: str, source: str | None, keywords: list[str], why: str) -> None:
    ok, reason = teacher.filter_cot(raw, "man pilot: dark skin tone", source, keywords)
    assert not ok and why in reason, reason


def test_filter_rejects_duplicates() -> None:
    seen: set[str] = set()
    raw = _raw(GOOD_REASONING, GOOD_ANSWER)
    assert teacher.filter_cot(raw, "x y", "man pilot", ["dark"], seen=seen)[0]
    ok, reason = teacher.filter_cot(raw, "x y", "man pilot", ["dark"], seen=seen)
    assert not ok and reason == "duplicate"
    # deduplication is per sample: another question may share the CoT, the same question twice may not
    assert teacher.filter_cot(raw, "x y", "man pilot", ["dark"], seen=seen, query="darker please")[0]
    ok, reason = teacher.filter_cot(raw, "x y", "man pilot", ["dark"], seen=seen, query="darker please")
    assert not ok and reason == "duplicate"


# ----------------------------------------------------------------------------------------------------
# The committed corpus


def _is_v2(root: Path) -> bool:
    """A corpus built by the v2 builder (per-query difficulty); a v1 corpus has no edit pool size."""
    return "edit_pool" in json.loads((root / "manifest.json").read_text()).get("sizes", {})


needs_assets = pytest.mark.skipif(
    not (ASSETS / "manifest.json").is_file() or not _is_v2(ASSETS),
    reason="assets/minibeir not built, or built by the v1 builder (rebuild: python -m trace_core.minibeir.build)",
)


def check_committed(root: Path) -> None:
    check_all(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["pairs"]) == set(_pair_names(root))
    assert mb.MIXED_PAIRS <= set(manifest["pairs"])
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 30 * 2**20


@needs_assets
def test_committed_corpus() -> None:
    check_committed(ASSETS)
    assert (ASSETS / "SOURCES.md").is_file()


def test_reach_reads_its_cache_and_never_counts_a_shot(tmp_path: Path) -> None:
    """Cached answers are reused without loading a model (the LM path here does not exist), an answer counts
    when it names the target as whole words, and a target that is a shot's answer never counts."""
    from trace_core.minibeir.reach import SHOTS, BaseLMReach

    shot_q, shot_a = SHOTS[0]
    cache = tmp_path / "reach.json"
    cache.write_text(json.dumps({"Which emoji shows a yellow fruit?": " a banana", "Q2": " a catfish",
                                 "Q3": f" {shot_a}"}), encoding="utf-8")
    reach = BaseLMReach(lm=str(tmp_path / "no-such-lm"), cache=cache)
    assert reach(["Which emoji shows a yellow fruit?", "Q2", "Q3"], ["banana", "cat", shot_a]) == [True, False, False]
    with pytest.raises((OSError, ValueError)):  # a question not in the cache needs the model
        reach(["a new question"], ["banana"])
