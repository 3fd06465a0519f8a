"""The naming stage of TRACE-mini training: examples that teach the image tokens to say what an image shows.

A composed-edit query ("this emoji, one shade darker") can only be reasoned about if the model can first name
the reference image; a projector trained from scratch inside the joint objective gets too little signal for
that on a CPU budget (the first v2 run named 0 % of its image-edit references). As LLaVA does before its
instruction tuning, a first stage trains on captions alone: every named training image (a candidate with image
and text, or an image query whose positive is a text) becomes

    <image> + "Say what the image shows."  ->  "The image shows {name}." <|emb|>

trained with the CoT cross-entropy only (`python -m trace_core.train --stage naming`). The joint stage can keep
them as one more pair (`--naming`, weighed in `--group-weights` by the pair name "naming"). Only images of the
train split are used, so a held-out target's picture is never seen.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .atomic import atomic_file
from .examples import Example
from .records import Candidate, Query

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


def fit_name_head(model, style, examples: dict[str, list[Example]], out: Path, **fit) -> float:
    """The name-head stage (`python -m trace_core.train --stage names`): fit TRACE-mini's name head alone on
    every named training image (its features precomputed in `model`), log it to OUT/names_log.jsonl and export
    the model to OUT/model. `fit`: steps, batch_size, lr, seed of `NameHead.fit`. Returns the share of images
    whose name it spells back exactly."""
    if not getattr(getattr(model, "config", None), "name_slots", 0):
        raise ValueError("--stage names needs a TRACE-mini model with a name head (name_slots > 0)")
    named = image_names(examples)
    paths = sorted(named)
    features = torch.stack([model.feature_store.get(p) for p in paths])
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def log_step(step: int, loss: float) -> None:
        lines.append(json.dumps({"step": step, "loss": round(loss, 4)}))
        log.info("name head step %d: loss %.4f", step, loss)

    exact = model.fit_name_head(features, [named[p] for p in paths], log=log_step, **fit)
    lines.append(json.dumps({"images": len(paths), "spelt_exactly": round(exact, 4)}))
    atomic_file(out / "names_log.jsonl", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    model.export(out / "model", style)
    print(f"name head: {exact:.3f} of {len(paths)} training images spelt exactly")
    return exact
