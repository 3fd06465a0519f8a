"""Can the untrained base LM resolve a corpus's definition questions? (issue 10: the held-out answers of
emoji_task1 must be reachable from the language model's own knowledge.)

    PYTHONPATH=. python scripts/definition_reach.py runs/minibeir-v3 [--split test]

Asks SmolLM2-135M-Instruct (the packaged base LM, no TRACE training) each complex definition question of the
split, few-shot with the fixed shots of `trace_core.minibeir.reach` (the rule the corpus build filters val and
test with), and counts the answers that name the target. Prints the share and the first answers. On corpus v2
(built before the filter) it was 24 % of the test questions; on a corpus built with the filter, val and test
are 100 % by construction and train shows what the filter left out there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trace_core.minibeir.reach import DEFAULT_CACHE, BaseLMReach


def complex_queries(data: Path, split: str) -> list[dict]:
    path = data / "query" / split / f"mbeir_emoji_task1_{split}.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [q for q in lines if q.get("route") == "reason" and q.get("target_name")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the base LM's cached answers")
    args = parser.parse_args()
    items = complex_queries(args.data, args.split)
    reach = BaseLMReach(cache=args.cache)
    questions, targets = [q["query_txt"] for q in items], [q["target_name"] for q in items]
    ok = reach(questions, targets)
    said = reach.answers(questions)
    hits = sum(ok)
    print(f"{args.split}: the base LM names the target of {hits}/{len(ok)} definition questions "
          f"({hits / max(len(ok), 1):.2f}) on {len(set(targets))} targets")
    for hit, q, t in list(zip(ok, questions, targets, strict=True))[:30]:
        print(f"   {'OK ' if hit else '   '} {t!r:30} -> {said[q]!r}")


if __name__ == "__main__":
    main()
