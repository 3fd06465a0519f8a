"""Country knowledge questions for emoji_task1 (issue 10: knowledge questions that never name their target,
WebQA / InfoSeek-like): "The flag of the country whose capital is Windhoek." -> the catalogue entry of the
Namibia flag emoji, among the entries of every other country flag.

The step is one fact the language model may know and the direct embedding has to carry implicitly: capital ->
country, demonym -> country, or place -> country. The facts come from WordNet 3.0 glosses (Debian
`wordnet-base`): "the capital and largest city of Afghanistan" (Kabul), "a native or inhabitant of Albania"
(Albanian), "a port city of northeastern Algeria" (Annaba). A subject that WordNet ties to more than one country,
or whose name contains its country's name ("Mexico City"), is not asked; nor is a former capital ("the largest
city and former capital of Turkey" is no fact about Istanbul that a CoT may state as "the capital of").

Flags the other emoji pairs use keep their split there and are not asked here; the others are split by country,
so a held-out country is never a target, question or negative in training. As for the definition questions,
val and test keep only the questions the untrained base LM answers (`reach.BaseLMReach`): the answer has to come
from the LM's own knowledge, not from training.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from . import teacher
from .wordnet import WordNet

KINDS = ("capital", "people", "place")

# Gloss patterns, tried in this order; group 1 is the country as the gloss spells it (`spellings`).
_PATTERNS = {
    "capital": r"\b(?:the )?(?<!former )(?<!ancient )(?<!old )(?:capital|capital and largest city|capital and chief port) "
               r"of (?:the )?({c})\b",
    "people": r"^(?:a )?native or inhabitant of (?:the )?({c})\b",
    "place": r"^(?:an? )?(?:[\w-]+ ){{0,3}}(?:city|town|port|seaport|province|region) (?:in|of|on) "
             r"(?:the )?(?:[\w-]+ ){{0,3}}?({c})\b",
}

QUESTIONS = {
    "capital": ("The flag of the country whose capital is {s}.",
                "Which flag belongs to the country with {s} as its capital?",
                "Find the flag of the nation governed from {s}."),
    "people": ("The flag of the country {a} {s} comes from.",
               "Which flag is the national flag of the {s} people?",
               "Find the flag {a} {s} would fly at home."),
    "place": ("The flag of the country where {s} is.",
              "Which flag flies over {s}?",
              "Find the flag of the country that {s} is in."),
}

STEPS = {
    "capital": "{s} is the capital of {c}.",
    "people": "{A} {s} is from {c}.",
    "place": "{s} is in {c}.",
}


# Flag name (lower case, without " flag") -> other spellings WordNet uses for the country.
ALIASES = {
    "türkiye": ("Turkey",), "myanmar (burma)": ("Burma", "Myanmar"), "czechia": ("Czech Republic",),
    "côte d’ivoire": ("Ivory Coast",), "congo - kinshasa": ("Democratic Republic of the Congo", "Zaire"),
    "united states": ("United States of America",), "north macedonia": ("Macedonia",),
    "timor-leste": ("East Timor",), "eswatini": ("Swaziland",), "st. lucia": ("Saint Lucia",),
    "st. kitts & nevis": ("Saint Kitts and Nevis",), "st. vincent & grenadines": ("Saint Vincent and the Grenadines",),
    "bosnia & herzegovina": ("Bosnia and Herzegovina", "Bosnia"), "trinidad & tobago": ("Trinidad and Tobago",),
    "antigua & barbuda": ("Antigua and Barbuda",), "são tomé & príncipe": ("Sao Tome and Principe",),
    "hong kong sar china": ("Hong Kong",), "macao sar china": ("Macao", "Macau"),
}


@dataclass(frozen=True)
class Fact:
    kind: str  # one of KINDS
    subject: str  # "Windhoek"
    country: str  # "Namibia", as the WordNet gloss spells it (the CoT's words)
    flag: str  # the flag's key in the caller's mapping (its country name as the flag spells it)
    gloss: str  # the WordNet gloss it comes from


def spellings(flag_country: str) -> list[str]:
    """How glosses may write the country of a flag named `flag_country` ("namibia", "bosnia & herzegovina")."""
    small = {"&", "and", "of", "da", "the"}
    own = " ".join(w if w in small else w[:1].upper() + w[1:] for w in flag_country.split())
    return [own, *ALIASES.get(flag_country, ())]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _name_words(country: str) -> set[str]:
    """The words that name a country ("saint vincent and the grenadines" -> saint, vincent, grenadines)."""
    return _words(country) - {"the", "and", "of", "da"}


def country_facts(wordnet: WordNet, flags: Iterable[str]) -> dict[str, list[Fact]]:
    """Flag country ("namibia") -> its facts, in WordNet's file order. Only proper-noun subjects ("Windhoek",
    "Namibian") of one country each, whose name shares no word with the country's; one fact a subject."""
    by_spelling = {s: f for f in flags for s in spellings(f)}
    # the longest spelling first ("Guinea-Bissau" before "Guinea"); a gloss writes a country capitalised
    names = "|".join(re.escape(c) for c in sorted(by_spelling, key=len, reverse=True))
    patterns = {k: re.compile(p.format(c=names)) for k, p in _PATTERNS.items()}
    found: dict[str, list[Fact]] = {}
    for _, words, gloss in wordnet.records():
        subject = words[0]
        for kind in KINDS:
            m = patterns[kind].search(gloss)
            if m is None:
                continue
            if subject[:1].isupper():
                found.setdefault(subject, []).append(Fact(kind, subject, m.group(1), by_spelling[m.group(1)], gloss))
            break
    out: dict[str, list[Fact]] = {}
    for subject, facts in found.items():
        if len({f.flag for f in facts}) > 1 or subject in by_spelling:
            continue  # "Hamilton": Bermuda's capital and a city in Ontario; a country's own name
        fact = facts[0]
        if _words(subject) & (_name_words(fact.flag) | _name_words(fact.country)):
            continue  # "Mexico City", "Guatemala City"
        out.setdefault(fact.flag, []).append(fact)
    return out


def questions(fact: Fact) -> list[tuple[str, str]]:
    """(template, question) of a fact; a question never contains a word of its country's names."""
    out = []
    for t in QUESTIONS[fact.kind]:
        q = t.format(s=fact.subject, a=_article(fact.subject))
        if not _words(q) & (_name_words(fact.country) | _name_words(fact.flag)):
            out.append((t, q))
    return out


def with_article(country: str) -> str:
    """The country as a sentence names it: "the United Kingdom", "Namibia"."""
    the = ("United ", "Islands", "Republic", "Emirates", "Netherlands", "Bahamas", "Philippines", "Maldives",
           "Gambia", "Vatican", "Kingdom", "States")
    return f"the {country}" if any(w in country for w in the) else country


def knowledge_cot(fact: Fact, target_name: str, rng: random.Random) -> teacher.TeacherOutput:
    """One step (the fact), then the target: "Windhoek is the capital of Namibia. Target: the namibia flag
    emoji." `rng` is unused (one wording per kind) but keeps `CotMaker`'s signature."""
    del rng
    s = fact.subject
    step = STEPS[fact.kind].format(s=s, A=_article(s).capitalize(), c=with_article(fact.country))
    answer = f"Target: the {target_name} emoji."
    return teacher.TeacherOutput(
        raw=f"<reasoning>{step}</reasoning><answer>{answer}</answer>",
        answer=answer,
        keywords=tuple(w for w in target_name.split() if len(w) > 2) or (target_name,),
    )
