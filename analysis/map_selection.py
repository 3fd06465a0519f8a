"""Sets of points on the embedding map, as rows: what a box, a lasso, a search, a click or the error table lit up.

The browser sends only point numbers (rows of `EmbeddingMap.points`); every table, gallery and export is built
here from the app's own copy of the map and of the per-query table, so a page cannot make the server show or
write anything the map does not hold. Neighbours are found in embedding space (cosine over the map's stored
unit vectors), never by distance on the 2-D map: UMAP keeps neighbourhoods only roughly, and a reader asking
"what is near this item" means near for the retriever.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from trace_core.atomic import atomic_file

# Neighbours and search matches are taken among candidates and final query embeddings: a query's direct
# embedding is the same query a second time (the same vector when it went direct).
NEIGHBOUR_KINDS = ("candidate", "query (final)")
EXPORT_COLUMNS = ["point", "id", "x", "y", "kind", "pair", "label", "route", "gold rank", "hit"]
TABLE_COLUMNS = ["point", "kind", "id", "pair", "label", "route", "gold rank", "hit"]


class SelectionError(ValueError):
    """Point numbers or a search the map cannot use; the message is the sentence to show."""


def check_points(raw, n_points: int) -> list[int]:
    """Point numbers sent by a page: whole numbers in [0, n_points), deduplicated, in ascending order."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise SelectionError("The selection must be a list of point numbers.")
    out = set()
    for p in raw:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or p != int(p):
            raise SelectionError(f"{p!r} is not a point number.")
        if not 0 <= int(p) < n_points:
            raise SelectionError(f"Point {int(p)} is not on the map (it has {n_points:,} points).")
        out.add(int(p))
    return sorted(out)


def kinds_mask(points: pd.DataFrame, kinds: Iterable[str] = NEIGHBOUR_KINDS) -> np.ndarray:
    return points["kind"].isin(list(kinds)).to_numpy()


def nearest(vectors: np.ndarray, query: np.ndarray, k: int, among: np.ndarray | None = None,
            exclude: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of `vectors` [N, D] (unit rows) most cosine-similar to `query` [D]: (rows, similarities),
    best first, ties broken by row number. `among`: a boolean mask [N] of the rows that may be returned."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if vectors.ndim != 2 or vectors.shape[1] != q.shape[0]:
        raise SelectionError(f"The query has {q.shape[0]} dimensions; the map's vectors have "
                             f"{vectors.shape[1] if vectors.ndim == 2 else '?'}: they are not from the same model.")
    norm = float(np.linalg.norm(q))
    if norm == 0 or not np.isfinite(norm):
        raise SelectionError("The query's embedding is empty; nothing is near it.")
    sims = vectors @ (q / norm)  # [N]
    allowed = np.ones(len(vectors), dtype=bool) if among is None else np.asarray(among, dtype=bool).copy()
    allowed[list(exclude)] = False
    rows = np.flatnonzero(allowed)
    k = max(0, min(int(k), len(rows)))
    if k == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    s = sims[rows]
    top = np.argpartition(-s, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
    order = np.lexsort((rows[top], -s[top]))  # similarity descending, then row ascending
    best = top[order]
    return rows[best].astype(np.int64), s[best].astype(np.float32)


def neighbours(vectors: np.ndarray, point: int, k: int, among: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest points to `point` in embedding space (cosine), itself left out."""
    if not 0 <= point < len(vectors):
        raise SelectionError(f"Point {point} is not on the map.")
    return nearest(vectors, vectors[point], k, among, exclude=[point])


def text_matches(points: pd.DataFrame, text: str, limit: int, among: np.ndarray | None = None) -> list[int]:
    """Points whose label or id contains `text` (case-insensitive), in map order, at most `limit`: the fallback
    when the text cannot be embedded as a query."""
    needle = (text or "").strip().casefold()
    if not needle:
        raise SelectionError("Type something to search for.")
    hay = (points["label"].astype(str) + "\n" + points["id"].astype(str)).str.casefold()
    hit = hay.str.contains(needle, regex=False).to_numpy()
    if among is not None:
        hit = hit & np.asarray(among, dtype=bool)
    return np.flatnonzero(hit)[: max(0, int(limit))].tolist()


def query_keys(points: pd.DataFrame, indices: Sequence[int]) -> list[tuple[str, str]]:
    """The (pair, query id) of every benchmark query among the points, each once, in the order given."""
    rows = points.iloc[list(indices)]
    rows = rows[rows["kind"] != "candidate"]
    return list(dict.fromkeys(zip(rows["pair"].astype(str), rows["id"].astype(str), strict=True)))


def query_points(points: pd.DataFrame, keys: Iterable[Sequence[str]]) -> list[int]:
    """The map points (direct and final) of these (pair, query id) keys, in map order; keys not on the map
    are left out (a sampled map may not show every query)."""
    wanted = {(str(p), str(q)) for p, q in keys}
    is_query = (points["kind"] != "candidate").to_numpy()
    key = list(zip(points["pair"].astype(str), points["id"].astype(str), strict=True))
    return [n for n in range(len(points)) if is_query[n] and key[n] in wanted]


def gold_ranks(points: pd.DataFrame, queries: pd.DataFrame | None) -> pd.Series:
    """The gold rank of each query point from the per-query table (direct rank for a direct point, the rank on
    the route taken for a final one); NaN for candidates, for queries not in the table, or without a table."""
    out = pd.Series(np.nan, index=points.index, dtype=float)
    if queries is None or not len(queries):
        return out
    table = queries.assign(qid=queries["qid"].astype(str), pair=queries["pair"].astype(str))
    table = table.drop_duplicates(["pair", "qid"]).set_index(["pair", "qid"])
    for kind, column in (("query (final)", "gold_rank"), ("query (direct)", "gold_rank_direct")):
        rows = points["kind"] == kind
        if rows.any() and column in table:
            idx = pd.MultiIndex.from_arrays([points.loc[rows, "pair"].astype(str), points.loc[rows, "id"].astype(str)])
            out.loc[rows] = table[column].astype(float).reindex(idx).to_numpy()
    return out


def selection_rows(points: pd.DataFrame, indices: Sequence[int], queries: pd.DataFrame | None = None,
                   similarity: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per point, in the order given: EXPORT_COLUMNS (and `similarity`, cosine, when given). Route and hit
    are empty for a candidate; a hit is the gold in the top `MapConfig.hit_k` from that embedding."""
    rows = points.iloc[list(indices)]
    candidate = (rows["kind"] == "candidate").to_numpy()
    out = pd.DataFrame({
        "point": rows["point"].astype(int).to_numpy(),
        "id": rows["id"].astype(str).to_numpy(),
        "x": rows["x"].astype(float).round(4).to_numpy(),
        "y": rows["y"].astype(float).round(4).to_numpy(),
        "kind": rows["kind"].astype(str).to_numpy(),
        "pair": rows["pair"].astype(str).to_numpy(),
        "label": rows["label"].astype(str).to_numpy(),
        "route": np.where(candidate, "", rows["route"].astype(str)),
        "gold rank": gold_ranks(rows, queries).to_numpy(),
        "hit": np.where(candidate, "", rows["hit"].astype(str)),
    })
    if similarity is not None:
        out["similarity"] = np.round(np.asarray(similarity, dtype=float), 4)
    return out


def write_csv(rows: pd.DataFrame, path: str | Path) -> Path:
    """The rows as CSV, written atomically (a reader never sees half a file)."""
    atomic_file(path, lambda tmp: rows.to_csv(tmp, index=False))
    return Path(path)


def write_json(rows: pd.DataFrame, path: str | Path, about: dict | None = None) -> Path:
    """The rows as JSON ({"about": ..., "rows": [...]}; a missing gold rank is null), written atomically."""
    records = json.loads(rows.to_json(orient="records"))  # NaN -> null, numpy scalars -> JSON numbers
    text = json.dumps({"about": about or {}, "rows": records}, indent=1, ensure_ascii=False)
    atomic_file(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return Path(path)


def export_files(points: pd.DataFrame, lit: Lit, queries: pd.DataFrame | None, folder: str | Path,
                 about: dict) -> tuple[Path, Path]:
    """Every lit point as CSV and JSON in `folder`, named by what lit them, how many and a digest of which (the
    same points, the same files)."""
    rows = selection_rows(points, lit.points, queries, lit.similarity)
    digest = hashlib.sha1(",".join(map(str, lit.points)).encode()).hexdigest()[:10]
    stem = Path(folder) / f"map-{lit.kind}-{len(lit.points)}-{digest}"
    return (write_csv(rows, stem.with_suffix(".csv")),
            write_json(rows, stem.with_suffix(".json"), {**about, "points": len(lit.points)}))


@dataclass
class Lit:
    """Points lit on the map and why: a box or lasso selection, a search's matches, a clicked point and its
    neighbours, or the error table's rows. Plain numbers, so that a session can keep it (gr.State)."""

    kind: str  # "selection" | "search" | "neighbours" | "errors"
    points: list[int]  # map point numbers, in the order the table lists them
    about: str  # what lit them, in words
    similarity: list[float] | None = None  # cosine to the search or the clicked point, when ranked

    def counts(self, points: pd.DataFrame) -> str:
        """"12 candidates, 4 query points (2 queries)", for a caption."""
        rows = points.iloc[self.points]
        cands = int((rows["kind"] == "candidate").sum())
        queries = rows[rows["kind"] != "candidate"]
        n_q = len(set(zip(queries["pair"], queries["id"], strict=True)))
        parts = [f"{cands:,} candidate{'s' * (cands != 1)}"]
        if len(queries):
            parts.append(f"{len(queries):,} query point{'s' * (len(queries) != 1)} ({n_q:,} "
                         f"quer{'ies' if n_q != 1 else 'y'})")
        return ", ".join(parts)
