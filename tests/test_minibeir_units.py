"""Unit tests of the TRACE-mini corpus builder's parts: emoji families, edits, definitions, the CoT filters and
the base LM's reach cache (trace_core.minibeir)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.minibeir_fixture import (
    MAX_COT_WORDS,
    NO_WORDNET,
    TONE_WORDS,
    make_emoji_source,
    make_wordnet,
)
from trace_core.minibeir import emoji as me
from trace_core.minibeir import sources, teacher
from trace_core.minibeir.wordnet import WordNet


def test_emoji_families(tmp_path: Path) -> None:
    recs = sources.load_emoji(make_emoji_source(tmp_path / "src", n_plain=2, n_people=2))
    by_name = {e.name: e for e in recs}
    assert by_name["man pilot"].family == by_name["woman pilot"].family == by_name["pilot"].family
    assert by_name["man pilot"].gender == "man" and by_name["pilot"].gender == "person"
    assert [t for t, _ in by_name["pilot"].tones] == list(sources.SKIN_TONES.values())
    assert by_name["apple"].gender is None and not by_name["apple"].tones
    assert by_name["waving hand"].gender is None and by_name["waving hand"].tones


# ----------------------------------------------------------------------------------------------------
# Edits and definitions, unit level


def _member(name: str, gender: str | None, code: str = "2000") -> sources.Emoji:
    return sources.Emoji(code=code, name=name, short_name=name, category="People & Body", subcategory="person-role",
                         added_in="1.0", image=Path("x.png"), tones=(), family=code, stem="pilot", gender=gender)


@pytest.mark.parametrize(("ref_tone", "tgt_tone", "word"), [("medium", "medium-dark", "darker"),
                                                           ("medium-light", "light", "lighter"),
                                                           ("medium-dark", "dark", "darker")])
def test_relative_edit_resolves_to_adjacent_tone(ref_tone: str, tgt_tone: str, word: str) -> None:
    m = _member("man pilot", "man")
    ref, tgt = me.Variant(m, ref_tone), me.Variant(m, tgt_tone)
    seen_relative = seen_named = False
    for seed in range(200):
        said, resolved = me.edit_text(ref, tgt, random.Random(seed), "scale")
        if "shade" in said:
            seen_relative = True
            assert word in said and tgt_tone not in said.split(), said
            # the CoT takes the step in writing: from the reference's tone to the target's
            scale = list(me.TONES) if word == "darker" else list(me.TONES)[::-1]
            assert resolved == f"shades {word}: {', '.join(scale)}; one after {ref_tone}: {tgt_tone} skin tone"
            assert scale[scale.index(ref_tone) + 1] == tgt_tone
        else:
            seen_named = True
            assert tgt_tone in said.split(), said
            assert resolved == f"{tgt_tone} skin tone"
    assert seen_relative and seen_named


def test_relative_edit_styles() -> None:
    """plain (the shipped corpus v3) names the tone reached; step and scale also write the step's start."""
    assert me.relative_step("light", "medium-light") == "medium-light skin tone"
    assert me.relative_step("dark", "medium-dark", "step") == "one shade lighter than dark: medium-dark skin tone"
    assert me.relative_step("medium", "medium-dark", "scale") == (
        "shades darker: light, medium-light, medium, medium-dark, dark; one after medium: medium-dark skin tone")
    with pytest.raises(ValueError, match="tone step"):
        me.relative_step("light", "medium-light", "ordinal")
    m = _member("man pilot", "man")
    plain = {me.edit_text(me.Variant(m, "medium"), me.Variant(m, "dark"), random.Random(s))[1] for s in range(20)}
    assert plain == {"dark skin tone"}  # not adjacent: every style names the tone
    adjacent = {me.edit_text(me.Variant(m, "medium"), me.Variant(m, "medium-dark"), random.Random(s))
                for s in range(40)}
    assert {r for _, r in adjacent} == {"medium-dark skin tone"} and any("shade" in t for t, _ in adjacent)


def test_relative_edit_cot_passes_filters_and_states_the_step() -> None:
    man, woman = _member("man pilot", "man"), _member("woman pilot", "woman", "2002")
    ref, tgt = me.Variant(man, "dark"), me.Variant(woman, "medium-dark")
    cots = set()
    for seed in range(60):
        rng = random.Random(seed)
        said, resolved = me.edit_text(ref, tgt, rng, "scale")
        if "shade" not in said:
            continue
        out = me.edit_cot(ref, tgt, resolved, rng, from_image=seed % 2 == 0)
        assert teacher.filter_cot(out.raw, tgt.name, ref.name, out.keywords) == (True, "ok")
        cot = teacher.strip_tags(out.raw)
        assert ("Edit: woman, shades lighter: dark, medium-dark, medium, medium-light, light; one after dark: "
                "medium-dark skin tone.") in cot, cot
        assert cot.endswith("Target: woman pilot: medium-dark skin tone.") and len(cot.split()) <= MAX_COT_WORDS
        cots.add(cot)
    assert cots


def test_non_adjacent_tone_edits_name_the_tone() -> None:
    m = _member("man pilot", "man")
    for ref_tone, tgt_tone in (("light", "medium"), ("dark", "light"), ("medium-light", "medium-dark")):
        for seed in range(50):
            said, resolved = me.edit_text(me.Variant(m, ref_tone), me.Variant(m, tgt_tone), random.Random(seed))
            assert "shade" not in said and tgt_tone in said.split() and resolved == f"{tgt_tone} skin tone", said


def test_gender_and_default_edits() -> None:
    man, woman = _member("man pilot", "man"), _member("woman pilot", "woman", "2002")
    said, resolved = me.edit_text(me.Variant(man, "dark"), me.Variant(woman, "dark"), random.Random(0))
    assert "woman" in said and "skin" not in said and resolved == "woman"
    said, resolved = me.edit_text(me.Variant(man, "dark"), me.Variant(man, None), random.Random(0))
    assert "dark" not in said and resolved == "default yellow"
    said, resolved = me.edit_text(me.Variant(man, None), me.Variant(woman, "light"), random.Random(0))
    assert "woman" in said and "light" in said and resolved == "woman, light skin tone"


def test_definition_sense(tmp_path: Path) -> None:
    wn = WordNet(make_wordnet(tmp_path / "wn"))

    def plain(name: str, cat: str = "Food & Drink") -> sources.Emoji:
        return sources.Emoji(code="1F000", name=name, short_name=name, category=cat, subcategory="food-fruit",
                             added_in="1.0", image=Path("x.png"), tones=(), family="1F000", stem=name,
                             gender=None)

    def first_sense(e: sources.Emoji):
        senses = me.definition_senses(wn, e, most=1)
        return senses[0] if senses else None

    banana = first_sense(plain("banana"))
    assert banana is not None and banana.hypernym == "edible fruit" and "banana" not in banana.gloss
    lemon = first_sense(plain("lemon"))  # first sense names the lemon: skipped
    assert lemon is not None and "lemon" not in lemon.gloss and lemon.lexfile == "food"
    mango = first_sense(plain("mango"))  # first sense is a person: wrong lexicographer file
    assert mango is not None and mango.lexfile == "food"
    bagel = first_sense(plain("bagel"))  # the example after ';' is dropped, so it may name it
    assert bagel is not None and bagel.gloss == "glazed yeast-raised doughnut-shaped roll with hard crust"
    assert bagel.hypernym == "bread"
    hot_dog = first_sense(plain("hot dog"))  # multi-word lemma: hot_dog
    assert hot_dog is not None and hot_dog.lemma == "hot dog"
    cherry = first_sense(plain("cherry"))  # first sense says "cherries": skipped
    assert cherry is not None and "cherries" not in cherry.gloss
    t_shirt = first_sense(plain("t-shirt", "Objects"))  # "shirt" in the first sense: skipped
    assert t_shirt is not None and t_shirt.gloss.startswith("a collarless") and t_shirt.hypernym == "garment"
    cookie = first_sense(plain("fortune cookie"))  # the hypernym "cookie" names it: dropped
    assert cookie is not None and cookie.gloss.startswith("thin folded") and cookie.hypernym is None
    assert first_sense(plain(NO_WORDNET)) is None
    assert first_sense(plain("hammer", "Flags")) is None  # no sense files for the category
    assert first_sense(plain("hammer", "People & Body")) is None  # artifact does not fit people


def test_v2_cots_pass_filters() -> None:
    """The builder's CoT templates pass the paper's filters, are short, and name the target last."""
    man, woman = _member("man pilot", "man"), _member("woman pilot", "woman", "2002")
    for seed in range(30):
        rng = random.Random(seed)
        ref, tgt = me.Variant(man, TONE_WORDS[seed % 5]), me.Variant(woman, TONE_WORDS[(seed + 2) % 5])
        said, resolved = me.edit_text(ref, tgt, rng)
        for from_image in (True, False):
            out = me.edit_cot(ref, tgt, resolved, rng, from_image)
            assert teacher.filter_cot(out.raw, tgt.name, ref.name, out.keywords) == (True, "ok")
            cot = teacher.strip_tags(out.raw)
            assert cot.endswith(f"Target: {tgt.name}.") and ref.name in cot and len(cot.split()) <= MAX_COT_WORDS
        e = _member("hot dog", None, "1F000")
        out = me.definition_cot(e.name, rng)
        assert teacher.filter_cot(out.raw, e.name, None, out.keywords) == (True, "ok")
        assert teacher.strip_tags(out.raw).endswith("Target: the hot dog emoji.")


# ----------------------------------------------------------------------------------------------------
# Filters


def _raw(reasoning: str, answer: str) -> str:
    return f"<reasoning>{reasoning}</reasoning><answer>{answer}</answer>"


GOOD_REASONING = (
    "The reference image shows the man pilot emoji. The instruction asks me to set the skin tone to dark. "
    "The pose and the props stay the same."
)
GOOD_ANSWER = "The target is the man pilot: dark skin tone emoji."


def test_filter_accepts_good() -> None:
    ok, reason = teacher.filter_cot(
        _raw(GOOD_REASONING, GOOD_ANSWER), "man pilot: dark skin tone", "man pilot", ["dark"]
    )
    assert ok, reason
    assert teacher.strip_tags(_raw(GOOD_REASONING, GOOD_ANSWER)) == f"{GOOD_REASONING} {GOOD_ANSWER}"
    # The lower bound is 4 words: a one-step CoT passes.
    assert teacher.REASONING_WORDS[0] == 4
    assert teacher.filter_cot(_raw("This describes a banana.", "Target: the banana emoji."), "banana", None,
                              ["banana"]) == (True, "ok")


@pytest.mark.parametrize(
    ("raw", "source", "keywords", "why"),
    [
        (GOOD_REASONING + " " + GOOD_ANSWER, None, ["dark"], "tag pair"),
        (_raw(GOOD_REASONING, GOOD_ANSWER) + _raw(GOOD_REASONING, GOOD_ANSWER), None, ["dark"], "tag pair"),
        (f"<reasoning>{GOOD_REASONING}</reasoning>", None, ["dark"], "tag pair"),
        (_raw("Too short.", GOOD_ANSWER), None, ["dark"], "reasoning length"),
        (_raw(GOOD_REASONING, "Dark."), None, ["dark"], "answer length"),
        (
            _raw(GOOD_REASONING + " The pose and the props stay the same.", GOOD_ANSWER),
            None,
            ["dark"],
            "repeated",
        ),
        (
            _raw("the man pilot " * 6 + "is what I see here in this image today", GOOD_ANSWER),
            None,
            ["dark"],
            "3-gram loop",
        ),
        (_raw(GOOD_REASONING, GOOD_ANSWER), None, ["woman"], "keyword"),
        (
            _raw(GOOD_REASONING, "The target is the man pilot emoji."),
            "man pilot",
            ["pilot"],
            "source caption",
        ),
        (_raw(GOOD_REASONING + " I'm sorry, I cannot help.", GOOD_ANSWER), None, ["dark"], "refusal"),
    ],
)
def test_filter_rejects(raw: str, source: str | None, keywords: list[str], why: str) -> None:
    ok, reason = teacher.filter_cot(raw, "man pilot: dark skin tone", source, keywords)
    assert not ok and why in reason, reason


def test_filter_rejects_duplicates() -> None:
    seen: set[str] = set()
    raw = _raw(GOOD_REASONING, GOOD_ANSWER)
    assert teacher.filter_cot(raw, "x y", "man pilot", ["dark"], seen=seen)[0]
    ok, reason = teacher.filter_cot(raw, "x y", "man pilot", ["dark"], seen=seen)
    assert not ok and reason == "duplicate"
    # deduplication is per sample: another question may share the CoT, the same question twice may not
    assert teacher.filter_cot(raw, "x y", "man pilot", ["dark"], seen=seen, query="darker please")[0]
    ok, reason = teacher.filter_cot(raw, "x y", "man pilot", ["dark"], seen=seen, query="darker please")
    assert not ok and reason == "duplicate"




def test_reach_reads_its_cache_and_never_counts_a_shot(tmp_path: Path) -> None:
    """Cached answers are reused without loading a model (the LM path here does not exist), an answer counts
    when it names the target as whole words, and a target that is a shot's answer never counts."""
    from trace_core.minibeir.reach import SHOTS, BaseLMReach

    shot_q, shot_a = SHOTS[0]
    cache = tmp_path / "reach.json"
    cache.write_text(json.dumps({"Which emoji shows a yellow fruit?": " a banana", "Q2": " a catfish",
                                 "Q3": f" {shot_a}"}), encoding="utf-8")
    reach = BaseLMReach(lm=str(tmp_path / "no-such-lm"), cache=cache)
    assert reach(["Which emoji shows a yellow fruit?", "Q2", "Q3"], ["banana", "cat", shot_a]) == [True, False, False]
    with pytest.raises((OSError, ValueError)):  # a question not in the cache needs the model
        reach(["a new question"], ["banana"])
