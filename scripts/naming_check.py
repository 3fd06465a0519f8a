"""Does a TRACE-mini checkpoint name what an image shows? (the naming stage's go/no-go figure)

    PYTHONPATH=. python scripts/naming_check.py runs/minibeir-v2 runs/naming/model [--split test] [--n 60]

Two samples, both of images the training split holds: the reference images of the split's composed-edit
queries (emoji_task8; recognising them is closed-set by construction), and as many named training images drawn
at random. For each: the model's own greedy answer to the naming prompt, and whether it contains the name
(`evidence.cot_names`, the rule the report uses for CoTs). Prints the shares and a few misses.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from trace_core import load_model
from trace_core.examples import load_examples
from trace_core.minibeir.evidence import cot_names
from trace_core.naming import NAMING_INSTRUCTION, image_names
from trace_core.records import Query


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("model")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args()
    names = image_names(load_examples(args.data, "train"))
    refs = []
    for f in sorted((args.data / "query" / args.split).glob("*task8*.jsonl")):
        for line in f.read_text().splitlines():
            q = json.loads(line)
            refs.append((str((args.data / q["query_img_path"]).resolve()), q["ref_name"]))
    rng = random.Random(0)
    samples = {"edit references": rng.sample(refs, min(args.n, len(refs))),
               "training images": rng.sample(sorted(names.items()), min(args.n, len(names)))}
    encoder = load_model(args.model)
    for label, items in samples.items():
        results = encoder.encode_queries([Query(image=p, instruction=NAMING_INSTRUCTION) for p, _ in items],
                                         reasoning="always")
        ok = [cot_names(r.cot, name) for r, (_, name) in zip(results, items, strict=True)]
        print(f"{label}: {sum(ok)}/{len(ok)} named ({sum(ok) / max(len(ok), 1):.2f})")
        for r, (_, name), good in list(zip(results, items, ok, strict=True))[:40]:
            if not good:
                print(f"   want {name!r:45} got {r.cot!r}")


if __name__ == "__main__":
    main()
