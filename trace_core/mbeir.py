"""Reading the M-BEIR release: queries, local candidate pools, qrels, instructions and images.

The files are read as published by UniIR (see TRACE.md, section M-BEIR):

- ``query/<split>/mbeir_<name>_<split>.jsonl``, one query per line, ``name`` like ``cirr_task7``;
- ``cand_pool/local/mbeir_<pool>_cand_pool.jsonl``, where ``pool`` is ``<name>_<split>`` for MSCOCO's test
  pools and ``<name>`` for everything else (we try the split-suffixed name first);
- ``qrels/<split>/mbeir_<name>_<split>_qrels.txt``, lines ``qid Q0 did relevance task_id``;
- ``instructions/query_instructions.tsv``: four instructions per (query modality, cand. modality, dataset),
  read by ``trace_core.instructions``;
- images under ``mbeir_images/``, referenced by paths relative to the data root.

Every line is validated as it is read, and any problem is reported as ``MBEIRFormatError`` naming the file and
the 1-based line number, because a corrupt line in a 100K-line file is otherwise very hard to find. Files are
parsed line by line so that the 5.6M-line global pool never has to be held as text.

Image paths come from data files and are therefore untrusted: ``resolve_image`` keeps every path inside the
data root (no absolute paths, no ``..`` escapes, no symlinks pointing outside) and never opens the file.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MODALITIES = ("text", "image", "image,text")
# M-BEIR task ids run 0..8 (5 is unused by the 16 evaluated pairs but exists in the release's numbering).
TASK_IDS = range(0, 9)
# "<dataset id>:<anything>"; the dataset id prefix is what ties a query or candidate to its dataset.
_ID_RE = re.compile(r"(\d+):(.+)", re.DOTALL)
# "<dataset>_task<k>", e.g. "cirr_task7", "mscoco_task0".
_PAIR_RE = re.compile(r"(?P<dataset>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)_task(?P<task>\d+)")

# Keys a query / candidate line must carry. ``query_src_content``, ``neg_cand_list`` and ``src_content`` are
# present in the release but carry nothing retrieval needs, so lines without them are still accepted.
_QUERY_KEYS = ("qid", "query_txt", "query_img_path", "query_modality", "pos_cand_list", "task_id")
_CAND_KEYS = ("did", "txt", "img_path", "modality")
_MAX_SHOWN = 5  # how many example ids a warning or error lists before "..."

PathLike = str | os.PathLike


class MBEIRFormatError(ValueError):
    """A line of an M-BEIR file is malformed; the message names ``file:line`` and what is wrong."""


class ImagePathError(ValueError):
    """An image path from the data would leave the data root (absolute, ``..`` or a symlink outside)."""


# ----------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class MBEIRQuery:
    qid: str  # "<dataset id>:<n>", unique within a query file
    text: str | None  # query_txt; None for image-only queries
    image_path: str | None  # query_img_path, relative to the data root; None for text-only queries
    modality: str  # one of MODALITIES
    task_id: int  # M-BEIR task id 0..8 (0 t->i, 1 t->t, ..., 7 (i,t)->i, 8 (i,t)->(i,t))
    positives: tuple[str, ...]  # pos_cand_list as written in the query file (qrels may say otherwise)
    negatives: tuple[str, ...]  # neg_cand_list (hard negatives; used for training only)
    src_content: str | None  # query_src_content: opaque source metadata, kept for provenance

    @property
    def dataset_id(self) -> int:
        """M-BEIR dataset id (0 VisualNews ... 9 MSCOCO), the integer before ':' in the qid."""
        return int(self.qid.split(":", 1)[0])

    def to_record(self) -> dict[str, Any]:
        """The query as a release-format JSON object (same keys, same order)."""
        return {
            "qid": self.qid,
            "query_txt": self.text,
            "query_img_path": self.image_path,
            "query_modality": self.modality,
            "query_src_content": self.src_content,
            "pos_cand_list": list(self.positives),
            "neg_cand_list": list(self.negatives),
            "task_id": self.task_id,
        }


@dataclass(frozen=True)
class MBEIRCandidate:
    did: str  # "<dataset id>:<n>", unique within a pool
    text: str | None  # txt; None for image-only candidates
    image_path: str | None  # img_path, relative to the data root; None for text-only candidates
    modality: str  # one of MODALITIES
    src_content: str | None  # opaque source metadata, kept for provenance

    @property
    def dataset_id(self) -> int:
        """M-BEIR dataset id, the integer before ':' in the did."""
        return int(self.did.split(":", 1)[0])

    @property
    def shown_name(self) -> str | None:
        """What the candidate shows, when its src_content names it: a JSON object with a "name" string, as
        TRACE-mini's corpus writes for every image-only candidate. None otherwise (M-BEIR's own src_content
        is opaque)."""
        try:
            meta = json.loads(self.src_content) if self.src_content else None
        except ValueError:
            return None
        name = meta.get("name") if isinstance(meta, dict) else None
        return name.strip() or None if isinstance(name, str) else None

    def to_record(self) -> dict[str, Any]:
        """The candidate as a release-format JSON object; index fingerprints hash exactly this."""
        return {
            "did": self.did,
            "txt": self.text,
            "img_path": self.image_path,
            "modality": self.modality,
            "src_content": self.src_content,
        }


@dataclass(frozen=True)
class MBEIRPair:
    name: str  # "<dataset>_task<k>", e.g. "cirr_task7"
    split: str  # "test", "val" or "train"
    query_file: Path  # query/<split>/mbeir_<name>_<split>.jsonl
    pool_file: Path  # cand_pool/local/mbeir_<name>[_<split>]_cand_pool.jsonl
    qrels_file: Path | None  # qrels/<split>/mbeir_<name>_<split>_qrels.txt; None when the release has none

    def __post_init__(self) -> None:
        if _PAIR_RE.fullmatch(self.name) is None:
            raise ValueError(f"pair name {self.name!r} is not of the form '<dataset>_task<k>'")

    @property
    def dataset(self) -> str:
        """Dataset part of the name, lower case as in the file names: "cirr", "mscoco", "fashioniq", ..."""
        return self.name.rsplit("_task", 1)[0]

    @property
    def task_id(self) -> int:
        """M-BEIR task id from the name ("cirr_task7" -> 7)."""
        return int(self.name.rsplit("_task", 1)[1])


# ----------------------------------------------------------------------------------------------------
# Line validation


def _fail(path: PathLike, line: int, what: str) -> MBEIRFormatError:
    return MBEIRFormatError(f"{os.fspath(path)}:{line}: {what}")


def _iter_json_lines(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; one line in memory at a time."""
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise _fail(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise _fail(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _check_id(path: PathLike, line: int, key: str, value: Any) -> str:
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise _fail(path, line, f"{key} must be a string '<dataset id>:<id>', got {value!r}")
    return value


def _check_optional_str(path: PathLike, line: int, key: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(path, line, f"{key} must be a string or null, got {type(value).__name__}")
    return value


def _check_modality(
    path: PathLike, line: int, key: str, modality: Any, text: str | None, image: str | None, text_key: str,
    image_key: str,
) -> str:
    if modality not in MODALITIES:
        raise _fail(path, line, f"{key} must be one of {', '.join(MODALITIES)}; got {modality!r}")
    # The modality decides what the encoder feeds the model, so the field it needs must be there. An extra
    # field (e.g. a caption on an image candidate) is tolerated: the modality says it is not used.
    if "text" in modality.split(",") and text is None:
        raise _fail(path, line, f"{key} is {modality!r} but {text_key} is null")
    if "image" in modality.split(",") and not image:
        raise _fail(path, line, f"{key} is {modality!r} but {image_key} is null or empty")
    return modality


def _check_id_list(path: PathLike, line: int, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(path, line, f"{key} must be a list, got {type(value).__name__}")
    return tuple(_check_id(path, line, f"{key} entry", v) for v in value)


def _missing_keys(path: PathLike, line: int, obj: Mapping[str, Any], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise _fail(path, line, f"missing key(s): {', '.join(missing)}")


def _parse_query(path: PathLike, line: int, obj: Mapping[str, Any]) -> MBEIRQuery:
    _missing_keys(path, line, obj, _QUERY_KEYS)
    qid = _check_id(path, line, "qid", obj["qid"])
    text = _check_optional_str(path, line, "query_txt", obj["query_txt"])
    image = _check_optional_str(path, line, "query_img_path", obj["query_img_path"])
    modality = _check_modality(
        path, line, "query_modality", obj["query_modality"], text, image, "query_txt", "query_img_path"
    )
    task_id = obj["task_id"]
    # bool is an int subclass; "task_id": true is a corrupt line, not task 1.
    if not isinstance(task_id, int) or isinstance(task_id, bool) or task_id not in TASK_IDS:
        raise _fail(path, line, f"task_id must be an integer in 0..8, got {task_id!r}")
    positives = _check_id_list(path, line, "pos_cand_list", obj["pos_cand_list"])
    negatives = _check_id_list(path, line, "neg_cand_list", obj.get("neg_cand_list", []))
    src = _check_optional_str(path, line, "query_src_content", obj.get("query_src_content"))
    return MBEIRQuery(qid, text, image, modality, task_id, positives, negatives, src)


def _parse_candidate(path: PathLike, line: int, obj: Mapping[str, Any]) -> MBEIRCandidate:
    _missing_keys(path, line, obj, _CAND_KEYS)
    did = _check_id(path, line, "did", obj["did"])
    text = _check_optional_str(path, line, "txt", obj["txt"])
    image = _check_optional_str(path, line, "img_path", obj["img_path"])
    modality = _check_modality(path, line, "modality", obj["modality"], text, image, "txt", "img_path")
    src = _check_optional_str(path, line, "src_content", obj.get("src_content"))
    return MBEIRCandidate(did, text, image, modality, src)


def iter_queries(path: PathLike) -> Iterator[MBEIRQuery]:
    """Stream validated queries from a query file; duplicate qids are an error."""
    seen: dict[str, int] = {}
    for line, obj in _iter_json_lines(path):
        query = _parse_query(path, line, obj)
        if query.qid in seen:
            raise _fail(path, line, f"duplicate qid {query.qid!r} (first seen on line {seen[query.qid]})")
        seen[query.qid] = line
        yield query


def iter_pool(path: PathLike) -> Iterator[MBEIRCandidate]:
    """Stream validated candidates from a pool file; duplicate dids are an error."""
    seen: dict[str, int] = {}
    for line, obj in _iter_json_lines(path):
        cand = _parse_candidate(path, line, obj)
        if cand.did in seen:
            raise _fail(path, line, f"duplicate did {cand.did!r} (first seen on line {seen[cand.did]})")
        seen[cand.did] = line
        yield cand


def read_cot_labels(path: PathLike) -> dict[str, tuple[str, str | None]]:
    """qid -> (route, cot) from the M-BEIR-CoT keys of a query file (route "direct" when absent).

    The one reader of these keys: training, the report, the app and bench all go through it."""
    labels = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            route = obj.get("route", "direct")
            if route not in ("direct", "reason"):
                raise ValueError(f"{path}:{n}: route must be 'direct' or 'reason', not {route!r}")
            cot = obj.get("cot")
            if route == "reason" and not cot:
                raise ValueError(f"{path}:{n}: a 'reason' query needs a non-empty 'cot'")
            labels[obj["qid"]] = (route, cot if route == "reason" else None)
    return labels


def read_name_labels(path: PathLike) -> dict[str, tuple[str | None, str | None]]:
    """qid -> (target_name, ref_name) from a query file: what a correct CoT names (the target's canonical name,
    and for a composed edit its reference's). (None, None) where a corpus has no such keys."""
    names = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                obj = json.loads(line)
                target, ref = obj.get("target_name"), obj.get("ref_name")
                names[obj["qid"]] = (target if isinstance(target, str) and target.strip() else None,
                                     ref if isinstance(ref, str) and ref.strip() else None)
    return names


def read_queries(path: PathLike) -> list[MBEIRQuery]:
    """All queries of a ``query/<split>/mbeir_<name>_<split>.jsonl`` file, in file order."""
    return list(iter_queries(path))


def read_pool(path: PathLike) -> list[MBEIRCandidate]:
    """All candidates of a ``cand_pool/.../mbeir_<pool>_cand_pool.jsonl`` file, in file order."""
    return list(iter_pool(path))


def read_qrels(path: PathLike) -> dict[str, set[str]]:
    """qid -> positive dids (relevance > 0). A qid whose lines are all non-positive maps to an empty set."""
    qrels: dict[str, set[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            fields = raw.split()
            if not fields:
                continue
            if len(fields) != 5:
                what = f"expected 5 fields 'qid Q0 did relevance task_id', got {len(fields)}"
                raise _fail(path, line, what)
            qid, _q0, did, rel, task = fields
            _check_id(path, line, "qid", qid)
            _check_id(path, line, "did", did)
            try:
                relevance = int(rel)
                task_id = int(task)
            except ValueError:
                what = f"relevance and task_id must be integers, got {rel!r} {task!r}"
                raise _fail(path, line, what) from None
            if task_id not in TASK_IDS:
                raise _fail(path, line, f"task_id must be in 0..8, got {task_id}")
            positives = qrels.setdefault(qid, set())
            if relevance > 0:
                positives.add(did)
    return qrels


# ----------------------------------------------------------------------------------------------------
# Images


_DRIVE = re.compile(r"[A-Za-z]:")  # a Windows drive ("C:"), which would join as absolute on Windows


def _check_relative(rel_path: str) -> None:
    """Refuse what is no relative path inside the root on its face: empty, absolute, or climbing out.

    String tests (a warm start checks some 6,000 paths): absolute in POSIX or Windows syntax is a leading
    slash or backslash (a root, a UNC share, a device path) or a drive letter, which is what PurePosixPath
    and PureWindowsPath call absolute or give a drive."""
    if not isinstance(rel_path, str) or not rel_path:
        raise ImagePathError(f"image path must be a non-empty string, got {rel_path!r}")
    if rel_path.startswith(("/", "\\")) or _DRIVE.match(rel_path):
        raise ImagePathError(f"image path escapes the data root: {rel_path!r} is absolute")
    normalized = os.path.normpath(rel_path)
    if normalized == ".." or normalized.startswith(("../", ".." + os.sep)):
        raise ImagePathError(f"image path escapes the data root: {rel_path!r} climbs out with '..'")


def _resolve_under(root: Path, rel_path: str, dirs: dict[str, str] | None = None) -> Path:
    """``root`` must already be resolved. See ``resolve_image``.

    `dirs`: a cache of resolved folders (relative folder -> real path), for many paths in few folders
    (`check_images`): the file itself is then checked with one lstat, and only a file that is a symlink is
    resolved in full. That path works on strings (pathlib's parsing was most of a warm start's check)."""
    _check_relative(rel_path)
    if dirs is not None:
        head, name = os.path.split(rel_path)
        if name not in ("", ".", ".."):
            real_dir = dirs.get(head)
            if real_dir is None:
                real_dir = dirs[head] = str((root / head).resolve() if head else root)
            target = os.path.join(real_dir, name)
            try:
                mode = os.lstat(target).st_mode
            except (FileNotFoundError, NotADirectoryError):
                mode = None
            if mode is None or not stat.S_ISLNK(mode):
                inside = str(root).rstrip(os.sep) + os.sep
                if not target.startswith(inside):
                    raise ImagePathError(f"image path escapes the data root: {rel_path!r} resolves to {target}")
                if mode is None or not stat.S_ISREG(mode):
                    raise FileNotFoundError(f"image file not found: {rel_path!r} (looked for {root / rel_path})")
                return Path(target)
    # resolve() follows symlinks (lstat/readlink only, nothing is opened), so a link inside the root that
    # points elsewhere is caught here, before anyone reads it.
    target = (root / rel_path).resolve()
    if not target.is_relative_to(root):
        raise ImagePathError(f"image path escapes the data root: {rel_path!r} resolves to {target}")
    if not target.is_file():
        raise FileNotFoundError(f"image file not found: {rel_path!r} (looked for {root / rel_path})")
    return target


def resolve_image(root: PathLike, rel_path: str) -> Path:
    """Absolute path of an image given relative to the data root; never leaves the root, never reads.

    Raises ``ImagePathError`` for absolute paths, ``..`` escapes and symlinks resolving outside the root,
    and ``FileNotFoundError`` when the image is missing.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"M-BEIR data root not found: {root_path}")
    return _resolve_under(root_path.resolve(), rel_path)


def check_images(root: PathLike, queries: Iterable[MBEIRQuery], candidates: Iterable[MBEIRCandidate]) -> None:
    """Resolve every image path of the queries and candidates; raise the first problem, naming its id."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"M-BEIR data root not found: {root_path}")
    resolved_root = root_path.resolve()
    dirs: dict[str, str] = {}  # few folders, many images: each folder is resolved once
    items = itertools.chain(
        (("query", q.qid, q.image_path) for q in queries),
        (("candidate", c.did, c.image_path) for c in candidates),
    )
    n = 0
    for kind, ident, rel in items:
        if rel is None:
            continue
        try:
            _resolve_under(resolved_root, rel, dirs)
        except (ImagePathError, FileNotFoundError) as e:
            raise type(e)(f"{kind} {ident}: {e}") from e
        n += 1
    logger.debug("checked %d image paths under %s", n, resolved_root)


# ----------------------------------------------------------------------------------------------------
# Pairs


def _split_names(pairs: str | Sequence[str]) -> list[str]:
    names = pairs.split(",") if isinstance(pairs, str) else list(pairs)
    out: list[str] = []
    for name in names:
        name = name.strip()
        if name and name not in out:
            out.append(name)
    return out


def pool_candidates(root: PathLike, name: str, split: str) -> list[Path]:
    """Pool files tried for a pair, in order: the split-suffixed name (MSCOCO test), then the plain one."""
    local = Path(root) / "cand_pool" / "local"
    return [local / f"mbeir_{name}_{split}_cand_pool.jsonl", local / f"mbeir_{name}_cand_pool.jsonl"]


def discover_pairs(root: PathLike, split: str, pairs: str | Sequence[str] = "all") -> list[MBEIRPair]:
    """The (dataset, task) pairs of a split, sorted by name, with their query, pool and qrels files.

    ``pairs`` is "all" or a comma-separated string / sequence of names such as "cirr_task7". Only the
    selected pairs need a pool file, so a partial download can still be evaluated pair by pair.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"M-BEIR data root not found: {root_path}")
    query_dir = root_path / "query" / split
    if not query_dir.is_dir():
        splits = sorted(p.name for p in (root_path / "query").glob("*") if p.is_dir())
        raise FileNotFoundError(
            f"no query directory for split {split!r}: {query_dir} does not exist "
            f"(splits found: {', '.join(splits) or 'none'})"
        )
    suffix = f"_{split}.jsonl"
    found: dict[str, Path] = {}
    for path in sorted(query_dir.glob(f"mbeir_*{suffix}")):
        name = path.name[len("mbeir_") : -len(suffix)]
        if _PAIR_RE.fullmatch(name) is None:
            # e.g. the training union "mbeir_union_up_train.jsonl": not one (dataset, task) pair.
            logger.warning("skipping %s: not a '<dataset>_task<k>' query file", path)
            continue
        found[name] = path
    if not found:
        raise FileNotFoundError(f"no query files mbeir_<dataset>_task<k>{suffix} in {query_dir}")

    if isinstance(pairs, str) and pairs.strip() == "all":
        selected = list(found)
    else:
        selected = _split_names(pairs)
        if not selected:
            raise ValueError(f"no pair names given; available: {', '.join(found)}")
        unknown = [n for n in selected if n not in found]
        if unknown:
            raise ValueError(
                f"unknown M-BEIR pair(s) {', '.join(unknown)} for split {split!r}; "
                f"available: {', '.join(found)}"
            )

    result: list[MBEIRPair] = []
    for name in sorted(selected):
        tried = pool_candidates(root_path, name, split)
        pool = next((p for p in tried if p.is_file()), None)
        if pool is None:
            raise FileNotFoundError(
                f"no candidate pool for {name} ({found[name]}): expected {tried[0]} or {tried[1]}"
            )
        qrels: Path | None = root_path / "qrels" / split / f"mbeir_{name}_{split}_qrels.txt"
        if not qrels.is_file():
            logger.info("no qrels file %s; positives of %s come from pos_cand_list", qrels, name)
            qrels = None
        result.append(MBEIRPair(name, split, found[name], pool, qrels))
    return result


def candidate_modality_of(
    query: MBEIRQuery, pool: Mapping[str, MBEIRCandidate], positives: Iterable[str] | None = None
) -> str:
    """Modality of the query's first positive that is in the pool: what UniIR uses to pick the instruction.

    ``positives`` overrides ``query.positives`` (e.g. with the qrels' positives).
    KeyError if none of them is in the pool.
    """
    ids = list(query.positives if positives is None else positives)
    for did in ids:
        cand = pool.get(did)
        if cand is not None:
            return cand.modality
    shown = ", ".join(ids[:_MAX_SHOWN]) + (", ..." if len(ids) > _MAX_SHOWN else "")
    raise KeyError(f"query {query.qid}: none of its positives ({shown or 'none'}) is in the candidate pool")


def load_pair(pair: MBEIRPair) -> tuple[list[MBEIRQuery], list[MBEIRCandidate], dict[str, set[str]]]:
    """Queries, pool and positives (qid -> dids) of one pair.

    Positives come from the qrels file when the pair has one (it is what UniIR scores against), else from each
    query's pos_cand_list. Queries whose positives are not in the pool can never be hit; they are kept (they
    count as misses, as in UniIR) but logged.
    """
    queries = read_queries(pair.query_file)
    pool = read_pool(pair.pool_file)
    if pair.qrels_file is not None:
        qrels = read_qrels(pair.qrels_file)
        positives = {q.qid: set(qrels.get(q.qid, ())) for q in queries}
        without = [q.qid for q in queries if q.qid not in qrels]
        if without:
            logger.warning(
                "%s: %d queries have no qrels lines in %s (e.g. %s)",
                pair.name, len(without), pair.qrels_file, ", ".join(without[:_MAX_SHOWN]),
            )
    else:
        positives = {q.qid: set(q.positives) for q in queries}

    dids = {c.did for c in pool}
    unreachable = [qid for qid, pos in positives.items() if not pos & dids]
    if unreachable:
        logger.warning(
            "%s: %d of %d queries have no positive in the pool %s (e.g. %s); they count as misses",
            pair.name, len(unreachable), len(queries), pair.pool_file, ", ".join(unreachable[:_MAX_SHOWN]),
        )
    partial = sum(1 for pos in positives.values() if pos & dids and not pos <= dids)
    if partial:
        logger.info("%s: %d queries have some positives missing from the pool", pair.name, partial)
    wrong_task = sum(1 for q in queries if q.task_id != pair.task_id)
    if wrong_task:
        logger.warning("%s: %d queries carry a task_id other than %d", pair.name, wrong_task, pair.task_id)
    logger.info("%s/%s: %d queries, %d candidates", pair.name, pair.split, len(queries), len(pool))
    return queries, pool, positives
