"""Candidate index: nearest-neighbour search over the encoded M-BEIR candidate pool.

- `search.py`: `CandidateIndex` (ids, L2-normalised vectors [N, D], manifest): exact top-k in numpy, faiss
  HNSW above `IndexConfig.approximate_above` candidates; exact ranks and the gold rank (`gold_ranks`).
- `storage.py`: the on-disk format: `IndexManifest` (what produced an index; loading with `expected=` refuses
  an index of another model, prompt or pool instead of silently returning meaningless neighbours), the files
  with their sizes and sha256, atomic save and verified load.
- `shards.py`: a large pool encoded in slices (`write_shard`) and merged into one index (`merge_shards`).
"""

from .search import CandidateIndex, IndexConfig
from .shards import merge_shards, shard_bounds, write_shard
from .storage import CorruptIndexError, IndexManifest, IndexMismatchError, pool_fingerprint

__all__ = [
    "CandidateIndex",
    "CorruptIndexError",
    "IndexConfig",
    "IndexManifest",
    "IndexMismatchError",
    "merge_shards",
    "pool_fingerprint",
    "shard_bounds",
    "write_shard",
]
