"""The synthetic sources of the TRACE-mini corpus builder's tests, and the checks every built corpus passes.

A tiny emoji source (plain items named by WordNet nouns and edit families of people with skin tones and
man/woman/person variants, 64 px PNGs in the npm package's layout), a tiny WordNet (index.noun / data.noun in
WordNet's own format) and a tiny Fashion-MNIST IDX set, all written here; the real sources are not needed.
The `check_*` functions hold for the synthetic build (tests/test_minibeir.py) and the committed corpus alike.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import struct
from pathlib import Path
from typing import Any

from PIL import Image

from trace_core.minibeir import build as mb
from trace_core.minibeir import emoji as me
from trace_core.minibeir import sources

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
REASON_KINDS = {"emoji_task1": {"definition", "knowledge"}, "emoji_task2": {"edit-text"}, "emoji_task8": {"edit-image"}}
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
LEX_ARTIFACT, LEX_FOOD, LEX_LOCATION, LEX_PERSON, LEX_PLANT = 6, 13, 15, 18, 20
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


def make_wordnet(root: Path, extra: dict[str, list[tuple[int, str, str | None]]] | None = None,
                 counts: dict[str, int] | None = None) -> Path:
    """index.noun and data.noun in WordNet 3.0's format, records addressed by their byte offset: the senses of
    `wordnet_entries` and `extra`; with `counts` (lemma -> SemCor tags of its first sense) also cntlist.rev."""
    root.mkdir(parents=True, exist_ok=True)
    header = "  1 This is a synthetic WordNet for tests (licence header lines start with two spaces).\n"
    entries = {**wordnet_entries(), **(extra or {})}
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
    if counts is not None:
        (root / "cntlist.rev").write_text("".join(f"{lemma.replace(' ', '_')}%1:06:00:: 1 {n}\n"
                                                  for lemma, n in sorted(counts.items())))
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


def country(i: int) -> str:
    """The made-up country of flag i: "Boravia", "Kelmistan", ... (two syllables and an ending, unique)."""
    first, second = ["Bor", "Kel", "Tam", "Vel", "Dun", "Sar", "Mol", "Pel", "Ruv", "Zan"], ["a", "mi", "o", "u", "e"]
    ends = ["via", "stan", "land", "ria", "nia", "dor"]
    return first[i % 10] + second[i // 10 % 5] + ends[i // 50 % 6]


def country_facts_wordnet(n_flags: int) -> dict[str, list[tuple[int, str, str | None]]]:
    """WordNet senses that tie places and people to the made-up countries of `make_emoji_source(n_flags=...)`:
    every country has a capital, a demonym and a port; edge cases: "Twinport", a town in two countries
    (dropped), "Boravia City", whose name holds its country's (dropped), and "Oldtown", a former capital (not a
    capital, nor a place the patterns read)."""
    out: dict[str, list[tuple[int, str, str | None]]] = {}
    for i in range(n_flags):
        c = country(i)
        out[f"Capital{i}"] = [(LEX_LOCATION, f"the capital and largest city of {c}", None)]
        out[f"{c[:-1]}ian{i}"] = [(LEX_PERSON, f"a native or inhabitant of {c}", None)]
        out[f"Port{i}"] = [(LEX_LOCATION, f"a port city in southern {c} on the coast", None)]
    out["Twinport"] = [(LEX_LOCATION, f"a town in northern {country(0)}", None),
                       (LEX_LOCATION, f"a town in eastern {country(1)}", None)]
    out[country(0) + " City"] = [(LEX_LOCATION, f"a city in western {country(0)}", None)]
    out["Oldtown"] = [(LEX_LOCATION, f"the largest city and former capital of {country(1)}", None)]
    return out


def make_emoji_source(root: Path, n_plain: int = len(PLAIN), n_people: int = 12, n_flags: int = 0) -> Path:
    """An emoji-datasource-google look-alike: emoji.json, package.json and img/google/64/*.png.

    Plain items are named by WordNet nouns (PLAIN); edit families are people in three gender variants
    ("pilot", "man pilot", "woman pilot"), each in the default yellow and five skin tones, and hands with
    skin tones only; one Component record (a bare skin-tone swatch) must be ignored. `n_flags` country flags
    ("Boravia Flag", see `country`) come last."""
    records: list[dict[str, Any]] = []
    for i, (name, cat, sub) in enumerate(PLAIN[:n_plain]):
        records.append(_record(f"1F{i:03X}", name, name.replace(" ", "_"), cat, sub, False))
    for i in range(n_flags):
        records.append(_record(f"5{i:04X}", f"{country(i)} Flag", f"flag-{i}", "Flags", "country-flag", False))
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


def build_synthetic(tmp: Path) -> Path:
    """The synthetic sources under `tmp` and the corpus built from them, at `tmp`/corpus."""
    make_emoji_source(tmp / "emoji-src")
    make_fashion_source(tmp / "fashion-src")
    make_wordnet(tmp / "wordnet")
    out = tmp / "corpus"
    mb.build(_config(tmp, out))
    return out


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
                assert q["kind"] in REASON_KINDS[name], q["qid"]
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
