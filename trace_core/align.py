"""Stage 1 of TRACE-mini training: teach the image tokens to say what an image shows.

A composed-edit query ("this emoji, one shade darker") can only be reasoned about if the model can first name
the reference image; a projector trained from scratch inside the joint objective gets too little signal for
that on a CPU budget (the first v2 run named 0 % of its image-edit references). As LLaVA does before its
instruction tuning, this stage trains on captions alone: every named training image (a candidate with image and
text, or an image query whose positive is a text) becomes

    <image> + "Say what the image shows."  ->  "The image shows {name}." <|emb|>

with the CoT cross-entropy only (no InfoNCE, no candidates), through the same `Trainer`, checkpoints and resume.
Only images of the train split are used, so a held-out target's picture is never seen. The joint TRACE
objective then starts from the result: `python -m trace_core.train --init OUT/model ...`.

    python -m trace_core.align --data runs/minibeir-v2 --out runs/naming --steps 300
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .records import Candidate, Query
from .train import Example, Trainer, TrainConfig, build_model, load_examples, precompute_features

log = logging.getLogger(__name__)

NAMING_PAIR = "naming"
NAMING_INSTRUCTION = "Say what the image shows."
MAX_NAME_WORDS = 12  # long clip-art titles are cut: the stage teaches recognition, not copying titles


def naming_sentence(name: str) -> str:
    words = name.split()
    return f"The image shows {' '.join(words[:MAX_NAME_WORDS])}."


def image_names(examples: dict[str, list[Example]]) -> dict[str, str]:
    """Image path -> its name, from every image candidate that carries a text (its caption or name) and every
    image-only query whose positive is a text. The first name met for an image is kept."""
    names: dict[str, str] = {}
    for exs in examples.values():
        for ex in exs:
            for c in (ex.positive, *ex.negatives):
                if c.image is not None and c.text and c.text.strip():
                    names.setdefault(str(c.image), c.text.strip())
            q, pos = ex.query, ex.positive
            if (q.image is not None and not (q.text and q.text.strip()) and pos.image is None
                    and pos.text and pos.text.strip()):
                names.setdefault(str(q.image), pos.text.strip())
    return names


def naming_examples(examples: dict[str, list[Example]]) -> list[Example]:
    """One captioning example per named training image (sorted by path: the same set on every run)."""
    out = []
    for path, name in sorted(image_names(examples).items()):
        did = f"name:{path}"
        out.append(Example(
            pair=NAMING_PAIR,
            query=Query(image=path, instruction=NAMING_INSTRUCTION, qid=did),
            cot=naming_sentence(name),
            positive=Candidate(text=name, did=did),
            all_positives=frozenset({did}),
            instructions=(NAMING_INSTRUCTION,),
        ))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trace_core.align", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="M-BEIR-format folder with a train split")
    parser.add_argument("--out", required=True, help="output folder (checkpoint, log, model/)")
    parser.add_argument("--pairs", default="all", help="pairs whose training images are named")
    parser.add_argument("--init", default=None, help="start from the weights of this TRACE-mini checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--feature-store", default=None, help="file that keeps the frozen image features")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4, help="LoRA learning rate (new parameters: 10x)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                      save_every=args.save_every, seed=args.seed, lambda_ret=0.0, lambda_direct=0.0,
                      hard_negatives=False, self_cot_from=1.0, random_instruction=False,
                      group_weights="complex=1")
    try:
        named = naming_examples(load_examples(Path(args.data), "train", args.pairs))
        if not named:
            raise ValueError(f"no named training images under {args.data}")
        log.info("naming stage: %d training images with names", len(named))
        examples = {NAMING_PAIR: named}
        model, style = build_model("mini", args.init)
        precompute_features(model, examples, args.feature_store)
        trainer = Trainer(model, style, examples, Path(args.out), cfg)
        if args.resume:
            trainer.resume()
        trainer.train()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
