"""Quick check of a TRACE-mini v2 checkpoint on the mixed pairs (the pilot's go/no-go figures).

    python -m trace_core.evaluate --mbeir-dir runs/minibeir-v2 --split val \
        --pairs emoji_task1,emoji_task2,emoji_task8 --model runs/trace-mini-v2/model --out runs/val --counterfactual
    PYTHONPATH=. python scripts/v2_val_check.py runs/minibeir-v2 runs/val val

Per pair and difficulty label: reason rate, share of reasoned CoTs naming the target (and the reference, for
edits), share hitting the cap, R@5 of auto / never / always; then a few wrong CoTs. The full evidence is
`python -m trace_core.minibeir.report`; this is the few-minute version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from trace_core.minibeir.evidence import cot_names


def main(data: Path, run: Path, split: str = "val") -> None:
    table = pd.read_parquet(run / "queries.parquet")
    labels = []
    for f in (data / "query" / split).glob("*.jsonl"):
        for line in f.read_text().splitlines():
            o = json.loads(line)
            labels.append({"qid": o["qid"], "label": o["route"], "target_name": o.get("target_name"),
                           "ref_name": o.get("ref_name")})
    t = table.merge(pd.DataFrame(labels), on="qid")
    t["reasoned"] = t["route"] == "reason"
    t["cot_ok"] = [cot_names(c, tn, rn) if r else None
                   for c, tn, rn, r in zip(t.cot, t.target_name, t.ref_name, t.reasoned, strict=True)]
    t["cot_target"] = [cot_names(c, tn) if r else None
                       for c, tn, r in zip(t.cot, t.target_name, t.reasoned, strict=True)]
    for (pair, label), g in t.groupby(["pair", "label"]):
        r = g[g.reasoned]
        ok = r.cot_ok.mean() if len(r) else float("nan")
        tgt = r.cot_target.mean() if len(r) else float("nan")
        print(f"{pair:20s} {label:7s} n={len(g):3d} reason={g.reasoned.mean():.2f} cot_ok={ok:.2f} "
              f"cot_target={tgt:.2f} cap={(g.stop_reason == 'max_tokens').mean():.2f} "
              f"R5 auto={(g.gold_rank <= 5).mean():.2f} never={(g.gold_rank_direct <= 5).mean():.2f} "
              f"always={(g.gold_rank_always <= 5).mean():.2f}")
    for _, x in t[t.reasoned & (t.cot_ok == False)].head(8).iterrows():  # noqa: E712 (None is not False)
        print("WRONG", x.pair, "|", x.query_txt, "|", x.target_name, "|", x.cot)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
