"""Hit-based recall as UniIR computes it, gold ranks and the M-BEIR headline metric per pair."""

from __future__ import annotations

import pytest

from trace_core.metrics import (
    HEADLINE,
    HEADLINE_K,
    headline_metric,
    hit_at_k,
    mean_of_pairs,
    recall_at_k,
)

# Four queries; several have more than one positive.
RANKED = [
    ["a", "b", "c", "d", "e", "f"],  # q0 positives {c, f}: best positive at rank 3
    ["g", "h", "i", "j", "k", "l"],  # q1 positives {x, y}: none retrieved
    ["m", "n", "o", "p", "q", "r"],  # q2 positives {m}: rank 1
    ["s", "t", "u", "v", "w", "z"],  # q3 positives {z, w}: best positive (w) at rank 5
]
POSITIVES = [{"c", "f"}, {"x", "y"}, {"m"}, {"z", "w"}]


def test_recall_hand_computed() -> None:
    # Hits per query at k=1: q0 0, q1 0, q2 1, q3 0 -> 1/4 = 0.25
    assert recall_at_k(RANKED, POSITIVES, 1) == pytest.approx(0.25)
    # k=3: q0 1 (c at 3), q1 0, q2 1, q3 0 -> 2/4 = 0.5
    assert recall_at_k(RANKED, POSITIVES, 3) == pytest.approx(0.5)
    # k=5: q0 1, q1 0, q2 1, q3 1 (w at 5) -> 3/4 = 0.75. Hit-based: q0 and q3 count once, not per positive.
    assert recall_at_k(RANKED, POSITIVES, 5) == pytest.approx(0.75)
    # k=10 (longer than the lists): same as k=6 -> 3/4, q1 never hits.
    assert recall_at_k(RANKED, POSITIVES, 10) == pytest.approx(0.75)


def test_hit_at_k() -> None:
    assert hit_at_k(RANKED[0], POSITIVES[0], 2) == 0.0
    assert hit_at_k(RANKED[0], POSITIVES[0], 3) == 1.0
    assert hit_at_k(RANKED[0], ["f", "c"], 3) == 1.0  # any collection of positives
    assert hit_at_k(RANKED[0], set(), 6) == 0.0  # no positives: a miss, as in UniIR
    assert hit_at_k([], {"a"}, 5) == 0.0
    for bad_k in (0, -1):
        with pytest.raises(ValueError):
            hit_at_k(RANKED[0], POSITIVES[0], bad_k)


def test_recall_rejects_empty_and_mismatched() -> None:
    with pytest.raises(ValueError):
        recall_at_k([], [], 5)
    with pytest.raises(ValueError):
        recall_at_k(RANKED, POSITIVES[:3], 5)


def test_headline_metric() -> None:
    assert headline_metric("fashioniq_task7") == "recall@10"
    assert headline_metric("fashion200k_task0") == "recall@10"
    assert headline_metric("fashion200k_task3") == "recall@10"
    assert headline_metric("cirr_task7") == "recall@5"
    assert headline_metric("mscoco_task0") == "recall@5"
    assert HEADLINE_K["fashioniq"] == HEADLINE_K["fashion200k"] == 10 and HEADLINE_K["cirr"] == 5


def test_mean_of_pairs() -> None:
    per_pair = {
        "cirr_task7": {"recall@5": 0.5, "recall@10": 0.7},
        "fashioniq_task7": {"recall@5": 0.2, "recall@10": 0.4},
    }
    assert mean_of_pairs(per_pair, "recall@5") == pytest.approx(0.35)  # (0.5 + 0.2) / 2
    assert mean_of_pairs(per_pair, HEADLINE) == pytest.approx(0.45)  # (0.5 + 0.4) / 2
    with pytest.raises(KeyError, match="recall@1"):
        mean_of_pairs(per_pair, "recall@1")
    with pytest.raises(ValueError):
        mean_of_pairs({}, "recall@5")
