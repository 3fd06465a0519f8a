"""M-BEIR reading: discovery, parsing, validation with file:line errors, image path safety, instructions."""

from __future__ import annotations

import builtins
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.mbeir_fixture import build_fixture
from trace_core import mbeir
from trace_core.instructions import instructions_for, load_default_instructions, read_instructions
from trace_core.mbeir import (
    MODALITIES,
    ImagePathError,
    MBEIRCandidate,
    MBEIRFormatError,
    MBEIRPair,
    MBEIRQuery,
    candidate_modality_of,
    check_images,
    discover_pairs,
    load_pair,
    read_pool,
    read_qrels,
    read_queries,
    resolve_image,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_INSTRUCTIONS = REPO.parent / "shared" / "mbeir" / "query_instructions.tsv"
MSCOCO_T2I = "Find me an everyday image that matches the given caption."


@pytest.fixture()
def fx(tmp_path: Path) -> dict[str, Any]:
    return build_fixture(tmp_path / "mbeir")


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_QUERY = {
    "qid": "9:1", "query_txt": "a dog", "query_img_path": None, "query_modality": "text",
    "query_src_content": None, "pos_cand_list": ["9:2"], "neg_cand_list": [], "task_id": 0,
}
GOOD_CAND = {
    "did": "9:2", "txt": None, "img_path": "mbeir_images/x.png", "modality": "image", "src_content": None,
}


# ---------------------------------------------------------------------------------------------------------
# Discovery


def test_discover_finds_exactly_the_fixture_pairs(fx: dict[str, Any]) -> None:
    pairs = discover_pairs(fx["root"], "test")
    assert tuple(p.name for p in pairs) == fx["pairs"]
    for p in pairs:
        assert p.split == "test"
        assert p.query_file == fx["query_files"][p.name]
        assert p.pool_file == fx["pool_files"][p.name]
        assert p.qrels_file == fx["qrels_files"][p.name]
    by_name = {p.name: p for p in pairs}
    # MSCOCO's test pool carries the split in its name; CIRR's does not.
    assert by_name["mscoco_task0"].pool_file.name == "mbeir_mscoco_task0_test_cand_pool.jsonl"
    assert by_name["cirr_task7"].pool_file.name == "mbeir_cirr_task7_cand_pool.jsonl"


def test_discover_train_split_uses_unsuffixed_pool_and_has_no_qrels(fx: dict[str, Any]) -> None:
    (pair,) = discover_pairs(fx["root"], "train")
    assert pair.name == "mscoco_task0"
    assert pair.pool_file == fx["train_pool_files"]["mscoco_task0"]
    assert pair.pool_file.name == "mbeir_mscoco_task0_cand_pool.jsonl"
    assert pair.qrels_file is None


@pytest.mark.parametrize("selection", ["cirr_task7", " cirr_task7 ,", ["cirr_task7"]])
def test_discover_filters_by_name(fx: dict[str, Any], selection: Any) -> None:
    assert [p.name for p in discover_pairs(fx["root"], "test", selection)] == ["cirr_task7"]


def test_discover_comma_separated_selection(fx: dict[str, Any]) -> None:
    pairs = discover_pairs(fx["root"], "test", "webqa_task1,mscoco_task0")
    assert [p.name for p in pairs] == ["mscoco_task0", "webqa_task1"]


def test_discover_unknown_pair_lists_available(fx: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as err:
        discover_pairs(fx["root"], "test", "cirr_task7,nights_task4")
    msg = str(err.value)
    assert "nights_task4" in msg
    for name in fx["pairs"]:
        assert name in msg


def test_discover_missing_root_and_split(tmp_path: Path, fx: dict[str, Any]) -> None:
    with pytest.raises(FileNotFoundError, match="data root"):
        discover_pairs(tmp_path / "nowhere", "test")
    with pytest.raises(FileNotFoundError, match="val") as err:
        discover_pairs(fx["root"], "val")
    assert "test" in str(err.value)  # lists the splits that do exist


def test_discover_missing_pool_names_expected_files(fx: dict[str, Any]) -> None:
    fx["pool_files"]["cirr_task7"].unlink()
    # Pairs not asked for do not need their pool.
    assert [p.name for p in discover_pairs(fx["root"], "test", "webqa_task1")] == ["webqa_task1"]
    with pytest.raises(FileNotFoundError) as err:
        discover_pairs(fx["root"], "test")
    msg = str(err.value)
    assert "mbeir_cirr_task7_test_cand_pool.jsonl" in msg
    assert "mbeir_cirr_task7_cand_pool.jsonl" in msg


def test_pair_properties(tmp_path: Path) -> None:
    pair = MBEIRPair("fashioniq_task7", "test", tmp_path / "q", tmp_path / "p", None)
    assert (pair.dataset, pair.task_id) == ("fashioniq", 7)
    assert MBEIRPair("mscoco_task0", "test", tmp_path, tmp_path, None).task_id == 0
    with pytest.raises(ValueError):
        MBEIRPair("mscoco", "test", tmp_path, tmp_path, None)


# ---------------------------------------------------------------------------------------------------------
# Parsing


def test_read_queries_with_nulls_and_image_text(fx: dict[str, Any]) -> None:
    queries = read_queries(fx["query_files"]["cirr_task7"])
    assert len(queries) == fx["n_queries"]["cirr_task7"]
    q = queries[0]
    assert isinstance(q, MBEIRQuery)
    assert q.modality == "image,text" and q.text and q.image_path and q.task_id == 7
    assert q.dataset_id == 8
    assert q.positives == ("8:0", "8:6") and q.negatives == ()
    assert json.loads(q.src_content or "") == {"pair_id": 0}

    coco = read_queries(fx["query_files"]["mscoco_task0"])
    assert coco[0].image_path is None and coco[0].src_content is None and coco[0].modality == "text"
    multi = [x.qid for x in coco if len(x.positives) > 1]
    assert multi == fx["multi_positive_qids"]["mscoco_task0"]


def test_read_pool_and_to_record_round_trip(fx: dict[str, Any]) -> None:
    path = fx["pool_files"]["webqa_task1"]
    pool = read_pool(path)
    assert len(pool) == fx["n_candidates"]["webqa_task1"]
    assert all(isinstance(c, MBEIRCandidate) and c.modality == "text" for c in pool)
    assert pool[0].image_path is None and pool[0].dataset_id == 2
    assert pool[5].src_content is None and pool[0].src_content is not None
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert [c.to_record() for c in pool] == raw
    # Release key order matters: fingerprints hash these records.
    assert list(pool[0].to_record()) == ["did", "txt", "img_path", "modality", "src_content"]

    images = read_pool(fx["pool_files"]["mscoco_task0"])
    assert images[0].text is None and images[0].modality == "image" and images[0].image_path


def test_read_qrels_several_positives_and_zero_relevance(fx: dict[str, Any]) -> None:
    qrels = read_qrels(fx["qrels_files"]["webqa_task1"])
    assert qrels == fx["positives"]["webqa_task1"]
    assert qrels["2:100"] == {"2:0", "2:6"}  # the relevance-0 line for 2:11 is not a positive
    assert read_qrels(fx["qrels_files"]["mscoco_task0"]) == fx["positives"]["mscoco_task0"]


def test_read_accepts_image_text_candidates_and_skips_blank_lines(tmp_path: Path) -> None:
    cand = {"did": "5:1", "txt": "Eiffel Tower", "img_path": "mbeir_images/e.jpg", "modality": "image,text"}
    path = _write_lines(tmp_path / "pool.jsonl", ["", json.dumps(cand), "   "])
    (c,) = read_pool(path)
    assert (c.modality, c.text, c.image_path) == ("image,text", "Eiffel Tower", "mbeir_images/e.jpg")
    assert c.src_content is None and c.dataset_id == 5


def test_load_pair_uses_qrels_then_pos_cand_list(fx: dict[str, Any]) -> None:
    pair = discover_pairs(fx["root"], "test", "webqa_task1")[0]
    queries, pool, positives = load_pair(pair)
    assert len(queries) == 6 and len(pool) == 12
    assert positives == fx["positives"]["webqa_task1"]

    # Qrels win over pos_cand_list when both exist.
    fx["qrels_files"]["webqa_task1"].write_text("2:100 Q0 2:5 1 1\n")
    _, _, positives = load_pair(pair)
    assert positives["2:100"] == {"2:5"} and positives["2:101"] == set()

    (train,) = discover_pairs(fx["root"], "train")
    queries, pool, positives = load_pair(train)
    assert len(queries) == fx["n_train_queries"]["mscoco_task0"]
    assert positives == {q.qid: set(q.positives) for q in queries}


def test_load_pair_warns_about_positives_not_in_pool(
    fx: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    fx["qrels_files"]["cirr_task7"].write_text("8:100 Q0 8:999 1 7\n8:101 Q0 8:1 1 7\n")
    pair = discover_pairs(fx["root"], "test", "cirr_task7")[0]
    with caplog.at_level(logging.WARNING, logger="trace_core.mbeir"):
        load_pair(pair)
    text = caplog.text
    assert "8:100" in text and "no positive in the pool" in text


# ---------------------------------------------------------------------------------------------------------
# Validation: every error names the file and the right (1-based) line


_DROP = object()  # marks a key to remove from a line


def _bad(**changes: Any) -> str:
    obj = dict(GOOD_QUERY, **changes)
    return json.dumps({k: v for k, v in obj.items() if v is not _DROP})


@pytest.mark.parametrize(
    ("bad_line", "what"),
    [
        ('{"qid": "9:3", "query_txt": "a cat",', "invalid JSON"),
        ('["not", "an", "object"]', "JSON object"),
        (_bad(qid="9:3", pos_cand_list=_DROP), "pos_cand_list"),
        (_bad(qid="9:3", query_modality="video"), "video"),
        (_bad(qid="9:3", query_txt=None), "query_txt"),  # text query without text
        (_bad(qid="9:3", query_modality="image"), "query_img_path"),  # image query without image
        (_bad(qid="9:3", query_modality="image,text", query_img_path=None), "query_img_path"),
        (_bad(qid="9:3", task_id=9), "task_id"),
        (_bad(qid="9:3", task_id="0"), "task_id"),
        (_bad(qid="93"), "qid"),
        (_bad(qid="9:3", query_txt=5), "query_txt"),
        (_bad(qid="9:1"), "duplicate qid"),
    ],
)
def test_bad_query_line_names_file_and_line(tmp_path: Path, bad_line: str, what: str) -> None:
    # Line 1 good, line 2 blank (still counted), line 3 good, line 4 bad.
    good2 = json.dumps(dict(GOOD_QUERY, qid="9:2"))
    lines = [json.dumps(GOOD_QUERY), "", good2, bad_line]
    path = _write_lines(tmp_path / "mbeir_mscoco_task0_test.jsonl", lines)
    with pytest.raises(MBEIRFormatError) as err:
        read_queries(path)
    msg = str(err.value)
    assert "mbeir_mscoco_task0_test.jsonl:4:" in msg
    assert what in msg


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"did": "9:2"}, "duplicate did"),
        ({"img_path": _DROP}, "img_path"),
        ({"modality": "audio"}, "audio"),
        ({"modality": "text"}, "txt"),  # text candidate with txt null
        ({"modality": "image,text"}, "txt"),
        ({"img_path": None}, "img_path"),  # image candidate without an image
    ],
)
def test_bad_candidate_line_names_file_and_line(tmp_path: Path, change: dict[str, Any], what: str) -> None:
    bad = dict(GOOD_CAND, did="9:3")
    bad.update(change)
    bad = {k: v for k, v in bad.items() if v is not _DROP}
    path = _write_lines(tmp_path / "pool.jsonl", [json.dumps(GOOD_CAND), json.dumps(bad)])
    with pytest.raises(MBEIRFormatError) as err:
        read_pool(path)
    assert "pool.jsonl:2:" in str(err.value)
    assert what in str(err.value)


@pytest.mark.parametrize("bad", ["9:1 Q0 9:2 1", "9:1 Q0 9:2 yes 0", "9:1 Q0 92 1 0", "9:1 Q0 9:2 1 12"])
def test_bad_qrels_line(tmp_path: Path, bad: str) -> None:
    path = _write_lines(tmp_path / "q.txt", ["9:1 Q0 9:2 1 0", "", bad])
    with pytest.raises(MBEIRFormatError, match=r"q\.txt:3:"):
        read_qrels(path)


def test_bad_instruction_row(tmp_path: Path) -> None:
    header = "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1"
    rows = [header, "text\timage\tMSCOCO\t9\tFind.", "text\tsound\tX\t1\tHear."]
    path = _write_lines(tmp_path / "i.tsv", rows)
    with pytest.raises(MBEIRFormatError, match=r"i\.tsv:3:.*sound"):
        read_instructions(path)
    path = _write_lines(tmp_path / "j.tsv", [header, "text\timage\tMSCOCO\tnine\tFind."])
    with pytest.raises(MBEIRFormatError, match=r"j\.tsv:2:"):
        read_instructions(path)


# ---------------------------------------------------------------------------------------------------------
# Images


@pytest.fixture()
def no_reads(monkeypatch: pytest.MonkeyPatch):
    """Fail the test if anything opens a file while rejecting a path."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"file opened: {args[:1]}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(Image, "open", refuse)
    monkeypatch.setattr(Path, "open", refuse)


def test_resolve_image_inside_root(fx: dict[str, Any]) -> None:
    rel = fx["image_paths"][0]
    path = resolve_image(fx["root"], rel)
    assert path == (fx["root"] / rel).resolve() and path.is_file()
    # A harmless '..' that stays inside the root is fine.
    parts = rel.split("/")
    assert resolve_image(fx["root"], f"{parts[0]}/../{rel}") == path


def test_resolve_image_rejects_escapes_without_reading(fx: dict[str, Any], tmp_path: Path, request) -> None:
    outside = tmp_path / "x.png"  # exists, right beside the data root
    Image.new("RGB", (4, 4)).save(outside)
    link = fx["root"] / "mbeir_images" / "link.png"
    os.symlink(outside, link)
    dir_link = fx["root"] / "mbeir_images" / "elsewhere"
    os.symlink(tmp_path, dir_link, target_is_directory=True)
    request.getfixturevalue("no_reads")
    for rel in ["../x.png", "mbeir_images/../../x.png", str(outside), "mbeir_images/link.png",
                "mbeir_images/elsewhere/x.png"]:
        with pytest.raises(ImagePathError, match="escapes the data root") as err:
            resolve_image(fx["root"], rel)
        assert rel in str(err.value)


def test_resolve_image_missing_file(fx: dict[str, Any]) -> None:
    with pytest.raises(FileNotFoundError, match="mbeir_images/nope.png"):
        resolve_image(fx["root"], "mbeir_images/nope.png")


def test_check_images_names_the_offending_id(fx: dict[str, Any]) -> None:
    queries = read_queries(fx["query_files"]["cirr_task7"])
    pool = read_pool(fx["pool_files"]["cirr_task7"])
    check_images(fx["root"], queries, pool)  # the fixture is complete

    (fx["root"] / pool[4].image_path).unlink()  # type: ignore[operator]
    with pytest.raises(FileNotFoundError, match="candidate 8:4"):
        check_images(fx["root"], queries, pool)

    bad_query = MBEIRQuery("8:999", "t", "../secret.png", "image,text", 7, ("8:1",), (), None)
    with pytest.raises(ImagePathError, match="query 8:999.*escapes the data root"):
        check_images(fx["root"], [bad_query], [])


def test_check_images_resolves_each_folder_once_and_still_catches_every_escape(fx, tmp_path, monkeypatch):
    """check_images caches resolved folders (one lstat per image): links, to a file or through a folder,
    that leave the root are caught as `resolve_image` catches them; a path that is a folder is no image."""
    queries = read_queries(fx["query_files"]["cirr_task7"])
    pool = read_pool(fx["pool_files"]["cirr_task7"])
    calls = []
    real = Path.resolve
    monkeypatch.setattr(Path, "resolve", lambda self, *a, **k: calls.append(self) or real(self, *a, **k))
    check_images(fx["root"], queries, pool)
    folders = {str(Path(p).parent) for p in [q.image_path for q in queries] + [c.image_path for c in pool] if p}
    assert len(calls) <= len(folders) + 1  # the root, then each folder once; no resolve per image
    monkeypatch.undo()
    outside = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(outside)
    os.symlink(outside, fx["root"] / "mbeir_images" / "out.png")
    os.symlink(tmp_path, fx["root"] / "mbeir_images" / "away", target_is_directory=True)
    inside = fx["root"] / "mbeir_images" / "in.png"
    os.symlink(fx["root"] / pool[0].image_path, inside)  # a link that stays inside is fine
    for rel, error in [("mbeir_images/out.png", ImagePathError), ("mbeir_images/away/x.png", ImagePathError),
                       ("mbeir_images/in.png", None), ("mbeir_images", FileNotFoundError),
                       ("mbeir_images/none/x.png", FileNotFoundError)]:
        cand = MBEIRCandidate("8:77", None, rel, "image", None)
        if error is None:
            check_images(fx["root"], [], [cand])
            continue
        with pytest.raises(error, match="candidate 8:77"):
            check_images(fx["root"], [], [cand])
        with pytest.raises(error):  # the same verdict as resolving the path alone
            resolve_image(fx["root"], rel)


# ---------------------------------------------------------------------------------------------------------
# Instructions


def test_instructions_lookup(fx: dict[str, Any]) -> None:
    table = read_instructions(fx["instructions_file"])
    prompts = table.get("text", "image", 9)
    assert len(prompts) == 4 and prompts[0] == MSCOCO_T2I
    assert len(table.rows()) == 16 == len(table)
    row = next(r for r in table.rows() if r.dataset == "CIRR")
    assert (row.query_modality, row.cand_modality, row.dataset_id) == ("image,text", "image", 8)
    assert all(r.query_modality in MODALITIES and r.cand_modality in MODALITIES for r in table)

    with pytest.raises(KeyError) as err:
        table.get("image", "image", 9)
    assert "MSCOCO" in str(err.value) and "NIGHTS" in str(err.value)  # lists what exists


def test_instruction_for_query(fx: dict[str, Any]) -> None:
    table = load_default_instructions()
    q = read_queries(fx["query_files"]["mscoco_task0"])[0]
    assert table.for_query(q, "image") == MSCOCO_T2I
    assert table.for_query(q, "image", 3) == table.get("text", "image", 9)[3]
    with pytest.raises(IndexError):
        table.for_query(q, "image", 4)


def test_default_instructions_match_fixture_copy(fx: dict[str, Any]) -> None:
    assert load_default_instructions().rows() == read_instructions(fx["instructions_file"]).rows()


def test_shipped_instructions_equal_shared_copy() -> None:
    if not SHARED_INSTRUCTIONS.is_file():
        pytest.skip(f"{SHARED_INSTRUCTIONS} not present")
    shipped = Path(mbeir.__file__).with_name("data") / "query_instructions.tsv"
    assert shipped.read_bytes() == SHARED_INSTRUCTIONS.read_bytes()


# ---------------------------------------------------------------------------------------------------------
# Candidate modality


def test_candidate_modality_of(fx: dict[str, Any]) -> None:
    for name in fx["pairs"]:
        pool = {c.did: c for c in read_pool(fx["pool_files"][name])}
        for q in read_queries(fx["query_files"][name]):
            assert candidate_modality_of(q, pool) == fx["cand_modality"][name]

    pool = {
        "9:2": MBEIRCandidate("9:2", "caption", None, "text", None),
        "9:3": MBEIRCandidate("9:3", None, "mbeir_images/a.png", "image", None),
    }
    q = MBEIRQuery("9:1", None, "mbeir_images/q.png", "image", 3, ("9:404", "9:2", "9:3"), (), None)
    assert candidate_modality_of(q, pool) == "text"  # first positive that is in the pool
    assert candidate_modality_of(q, pool, positives=["9:3"]) == "image"
    with pytest.raises(KeyError, match="9:1"):
        candidate_modality_of(q, pool, positives=["9:404"])


def test_instructions_for_a_folder_read_its_table_or_fall_back_to_the_shipped_one(tmp_path, caplog) -> None:
    table = tmp_path / "with" / "instructions" / "query_instructions.tsv"
    table.parent.mkdir(parents=True)
    table.write_text("query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\n"
                     "text\timage\tToy\t99\tFind the toy picture.\n")
    own = instructions_for(tmp_path / "with")
    assert own.get("text", "image", 99) == ("Find the toy picture.",) and len(own) == 1
    caplog.set_level("WARNING")
    shipped = instructions_for(tmp_path / "without")
    assert shipped.rows() == load_default_instructions().rows() and "shipped with trace_core" in caplog.text


def test_absolute_paths_in_either_syntax_are_refused_on_their_face(fx: dict[str, Any], request) -> None:
    """The check is a string test (a warm start runs it on every image path): absolute in POSIX or Windows
    syntax (a root, a drive, a UNC share, a device path) is refused before anything on disk is looked at,
    by `resolve_image` and by `check_images` alike; a colon or backslash later in a relative path is not."""
    request.getfixturevalue("no_reads")
    for rel in ["/etc/x.png", "C:/x.png", "c:x.png", "Z:\\x.png", "\\x.png", "\\\\server\\share\\x.png",
                "//server/share/x.png", "\\\\?\\C:\\x.png"]:
        with pytest.raises(ImagePathError, match="is absolute"):
            resolve_image(fx["root"], rel)
        with pytest.raises(ImagePathError, match="candidate 8:78.*is absolute"):
            check_images(fx["root"], [], [MBEIRCandidate("8:78", None, rel, "image", None)])
    for rel in ["mbeir_images/a:b.png", "mbeir_images\\c.png", "1:x.png"]:
        with pytest.raises(FileNotFoundError):  # relative, only missing
            resolve_image(fx["root"], rel)
