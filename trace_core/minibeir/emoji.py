"""The emoji pairs of the TRACE-mini corpus: simple caption / name pairs and three mixed-difficulty pairs.

Difficulty is labelled per query, not per pair. Inside a mixed pair a query that states its target plainly is
simple (route "direct"); one that needs a step to name its target is complex (route "reason", with a short
teacher CoT that names the target last). Routing must therefore read the query, not only the instruction.

- emoji_task0 (text -> image) and emoji_task3 (image -> name): simple; items split by family 70/10/20.
- emoji_task8 ((image, text) -> (image, name)), CIRR-like composed edits: a reference emoji plus an edit
  ("make it a woman", "one shade darker", "without the skin tone") whose target is not written out; or,
  plainly, the reference plus the target's name. Recognising the reference is closed-set: every family's
  reference variants are seen in training, and about a quarter of each family's variants are held out as
  test-only targets (never a target, reference or negative in training). The pool holds all variants of a
  family (hard negatives by construction).
- emoji_task2 (text -> (image, name)): the same edits in text only ("man technologist: medium skin tone,
  but as a woman"), or the target's name.
- emoji_task1 (text -> catalogue entry), WebQA/InfoSeek-like: a WordNet definition that never names its
  target ("elongated crescent-shaped yellow fruit with soft sweet flesh"), or the plain name. Test targets
  are held-out items: the answer must come from the language model's own knowledge, not from memory. With
  `knowledge` (build --knowledge, corpus v7), also country questions about flags no other pair uses ("The flag
  of the country whose capital is Windhoek.", `countries.py`), split by country, among every country flag.

Query records carry, besides M-BEIR's keys: route, cot, target_name (what a correct CoT names), ref_name
(the reference a composed CoT must name), kind (what sort of query it is), and neg_cand_list (siblings: other
variants of the family, or items of the same subgroup).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from . import countries, teacher
from . import sources as src
from .corpus import SPLITS, Corpus, CotMaker, Pair, Query, fill_pool, rng_for, split_items, take
from .wordnet import WordNet

logger = logging.getLogger(__name__)

TONES = tuple(src.SKIN_TONES.values())  # light .. dark, in Fitzpatrick order
PLAIN_SHARE = 0.3  # share of plainly stated (direct) queries inside a mixed pair
HELD_OUT_VARIANTS = 0.25  # of each family's variants: test-only targets (val takes a little more)

# Lexicographer files of the WordNet sense that fits an emoji of each category.
SENSE_FILES = {
    "Animals & Nature": {"animal", "plant", "object", "phenomenon"},
    "Food & Drink": {"food", "plant"},
    "Objects": {"artifact"},
    "Travel & Places": {"artifact", "location", "object", "phenomenon"},
    "Activities": {"artifact", "act", "event"},
    "People & Body": {"body", "person"},
}


@dataclass(frozen=True)
class Variant:
    """One image of an edit family: a member (gender) in one skin tone (None: the default yellow)."""

    member: src.Emoji
    tone: str | None

    @property
    def name(self) -> str:
        return self.member.name if self.tone is None else f"{self.member.name}: {self.tone} skin tone"

    @property
    def key(self) -> str:
        return f"{self.member.code}:{self.tone}"


def _pick(rng: random.Random, options: Sequence[str]) -> str:
    return options[rng.randrange(len(options))]


# ---------------------------------------------------------------------------------------------- edits
_TONE_EDITS = ("make the skin tone {t}", "with {t} skin instead", "change it to {t} skin", "{t} skin tone instead")
_DARKER = ("one shade darker", "make the skin one shade darker", "a shade darker skin")
_LIGHTER = ("one shade lighter", "make the skin one shade lighter", "a shade lighter skin")
_DEFAULT = ("without the skin tone", "in the default yellow", "remove the skin tone")
_ADD_TONE = ("give it {t} skin", "add a {t} skin tone")
_GENDER = {
    "man": ("make it a man", "as a man", "show a man instead"),
    "woman": ("make it a woman", "as a woman", "show a woman instead"),
    "person": ("make it a gender-neutral person", "as a neutral person", "show a person of no gender"),
}


TONE_STEPS = ("plain", "step", "scale")


def relative_step(ref_tone: str, tgt_tone: str, style: str = "plain") -> str:
    """How a CoT resolves a one-shade step from ``ref_tone`` to ``tgt_tone`` (the "Edit:" part).

    - "plain" (corpus v3, the shipped one): the tone reached, "medium-light skin tone".
    - "step" (v4): the step in words, "one shade darker than light: medium-light skin tone".
    - "scale" (v5): the scale in the step's direction, then the tone after the reference's: "shades darker:
      light, medium-light, medium, medium-dark, dark; one after light: medium-light skin tone". The answer is
      then the word that follows the reference's tone in the CoT's own text, a copy, instead of an ordinal jump
      (TRACE-mini run 4 gets 29 % of these right; see assets/trace-mini/training/README.md, runs 8 and 9)."""
    if style not in TONE_STEPS:
        raise ValueError(f"tone step style must be one of {', '.join(TONE_STEPS)}; got {style!r}")
    darker = TONES.index(tgt_tone) > TONES.index(ref_tone)
    if style == "plain":
        return f"{tgt_tone} skin tone"
    if style == "step":
        return f"one shade {'darker' if darker else 'lighter'} than {ref_tone}: {tgt_tone} skin tone"
    scale = TONES if darker else TONES[::-1]
    return f"shades {'darker' if darker else 'lighter'}: {', '.join(scale)}; one after {ref_tone}: {tgt_tone} skin tone"


def edit_text(ref: Variant, tgt: Variant, rng: random.Random, tone_step: str = "plain",
              relative: bool | None = None) -> tuple[str, str]:
    """The edit from ``ref`` to ``tgt`` as a user would write it, and as the CoT states it (resolved).

    ``tone_step`` (see ``TONE_STEPS``): how the CoT resolves a relative edit ("one shade darker"). A one-shade
    tone change is said relatively with probability 0.5 (``relative`` None, one draw of ``rng``), always
    (True) or never (False)."""
    said, resolved = [], []
    if ref.member is not tgt.member:
        said.append(_pick(rng, _GENDER[tgt.member.gender or "person"]))
        resolved.append(tgt.member.gender or "person")
    if ref.tone != tgt.tone:
        if tgt.tone is None:
            said.append(_pick(rng, _DEFAULT))
            resolved.append("default yellow")
        elif ref.tone is None:
            said.append(_pick(rng, _ADD_TONE).format(t=tgt.tone))
            resolved.append(f"{tgt.tone} skin tone")
        else:
            step = TONES.index(tgt.tone) - TONES.index(ref.tone)
            if abs(step) == 1 and (rng.random() < 0.5 if relative is None else relative):
                # Relative: the CoT must read the reference's tone and take one step along the scale.
                said.append(_pick(rng, _DARKER if step == 1 else _LIGHTER))
                resolved.append(relative_step(ref.tone, tgt.tone, tone_step))
            else:
                said.append(_pick(rng, _TONE_EDITS).format(t=tgt.tone))
                resolved.append(f"{tgt.tone} skin tone")
    return " and ".join(said), ", ".join(resolved)


def edit_cot(ref: Variant, tgt: Variant, resolved: str, rng: random.Random, from_image: bool) -> teacher.TeacherOutput:
    """Short composed CoT: the reference (read off the image, or quoted), the resolved edit, the target last."""
    source = _pick(rng, ("The image shows {r}.", "Reference: {r}.") if from_image else ("Start: {r}.", "Source: {r}."))
    reasoning = f"{source.format(r=ref.name)} Edit: {resolved}."
    answer = f"Target: {tgt.name}."
    return teacher.TeacherOutput(
        raw=f"<reasoning>{reasoning}</reasoning><answer>{answer}</answer>",
        answer=answer,
        keywords=tuple(w for w in tgt.name.replace(":", " ").split() if len(w) > 2),
    )


def split_variants(families: dict[str, list[src.Emoji]], seed: int) -> dict[str, str]:
    """Variant key -> split. Default-yellow members are always train (the references every family shows);
    of the skin-tone variants about a quarter are test-only and a few val-only, per family."""
    out: dict[str, str] = {}
    for fam in sorted(families):
        variants = [Variant(m, t) for m in families[fam] for t in [None, *[x for x, _ in m.tones]]]
        toned = [v for v in variants if v.tone is not None]
        rng = random.Random(f"{seed}:variants:{fam}")
        rng.shuffle(toned)
        n_test = max(1, round(len(toned) * HELD_OUT_VARIANTS)) if len(toned) >= 3 else 0
        n_val = max(1, round(len(toned) * 0.08)) if len(toned) >= 5 else 0
        for i, v in enumerate(toned):
            out[v.key] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")
        for v in variants:
            out.setdefault(v.key, "train")
    return out


# ---------------------------------------------------------------------------------------------- definitions
_DEFINITION_QUESTIONS = (
    "Which emoji shows {g}?",
    "Find the emoji for this: {g}.",
    "The emoji of a kind of {h}: {g}.",
    "I need the emoji that depicts {g}.",
)
_PLAIN_NAMES = ("Which emoji is the {n}?", "the {n} emoji", "{n}", "Find the {n} emoji.")


def _names_any(text: str, name: str) -> bool:
    """Whether ``text`` contains a word of ``name``, or its plural ("X rays" names "x-ray", "fires" names
    "fire extinguisher"); words are split at hyphens and punctuation."""
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    for w in re.findall(r"[a-z0-9]+", name.lower()):
        forms = {w, w + "s", w + "es"} | ({w[:-1] + "ies"} if w.endswith("y") else set())
        if forms & words:
            return True
    return False


def definition_senses(wordnet: WordNet, e: src.Emoji, most: int = 3) -> list:
    """The WordNet senses that fit the emoji (its category's lexicographer files), first sense first.

    A gloss that contains a word of the name would make the question trivial: such senses are skipped; a
    hypernym that does ("cookie" for fortune cookie) is dropped, so no question quotes it."""
    files = SENSE_FILES.get(e.category)
    if files is None:
        return []
    out = []
    for sense in wordnet.senses(e.name, files):
        if not _names_any(sense.gloss, e.name) and 3 <= len(sense.gloss.split()) <= 30:
            if sense.hypernym is not None and _names_any(sense.hypernym, e.name):
                sense = replace(sense, hypernym=None)
            out.append(sense)
    return out[:most]



def definition_cot(name: str, rng: random.Random) -> teacher.TeacherOutput:
    """Short definition CoT: what the description is, then the target ``name``. One step, resolved by the LM's
    own knowledge of the word (the test targets never occur in training)."""
    article = "an" if name[0] in "aeiou" else "a"
    reasoning = _pick(rng, ("This describes {a} {n}.", "The description fits {a} {n}.")).format(a=article, n=name)
    answer = f"Target: the {name} emoji."
    return teacher.TeacherOutput(
        raw=f"<reasoning>{reasoning}</reasoning><answer>{answer}</answer>",
        answer=answer,
        keywords=tuple(w for w in name.split() if len(w) > 2) or (name,),
    )


@dataclass(frozen=True)
class Made:
    """A query before ids are assigned: what the builder needs to write it."""

    txt: str | None
    img: str | None  # corpus image path
    positive: str  # did
    route: str
    cot: str | None
    target_name: str
    ref_name: str | None
    kind: str
    negatives: tuple[str, ...]
    item: str  # family or emoji code, for leakage checks



# ---------------------------------------------------------------------------------------------- builders
def _made_query(corpus: Corpus, m: Made, task: int) -> Query:
    return Query(corpus.qid("emoji"), m.txt, m.img, (m.positive,), task, m.route, m.cot, (m.item,),
                 target_name=m.target_name, ref_name=m.ref_name, kind=m.kind, negatives=m.negatives)


def _mixed(made: list[Made], n: int, rng: random.Random) -> list[Made]:
    """n queries with PLAIN_SHARE plainly stated (direct) and the rest complex (reason), shuffled."""
    complex_ = [m for m in made if m.route == "reason"]
    plain = [m for m in made if m.route == "direct"]
    rng.shuffle(complex_)
    rng.shuffle(plain)
    n_plain = min(len(plain), round(n * PLAIN_SHARE))
    return complex_[: n - n_plain] + plain[:n_plain]


def build_emoji(corpus: Corpus, emoji: list[src.Emoji], sizes, seed: int, cots: CotMaker,
                wordnet: WordNet | None, reach=None, tone_step: str = "plain", relative_drill: int = 0,
                knowledge: bool = False) -> None:
    """All emoji pairs into ``corpus`` (see the module docstring). ``relative_drill``: see ``_relative_drill``;
    ``knowledge``: see ``_knowledge``."""
    emoji = [e for e in emoji if e.category != "Component"]  # bare skin-tone swatches and hair parts
    families: dict[str, list[src.Emoji]] = {}
    for e in emoji:
        families.setdefault(e.family, []).append(e)
    # Legacy Unicode names give a neutral base emoji the gender of a ZWJ variant (1F935 "MAN IN TUXEDO" is
    # CLDR's person in tuxedo, next to the sequence "MAN IN TUXEDO"): two members of one gender or one name
    # would make an edit's target ambiguous, so the member with the fewest code points gives way.
    for fam, ms in families.items():
        kept: list[src.Emoji] = []
        for m in sorted(ms, key=lambda m: (-len(m.code.split("-")), m.code)):
            if not any(k.name == m.name or (m.gender and k.gender == m.gender) for k in kept):
                kept.append(m)
        if len(kept) < len(ms):
            families[fam] = [m for m in ms if m in kept]
            emoji = [e for e in emoji if e.family != fam or e in kept]
    edit_fams = {f: ms for f, ms in families.items()
                 if any(m.tones for m in ms) or (len(ms) > 1 and any(m.gender for m in ms))}
    # Flags are a quarter of the set and nearly identical at 64 px; cap them so they do not dominate.
    plain = [e for e in emoji if e.family not in edit_fams]
    flags = [e for e in plain if e.category == "Flags"]
    plain = [e for e in plain if e.category != "Flags"] + rng_for(seed, "flags").sample(flags, min(60, len(flags)))
    plain.sort(key=lambda e: e.code)
    split_of = split_items((e.family for e in plain), seed, "emoji")

    def img(e: src.Emoji, tone: str | None = None) -> str:
        path = e.image if tone is None else dict(e.tones)[tone]
        return corpus.image("emoji", path.stem, path.read_bytes, Variant(e, tone).name)

    _simple_pairs(corpus, plain, split_of, img, sizes, seed)
    if wordnet is not None:
        _definitions(corpus, plain, split_of, img, sizes, seed, cots, wordnet, reach)
    _edits(corpus, edit_fams, img, sizes, seed, cots, tone_step, relative_drill)
    if knowledge and wordnet is not None:
        _knowledge(corpus, [e for e in emoji if e.subcategory == "country-flag"], {e.code for e in plain}, seed,
                   cots, wordnet, reach)


_T0_TEMPLATES = ("{n}", "{n} emoji", "an emoji of {n}", "a {n} icon", "{n}, as an emoji")


def _simple_pairs(corpus, plain, split_of, img, sizes, seed) -> None:
    """task0: caption -> image; task3: image -> name. Direct; items of held-out families at test time."""
    chosen: dict[str, list[src.Emoji]] = {}
    for s in SPLITS:
        items = [e for e in plain if split_of[e.family] == s]
        rng_for(seed, "emoji-simple", s).shuffle(items)
        chosen[s] = items[: sizes.of(s)]
    for task in (0, 3):
        pair = Pair("emoji", task)
        rng = rng_for(seed, "emoji", task)
        positives: list[str] = []
        for s in SPLITS:
            qs = []
            for e in chosen[s]:
                if task == 0:
                    did = corpus.cand("emoji", None, img(e))
                    txt = _pick(rng, _T0_TEMPLATES).format(n=e.name)
                    qs.append(Query(corpus.qid("emoji"), txt, None, (did,), 0, "direct", None, (e.family,),
                                    target_name=e.name, kind="caption"))
                else:
                    did = corpus.cand("emoji", e.name, None)
                    qs.append(Query(corpus.qid("emoji"), None, img(e), (did,), 3, "direct", None, (e.family,),
                                    target_name=e.name, kind="name"))
                positives.append(did)
            take(pair, s, qs, sizes.of(s), rng)
        distractors = [corpus.cand("emoji", None, img(e)) if task == 0 else corpus.cand("emoji", e.name, None)
                       for e in plain]
        shown = {corpus.cand("emoji", None, img(e)) for s in SPLITS for e in chosen[s]}
        fill_pool(pair, positives, distractors, sizes.pool, rng, prefer=shown if task == 0 else None)
        corpus.pairs.append(pair)


def _passage(e: src.Emoji) -> str:
    return (f"{e.name.capitalize()} (shortcode :{e.short_name}:) is an emoji in the {e.category} category, "
            f"{e.subcategory.replace('-', ' ')} group.")


def _definitions(corpus, plain, split_of, img, sizes, seed, cots: CotMaker, wordnet: WordNet, reach=None) -> None:
    """task1: a definition that never names its target (reason), or the plain name (direct) -> catalogue entry.

    Targets are split by family like the other pairs (held-out targets never occur in training). With `reach`
    ((questions, targets) -> answered by the base LM, `reach.BaseLMReach`), val and test ask every question of
    up to three senses that the untrained base LM answers, and only those: the answer must come from its own
    knowledge. Training asks two questions per target either way (without `reach`, of the first sense only)."""
    pair = Pair("emoji", 1)
    rng = rng_for(seed, "emoji", 1)
    passages = {e.code: corpus.cand("emoji", _passage(e), None) for e in plain}
    named = {e.code: e for e in plain}
    asked: dict[str, list[tuple[str, str]]] = {}  # code -> (template, question)
    for e in plain:
        senses = definition_senses(wordnet, e, most=1 if reach is None else 3)
        qs = [(t, t.format(g=sense.gloss, h=sense.hypernym)) for sense in senses
              for t in _DEFINITION_QUESTIONS if sense.hypernym or "{h}" not in t]
        if qs:
            asked[e.code] = qs
    split = {c: split_of[named[c].family] for c in asked}
    answerable = asked
    if reach is not None:
        flat = [(c, t, q) for c, qs in asked.items() if split[c] != "train" for t, q in qs]
        ok = reach([q for _, _, q in flat], [named[c].name for c, _, _ in flat])
        answerable = {}
        for (c, t, q), hit in zip(flat, ok, strict=True):
            if hit:
                answerable.setdefault(c, []).append((t, q))
        asked = {c: qs for c, qs in asked.items() if split[c] == "train" or c in answerable}
    by_group: dict[tuple[str, str], list[src.Emoji]] = {}
    for c in asked:
        by_group.setdefault((named[c].subcategory, split[c]), []).append(named[c])
    per_split: dict[str, list[Made]] = {s: [] for s in SPLITS}
    for c in sorted(asked):
        e, s = named[c], split[c]
        siblings = [x for x in by_group[(e.subcategory, s)] if x is not e]
        negs = tuple(passages[x.code] for x in rng_for(seed, "neg1", e.code).sample(siblings, min(3, len(siblings))))
        if s == "train" or reach is None:
            qs = rng_for(seed, "def-q", e.code).sample(asked[c], min(2, len(asked[c])))
        else:  # every question the base LM answers (val / test targets are reachable ones)
            qs = answerable[c]
        for t, txt in qs:
            cot = cots.make(f"e1:{e.code}:{t}:{txt}" if reach is not None else f"e1:{e.code}:{t}",
                            lambda r, e=e: definition_cot(e.name, r), e.name, query=txt)
            if cot is not None:
                per_split[s].append(Made(txt, None, passages[e.code], "reason", cot, e.name, None, "definition",
                                         negs, e.family))
        plains = rng_for(seed, "plain1", e.code).sample(_PLAIN_NAMES, 1 if s == "train" or reach is None else 2)
        for t in plains:
            per_split[s].append(Made(t.format(n=e.name), None, passages[e.code], "direct", None, e.name, None,
                                     "plain", negs, e.family))
    positives = []
    for s in SPLITS:
        n = {"train": sizes.mixed_train, "val": sizes.val, "test": sizes.mixed_test}[s]
        pair.queries[s] = [_made_query(corpus, m, 1) for m in _mixed(per_split[s], n, rng)]
        positives += [q.positives[0] for q in pair.queries[s]]
    fill_pool(pair, positives, list(passages.values()), sizes.pool, rng)
    corpus.pairs.append(pair)


def _edit_query(task: int, ref: Variant, tgt: Variant, said_resolved: tuple[str, str], img, cots: CotMaker,
                salt: str, positive: str, negatives: tuple[str, ...], fam: str) -> Made | None:
    """A composed-edit query from ``ref`` to ``tgt`` (task 8: the reference image and the edit; task 2: both in
    text) with its CoT, or None when no CoT passes the teacher's filters."""
    said, resolved = said_resolved
    if task == 8:
        txt, qimg, kind = said, img(ref.member, ref.tone), "edit-image"
    else:
        txt, qimg, kind = f"{ref.name}, but {said}", None, "edit-text"
    cot = cots.make(salt, lambda r: edit_cot(ref, tgt, resolved, r, task == 8), tgt.name, source_caption=ref.name,
                    query=f"{qimg}|{txt}")
    if cot is None:
        return None
    return Made(txt, qimg, positive, "reason", cot, tgt.name, ref.name, kind, negatives, fam)


def _edits(corpus, edit_fams, img, sizes, seed, cots: CotMaker, tone_step: str = "plain",
           relative_drill: int = 0) -> None:
    """task8 (reference image + edit) and task2 (the edit in text) -> (image, name) of the target variant."""
    split_of = split_variants(edit_fams, seed)
    variants = {f: [Variant(m, t) for m in ms for t in [None, *[x for x, _ in m.tones]]]
                for f, ms in sorted(edit_fams.items())}
    cand = {v.key: corpus.cand("emoji", v.name, img(v.member, v.tone)) for vs in variants.values() for v in vs}

    def linked(a: Variant, b: Variant) -> bool:
        """An edit exists from a to b: another tone of the same member, or another gender (any tone)."""
        if a.key == b.key:
            return False
        return a.member is b.member or bool(a.member.gender and b.member.gender and a.member.gender != b.member.gender)

    built: dict[int, Pair] = {}
    for task in (8, 2):
        pair = Pair("emoji", task)
        rng = rng_for(seed, "emoji", task)
        positives: list[str] = []
        for s in SPLITS:
            made: list[Made] = []
            for fam, vs in variants.items():
                refs = [v for v in vs if split_of[v.key] == "train"]
                for tgt in (v for v in vs if split_of[v.key] == s):
                    options = [r for r in refs if linked(r, tgt)]
                    if not options:
                        continue
                    # Siblings seen by training only come from the training variants: a test-only variant is
                    # never a target, a reference or a negative in training.
                    sib_pool = [v for v in vs if v.key != tgt.key and (s != "train" or split_of[v.key] == "train")]
                    negs = tuple(cand[v.key] for v in rng.sample(sib_pool, min(3, len(sib_pool))))
                    for ref in rng.sample(options, min(2 if s == "train" else 1, len(options))):
                        m = _edit_query(task, ref, tgt, edit_text(ref, tgt, rng, tone_step), img, cots,
                                        f"e{task}:{ref.key}:{tgt.key}", cand[tgt.key], negs, fam)
                        if m is not None:
                            made.append(m)
                    plain_txt = _pick(rng, ("the {n} emoji", "{n}", "show me the {n} emoji")).format(n=tgt.name)
                    ref = rng.choice(options)
                    made.append(Made(plain_txt, img(ref.member, ref.tone) if task == 8 else None, cand[tgt.key],
                                     "direct", None, tgt.name, ref.name if task == 8 else None, "plain", negs, fam))
            n = {"train": sizes.mixed_train, "val": sizes.val, "test": sizes.mixed_test}[s]
            pair.queries[s] = [_made_query(corpus, m, task) for m in _mixed(made, n, rng)]
            positives += [q.positives[0] for q in pair.queries[s]]
        # The pool: every variant of the families the test queries use (hard negatives by construction), then
        # other variants up to the limit.
        test_fams = {q.items[0] for q in pair.queries["test"]}
        hard = [cand[v.key] for f in sorted(test_fams) for v in variants[f]]
        fill_pool(pair, positives + hard, list(cand.values()), sizes.edit_pool, rng)
        corpus.pairs.append(pair)
        built[task] = pair
    if relative_drill:
        for task in (8, 2):
            _relative_drill(corpus, built[task], variants, split_of, cand, img, relative_drill, seed, cots,
                            tone_step, linked)


def _relative_drill(corpus, pair: Pair, variants, split_of, cand, img, n: int, seed: int, cots: CotMaker,
                    tone_step: str, linked) -> None:
    """Up to ``n`` more training queries of ``pair``, each a relative skin-tone edit ("one shade darker"),
    alone or with a gender change, between two training variants whose target is in the pool.

    A relative edit is a lookup the CoT must take (reference tone and direction -> the adjacent tone); a
    default build gives it about 6 % of the edit pairs' training queries, which TRACE-mini did not learn from
    (assets/trace-mini/training/README.md). They are made after every other query of the corpus, from their
    own random stream, and the pool is left as it is: val, test, the pools and the other training queries stay
    those of the build without them (ids included)."""
    rng = rng_for(seed, "relative-drill", pair.task_id)
    in_pool = set(pair.pool)
    options = []
    for fam, vs in variants.items():
        train = [v for v in vs if split_of[v.key] == "train" and v.tone is not None]
        for tgt in train:
            if cand[tgt.key] not in in_pool:
                continue
            for ref in train:
                if linked(ref, tgt) and abs(TONES.index(tgt.tone) - TONES.index(ref.tone)) == 1:
                    options.append((fam, ref, tgt, vs))
    rng.shuffle(options)
    made = []
    for fam, ref, tgt, vs in options:
        if len(made) == n:
            break
        said = edit_text(ref, tgt, rng, tone_step, relative=True)
        m = _edit_query(pair.task_id, ref, tgt, said, img, cots, f"drill{pair.task_id}:{ref.key}:{tgt.key}",
                        cand[tgt.key], (), fam)
        if m is None:
            continue
        sibs = [v for v in vs if v.key != tgt.key and split_of[v.key] == "train" and cand[v.key] in in_pool]
        made.append(replace(m, negatives=tuple(cand[v.key] for v in rng.sample(sibs, min(3, len(sibs))))))
    if len(made) < n:
        logger.warning("%s: %d relative drill queries of %d asked (every training pair used)", pair.name, len(made), n)
    pair.queries["train"] = pair.queries["train"] + [_made_query(corpus, m, pair.task_id) for m in made]


# ---------------------------------------------------------------------------------------------- knowledge
KNOWLEDGE_SPLIT = (0.6, 0.1, 0.3)  # of the countries asked about, in SPLITS order
KNOWLEDGE_PER_COUNTRY = {"train": 6, "val": 4, "test": 5}  # questions at most, over its facts
KNOWLEDGE_TEST = 160  # complex test questions at most (the plain ones come on top, PLAIN_SHARE of the total)


def _knowledge(corpus, flags: list[src.Emoji], used: set[str], seed: int, cots: CotMaker, wordnet: WordNet,
               reach=None) -> None:
    """emoji_task1's country knowledge questions (`countries`): "The flag of the country whose capital is
    Windhoek." (reason) or "the namibia flag emoji" (direct) -> the flag's catalogue entry, with the entry of every
    country flag (`flags`) in the pool. Asked about: the flags no other pair uses (codes not in `used`), so a
    held-out country is never seen in training, split by country 60/10/30. Training asks up to
    KNOWLEDGE_PER_COUNTRY questions per country (one wording per fact first); val and test ask those the untrained base LM answers (`reach`), as the
    definition questions do. Made after every other query of the corpus, from their own random streams: the
    other pairs, and emoji_task1's other queries, ids and pool entries, stay those of the build without them."""
    pair = next(p for p in corpus.pairs if p.dataset == "emoji" and p.task_id == 1)
    entry = {e.code: corpus.cand("emoji", _passage(e), None) for e in flags}  # the plain flags' ids exist already
    by_country = {e.name.removesuffix(" flag"): e for e in flags if e.code not in used}
    facts = countries.country_facts(wordnet, by_country)
    asked = sorted(c for c in by_country if facts.get(c))
    order = list(asked)
    rng_for(seed, "knowledge", "split").shuffle(order)
    n_train, n_val = round(len(order) * KNOWLEDGE_SPLIT[0]), round(len(order) * KNOWLEDGE_SPLIT[1])
    split = {c: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, c in enumerate(order)}
    passages = {c: entry[e.code] for c, e in by_country.items()}
    questions: dict[str, list[tuple[countries.Fact, str, str]]] = {}
    for c in asked:
        rng = rng_for(seed, "knowledge-q", c)
        qs = [(f, t, q) for f in facts[c] for t, q in countries.questions(f)]
        rng.shuffle(qs)
        nth: dict[countries.Fact, int] = {}
        ranked = []
        for x in qs:
            ranked.append((nth.get(x[0], 0), x))
            nth[x[0]] = nth.get(x[0], 0) + 1
        questions[c] = [x for _, x in sorted(ranked, key=lambda r: r[0])]  # one wording per fact first
    if reach is not None:
        flat = [(c, x) for c in asked if split[c] != "train" for x in questions[c]]
        ok = reach([q for _, (_, _, q) in flat], [f.country for _, (f, _, _) in flat])
        kept = {(c, q) for (c, (_, _, q)), hit in zip(flat, ok, strict=True) if hit}
        for c in asked:
            if split[c] != "train":
                questions[c] = [x for x in questions[c] if (c, x[2]) in kept]
    per_split: dict[str, list[Made]] = {s: [] for s in SPLITS}
    for c in asked:
        e, s = by_country[c], split[c]
        others = [x for x in asked if split[x] == s and x != c]
        negs = tuple(passages[x] for x in rng_for(seed, "neg-k", c).sample(others, min(3, len(others))))
        made = []
        for f, t, q in questions[c][: KNOWLEDGE_PER_COUNTRY[s]]:
            cot = cots.make(f"k1:{e.code}:{f.subject}:{t}", lambda r, f=f, e=e: countries.knowledge_cot(f, e.name, r),
                            e.name, query=q)
            if cot is not None:
                made.append(Made(q, None, passages[c], "reason", cot, e.name, None, "knowledge", negs, e.family))
        if not made:
            continue
        per_split[s] += made
        for t in rng_for(seed, "plain-k", c).sample(_PLAIN_NAMES, 1 if s == "train" else 2):
            per_split[s].append(Made(t.format(n=e.name), None, passages[c], "direct", None, e.name, None, "plain",
                                     negs, e.family))
    for s in SPLITS:
        rng = rng_for(seed, "knowledge-mix", s)
        complex_ = [m for m in per_split[s] if m.route == "reason"]
        plain = [m for m in per_split[s] if m.route == "direct"]
        rng.shuffle(complex_)
        rng.shuffle(plain)
        if s == "test":
            complex_ = complex_[:KNOWLEDGE_TEST]
        n_plain = min(len(plain), round(len(complex_) * PLAIN_SHARE / (1 - PLAIN_SHARE)))
        made = complex_ + plain[:n_plain]
        rng.shuffle(made)
        pair.queries[s] = pair.queries[s] + [_made_query(corpus, m, 1) for m in made]
    pair.pool = sorted(set(pair.pool) | set(entry.values()), key=lambda d: int(d.split(":")[1]))
    logger.info("emoji_task1 knowledge: %d countries (%s), queries %s", len(asked),
                {s: sum(split[c] == s for c in asked) for s in SPLITS}, {s: len(v) for s, v in per_split.items()})
