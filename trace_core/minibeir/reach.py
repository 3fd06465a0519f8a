"""Which definition questions the untrained base LM can answer (issue 10: the held-out answers of emoji_task1
must be reachable from the language model's own knowledge, not memorised).

`BaseLMReach` asks SmolLM2-135M-Instruct (the packaged base LM, no TRACE training) each question few-shot, with
greedy decoding, and counts it as reachable when the answer names the target as whole words
(`evidence.contains_name`, the rule the report uses for CoTs). The shots are fixed here and answer words that
are no emoji, so no target is given away. Answers are cached in a JSON file (question -> answer), so a rebuild
asks only new questions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from ..atomic import atomic_file
from .evidence import contains_name

logger = logging.getLogger(__name__)
DEFAULT_CACHE = Path(".cache/reach/smollm2-135m-instruct.json")
# (question, answer): WordNet-style glosses of words that are no emoji name.
SHOTS = (
    ("Which emoji shows a hanging bed of canvas or rope netting?", "hammock"),
    ("Find the emoji for this: a room where books are kept for reading or borrowing.", "library"),
    ("The emoji of a kind of instrument: a large stringed instrument played by plucking.", "harp"),
    ("I need the emoji that depicts a long seat for more than one person.", "bench"),
)
SHOT_ANSWERS = frozenset(a for _, a in SHOTS)


class BaseLMReach:
    """Callable (questions, targets) -> whether the base LM names each target; answers cached in `cache`."""

    def __init__(self, lm: str = "smollm2-135m-instruct", cache: Path | None = DEFAULT_CACHE, batch_size: int = 16):
        self.lm_name, self.cache, self.batch_size = lm, cache, batch_size
        self._model = None

    def _load(self):
        if self._model is None:
            from trace_core.backbones.pretrained import load_lm

            lm, tok = load_lm(self.lm_name)
            tok.padding_side = "left"
            self._model = (lm.eval(), tok)
        return self._model

    def _prompt(self, tok, question: str) -> str:
        msgs = []
        for q, a in SHOTS:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": f"The answer is {a}."}]
        msgs.append({"role": "user", "content": question})
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + "The answer is"

    def answers(self, questions: Sequence[str]) -> dict[str, str]:
        """Question -> the base LM's answer (first sentence), from the cache or asked now."""
        import torch

        known: dict[str, str] = {}
        if self.cache is not None and self.cache.is_file():
            known = json.loads(self.cache.read_text(encoding="utf-8"))
        todo = sorted({q for q in questions if q not in known})
        if todo:
            lm, tok = self._load()
            logger.info("asking the base LM %d definition questions (%d cached)", len(todo), len(known))
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i : i + self.batch_size]
                enc = tok([self._prompt(tok, q) for q in chunk], return_tensors="pt", padding=True)
                with torch.no_grad():
                    out = lm.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
                for q, ids in zip(chunk, out, strict=True):
                    known[q] = tok.decode(ids[enc["input_ids"].shape[1] :], skip_special_tokens=True).split(".")[0]
                if (i // self.batch_size) % 20 == 19 or i + self.batch_size >= len(todo):
                    self._save(known)  # resumable: a rebuild asks only what is not cached yet
                    logger.info("asked %d/%d", min(i + self.batch_size, len(todo)), len(todo))
        return {q: known[q].strip() for q in questions}

    def _save(self, known: dict[str, str]) -> None:
        if self.cache is not None:
            text = json.dumps(known, indent=0, sort_keys=True)
            atomic_file(self.cache, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def __call__(self, questions: Sequence[str], targets: Sequence[str]) -> list[bool]:
        said = self.answers(questions)
        return [t.lower() not in SHOT_ANSWERS and contains_name(said[q], t) for q, t in zip(questions, targets,
                                                                                             strict=True)]
