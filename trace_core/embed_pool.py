"""Stage: embed a candidate pool and index it, cached under a fingerprint; sharded across hosts.

`pool_index` is what the evaluator and the app call: it loads the cached index of a pool when its manifest
matches the encoder and the pool content, and otherwise embeds the pool (a progress bar), builds the index and
saves it atomically. A stale, corrupt or foreign cache is never loaded; it is rebuilt.

Encoding a pool is embarrassingly parallel. Each worker embeds a contiguous slice and writes one shard file;
`merge` then joins the shards into one index:

    python -m trace_core.embed_pool embed --mbeir-dir DIR --pool mscoco_task0_test --model M --out OUT \
        --shard 0 --num-shards 4          # on each of 4 GPUs/hosts (or under torchrun: RANK/WORLD_SIZE)
    python -m trace_core.embed_pool merge --out OUT
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from .index import (
    CandidateIndex,
    CorruptIndexError,
    IndexConfig,
    IndexManifest,
    IndexMismatchError,
    merge_shards,
    pool_fingerprint,
    shard_bounds,
    write_shard,
)
from .interface import Encoder
from .mbeir import MBEIRCandidate, MBEIRQuery, read_pool, resolve_image
from .records import Candidate, Query

log = logging.getLogger(__name__)


def to_candidate(c: MBEIRCandidate, root: str | os.PathLike) -> Candidate:
    """An M-BEIR pool record as encoder input; its image path is confined to the data root."""
    image = resolve_image(root, c.image_path) if c.image_path else None
    return Candidate(text=c.text, image=image, did=c.did)


def to_query(q: MBEIRQuery, root: str | os.PathLike, instruction: str) -> Query:
    image = resolve_image(root, q.image_path) if q.image_path else None
    return Query(text=q.text, image=image, instruction=instruction, qid=q.qid)


def expected_manifest(encoder: Encoder, pool: Sequence[MBEIRCandidate]) -> IndexManifest:
    fp = encoder.fingerprint
    return IndexManifest(
        model_id=fp["model_id"],
        model_revision=fp["revision"],
        prompt_hash=fp["candidate_prompt_hash"],
        dim=fp["dim"],
        pool_size=len(pool),
        pool_hash=pool_fingerprint(c.to_record() for c in pool),
    )


def cache_path(cache_dir: str | os.PathLike, pool_name: str, manifest: IndexManifest) -> Path:
    """One folder per (pool, model, prompt, content): switching models never overwrites another's index."""
    key = hashlib.sha256(
        f"{manifest.model_id}|{manifest.model_revision}|{manifest.prompt_hash}|{manifest.pool_hash}".encode()
    ).hexdigest()[:12]
    return Path(cache_dir) / f"{pool_name}-{key}"


def pool_index(
    encoder: Encoder,
    pool: Sequence[MBEIRCandidate],
    root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    pool_name: str,
    config: IndexConfig = IndexConfig(),
    progress: bool = True,
    shipped: Sequence[str | os.PathLike] = (),
    build: bool = True,
    lock: AbstractContextManager | None = None,
    report: Callable[[int, int], None] | None = None,
) -> CandidateIndex | None:
    """The pool's index: loaded from the cache when it matches, otherwise embedded, built and cached.

    `shipped`: read-only folders laid out like the cache (the app's `assets/cache`), looked in first; an index
    there counts only when its manifest matches this encoder and pool, like a cached one.
    `build=False`: only look (None when nothing usable is there), so a server can answer before it builds.
    `lock`, `report`: a server building in the background embeds in chunks of ENCODE_CHUNK candidates, each
    under `lock` (the model's, so that searches get the model between chunks), and calls report(done, total)
    after each."""
    expected = expected_manifest(encoder, pool)
    path = cache_path(cache_dir, pool_name, expected)
    for folder in shipped:
        try:
            index = CandidateIndex.load(Path(folder) / path.name, expected=expected)
            log.info("loaded the shipped index %s (%d candidates)", path.name, len(index))
            return index
        except FileNotFoundError:
            continue
        except (CorruptIndexError, IndexMismatchError) as exc:
            log.warning("shipped index %s is unusable (%s); not used", path.name, exc)
    try:
        index = CandidateIndex.load(path, expected=expected)
        log.info("loaded cached index %s (%d candidates)", path, len(index))
        return index
    except FileNotFoundError:
        log.info("no cached index for %s; embedding %d candidates", pool_name, len(pool))
    except (CorruptIndexError, IndexMismatchError) as exc:
        log.warning("cached index %s is unusable (%s); rebuilding it", path, exc)
    # Two pairs may share one pool (the same records in the same order, e.g. a composed-edit pair and its
    # text-only twin): the key covers model, prompt and content, so another pool name's index is this one's.
    key = path.name[len(pool_name) + 1 :]
    for other in sorted(Path(cache_dir).glob(f"*-{key}")):
        if other == path:
            continue
        try:
            index = CandidateIndex.load(other, expected=expected)
        except (FileNotFoundError, CorruptIndexError, IndexMismatchError):
            continue
        index.save(path)  # a copy of its own: a later change to either pool must not touch the other
        log.info("%s has the same candidates as %s: reused its index", pool_name, other.name)
        return index
    if not build:
        return None
    cands = [to_candidate(c, root) for c in pool]
    if lock is None and report is None:
        embeddings = encoder.encode_candidates(cands, progress=progress)
    else:
        embeddings = encode_in_chunks(encoder, cands, lock, report)
    index = CandidateIndex.build(
        [c.did for c in pool],
        embeddings,
        model_id=expected.model_id,
        model_revision=expected.model_revision,
        prompt_hash=expected.prompt_hash,
        pool_hash=expected.pool_hash,
        config=config,
    )
    if index.manifest.kind != "flat":
        # Report what the approximation costs: recall@10 against exact search, pool items as probe queries.
        probe = embeddings[np.random.default_rng(0).choice(len(embeddings), min(256, len(embeddings)), False)]
        log.info("%s: approximate index recall@10 vs exact search: %.3f", pool_name, index.recall_vs_exact(probe))
    index.save(path)
    return index


ENCODE_CHUNK = 32  # candidates per chunk when building beside a server (a few seconds of model time on CPU)


def encode_in_chunks(encoder: Encoder, cands: Sequence[Candidate], lock: AbstractContextManager | None,
                     report: Callable[[int, int], None] | None, chunk: int = ENCODE_CHUNK) -> np.ndarray:
    """`encode_candidates` chunk by chunk, each chunk under `lock`, calling report(done, total) after each.

    Rows of a candidate batch do not interact, so the embeddings are the ones one call would give."""
    parts = []
    for start in range(0, len(cands), chunk):
        with lock if lock is not None else nullcontext():
            parts.append(encoder.encode_candidates(cands[start : start + chunk], progress=False))
        if report is not None:
            report(min(start + chunk, len(cands)), len(cands))
    return np.concatenate(parts) if parts else encoder.encode_candidates(cands, progress=False)


# ------------------------------------------------------------------------------------------ CLI
def _pool_file(root: Path, pool: str) -> Path:
    path = root / "cand_pool" / "local" / f"mbeir_{pool}_cand_pool.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no pool file {path}")
    return path


def _embed(args: argparse.Namespace) -> None:
    from .loading import load_model

    shard = args.shard if args.shard is not None else int(os.environ.get("RANK", 0))
    num_shards = args.num_shards if args.num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    root = Path(args.mbeir_dir)
    pool = read_pool(_pool_file(root, args.pool))
    start, end = shard_bounds(len(pool), shard, num_shards)
    device = args.device
    if device is None and os.environ.get("LOCAL_RANK") is not None:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # one GPU per process under torchrun
    encoder = load_model(args.model, device=device)
    part = pool[start:end]
    log.info("shard %d/%d: candidates %d..%d of %d", shard, num_shards, start, end, len(pool))
    embeddings = encoder.encode_candidates([to_candidate(c, root) for c in part], progress=True)
    path = write_shard(args.out, shard, num_shards, [c.did for c in part], embeddings,
                       expected_manifest(encoder, pool))
    print(f"wrote {path}")


def _merge(args: argparse.Namespace) -> None:
    index = merge_shards(args.out)
    index.save(Path(args.out) / "index")
    print(f"merged {len(index)} candidates into {Path(args.out) / 'index'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trace_core.embed_pool", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed", help="embed one shard of a candidate pool")
    e.add_argument("--mbeir-dir", required=True, help="M-BEIR root (holds cand_pool/local/)")
    e.add_argument("--pool", required=True, help="pool name, e.g. mscoco_task0_test or cirr_task7")
    e.add_argument("--model", required=True, help="checkpoint directory or hub id")
    e.add_argument("--out", required=True, help="folder for shard files")
    e.add_argument("--shard", type=int, default=None, help="this worker's shard (default: $RANK or 0)")
    e.add_argument("--num-shards", type=int, default=None, help="number of shards (default: $WORLD_SIZE or 1)")
    e.add_argument("--device", default=None)
    m = sub.add_parser("merge", help="merge all shards in --out into one index (OUT/index)")
    m.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _embed(args) if args.command == "embed" else _merge(args)
    except (ValueError, FileNotFoundError, CorruptIndexError, IndexMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
