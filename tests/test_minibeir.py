"""Tests of the TRACE-mini corpus builder (trace_core.minibeir) and of the committed corpus.

Offline and fast: the builder runs on a tiny synthetic emoji source (plain items named by WordNet nouns and
edit families of people with skin tones and man/woman/person variants, 64 px PNGs in the npm package's
layout), a tiny WordNet (index.noun / data.noun in WordNet's own format) and a tiny Fashion-MNIST IDX set,
all written here; the real sources are not needed. The committed assets/minibeir corpus is validated with
the same checks when it is present.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from tests.minibeir_fixture import (
    ASSETS,
    EDIT_PAIRS,
    LEGACY_BASES,
    NO_WORDNET,
    REASON_KINDS,
    SIZES,
    _config,
    _jsonl,
    _pair_names,
    _pool,
    _queries,
    _tone,
    build_synthetic,
    check_all,
    check_definitions,
    check_edits,
    check_layout,
    check_no_leak,
    check_routes,
    country,
    country_facts_wordnet,
    make_emoji_source,
    make_wordnet,
)
from trace_core import mbeir
from trace_core.minibeir import build as mb
from trace_core.minibeir import countries, sources, teacher
from trace_core.minibeir import emoji as me
from trace_core.minibeir.wordnet import WordNet


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic(tmp_path_factory.mktemp("minibeir"))


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
    for name, reasons in REASON_KINDS.items():  # emoji_task1's knowledge questions come with --knowledge only
        assert (name, "plain") in kinds and {(name, k) for k in reasons} & kinds


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


def test_relative_drill_adds_only_training_queries(built: Path, tmp_path: Path) -> None:
    """--relative-drill N: up to N more training queries per edit pair, every one a relative tone edit between
    training variants; every other file (val, test, pools, the other training queries) is the plain build's."""
    drill = tmp_path / "drill"
    mb.build(dataclasses.replace(_config(built.parent, drill), relative_drill=15))
    check_all(drill)  # layout, no test or val target in training, routes, edits resolve to the adjacent tone
    changed = set()
    for path in sorted(p for p in built.rglob("*") if p.is_file()):
        rel = path.relative_to(built)
        if path.read_bytes() != (drill / rel).read_bytes():
            changed.add(str(rel))
    edit_train = {f"{folder}/train/mbeir_{name}_train{end}" for name in EDIT_PAIRS
                  for folder, end in (("query", ".jsonl"), ("qrels", "_qrels.txt"))}
    assert changed == edit_train | {"manifest.json"}, changed
    assert json.loads((drill / "manifest.json").read_text())["relative_drill"] == 15
    test_targets = {q["target_name"] for name in EDIT_PAIRS for s in ("val", "test") for q in _queries(built, name, s)}
    for name in EDIT_PAIRS:
        before, after = _queries(built, name, "train"), _queries(drill, name, "train")
        assert after[: len(before)] == before
        extra = after[len(before):]
        assert len(extra) == 15, name
        pool = {c["did"] for c in _pool(drill, name)}
        for q in extra:
            assert q["route"] == "reason" and re.search("darker|lighter", q["query_txt"]), q
            assert q["pos_cand_list"][0] in pool and set(q["neg_cand_list"]) <= pool, q
            assert q["target_name"] not in test_targets and q["ref_name"] not in test_targets, q
            assert q["cot"].rstrip(".").endswith(q["target_name"]), q
        assert len({q["qid"] for q in after}) == len(after)


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


# ----------------------------------------------------------------------------------------------------
# Country knowledge questions (emoji_task1, --knowledge)


def test_country_facts_and_their_questions(tmp_path: Path) -> None:
    """WordNet glosses give each made-up country its capital, demonym and port; a town of two countries, a
    place named after its country and a former capital are not asked; no question holds a word of its country, and each CoT takes
    the fact as its step, names the flag last and passes the teacher's filters."""
    wn = WordNet(make_wordnet(tmp_path / "wordnet", extra=country_facts_wordnet(4)))
    flags = [country(i).lower() for i in range(4)]
    facts = countries.country_facts(wn, flags)
    assert {c: sorted(f.kind for f in fs) for c, fs in facts.items()} == {c: ["capital", "people", "place"]
                                                                          for c in flags}
    subjects = {f.subject for fs in facts.values() for f in fs}
    assert not {"Twinport", f"{country(0)} City", "Oldtown"} & subjects
    assert facts[flags[2]][0].subject == "Capital2" and facts[flags[2]][0].country == country(2)
    for c, fs in facts.items():
        for f in fs:
            qs = countries.questions(f)
            assert len(qs) == len(countries.QUESTIONS[f.kind])
            assert all(f.subject in q and c not in q.lower() for _, q in qs)
            out = countries.knowledge_cot(f, f"{c} flag", random.Random(0))
            assert teacher.filter_cot(out.raw, f"{c} flag", None, out.keywords) == (True, "ok")
            cot = teacher.strip_tags(out.raw)
            step, _, answer = cot.partition(" Target: ")
            assert f.subject in step and country(flags.index(c)) in step and answer == f"the {c} flag emoji."


def test_country_spellings() -> None:
    """A flag's country as glosses write it, capitalised, and WordNet's other names for it."""
    assert countries.spellings("namibia") == ["Namibia"]
    assert countries.spellings("st. kitts & nevis") == ["St. Kitts & Nevis", "Saint Kitts and Nevis"]
    assert "Turkey" in countries.spellings("türkiye") and "Ivory Coast" in countries.spellings("côte d’ivoire")
    assert countries.with_article("United Kingdom") == "the United Kingdom"
    assert countries.with_article("Namibia") == "Namibia"


def test_knowledge_adds_only_country_questions_to_emoji_task1(tmp_path: Path) -> None:
    """--knowledge: emoji_task1 gains questions about the flags no other pair uses and every country flag's
    entry in its pool; every other file, and emoji_task1's other queries, ids and pool entries, are the build's
    without it. Held-out countries never occur in training; val and test ask only what the reach rule accepts."""
    make_emoji_source(tmp_path / "emoji-src", n_flags=70)
    make_wordnet(tmp_path / "wordnet", extra=country_facts_wordnet(70))
    asked: list[str] = []

    def reach(questions: list[str], targets: list[str]) -> list[bool]:
        asked.extend(questions)
        return [not q.startswith("Find") for q in questions]

    cfg = dataclasses.replace(_config(tmp_path, tmp_path / "base"), fashion_dir=None, reach=reach)
    mb.build(cfg)
    know = tmp_path / "know"
    manifest = mb.build(dataclasses.replace(cfg, out=know, knowledge=True))
    assert manifest["knowledge"] is True
    check_all(know)
    base = tmp_path / "base"
    changed = {str(p.relative_to(base)) for p in sorted(base.rglob("*"))
               if p.is_file() and p.read_bytes() != (know / p.relative_to(base)).read_bytes()}
    task1 = {f"{folder}/{s}/mbeir_emoji_task1_{s}{end}" for s in mb.SPLITS
             for folder, end in (("query", ".jsonl"), ("qrels", "_qrels.txt"))}
    assert changed == task1 | {"cand_pool/local/mbeir_emoji_task1_cand_pool.jsonl", "manifest.json"}, changed
    pool = {c["did"]: c for c in _pool(know, "emoji_task1")}
    assert {d for d in (c["did"] for c in _pool(base, "emoji_task1"))} < set(pool)
    flag_entries = {c["txt"].split(" flag ")[0] for c in pool.values() if "country flag group" in c["txt"]}
    assert flag_entries == {country(i) for i in range(70)}
    countries_in = {}
    for s in mb.SPLITS:
        before, after = _queries(base, "emoji_task1", s), _queries(know, "emoji_task1", s)
        assert after[: len(before)] == before
        extra = after[len(before):]
        assert extra and {q["kind"] for q in extra} == {"knowledge", "plain"}, s
        for q in extra:
            target = q["target_name"]
            assert target.endswith(" flag") and q["pos_cand_list"][0] in pool
            countries_in.setdefault(target, set()).add(s)
            if q["kind"] == "knowledge":
                assert q["route"] == "reason" and q["cot"].endswith(f"the {target} emoji.")
                assert target.removesuffix(" flag") not in q["query_txt"].lower()
                assert (q["query_txt"] in asked) == (s != "train")
                assert s == "train" or not q["query_txt"].startswith("Find")
    assert all(len(splits) == 1 for splits in countries_in.values()), "a country in two splits"
    assert {s for splits in countries_in.values() for s in splits} == set(mb.SPLITS)
