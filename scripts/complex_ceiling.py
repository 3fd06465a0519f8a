"""How far could reasoning get above "never" on the complex queries, if its chains of thought were fixed?

Reads a report's per-query table (queries.parquet: the auto run, with each query's direct-embedding gold rank)
and the test queries' labels and target names, and replays R@5 on the complex queries of the mixed pairs
under what-ifs (an upper bound each: a fixed CoT is counted as a hit, as the teacher-CoT oracle row finds):
- as measured (auto) and "never" (each query's direct embedding);
- every CoT whose only mistake is the skin tone made right;
- every wrong CoT embedded as well as the direct embedding;
- both.

    PYTHONPATH=. python scripts/complex_ceiling.py assets/trace-mini/queries.parquet assets/minibeir
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

MIXED = ("emoji_task1", "emoji_task2", "emoji_task8")


def stated_target(cot: str) -> str:
    """The name a CoT ends on ("Target: swimmer: light skin tone." -> "swimmer: light skin tone")."""
    t = cot.split("Target:")[-1].strip().rstrip(".").lower()
    return t.removeprefix("the ").removesuffix(" emoji")


def main(table: str, data: str) -> None:
    labels = {}
    for f in sorted(Path(data, "query", "test").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                q = json.loads(line)
                labels[q["qid"]] = (q["route"], (q.get("target_name") or "").lower())
    q = pd.read_parquet(table)
    q = q[q["pair"].isin(MIXED) & q["qid"].map(lambda i: labels[i][0] == "reason")].copy()
    q["target"] = q["qid"].map(lambda i: labels[i][1])
    q["named"] = [stated_target(c) == t for c, t in zip(q["cot"], q["target"], strict=True)]
    q["tone_only"] = [not ok and stated_target(c).split(":")[0].strip() == t.split(":")[0].strip()
                      for ok, c, t in zip(q["named"], q["cot"], q["target"], strict=True)]
    auto, never = q["hit@5"].astype(bool), q["gold_rank_direct"] <= 5
    rows = {
        "auto, as measured": auto,
        "never (direct embedding)": never,
        "auto, tone-only mistakes fixed": auto | q["tone_only"],
        "auto, wrong CoTs embedded like never": auto | (~q["named"] & never),
        "auto, both": auto | q["tone_only"] | (~q["named"] & ~q["tone_only"] & never),
    }
    print(f"complex queries of the mixed pairs: {len(q)}; CoT names the target: {q['named'].mean():.1%}; "
          f"wrong only in the skin tone: {int(q['tone_only'].sum())}")
    for name, hits in rows.items():
        print(f"  R@5 {100 * hits.mean():5.1f}  ({100 * (hits.mean() - never.mean()):+.1f} against never)  {name}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
