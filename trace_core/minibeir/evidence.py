"""The numbers behind the TRACE-mini evidence report, as pure functions of per-query tables.

`trace_core.minibeir.report` runs the models; everything it then concludes is computed here from pandas
tables and numpy arrays, so each step can be tested on a hand-built table:

- `evidence_table`: one row per test query, joining the corpus's labels (difficulty `route`, teacher `cot`,
  `target_name`, `ref_name`, `kind`) with the auto run's route, CoT and gold ranks under every mode;
- `recalls_by_label`, `reason_rates`, `cot_stats`: R@k per mode, routing and CoT quality per pair and per
  difficulty label;
- `cot_names`: does a chain of thought name the target (and the reference image of a composed edit)?
- `paired_bootstrap` / `auto_minus_never`: the gain of reasoning on complex queries with a 95% interval;
- `derange` / `oracle_cots`: the given CoTs of the oracle rows (teacher, name only, wrong name, blank, another
  query's CoT);
- `frozen_gold_ranks`: gold ranks of a frozen-feature baseline from its embeddings;
- `checklist`: the "done when" criteria, marked pass / fail from the measured numbers.

Scores are fractions in [0, 1]; a missing gold rank (no positive in the pool) counts as a miss.
Corpora built before the v2 keys lack them: `route` then defaults to "direct" and the other keys to None.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

KS = (1, 5, 10)
LABELS = ("direct", "reason")  # difficulty labels: simple / complex queries
POOLED = "all pairs"  # the key of pooled (query-weighted) numbers next to per-pair ones
# The name-only oracle CoT; {name} is the target's canonical name. The default suits the emoji corpus.
NAME_SENTENCE = "The target is the {name} emoji."
ORACLE_ROWS = ("teacher CoT", "name only", "wrong name", "blank CoT", "another query's CoT")


# ------------------------------------------------------------------------------------ CoT correctness
def normalise_text(text: str | None) -> str:
    """Lower case with runs of whitespace collapsed to one space (NFKC first, so look-alikes compare equal)."""
    return " ".join(unicodedata.normalize("NFKC", text or "").lower().split())


def normalise_name(name: str | None) -> str:
    """A canonical name as it must appear in a CoT: normalised text without punctuation at either end."""
    text = normalise_text(name)
    while text and unicodedata.category(text[0])[0] == "P":
        text = text[1:]
    while text and unicodedata.category(text[-1])[0] == "P":
        text = text[:-1]
    return text.strip()


def contains_name(text: str | None, name: str | None) -> bool:
    """Whether `name` occurs in `text` as whole words ("man technologist" is not in "woman technologist")."""
    needle = normalise_name(name)
    if not needle:
        return False
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", normalise_text(text)) is not None


def cot_names(cot: str | None, target_name: str | None, ref_name: str | None = None) -> bool | None:
    """True when the CoT names the target and, for a composed edit (`ref_name` given), the reference too.

    None when the query has no target name (an old corpus): correctness cannot be judged."""
    if not isinstance(target_name, str) or not normalise_name(target_name):
        return None
    ok = contains_name(cot, target_name)
    if isinstance(ref_name, str) and normalise_name(ref_name):
        ok = ok and contains_name(cot, ref_name)
    return ok


# ------------------------------------------------------------------------------------ the per-query table
def label_of(obj: Mapping) -> str:
    """A query line's difficulty label: its `route` key, "direct" when absent or not a known label."""
    route = obj.get("route")
    return route if route in LABELS else "direct"


def query_keys(obj: Mapping) -> dict:
    """The v2 keys of one query line, None where an older corpus lacks them."""
    def text(key: str) -> str | None:
        value = obj.get(key)
        return value if isinstance(value, str) and value.strip() else None

    return {"label": label_of(obj), "teacher_cot": text("cot"), "target_name": text("target_name"),
            "ref_name": text("ref_name"), "kind": text("kind")}


def evidence_table(auto: pd.DataFrame, labels: pd.DataFrame, never: pd.DataFrame | None = None,
                   baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per query of the auto run, with its labels and the gold rank under every mode.

    auto: the auto run's queries.parquet (route, cot, cot_tokens, stop_reason, gold_rank, gold_rank_direct and,
    from its counterfactual pass, gold_rank_always); labels: pair, qid and the `query_keys` columns; never /
    baseline: those runs' queries.parquet (their gold_rank). Without a never run, the auto run's direct-route
    rank stands in for it (the same embedding: the prompt-end hidden state).
    Columns: pair, qid, label, kind, target_name, ref_name, teacher_cot, route, cot, cot_tokens, stop_reason,
    rank_auto, rank_never, rank_always (NaN without the counterfactual pass), rank_baseline (with a baseline).
    """
    cols = ["pair", "qid", "route", "cot", "cot_tokens", "stop_reason", "gold_rank", "gold_rank_direct"]
    ev = auto[[c for c in cols if c in auto] + [c for c in ("gold_rank_always",) if c in auto]].copy()
    ev = ev.rename(columns={"gold_rank": "rank_auto", "gold_rank_always": "rank_always"})
    if "rank_always" not in ev:
        ev["rank_always"] = np.nan
    keys = ["label", "teacher_cot", "target_name", "ref_name", "kind"]
    labels = labels.reindex(columns=["pair", "qid", *keys])
    ev = ev.merge(labels, on=["pair", "qid"], how="left")
    ev["label"] = ev["label"].where(ev["label"].isin(LABELS), "direct")
    if never is not None:
        ev = ev.merge(never[["pair", "qid", "gold_rank"]].rename(columns={"gold_rank": "rank_never"}),
                      on=["pair", "qid"], how="left")
    else:
        ev["rank_never"] = ev["gold_rank_direct"]
    if baseline is not None:
        ev = ev.merge(baseline[["pair", "qid", "gold_rank"]].rename(columns={"gold_rank": "rank_baseline"}),
                      on=["pair", "qid"], how="left")
    ev = ev.drop(columns=["gold_rank_direct"], errors="ignore")
    for key in keys[1:]:
        ev[key] = ev[key].astype(object).where(ev[key].notna(), None)
    return ev


MODES = {"auto": "rank_auto", "never": "rank_never", "always": "rank_always", "baseline": "rank_baseline"}


# ------------------------------------------------------------------------------------ recall and routing
def hits(ranks: pd.Series | np.ndarray, k: int) -> np.ndarray:
    """1.0 where the gold rank is within k, else 0.0 (a NaN rank, no positive in the pool, is a miss)."""
    r = np.asarray(ranks, dtype=float)
    return np.where(np.isnan(r), 0.0, (r <= k).astype(float))


def recalls(ranks: pd.Series | np.ndarray, ks: Sequence[int] = KS) -> dict | None:
    """{"recall@k": ...} of a set of gold ranks; None for no queries or a mode with no ranks at all."""
    r = np.asarray(ranks, dtype=float)
    if len(r) == 0 or np.isnan(r).all():
        return None
    return {f"recall@{k}": float(hits(r, k).mean()) for k in ks}


def _groups(ev: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [*((p, g) for p, g in ev.groupby("pair", sort=True)), (POOLED, ev)]


def recalls_by_label(ev: pd.DataFrame, modes: Mapping[str, str] = MODES) -> dict:
    """{pair or POOLED: {label: {"n": .., mode: {recall@k}}}}, for the modes whose rank column exists."""
    out: dict = {}
    for pair, g in _groups(ev):
        out[pair] = {}
        for label in LABELS:
            part = g[g["label"] == label]
            if len(part):
                entry: dict = {"n": int(len(part))}
                for mode, col in modes.items():
                    if col in part and (r := recalls(part[col])) is not None:
                        entry[mode] = r
                out[pair][label] = entry
    return out


def mixed_pairs(ev: pd.DataFrame) -> list[str]:
    """Pairs whose test queries carry both difficulty labels."""
    n = ev.groupby("pair")["label"].agg(lambda s: set(s) >= set(LABELS))
    return sorted(n[n].index)


def reason_rates(ev: pd.DataFrame) -> dict:
    """Share of queries the auto run routed to reasoning, per pair and label; pooled over mixed and all pairs."""
    def rates(g: pd.DataFrame) -> dict:
        out: dict = {}
        for label in LABELS:
            part = g[g["label"] == label]
            out[f"n_{label}"] = int(len(part))
            out[f"reason_rate_{label}"] = float((part["route"] == "reason").mean()) if len(part) else None
        return out

    mixed = mixed_pairs(ev)
    per_pair = {p: {**rates(g), "mixed": p in mixed} for p, g in ev.groupby("pair", sort=True)}
    return {"pairs": per_pair, "mixed_pairs": mixed,
            "pooled_mixed": rates(ev[ev["pair"].isin(mixed)]) if mixed else None, "pooled_all": rates(ev)}


def cot_stats(ev: pd.DataFrame) -> dict:
    """Chains of thought of the auto run, per pair and pooled.

    On complex (reason-labelled) queries that reasoned: how many, the share whose CoT names the target, the
    reference (rows with a ref_name), both ("correct": target, and reference where there is one), the share
    that hit the token cap and the mean CoT tokens. Over every CoT the auto run wrote: the cap share and mean
    tokens. Shares are None where nothing could be judged (no target names in an old corpus)."""
    def stats(g: pd.DataFrame) -> dict:
        wrote = g[g["route"] == "reason"]
        complex_ = wrote[wrote["label"] == "reason"]
        named = complex_[complex_["target_name"].notna()]
        with_ref = named[named["ref_name"].notna()]

        def share(rows: pd.DataFrame, fn) -> float | None:
            return float(np.mean([bool(fn(r)) for r in rows.itertuples()])) if len(rows) else None

        def mean(s: pd.Series) -> float | None:
            return float(s.mean()) if len(s) else None

        return {
            "n_complex_reasoned": int(len(complex_)),
            "n_judged": int(len(named)),
            "names_target": share(named, lambda r: contains_name(r.cot, r.target_name)),
            "names_reference": share(with_ref, lambda r: contains_name(r.cot, r.ref_name)),
            "n_with_reference": int(len(with_ref)),
            "correct": share(named, lambda r: cot_names(r.cot, r.target_name, r.ref_name)),
            "capped": mean(complex_["stop_reason"] == "max_tokens"),
            "mean_cot_tokens": mean(complex_["cot_tokens"]),
            "n_all_cots": int(len(wrote)),
            "capped_all_cots": mean(wrote["stop_reason"] == "max_tokens"),
            "mean_cot_tokens_all_cots": mean(wrote["cot_tokens"]),
        }

    return {pair: stats(g) for pair, g in _groups(ev)}


# ------------------------------------------------------------------------------------ bootstrap
def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int = 2000, seed: int = 0,
                     strata: Sequence | np.ndarray | None = None, level: float = 0.95) -> dict:
    """Mean of a - b over queries with a percentile bootstrap interval, resampling queries (pairs (a_i, b_i)).

    With `strata` (e.g. the pair of each query), queries are resampled within each stratum, so every stratum
    keeps its size and the pooled mean its weights. Seeded: the same inputs give the same interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-d shapes, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        return {"diff": None, "lo": None, "hi": None, "n": 0, "n_resamples": n_resamples, "seed": seed}
    d = a - b
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, dtype=int) if strata is None else pd.factorize(np.asarray(strata))[0]
    sums = np.zeros(n_resamples)
    for s in np.unique(strata):
        ds = d[strata == s]
        sums += ds[rng.integers(0, len(ds), size=(n_resamples, len(ds)))].sum(axis=1)
    means = sums / n
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(n),
            "n_resamples": int(n_resamples), "seed": int(seed)}


def auto_minus_never(ev: pd.DataFrame, k: int = 5, label: str = "reason", n_resamples: int = 2000,
                     seed: int = 0) -> dict:
    """R@k of auto minus never on the queries with `label`, per pair and pooled (resampled within pairs)."""
    part = ev[ev["label"] == label]
    out: dict = {}
    for pair, g in _groups(part):
        a, b = hits(g["rank_auto"], k), hits(g["rank_never"], k)
        strata = g["pair"].to_numpy() if pair == POOLED else None
        res = paired_bootstrap(a, b, n_resamples, seed, strata=strata)
        out[pair] = {f"auto_recall@{k}": float(a.mean()) if len(a) else None,
                     f"never_recall@{k}": float(b.mean()) if len(b) else None, **res}
    return out


# ------------------------------------------------------------------------------------ oracle CoTs
def derange(keys: Sequence, seed: int = 0) -> np.ndarray:
    """A seeded permutation p with p[i] != i, and keys[p[i]] != keys[i] whenever that is possible.

    Sort the items by key (random order within a key), then map each to the item m places further on,
    cyclically, where m is the size of the largest group of equal keys: no item lands in its own group
    unless one group holds more than half of the items."""
    n = len(keys)
    if n < 2:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    codes = pd.factorize(pd.Series(list(keys), dtype=object).fillna("\0none"))[0]
    order = np.lexsort((rng.random(n), codes))
    shift = min(max(int(np.bincount(codes).max()), 1), n - 1)
    perm = np.empty(n, dtype=int)
    perm[order] = order[(np.arange(n) + shift) % n]
    return perm


def oracle_cots(rows: pd.DataFrame, sentence: str = NAME_SENTENCE, seed: int = 0) -> dict[str, list]:
    """The given CoT of each oracle row for the complex queries of one pair (None: the query cannot take it).

    rows: the pair's reason-labelled queries (teacher_cot, target_name). Rows, in ORACLE_ROWS order:
    the teacher CoT; the name-only sentence; the same sentence with another query's target name (seeded
    derangement, never the query's own name when the pair has another); "" (blank: the embedding right after
    the assistant prompt, which equals the never run); another query's teacher CoT (of a different target
    where possible)."""
    names = rows["target_name"].tolist()
    teacher = rows["teacher_cot"].tolist()
    wrong = derange(names, seed)
    other = derange(names, seed + 1)

    def say(name):
        return sentence.format(name=name) if isinstance(name, str) else None

    return {
        "teacher CoT": [c if isinstance(c, str) else None for c in teacher],
        "name only": [say(n) for n in names],
        "wrong name": [say(names[j]) if isinstance(names[i], str) else None for i, j in enumerate(wrong)],
        "blank CoT": ["" for _ in names],
        "another query's CoT": [teacher[j] if isinstance(teacher[j], str) else None for j in other],
    }


# ------------------------------------------------------------------------------------ frozen features
def frozen_gold_ranks(queries: np.ndarray, candidates: np.ndarray, cand_ids: Sequence[str],
                      positives: Sequence[set[str]]) -> np.ndarray:
    """Best 1-based rank of any positive by cosine similarity, per query [Q] (NaN: no positive in the pool).

    queries [Q, D], candidates [N, D]: any scale (rows are L2-normalised here). The ranks are the index's
    (`CandidateIndex.gold_ranks`, the one definition: ties share the better rank)."""
    from ..index import CandidateIndex

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    index = CandidateIndex.build(list(cand_ids), unit(candidates), model_id="frozen-features")
    ranks, _, _ = index.gold_ranks(unit(queries), [set(p) for p in positives])
    return ranks


# ------------------------------------------------------------------------------------ the checklist
def _row(criterion: str, target: str, measured, passed: bool | None, shown: str | None = None) -> dict:
    return {"criterion": criterion, "target": target, "measured": measured,
            "shown": shown if shown is not None else ("n/a" if measured is None else str(measured)),
            "passed": passed}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def checklist(
    reason_rate_complex: float | None,
    reason_rate_simple: float | None,
    gain_r5: float | None,
    gain_lo: float | None,
    headline_auto: float | None,
    headline_never: float | None,
    headline_baseline: float | None,
    cot_correct: float | None,
    cap_share: float | None,
    image_pairs: Mapping[str, tuple[float | None, float | None]] | None,
) -> list[dict]:
    """The "done when" criteria, each with its target, measured value and pass (True) / fail (False) / n/a
    (None: not measured). Inputs are fractions; gains are differences of fractions. `image_pairs` maps a pair
    to (model headline, frozen-feature baseline headline)."""
    def at_least(x, t):
        return None if x is None else bool(x >= t)

    def at_most(x, t):
        return None if x is None else bool(x <= t)

    rows = [
        _row("reason rate on complex queries (mixed pairs)", ">= 60%", reason_rate_complex,
             at_least(reason_rate_complex, 0.60), _pct(reason_rate_complex)),
        _row("reason rate on simple queries (mixed pairs)", "<= 20%", reason_rate_simple,
             at_most(reason_rate_simple, 0.20), _pct(reason_rate_simple)),
    ]
    gain_ok = None if gain_r5 is None or gain_lo is None else bool(gain_r5 >= 0.03 and gain_lo > 0)
    rows.append(_row("auto - never R@5 on complex queries (pooled)", ">= +3.0 points, 95% CI lower bound > 0",
                     None if gain_r5 is None else {"diff": gain_r5, "lo": gain_lo}, gain_ok,
                     "n/a" if gain_r5 is None else
                     f"{100 * gain_r5:+.1f} points (CI lower bound {100 * (gain_lo or 0):+.1f})"))
    for other, value in (("never", headline_never), ("baseline", headline_baseline)):
        ok = None if headline_auto is None or value is None else bool(headline_auto > value)
        shown = "n/a" if ok is None else f"{100 * headline_auto:.1f} vs {100 * value:.1f}"
        rows.append(_row(f"auto headline mean > {other}", f"> {other}",
                         None if ok is None else {"auto": headline_auto, other: value}, ok, shown))
    rows.append(_row("complex CoTs naming the target (and the reference)", ">= 70%", cot_correct,
                     at_least(cot_correct, 0.70), _pct(cot_correct)))
    rows.append(_row("CoTs hitting the token cap (every CoT of the auto run)", "<= 5%", cap_share, at_most(cap_share, 0.05), _pct(cap_share)))
    judged = {p: v for p, v in (image_pairs or {}).items() if v[0] is not None and v[1] is not None}
    failed = sorted(p for p, (m, b) in judged.items() if m < b)
    ok = None if not judged else not failed
    shown = "n/a" if ok is None else (f"{len(judged) - len(failed)}/{len(judged)} pairs"
                                      + (f"; below: {', '.join(failed)}" if failed else ""))
    rows.append(_row("every image pair >= its frozen-feature baseline", "all pairs",
                     None if ok is None else {p: {"model": m, "baseline": b} for p, (m, b) in judged.items()},
                     ok, shown))
    return rows


def mark(passed: bool | None) -> str:
    return "n/a" if passed is None else ("pass" if passed else "FAIL")
