"""Tests of the TRACE-mini corpus builder (trace_core.minibeir) and of the committed corpus.

Offline and fast: the builder runs on a tiny synthetic emoji source (a few records and 64 px PNGs in the
npm package's layout) and a tiny Fashion-MNIST IDX set written here; the real sources are not needed. The
committed assets/minibeir corpus is validated with the same checks when it is present.
"""

from __future__ import annotations

import gzip
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from trace_core import mbeir
from trace_core.minibeir import build as mb
from trace_core.minibeir import sources, teacher

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets" / "minibeir"
SIMPLE_TASKS = {0, 2, 3, 4}  # task types whose queries take the direct route in this corpus
TONES = list(sources.SKIN_TONES)


# ----------------------------------------------------------------------------------------------------
# Synthetic sources


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


def make_emoji_source(root: Path, n_plain: int = 40, n_people: int = 12) -> Path:
    """An emoji-datasource-google look-alike: emoji.json, package.json and img/google/64/*.png."""
    records: list[dict[str, Any]] = []
    words = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "kiwi"]
    for i in range(n_plain):
        w = words[i % len(words)]
        records.append(
            # "special<ab>" is the longest name word and unique, so multi-constraint questions single it out.
            _record(
                f"1F{i:03X}",
                f"{w} special{chr(97 + i // 26)}{chr(97 + i % 26)}",
                f"{w}{i}",
                "Food & Drink",
                f"food-{w}",
                False,
            )
        )
    jobs = [
        "pilot",
        "judge",
        "farmer",
        "cook",
        "singer",
        "artist",
        "teacher",
        "mechanic",
        "scientist",
        "astronaut",
    ]
    for i in range(n_people):
        job = jobs[i % len(jobs)] + ("" if i < len(jobs) else f" {i}")
        base = 0x2000 + 16 * i
        for k, prefix in enumerate(("", "MAN ", "WOMAN ")):
            code = f"{base + k:05X}"
            records.append(
                _record(
                    code,
                    f"{prefix}{job}",
                    f"{prefix.strip().lower()}{job}".replace(" ", "_"),
                    "People & Body",
                    "person-role",
                    True,
                )
            )
    records.append(
        _record(
            "1F3FB", "emoji modifier fitzpatrick type-1-2", "skin-tone-2", "Component", "skin-tone", False
        )
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


def _config(tmp: Path, out: Path, seed: int = 0) -> mb.BuildConfig:
    return mb.BuildConfig(
        out=out,
        emoji_dir=tmp / "emoji-src",
        clipart_dir=None,
        fashion_dir=tmp / "fashion-src",
        seed=seed,
        sizes=mb.Sizes(train=30, val=5, test=10, pool=60),
        fashion_pool=60,
        fashion_queries=100,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("minibeir")
    make_emoji_source(tmp / "emoji-src")
    make_fashion_source(tmp / "fashion-src")
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
        pool = _jsonl(root / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl")
        assert len(pool) <= 1000
        by_id = {c["did"]: c for c in pool}
        assert len(by_id) == len(pool), f"{name}: duplicate dids"
        for c in pool:
            assert list(c) == ["did", "txt", "img_path", "modality", "src_content"]
            assert (c["txt"] is not None, c["img_path"] is not None) == {
                "text": (True, False),
                "image": (False, True),
                "image,text": (True, True),
            }[c["modality"]]
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
                assert list(q) == [
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
                ]
                assert q["task_id"] == task and q["query_modality"] == qmod
                assert int(q["qid"].split(":")[0]) == dataset_id
                assert (q["query_txt"] is not None) == ("text" in qmod)
                assert (q["query_img_path"] is not None) == ("image" in qmod)
                assert q["pos_cand_list"] and all(d in by_id for d in q["pos_cand_list"])
                assert all(by_id[d]["modality"] == cmod for d in q["pos_cand_list"])
        images = [c["img_path"] for c in pool if c["img_path"]]
        images += [
            q["query_img_path"]
            for s in mb.SPLITS
            for q in _jsonl(root / "query" / s / f"mbeir_{name}_{s}.jsonl")
            if q["query_img_path"]
        ]
        for rel in images:
            assert rel.startswith("mbeir_images/") and not rel.startswith("/") and ".." not in rel.split("/")
            path = (root / rel).resolve()
            assert path.is_relative_to(resolved_root) and path.is_file(), rel


def check_no_leak(root: Path) -> None:
    """No item of a test query (its image, its positives) appears in a training query or its positives."""
    for name in _pair_names(root):
        pool = {c["did"]: c for c in _jsonl(root / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl")}

        def things(q: dict[str, Any], pool: dict[str, Any] = pool) -> set[str]:
            out = {f"did:{d}" for d in q["pos_cand_list"]}
            out |= {f"img:{pool[d]['img_path']}" for d in q["pos_cand_list"] if pool[d]["img_path"]}
            if q["query_img_path"]:
                out.add(f"img:{q['query_img_path']}")
            return out

        train = set().union(
            *(things(q) for q in _jsonl(root / "query" / "train" / f"mbeir_{name}_train.jsonl"))
        )
        for q in _jsonl(root / "query" / "test" / f"mbeir_{name}_test.jsonl"):
            target = {f"did:{d}" for d in q["pos_cand_list"]}
            assert not target & train, f"{name}: test query {q['qid']} target seen in training"


def check_routes(root: Path) -> None:
    for name in _pair_names(root):
        task = int(name.rsplit("_task", 1)[1])
        for split in mb.SPLITS:
            for q in _jsonl(root / "query" / split / f"mbeir_{name}_{split}.jsonl"):
                if name in mb.REASON_PAIRS:
                    assert q["route"] == "reason" and isinstance(q["cot"], str), q["qid"]
                    n = len(q["cot"].split())
                    assert 16 <= n <= 80, (q["qid"], n)
                    assert "<reasoning>" not in q["cot"] and "<answer>" not in q["cot"]
                else:
                    assert task in SIMPLE_TASKS
                    assert q["route"] == "direct" and q["cot"] is None, q["qid"]


# ----------------------------------------------------------------------------------------------------
# Synthetic build


def test_layout(built: Path) -> None:
    check_layout(built)
    names = _pair_names(built)
    assert {"emoji_task0", "emoji_task3", "emoji_task7", "fashionmnist_task4"} <= set(names)
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["sources"]["emoji-datasource-google"] == "0.0.0-test"
    for rel, digest in manifest["sha256"].items():
        import hashlib

        assert hashlib.sha256((built / rel).read_bytes()).hexdigest() == digest


def test_reader_accepts_corpus(built: Path) -> None:
    """The project's M-BEIR reader loads every pair (extra keys route/cot are tolerated)."""
    for split in mb.SPLITS:
        pairs = mbeir.discover_pairs(built, split)
        assert {p.name for p in pairs} == set(_pair_names(built))
        for p in pairs:
            queries, pool, positives = mbeir.load_pair(p)
            dids = {c.did for c in pool}
            assert queries and all(positives[q.qid] <= dids for q in queries)
            mbeir.check_images(built, queries, pool)


def test_no_test_target_in_training(built: Path) -> None:
    check_no_leak(built)


def test_routes(built: Path) -> None:
    check_routes(built)


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


def test_emoji_families(tmp_path: Path) -> None:
    recs = sources.load_emoji(make_emoji_source(tmp_path / "src", n_plain=2, n_people=2))
    by_name = {e.name: e for e in recs}
    assert by_name["man pilot"].family == by_name["woman pilot"].family == by_name["pilot"].family
    assert by_name["man pilot"].gender == "man" and by_name["pilot"].gender == "person"
    assert [t for t, _ in by_name["pilot"].tones] == list(sources.SKIN_TONES.values())
    assert by_name["apple specialaa"].gender is None


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


@pytest.mark.parametrize(
    ("raw", "source", "keywords", "why"),
    [
        (GOOD_REASONING + " " + GOOD_ANSWER, None, ["dark"], "tag pair"),
        (_raw(GOOD_REASONING, GOOD_ANSWER) + _raw(GOOD_REASONING, GOOD_ANSWER), None, ["dark"], "tag pair"),
        (f"<reasoning>{GOOD_REASONING}</reasoning>", None, ["dark"], "tag pair"),
        (_raw("Too short to count.", GOOD_ANSWER), None, ["dark"], "reasoning length"),
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


def test_teacher_templates_pass_filters() -> None:
    seen: set[str] = set()
    for i in range(20):
        rng = random.Random(i)
        out = teacher.composed_cot(
            rng,
            f"man pilot {i}",
            "set the skin tone to dark",
            "pose and props",
            f"man pilot {i}: dark skin tone",
            ["dark"],
        )
        assert teacher.filter_cot(out.raw, "", f"man pilot {i}", out.keywords, seen=seen) == (True, "ok")
        out = teacher.knowledge_cot(rng, f"snake {i}", "category", "it is in the Animals category", ["snake"])
        assert teacher.filter_cot(out.raw, "", None, out.keywords, seen=seen) == (True, "ok")
        out = teacher.constraint_cot(
            rng, ["in the reptile group", f"named with the word 'snake{i}'"], "snake", ["snake"]
        )
        assert teacher.filter_cot(out.raw, "", None, out.keywords, seen=seen) == (True, "ok")


# ----------------------------------------------------------------------------------------------------
# The committed corpus

needs_assets = pytest.mark.skipif(
    not (ASSETS / "manifest.json").is_file(), reason="assets/minibeir not built"
)


@needs_assets
def test_committed_corpus() -> None:
    check_layout(ASSETS)
    check_no_leak(ASSETS)
    check_routes(ASSETS)
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    assert set(manifest["pairs"]) == set(_pair_names(ASSETS))
    assert (ASSETS / "SOURCES.md").is_file()
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert size < 15 * 2**20
