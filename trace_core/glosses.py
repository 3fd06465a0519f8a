"""The gloss drill of TRACE-mini training: definition questions about everyday nouns that no candidate names.

TRACE-mini's definition pair (emoji_task1) asks for emoji whose names the untrained base LM gives from a
WordNet gloss, yet after training the model answers about a quarter of them with the name of a training
target instead ("a push button at an outer door that gives a ringing signal" -> doorknob, not bell): a few
hundred training targets teach it to pick among the names it has seen, not to say what the description is.
The drill keeps the step general. It asks the same kind of question about common WordNet nouns and trains
the CoT cross-entropy alone on the definition CoT of the corpus ("The description fits a lantern. Target:
the lantern emoji."): there is no candidate to retrieve, so these rows add no InfoNCE
(`python -m trace_core.train --glosses N`, the pair named "glosses" in `--group-weights`).

Leakage: a noun is left out when it, or any of its words, is a word of the name of any candidate of the
corpus (every split's pools), or when its gloss is quoted by a val or test query; so no held-out target and no
held-out question is ever drilled.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from .examples import Example
from .minibeir.emoji import _DEFINITION_QUESTIONS, _names_any, definition_cot
from .minibeir.teacher import strip_tags
from .minibeir.wordnet import WordNet
from .records import Candidate, Query

GLOSS_PAIR = "glosses"
# The lexicographer files whose nouns the emoji of the definition pair come from (emoji.SENSE_FILES).
DRILL_FILES = {"animal", "plant", "object", "phenomenon", "food", "artifact", "body"}
_LEMMA = re.compile(r"^[a-z]+(?:_[a-z]+)?$")  # one or two plain words


def corpus_names(data: Path) -> tuple[set[str], list[str]]:
    """Every name a candidate of `data` carries (lower case: its text, the name in `src_content`, a definition
    passage's name) and the text of every val and test query, to keep the drill off them."""
    names: set[str] = set()
    for pool in sorted((data / "cand_pool").rglob("*.jsonl")):
        for line in pool.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            c = json.loads(line)
            txt = (c.get("txt") or "").strip().lower()
            if txt:
                names.add(txt.split(" (shortcode")[0])
            src = c.get("src_content")
            if src:
                try:
                    name = json.loads(src).get("name")
                except (ValueError, AttributeError):
                    name = None
                if name:
                    names.add(str(name).lower())
    held_out = []
    for split in ("val", "test"):
        for f in sorted((data / "query" / split).glob("*.jsonl")):
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    held_out.append((json.loads(line).get("query_txt") or "").lower())
    return names, held_out


def drill_nouns(wordnet: WordNet, names: set[str], held_out: list[str], n: int, seed: int) -> list[tuple]:
    """Up to `n` (lemma, sense) of common nouns (`WordNet.common_lemmas`: first sense tagged twice in SemCor), first sense in `DRILL_FILES`, whose gloss
    does not name them, none of them a corpus name or described by a held-out query; shuffled by `seed`."""
    name_words = {w for name in names for w in re.findall(r"[a-z]+", name)}
    held = " \n ".join(held_out)
    out = []
    for lemma in sorted(wordnet.common_lemmas()):
        if not _LEMMA.match(lemma):
            continue
        word = lemma.replace("_", " ")
        if word in names or any(w in name_words for w in word.split()):
            continue
        senses = wordnet.senses(word)
        if not senses or senses[0].lexfile not in DRILL_FILES:
            continue
        sense = senses[0]
        if _names_any(sense.gloss, word) or not 3 <= len(sense.gloss.split()) <= 30:
            continue
        if sense.gloss.lower() in held:
            continue
        out.append((word, sense))
    random.Random(f"{seed}:glosses").shuffle(out)
    return out[:n]


def gloss_examples(wordnet_dir: Path, data: Path, instructions: tuple[str, ...], n: int,
                   seed: int = 0) -> list[Example]:
    """The drill's examples: one definition question per noun, with the corpus's definition CoT, asked with
    `instructions` (the definition pair's)."""
    if not instructions:
        raise ValueError("the gloss drill needs the definition pair's instructions (emoji_task1 in the data)")
    wordnet = WordNet(wordnet_dir)
    names, held_out = corpus_names(data)
    out = []
    for word, sense in drill_nouns(wordnet, names, held_out, n, seed):
        rng = random.Random(f"{seed}:gloss:{word}")
        templates = [t for t in _DEFINITION_QUESTIONS if sense.hypernym or "{h}" not in t]
        question = templates[rng.randrange(len(templates))].format(g=sense.gloss, h=sense.hypernym)
        cot = strip_tags(definition_cot(word, rng).raw)
        did = f"gloss:{word}"
        out.append(Example(
            pair=GLOSS_PAIR,
            query=Query(text=question, instruction=instructions[0], qid=did),
            cot=cot,
            positive=Candidate(text=word, did=did),
            all_positives=frozenset({did}),
            instructions=instructions,
            target_name=word,
        ))
    return out

