"""Can the untrained base LM resolve a definition question? (issue 10: the held-out answers of emoji_task1 must be
reachable from the language model's own knowledge.)

    PYTHONPATH=. python scripts/definition_reach.py runs/minibeir-v2 [--split test] [--shots 4]

Asks SmolLM2-135M-Instruct (the packaged base LM, no TRACE training), few-shot with the first `--shots`
complex training queries, each complex definition question of the split, and counts the answers that contain
the target's name (`evidence.contains_name`, the rule the report uses for CoTs). Prints the share and the
first answers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from trace_core.backbones.pretrained import SMOLLM2, load_lm
from trace_core.minibeir.evidence import contains_name


def complex_queries(data: Path, split: str) -> list[dict]:
    path = data / "query" / split / f"mbeir_emoji_task1_{split}.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [q for q in lines if q.get("route") == "reason" and q.get("target_name")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    shots = complex_queries(args.data, "train")[: args.shots]
    items = complex_queries(args.data, args.split)
    lm, tok = load_lm(SMOLLM2)
    lm.eval()
    tok.padding_side = "left"

    def prompt(q: dict) -> str:
        msgs = []
        for s in shots:
            msgs += [{"role": "user", "content": s["query_txt"]},
                     {"role": "assistant", "content": f"The answer is {s['target_name']}."}]
        msgs.append({"role": "user", "content": q["query_txt"]})
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + "The answer is"

    answers = []
    for i in range(0, len(items), args.batch_size):
        chunk = items[i : i + args.batch_size]
        enc = tok([prompt(q) for q in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = lm.generate(**enc, max_new_tokens=8, do_sample=False)
        for q, ids in zip(chunk, out, strict=True):
            text = tok.decode(ids[enc["input_ids"].shape[1] :], skip_special_tokens=True).split(".")[0].strip()
            answers.append((contains_name(text, q["target_name"]), q["target_name"], text))
    hits = sum(ok for ok, _, _ in answers)
    print(f"{args.split}: the base LM names the target of {hits}/{len(answers)} definition questions "
          f"({hits / max(len(answers), 1):.2f})")
    for ok, target, text in answers[:30]:
        print(f"   {'OK ' if ok else '   '} {target!r:30} -> {text!r}")


if __name__ == "__main__":
    main()
