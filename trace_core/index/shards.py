"""Sharded pool encoding: one slice of the pool per GPU or host, then one merged index.

``write_shard`` writes slice ``shard_bounds(N, shard, num_shards)`` of the pool as ``shard-SSSSS-of-NNNNN.npz``
plus a ``.json`` manifest (written after the ``.npz``: it marks the shard complete). ``merge_shards`` checks that
every shard is present, that all shards agree on the manifest and that together they tile the pool exactly
once, then builds the ``CandidateIndex``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from .search import CandidateIndex, IndexConfig
from .storage import (
    CorruptIndexError,
    IndexManifest,
    IndexMismatchError,
    check_file,
    validate_embeddings,
    validate_ids,
    write_file,
)

logger = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.json$")


def shard_bounds(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` slice of ``n`` items for ``shard``; shard sizes differ by at most 1."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must satisfy 0 <= shard < num_shards ({num_shards}), got {shard}.")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    base, extra = divmod(n, num_shards)
    # The first `extra` shards get one more item.
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def _shard_stem(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def write_shard(
    directory: str | os.PathLike[str],
    shard: int,
    num_shards: int,
    ids: Sequence[str],
    embeddings: np.ndarray,
    manifest: IndexManifest,
) -> Path:
    """Write one encoded slice of the pool as ``shard-SSSSS-of-NNNNN.npz`` plus a ``.json`` manifest.

    ``manifest`` describes the *full* pool; ``ids``/``embeddings`` [n_shard, D] must be exactly the slice
    ``shard_bounds(manifest.pool_size, shard, num_shards)``. The ``.json`` is written after the ``.npz`` and
    marks the shard complete. Returns the ``.npz`` path.
    """
    start, end = shard_bounds(manifest.pool_size, shard, num_shards)
    if end == start and np.asarray(embeddings).size == 0:
        # An empty slice (pool smaller than the shard count) still needs its file so merge sees every shard;
        # encoders may hand back shape [0] instead of [0, D] for no inputs.
        embeddings = np.zeros((0, manifest.dim), dtype=np.float32)
    emb = validate_embeddings(embeddings, what=f"Shard {shard} embeddings", allow_empty=True)
    ids = validate_ids(ids, emb.shape[0])
    if len(ids) != end - start:
        raise ValueError(
            f"Shard {shard} of {num_shards} must hold candidates [{start}, {end}) of the "
            f"{manifest.pool_size}-candidate pool ({end - start} items), got {len(ids)}."
        )
    if emb.shape[1] != manifest.dim:
        raise ValueError(
            f"Shard {shard} embeddings have dimension {emb.shape[1]}, manifest says {manifest.dim}."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = _shard_stem(shard, num_shards)
    npz_path = directory / f"{stem}.npz"
    id_array = np.asarray(ids, dtype=str)  # fixed-width unicode, loadable without pickle
    record = atomic_file(npz_path, lambda tmp: write_file(tmp, lambda f: np.savez(f, ids=id_array, embeddings=emb)))
    meta = {
        "manifest": manifest.to_dict(),
        "shard": shard,
        "num_shards": num_shards,
        "start": start,
        "end": end,
        "file": npz_path.name,
        **record,
    }
    text = json.dumps(meta, indent=2)
    atomic_file(directory / f"{stem}.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    logger.info("Wrote shard %d/%d (%d candidates) to %s.", shard, num_shards, len(ids), npz_path)
    return npz_path


def merge_shards(
    directory: str | os.PathLike[str],
    config: IndexConfig = IndexConfig(),  # noqa: B008 -- frozen dataclass, safe as a default
) -> CandidateIndex:
    """Check and concatenate all shards written by ``write_shard`` in ``directory`` and build the index."""
    directory = Path(directory)
    rerun = "re-run the pool encoding for the affected shard(s)"
    if not directory.is_dir():
        raise FileNotFoundError(f"No shard directory at {directory}; encode the pool with write_shard first.")
    metas: dict[int, dict[str, Any]] = {}
    counts: set[int] = set()
    for path in sorted(directory.iterdir()):
        match = _SHARD_RE.match(path.name)
        if not match:
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            meta["manifest"] = IndexManifest.from_dict(meta["manifest"])
            shard, num_shards = int(meta["shard"]), int(meta["num_shards"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptIndexError(f"Shard manifest {path} is unreadable ({err}); {rerun}.") from err
        if (shard, num_shards) != (int(match[1]), int(match[2])):
            raise CorruptIndexError(
                f"Shard manifest {path} describes shard {shard} of {num_shards}; {rerun}."
            )
        counts.add(num_shards)
        metas[shard] = meta
    if not metas:
        raise FileNotFoundError(
            f"No shard files (shard-*-of-*.json) in {directory}; encode the pool with write_shard first."
        )
    if len(counts) > 1:
        raise IndexMismatchError(
            f"Shards in {directory} come from runs with different shard counts {sorted(counts)}; remove the "
            f"stale shard files and {rerun}."
        )
    num_shards = counts.pop()
    missing = [s for s in range(num_shards) if s not in metas]
    if missing:
        names = ", ".join(f"{_shard_stem(s, num_shards)}.npz" for s in missing)
        raise FileNotFoundError(
            f"Missing {len(missing)} of {num_shards} shards in {directory}: shard(s) "
            f"{', '.join(map(str, missing))} ({names}); {rerun}."
        )

    reference: IndexManifest = metas[0]["manifest"]
    for s in range(1, num_shards):
        diffs = reference.compatible(metas[s]["manifest"])
        if diffs:
            raise IndexMismatchError(
                f"Shard {s} in {directory} was encoded with a different setup than shard 0 "
                f"({'; '.join(diffs)}); {rerun} with one model, prompt and pool."
            )

    ids: list[str] = []
    blocks: list[np.ndarray] = []  # per shard [n_shard, D]
    expected_start = 0
    for s in range(num_shards):
        meta = metas[s]
        start, end = int(meta["start"]), int(meta["end"])
        if start != expected_start or end < start:
            raise CorruptIndexError(
                f"Shard {s} in {directory} covers [{start}, {end}) but the pool continues at {expected_start}; "
                f"the shards do not tile the pool contiguously, {rerun}."
            )
        expected_start = end
        npz_path = directory / str(meta["file"])
        check_file(npz_path, meta, rerun)
        try:
            with np.load(npz_path, allow_pickle=False) as data:
                shard_ids = data["ids"].tolist()
                emb = data["embeddings"]
        except (OSError, ValueError, KeyError) as err:
            raise CorruptIndexError(f"Shard file {npz_path} could not be read ({err}); {rerun}.") from err
        if len(shard_ids) != end - start or emb.shape != (end - start, reference.dim):
            raise CorruptIndexError(
                f"Shard file {npz_path} holds {len(shard_ids)} ids and embeddings of shape {emb.shape}, "
                f"expected {end - start} rows of dimension {reference.dim}; {rerun}."
            )
        ids.extend(shard_ids)
        blocks.append(emb)
    if expected_start != reference.pool_size:
        raise CorruptIndexError(
            f"Shards in {directory} cover {expected_start} candidates but the pool has {reference.pool_size}; "
            f"{rerun}."
        )
    logger.info("Merging %d shards (%d candidates) from %s.", num_shards, len(ids), directory)
    return CandidateIndex.build(
        ids,
        np.concatenate(blocks, axis=0),
        model_id=reference.model_id,
        model_revision=reference.model_revision,
        prompt_hash=reference.prompt_hash,
        pool_hash=reference.pool_hash,
        config=config,
    )
