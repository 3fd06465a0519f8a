"""The on-disk format of a candidate index: its manifest, its files, and their integrity checks.

An index is a directory with ``embeddings.npy`` ([N, D] float32, or float16 for a shipped index: read back as
float32), ``ids.json`` (the N dids in pool order),
``index.faiss`` for an approximate (HNSW) index only, and ``manifest.json``. ``manifest.json`` holds the
``IndexManifest`` (what produced the index) and the size and sha256 of every other file, so a truncated or
corrupted file is detected at load time instead of producing wrong scores; it is written last. The directory
is written through ``trace_core.atomic.atomic_directory``: a crash never leaves a half-written index under
the target name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ..atomic import atomic_directory

if TYPE_CHECKING:
    import faiss

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
MANIFEST_FILE = "manifest.json"
KINDS = ("flat", "hnsw")
# Fields that identify what an index was built from; two manifests differing in any of them are not
# interchangeable. ``kind`` is deliberately absent: a flat and an HNSW index over the same pool answer the
# same question.
_IDENTITY_FIELDS = ("model_id", "model_revision", "prompt_hash", "dim", "pool_size", "pool_hash")
_HASH_CHUNK = 1 << 20


def rebuild_hint(directory: Path) -> str:
    return f"delete {directory} and rebuild the index by re-encoding the candidate pool"


class IndexMismatchError(Exception):
    """The index on disk was built for a different model, prompt or candidate pool than expected."""


class CorruptIndexError(Exception):
    """An index or shard file is unreadable, truncated or inconsistent with its manifest."""


@dataclass(frozen=True)
class IndexManifest:
    """What produced an index; stored in ``manifest.json`` and compared on load."""

    model_id: str  # model name or path that produced the embeddings
    model_revision: str  # checkpoint revision / weights hash ("" if unknown)
    prompt_hash: str  # hash of the candidate prompt template
    dim: int  # embedding dimension D
    pool_size: int  # number of candidates N
    pool_hash: str  # content hash of the candidate pool records (see pool_fingerprint)
    kind: str = "flat"  # "flat" (exact inner product) or "hnsw" (approximate)
    format_version: int = FORMAT_VERSION  # on-disk layout version of the index directory

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"IndexManifest.dim must be positive, got {self.dim}.")
        if self.pool_size <= 0:
            raise ValueError(f"IndexManifest.pool_size must be positive, got {self.pool_size}.")
        if self.kind not in KINDS:
            raise ValueError(f"IndexManifest.kind must be one of {KINDS}, got {self.kind!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexManifest:
        """Inverse of ``to_dict``; raises ValueError naming missing fields (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name not in ("kind", "format_version")}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"Index manifest is missing field(s) {', '.join(missing)}.")
        return cls(**{k: v for k, v in data.items() if k in known})

    def compatible(self, other: IndexManifest) -> list[str]:
        """Human-readable differences between this (expected) manifest and ``other`` (found).

        An empty list means an index described by ``other`` can be used where ``self`` is expected.
        """
        diffs = [
            f"{name}: expected {getattr(self, name)!r}, found {getattr(other, name)!r}"
            for name in _IDENTITY_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]
        if self.format_version != other.format_version:
            diffs.append(f"format_version: expected {self.format_version}, found {other.format_version}")
        return diffs

    @property
    def data_files(self) -> tuple[str, ...]:
        """The files (besides manifest.json) an index of this kind holds; exact search needs no faiss file."""
        return (EMBEDDINGS_FILE, IDS_FILE, *((INDEX_FILE,) if self.kind == "hnsw" else ()))


def pool_fingerprint(records: Iterable[Mapping[str, Any]]) -> str:
    """sha256 over the canonical JSON (sorted keys, one line per record) of the pool, in pool order.

    Callers pass it as ``pool_hash`` so an index is tied to the exact candidate records it was built from.
    Raises TypeError if a record holds a value JSON cannot represent.
    """
    digest = hashlib.sha256()
    for record in records:
        line = json.dumps(dict(record), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def ids_fingerprint(ids: Sequence[str]) -> str:
    """Fallback pool_hash when the caller has no records at hand: the ordered id list."""
    return hashlib.sha256(json.dumps(list(ids), ensure_ascii=False).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------- what an index holds
def validate_ids(ids: Sequence[str], n: int) -> list[str]:
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"Got {len(ids)} ids for {n} embedding rows; they must have the same length.")
    bad = next((x for x in ids if not isinstance(x, str)), None)
    if bad is not None:
        raise ValueError(f"Candidate ids must be strings, got {type(bad).__name__} {bad!r}.")
    seen: set[str] = set()
    for did in ids:
        if did in seen:
            raise ValueError(f"Candidate ids must be unique, but {did!r} occurs more than once.")
        seen.add(did)
    return ids


def validate_embeddings(
    embeddings: np.ndarray, what: str = "Candidate embeddings", allow_empty: bool = False
) -> np.ndarray:
    """Return a private C-contiguous float32 copy ``[N, D]`` after shape/finiteness checks.

    ``allow_empty`` admits N == 0 (a shard of a pool smaller than the shard count).
    """
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [N, D], got shape {arr.shape}.")
    if (arr.shape[0] == 0 and not allow_empty) or arr.shape[1] == 0:
        raise ValueError(f"{what} must be non-empty, got shape {arr.shape}.")
    # Copy so later mutation of the caller's array cannot desynchronise the index from its vectors.
    arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(arr).all():
        bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(f"{what} contain NaN or inf in {bad_rows.size} row(s), first at row {bad_rows[0]}.")
    return arr


# ---------------------------------------------------------------------- files and their records
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The size and sha256 of a written file (hashed from disk), as manifests record them."""
    path = Path(path)
    return {"size": path.stat().st_size, "sha256": _sha256_file(path)}


def write_file(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> dict[str, Any]:
    """Write ``path`` through ``write(file)``; return its record (``file_record``)."""
    with open(path, "wb") as f:
        write(f)
    return file_record(path)


def check_file(path: Path, record: Mapping[str, Any], rebuild_hint: str) -> None:
    """Raise FileNotFoundError / CorruptIndexError unless ``path`` matches its recorded size and sha256."""
    if not path.is_file():
        raise FileNotFoundError(f"File {path} is missing; {rebuild_hint}.")
    size = path.stat().st_size
    if size != record.get("size"):
        raise CorruptIndexError(
            f"File {path} is truncated or corrupt (expected {record.get('size')} bytes, found {size}); "
            f"{rebuild_hint}."
        )
    sha = _sha256_file(path)
    if sha != record.get("sha256"):
        raise CorruptIndexError(
            f"File {path} is corrupt (its sha256 {sha[:12]}... does not match the recorded "
            f"{str(record.get('sha256'))[:12]}...); {rebuild_hint}."
        )


# ---------------------------------------------------------------------- the index directory
def save_index(
    directory: str | os.PathLike[str],
    ids: Sequence[str],
    embeddings: np.ndarray,
    manifest: IndexManifest,
    faiss_index: faiss.Index | None,
    dtype: str = "float32",
) -> None:
    """Atomically write an index directory (replacing any index already there). `dtype` "float16" halves the
    embeddings file (the app's shipped indexes); they are read back as float32."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"embeddings are stored as float32 or float16, not {dtype!r}")
    embeddings = np.asarray(embeddings).astype(dtype)
    with atomic_directory(directory) as tmp:
        ids_json = json.dumps(list(ids), ensure_ascii=False).encode("utf-8")
        files = {
            EMBEDDINGS_FILE: write_file(tmp / EMBEDDINGS_FILE, lambda f: np.save(f, embeddings, allow_pickle=False)),
            IDS_FILE: write_file(tmp / IDS_FILE, lambda f: f.write(ids_json)),
        }
        if INDEX_FILE in manifest.data_files:
            import faiss

            faiss.write_index(faiss_index, str(tmp / INDEX_FILE))  # faiss writes by path, through its own stream
            files[INDEX_FILE] = file_record(tmp / INDEX_FILE)
        doc = {"manifest": manifest.to_dict(), "files": files}
        # Written last: a directory with a manifest.json has all its data files.
        write_file(tmp / MANIFEST_FILE, lambda f: f.write(json.dumps(doc, indent=2).encode("utf-8")))


def load_index(
    directory: str | os.PathLike[str], expected: IndexManifest | None = None
) -> tuple[list, np.ndarray, IndexManifest, faiss.Index | None]:
    """Read and verify an index directory: its ids, embeddings [N, D], manifest and (HNSW) faiss index.

    Raises FileNotFoundError if the directory or a file is missing, IndexMismatchError if ``expected``
    is given and differs in identity, CorruptIndexError if a file is truncated, corrupt or unreadable.
    An index written before flat indexes dropped their faiss file still loads (that file is not read).
    """
    directory = Path(directory)
    rebuild = rebuild_hint(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"No index directory at {directory}; build it with CandidateIndex.build(...).save(...) first."
        )
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"Index directory {directory} has no {MANIFEST_FILE}; {rebuild}.")
    try:
        doc = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest = IndexManifest.from_dict(doc["manifest"])
        file_records = doc["files"]
        if not all(name in file_records for name in manifest.data_files):
            raise ValueError("file records incomplete")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptIndexError(f"Index manifest {manifest_path} is unreadable ({err}); {rebuild}.") from err

    # Identity first: cheap, and the more useful message when both problems exist.
    if expected is not None:
        diffs = expected.compatible(manifest)
        if diffs:
            raise IndexMismatchError(
                f"The index at {directory} was built for a different setup ({'; '.join(diffs)}); "
                f"{rebuild} with the current model, prompt and pool."
            )
    if manifest.format_version != FORMAT_VERSION:
        raise IndexMismatchError(
            f"The index at {directory} uses format version {manifest.format_version} but this code reads "
            f"version {FORMAT_VERSION}; {rebuild} with this version of the code."
        )

    for name in manifest.data_files:
        check_file(directory / name, file_records[name], rebuild)
    try:
        ids = json.loads((directory / IDS_FILE).read_text(encoding="utf-8"))
        embeddings = np.load(directory / EMBEDDINGS_FILE, allow_pickle=False)
        index = None
        if INDEX_FILE in manifest.data_files:
            import faiss

            index = faiss.read_index(str(directory / INDEX_FILE))
        if not isinstance(ids, list) or embeddings.dtype not in (np.float32, np.float16) or embeddings.ndim != 2:
            raise ValueError("ids or embeddings have the wrong type or shape")
        embeddings = embeddings.astype(np.float32, copy=False)
    except (OSError, ValueError, RuntimeError) as err:
        raise CorruptIndexError(f"Index at {directory} could not be read ({err}); {rebuild}.") from err
    return ids, embeddings, manifest, index
