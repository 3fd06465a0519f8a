"""A small M-BEIR-format dataset on disk, laid out exactly like the release, for tests.

``build_fixture(root)`` writes (deterministically, nothing random):

- test split, three pairs, each with 6 queries and a 12-candidate local pool:
  * ``mscoco_task0`` (dataset id 9, text -> image). Its pool is ``mbeir_mscoco_task0_test_cand_pool.jsonl``,
    with the ``_test`` suffix, as in the release.
  * ``cirr_task7`` (dataset id 8, image,text -> image). Pool ``mbeir_cirr_task7_cand_pool.jsonl``.
  * ``webqa_task1`` (dataset id 2, text -> text). Pool ``mbeir_webqa_task1_cand_pool.jsonl``; its qrels also
    hold one relevance-0 line, which must not count as a positive.
  In every pair query i (0-based) has candidate i as positive, and queries 0 and 3 also have candidate i + 6,
  so those two have two positives. Candidates 6..11 are otherwise distractors.
- train split for ``mscoco_task0`` only: 4 queries, pool ``mbeir_mscoco_task0_cand_pool.jsonl`` (no suffix,
  as the release's non-test MSCOCO pool) with 8 candidates, and no qrels file, so positives come from
  ``pos_cand_list``.
- 16x16 solid-colour PNGs under ``mbeir_images/<dataset>/``, one per image referenced (each colour unique).
- ``instructions/query_instructions.tsv``, a byte copy of the instruction table shipped in trace_core/data.

Null fields are used as in the release: image queries have ``query_txt: null``, text candidates
``img_path: null``, and ``src_content`` is null on some lines and a JSON string on others.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

SHIPPED_INSTRUCTIONS = Path(__file__).resolve().parents[1] / "trace_core" / "data" / "query_instructions.tsv"

TEST_PAIRS = ("cirr_task7", "mscoco_task0", "webqa_task1")  # sorted, as discover_pairs returns them
TRAIN_PAIRS = ("mscoco_task0",)
N_QUERIES = 6
N_CANDIDATES = 12
N_TRAIN_QUERIES = 4
N_TRAIN_CANDIDATES = 8
MULTI_POSITIVE = (0, 3)  # query indices with two positives (i and i + 6)
IMAGE_SIZE = (16, 16)

_OBJECTS = (
    "dog", "cat", "bicycle", "kite", "pizza", "train", "boat", "clock", "horse", "bench", "cup", "tree",
)


class _Images:
    """Writes distinct solid-colour PNGs and remembers every relative path it wrote."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: list[str] = []

    def make(self, dataset: str, stem: str) -> str:
        n = len(self.paths)
        # Distinct colour per image so tests (and stub encoders) can tell images apart by pixels.
        colour = ((37 * n) % 256, (91 * n + 40) % 256, (53 * n + 80) % 256)
        rel = f"mbeir_images/{dataset}/{stem}.png"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", IMAGE_SIZE, colour).save(path, format="PNG")
        self.paths.append(rel)
        return rel


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def _write_qrels(path: Path, queries: list[dict[str, Any]], extra: Sequence[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{q['qid']} Q0 {did} 1 {q['task_id']}" for q in queries for did in q["pos_cand_list"]]
    path.write_text("\n".join([*lines, *extra]) + "\n", encoding="utf-8")


def _positives(prefix: int, i: int, n_candidates: int) -> list[str]:
    pos = [f"{prefix}:{i}"]
    if i in MULTI_POSITIVE and i + 6 < n_candidates:
        pos.append(f"{prefix}:{i + 6}")
    return pos


def _query(qid: str, text: str | None, image: str | None, modality: str, task: int, pos: list[str],
           src: str | None = None) -> dict[str, Any]:
    return {
        "qid": qid,
        "query_txt": text,
        "query_img_path": image,
        "query_modality": modality,
        "query_src_content": src,
        "pos_cand_list": pos,
        "neg_cand_list": [],
        "task_id": task,
    }


def _cand(
    did: str, text: str | None, image: str | None, modality: str, src: str | None = None
) -> dict[str, Any]:
    return {"did": did, "txt": text, "img_path": image, "modality": modality, "src_content": src}


def _mscoco(images: _Images, split: str, n_q: int, n_c: int) -> tuple[list[dict], list[dict]]:
    pool = [
        _cand(f"9:{j}", None, images.make("mscoco", f"{split}_{j:03d}"), "image",
              json.dumps({"image_id": 1000 + j}) if j % 2 == 0 else None)
        for j in range(n_c)
    ]
    queries = [
        _query(
            f"9:{100 + i}", f"A {_OBJECTS[i]} in an everyday scene.", None, "text", 0, _positives(9, i, n_c)
        )
        for i in range(n_q)
    ]
    return queries, pool


def _cirr(images: _Images) -> tuple[list[dict], list[dict]]:
    pool = [
        _cand(f"8:{j}", None, images.make("cirr", f"target_{j:03d}"), "image") for j in range(N_CANDIDATES)
    ]
    queries = [
        _query(f"8:{100 + i}", f"Make it show a {_OBJECTS[i]} instead.", images.make("cirr", f"ref_{i:03d}"),
               "image,text", 7, _positives(8, i, N_CANDIDATES), json.dumps({"pair_id": i}))
        for i in range(N_QUERIES)
    ]
    return queries, pool


def _webqa() -> tuple[list[dict], list[dict]]:
    pool = [
        _cand(f"2:{j}", f"Wikipedia passage about the {_OBJECTS[j]}.", None, "text",
              json.dumps({"title": _OBJECTS[j]}) if j < 3 else None)
        for j in range(N_CANDIDATES)
    ]
    queries = [
        _query(f"2:{100 + i}", f"What is known about the {_OBJECTS[i]}?", None, "text", 1,
               _positives(2, i, N_CANDIDATES))
        for i in range(N_QUERIES)
    ]
    return queries, pool


def build_fixture(root: Path) -> dict[str, Any]:
    """Write the dataset under ``root`` (created if needed) and return a description of it.

    Keys of the returned dict:
      root: the data root (Path);  split: "test";  pairs: tuple of test pair names, sorted;
      train_pairs: tuple of train pair names;
      query_files / pool_files / qrels_files: pair name -> Path, test split;
      train_query_files / train_pool_files: pair name -> Path, train split (no train qrels exist);
      n_queries / n_candidates: pair name -> count, test split;
      n_train_queries / n_train_candidates: pair name -> count, train split;
      positives: pair name -> {qid: set of positive dids}, test split (as the qrels say);
      multi_positive_qids: pair name -> sorted list of qids with two positives;
      dataset_ids: pair name -> M-BEIR dataset id;  cand_modality: pair name -> candidate modality;
      query_modality: pair name -> query modality;  image_paths: every image written (relative to root);
      instructions_file: Path of instructions/query_instructions.tsv.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    images = _Images(root)
    split = "test"

    coco_q, coco_pool = _mscoco(images, "test", N_QUERIES, N_CANDIDATES)
    cirr_q, cirr_pool = _cirr(images)
    webqa_q, webqa_pool = _webqa()
    data = {
        "mscoco_task0": (coco_q, coco_pool),
        "cirr_task7": (cirr_q, cirr_pool),
        "webqa_task1": (webqa_q, webqa_pool),
    }
    # As in the release, only MSCOCO's test pools carry the split in their name.
    pool_names = {
        "mscoco_task0": "mscoco_task0_test",
        "cirr_task7": "cirr_task7",
        "webqa_task1": "webqa_task1",
    }

    query_files: dict[str, Path] = {}
    pool_files: dict[str, Path] = {}
    qrels_files: dict[str, Path] = {}
    for name, (queries, pool) in data.items():
        query_files[name] = root / "query" / split / f"mbeir_{name}_{split}.jsonl"
        pool_files[name] = root / "cand_pool" / "local" / f"mbeir_{pool_names[name]}_cand_pool.jsonl"
        qrels_files[name] = root / "qrels" / split / f"mbeir_{name}_{split}_qrels.txt"
        _write_jsonl(query_files[name], queries)
        _write_jsonl(pool_files[name], pool)
        # A relevance-0 judgement (a non-positive) as qrels files may hold; readers must ignore it.
        extra = ["2:100 Q0 2:11 0 1"] if name == "webqa_task1" else []
        _write_qrels(qrels_files[name], queries, extra)

    train_q, train_pool = _mscoco(images, "train", N_TRAIN_QUERIES, N_TRAIN_CANDIDATES)
    train_query_files = {"mscoco_task0": root / "query" / "train" / "mbeir_mscoco_task0_train.jsonl"}
    train_pool_files = {"mscoco_task0": root / "cand_pool" / "local" / "mbeir_mscoco_task0_cand_pool.jsonl"}
    _write_jsonl(train_query_files["mscoco_task0"], train_q)
    _write_jsonl(train_pool_files["mscoco_task0"], train_pool)

    instructions_file = root / "instructions" / "query_instructions.tsv"
    instructions_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHIPPED_INSTRUCTIONS, instructions_file)

    names = tuple(sorted(data))
    return {
        "root": root,
        "split": split,
        "pairs": names,
        "train_pairs": TRAIN_PAIRS,
        "query_files": query_files,
        "pool_files": pool_files,
        "qrels_files": qrels_files,
        "train_query_files": train_query_files,
        "train_pool_files": train_pool_files,
        "n_queries": {n: len(data[n][0]) for n in names},
        "n_candidates": {n: len(data[n][1]) for n in names},
        "n_train_queries": {"mscoco_task0": len(train_q)},
        "n_train_candidates": {"mscoco_task0": len(train_pool)},
        "positives": {n: {q["qid"]: set(q["pos_cand_list"]) for q in data[n][0]} for n in names},
        "multi_positive_qids": {
            n: sorted(q["qid"] for q in data[n][0] if len(q["pos_cand_list"]) > 1) for n in names
        },
        "dataset_ids": {"cirr_task7": 8, "mscoco_task0": 9, "webqa_task1": 2},
        "query_modality": {"cirr_task7": "image,text", "mscoco_task0": "text", "webqa_task1": "text"},
        "cand_modality": {"cirr_task7": "image", "mscoco_task0": "image", "webqa_task1": "text"},
        "image_paths": list(images.paths),
        "instructions_file": instructions_file,
    }
