"""Where reasoning helps and where it costs, on the complex queries of a TRACE-mini test run.

    python -m trace_core.evaluate --mbeir-dir runs/minibeir-v6 --split test --pairs all \
        --model runs/joint10/trace-mini --out runs/test-joint10 --counterfactual
    PYTHONPATH=. python scripts/complex_breakdown.py runs/minibeir-v6 runs/test-joint10

Prints, for the reason-labelled (complex) queries: R@1/5/10 of auto against never (the direct embedding of the
same model) with the auto-minus-never difference and its bootstrap 95 % interval, pooled, per pair, for the
relative skin-tone edits ("one shade darker") and the other complex queries, per kind of query (definition,
knowledge, edit-text, edit-image; the country questions also by the fact they ask: capital, people, place), and
split by whether the CoT names
the target; then the mean headline (R@5 over all pairs) of auto, never and always. The figures of runs 10 and
11 in assets/trace-mini/training/README.md come from it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from trace_core.minibeir.countries import QUESTIONS
from trace_core.minibeir.emoji import _DARKER, _LIGHTER
from trace_core.minibeir.evidence import cot_names

RELATIVE = tuple(_DARKER + _LIGHTER)


def load(data: Path, run: Path, split: str = "test") -> pd.DataFrame:
    table = pd.read_parquet(run / "queries.parquet")
    labels = []
    for f in (data / "query" / split).glob("*.jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            o = json.loads(line)
            labels.append({"qid": o["qid"], "label": o["route"], "target_name": o.get("target_name"),
                           "kind": o.get("kind"), "teacher_cot": o.get("cot")})
    return table.merge(pd.DataFrame(labels), on="qid")


def fact_kind(question: str) -> str | None:
    """Which fact a country knowledge question asks about (capital, people, place), from its wording."""
    for kind, templates in QUESTIONS.items():
        for t in templates:
            pattern = re.escape(t).replace(re.escape("{s}"), ".+").replace(re.escape("{a}"), "an?")
            if re.fullmatch(pattern, question):
                return kind
    return None


def country_of(teacher_cot: str) -> str:
    """The country a knowledge CoT's step ends on: "Quito is the capital of Ecuador. Target: ..." -> "Ecuador"."""
    step = teacher_cot.split(" Target:")[0].rstrip(".")
    return re.sub(r"^.* (?:of|in|from) (?:the )?", "", step)


def diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b in points, and the 2.5 / 97.5 percentiles of its bootstrap over queries."""
    d = (a.astype(float) - b.astype(float)) * 100
    rng = np.random.default_rng(seed)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)]
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def row(name: str, g: pd.DataFrame) -> str:
    if g.empty:
        return f"{name:26s} n=   0"
    parts = [f"{name:26s} n={len(g):4d} CoT names target {g.cot_target.mean() * 100:5.1f}"]
    for k in (1, 5, 10):
        a, n = (g.gold_rank <= k).to_numpy(), (g.gold_rank_direct <= k).to_numpy()
        d, lo, hi = diff_ci(a, n)
        parts.append(f"R@{k} {a.mean() * 100:5.1f}/{n.mean() * 100:5.1f} ({d:+.1f} [{lo:+.1f}, {hi:+.1f}])")
    return "  ".join(parts)


def main(data: Path, run: Path, split: str = "test") -> None:
    t = load(data, run, split)
    c = t[t.label == "reason"].copy()
    c["cot_target"] = [bool(cot_names(x, tn)) if r == "reason" else False
                       for x, tn, r in zip(c.cot, c.target_name, c.route, strict=True)]
    relative = c.query_txt.fillna("").str.contains("|".join(RELATIVE), regex=True)
    print("complex queries, auto / never in % (auto - never [bootstrap 95 % interval])")
    print(row("all complex", c))
    for pair, g in c.groupby("pair"):
        print(row(pair, g))
    for kind, g in c.groupby("kind"):  # definition, knowledge (country questions), edit-text, edit-image
        print(row(f"kind {kind}", g))
        if kind == "knowledge":
            for fact, h in g.groupby(g.query_txt.map(fact_kind)):
                print(row(f"  knowledge: {fact}", h))
            said = g[g.route == "reason"]
            named = [country_of(t).lower() in (c or "").lower() for t, c in zip(said.teacher_cot, said.cot, strict=True)]
            print(f"  knowledge CoTs that name the country of the teacher's step: {np.mean(named) * 100:.1f} % of "
                  f"{len(named)}")
    print(row("relative tone edits", c[relative]))
    print(row("other complex", c[~relative]))
    print(row("CoT names the target", c[c.cot_target]))
    print(row("CoT does not", c[~c.cot_target]))
    simple = t[t.label == "direct"]
    print(f"simple queries reasoned: {(simple.route == 'reason').mean() * 100:.1f} %")
    heads = {name: t.groupby("pair")[col].apply(lambda r: (r <= 5).mean() * 100).mean()
             for name, col in (("auto", "gold_rank"), ("never", "gold_rank_direct"), ("always", "gold_rank_always"))
             if col in t}
    print("mean headline (R@5 over pairs): " + ", ".join(f"{k} {v:.2f}" for k, v in heads.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *(sys.argv[3:4] or ["test"]))
