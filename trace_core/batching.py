"""How the trainer composes a batch: which pair each step draws (`GroupSampler`, weighed by pair group), and
which candidate columns are no negative for a row (`not_negatives`).

Each pair is "complex" (some query has a CoT), "image" (images on either side) or "text"; a step draws a group
by weight, then one pair of it, then a batch from that pair, so in-batch negatives are of the right modality
and hard enough.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

import torch

from .examples import Example
from .records import Candidate

log = logging.getLogger(__name__)


def not_negatives(batch: Sequence[Example], columns: Sequence[Candidate]) -> torch.Tensor:
    """Mask [B, C] of the columns that are no negative for a row: a positive of the row's query (another of its
    positives, the same candidate, a hard negative of another row that is a positive of this one). Row i's own
    column i stays."""
    mask = torch.tensor([[col.did in r.all_positives for col in columns] for r in batch], dtype=torch.bool)
    mask[torch.arange(len(batch)), torch.arange(len(batch))] = False
    return mask


GROUPS = ("complex", "image", "text")


def parse_group_weights(spec: str) -> dict[str, float]:
    """Parse "complex=0.40,image=0.45,text=0.15,emoji_task8=2" into {"complex": 0.4, ...}. A group's weight is
    its share of the steps (a group left out weighs 0); any other name is a pair, and its weight is relative to
    the other pairs of its group (1 when not given). `GroupSampler` checks that the pairs exist."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"group_weights: {part.strip()!r} is not <group or pair>=<weight> (groups: {GROUPS})")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"group_weights: {value.strip()!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"group_weights: the weight of {name} must be a finite number >= 0, not {weight}")
        weights[name] = weight
    return weights


def pair_group(examples: Sequence[Example]) -> str:
    """The pair's group: "complex" if some query has a CoT, else "image" if images occur on either side, else
    "text"."""
    if any(ex.cot is not None for ex in examples):
        return "complex"
    if any(x.image is not None for ex in examples for x in (ex.query, ex.positive, *ex.negatives)):
        return "image"
    return "text"


class GroupSampler:
    """Chooses the pair of each batch: a group by weight, then one of its pairs by its relative weight
    (uniformly unless the spec names pairs).

    Holds no state of its own: given the state of the RNG it draws with, the choice is fixed, so a resumed run
    (which restores the RNG) draws the pairs the uninterrupted run would have.
    """

    def __init__(self, examples: dict[str, list[Example]], spec: str):
        self.pairs: dict[str, list[str]] = {}  # group -> its pairs, sorted
        for pair in sorted(examples):
            self.pairs.setdefault(pair_group(examples[pair]), []).append(pair)
        weights = parse_group_weights(spec)
        unknown = [n for n in weights if n not in GROUPS and n not in examples]
        if unknown:
            raise ValueError(f"group_weights: {unknown} are neither groups {GROUPS} nor pairs {sorted(examples)}")
        self.groups = [g for g in GROUPS if g in self.pairs]  # groups without a pair are dropped
        total = sum(weights.get(g, 0.0) for g in self.groups)
        if total <= 0:
            raise ValueError(f"group_weights {spec!r} gives no weight to any group with data: {self.pairs}")
        self.weights = [weights.get(g, 0.0) / total for g in self.groups]  # renormalised over those present
        self.pair_weights = {g: [weights.get(p, 1.0) for p in self.pairs[g]] for g in self.groups}
        for g in self.groups:
            if weights.get(g, 0.0) > 0 and sum(self.pair_weights[g]) <= 0:
                raise ValueError(f"group_weights {spec!r} gives the group {g} weight but none of its pairs")
        idle = [p for g in self.groups for p, w in zip(self.pairs[g], self.pair_weights[g], strict=True)
                if weights.get(g, 0.0) == 0 or w == 0]
        if idle:
            log.warning("group_weights %r never draws the pairs %s", spec, idle)

    def draw(self, rng: random.Random) -> tuple[str, str]:
        """(group, pair) for one batch."""
        group = rng.choices(self.groups, weights=self.weights)[0]
        pairs, weights = self.pairs[group], self.pair_weights[group]
        if len(set(weights)) == 1:
            return group, rng.choice(pairs)  # uniform: the draw of runs made before pair weights existed
        return group, rng.choices(pairs, weights=weights)[0]
