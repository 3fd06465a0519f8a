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

from .examples import Example
from .records import Candidate, Query

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
