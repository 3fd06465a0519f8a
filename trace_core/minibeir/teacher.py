"""Rule-based teacher chains of thought for the complex queries of TRACE-mini, and the paper's CoT filters.

The paper's teacher is an MLLM writing ``<reasoning>..</reasoning><answer>..</answer>`` per task type; ours
writes the same format from the structured source metadata (the templates live with their pairs, in
emoji.py), with several wordings per task chosen by a seeded RNG so the student does not learn one fixed
sentence. Every output then goes through ``filter_cot`` (the paper's rule filters; the MLLM verifier has no
counterpart here) before the tags are removed.
CoTs are kept short (one step, the target named last) because decoding on a CPU is slow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Paper bounds, in tokens; we count whitespace-separated words (the student's tokenizer is not fixed here).
# The lower bound is relaxed from the paper's 16: TRACE-mini's CoTs take one step and name the target last
# (aim: <= 30 tokens), because a 135M model decodes ~10-30 tokens/s on a CPU and a long CoT only adds
# places to go wrong.
REASONING_WORDS = (4, 256)
ANSWER_WORDS = (2, 64)
_PAIR_RE = re.compile(r"^\s*<reasoning>(.*?)</reasoning>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_TAG_RE = re.compile(r"</?(?:reasoning|answer)>")
_REFUSALS = ("i cannot", "i can't", "as an ai", "i am unable", "i'm sorry", "not able to help")


@dataclass(frozen=True)
class TeacherOutput:
    raw: str  # "<reasoning>..</reasoning><answer>..</answer>", as a teacher model would emit it
    answer: str  # the answer sentence (inside <answer>), also the CoT's last sentence
    keywords: tuple[str, ...]  # salient words of the instruction or target the answer must mention


def strip_tags(raw: str) -> str:
    """Stored CoT: reasoning text followed by the answer sentence, tags removed (what the student learns)."""
    m = _PAIR_RE.match(raw)
    if m is None:
        raise ValueError("not exactly one <reasoning>..</reasoning><answer>..</answer> pair")
    return f"{_norm_space(m.group(1))} {_norm_space(m.group(2))}"


def _norm_space(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9][a-z0-9'\-]*", text.lower())


# Answer-template words that say nothing about the target; ignored when comparing with the source caption.
_BOILERPLATE = frozenset(
    "the a an target is so i am looking for emoji result should be answer that only match".split()
)


def _content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in _words(text) if w not in _BOILERPLATE)


def _has_loop(text: str) -> str | None:
    """Why the text repeats itself (a repeated sentence or a 3-gram occurring 4+ times), else None.

    Three occurrences are allowed: a multi-word entity name legitimately appears in the source, the
    reasoning and the answer.
    """
    sentences = [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 3]
    if len(sentences) != len(set(sentences)):
        return "repeated sentence"
    words = _words(text)
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - 2):
        gram = tuple(words[i : i + 3])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] >= 4:
            return f"3-gram loop {' '.join(gram)!r}"
    return None


def filter_cot(
    cot: str,
    answer: str,
    source_caption: str | None,
    keywords: Iterable[str],
    *,
    seen: set[str] | None = None,
    query: str = "",
) -> tuple[bool, str]:
    """The paper's rule filters on one teacher output; returns (kept, reason), reason "ok" when kept.

    ``cot`` is the raw teacher output with its tags; ``answer`` is the gold target description the CoT must
    lead to; ``source_caption`` is the caption of a composed query's reference item (None otherwise);
    ``keywords`` are salient words of the instruction or target, at least one of which the answer sentence
    must contain (``answer``'s words are used when none are given). ``seen`` holds the normalised samples
    (``query`` text + CoT) kept so far across the corpus: a duplicate is rejected and a kept one is added. As in
    the paper, deduplication is per sample: two questions about the same item may share a CoT.
    """
    if len(_TAG_RE.findall(cot)) != 4 or _PAIR_RE.match(cot) is None:
        return False, "not exactly one reasoning/answer tag pair"
    m = _PAIR_RE.match(cot)
    assert m is not None  # checked just above
    reasoning, ans = _norm_space(m.group(1)), _norm_space(m.group(2))
    n_r, n_a = len(reasoning.split()), len(ans.split())
    if not REASONING_WORDS[0] <= n_r <= REASONING_WORDS[1]:
        return False, f"reasoning length {n_r} words outside {REASONING_WORDS}"
    if not ANSWER_WORDS[0] <= n_a <= ANSWER_WORDS[1]:
        return False, f"answer length {n_a} words outside {ANSWER_WORDS}"
    full = f"{reasoning} {ans}"
    loop = _has_loop(full)
    if loop:
        return False, loop
    low = full.lower()
    if any(r in low for r in _REFUSALS):
        return False, "refusal"
    letters = [c for c in full if c.isalpha()]
    if letters and sum(c.isascii() for c in letters) / len(letters) < 0.95:
        return False, "not English"
    keys = [k.lower() for k in keywords if k.strip()] or [w for w in _words(answer) if len(w) > 2]
    ans_low = ans.lower()
    if not any(re.search(rf"(?<![a-z0-9]){re.escape(k)}(?![a-z0-9])", ans_low) for k in keys):
        return False, "answer lacks a salient keyword"
    if source_caption is not None and _content_words(ans) == _content_words(source_caption):
        return False, "composed answer equals the source caption"
    if seen is not None:
        key = f"{query}\n{' '.join(_words(full))}"
        if key in seen:
            return False, "duplicate"
        seen.add(key)
    return True, "ok"
