"""scripts/complex_breakdown.py: the complex-query comparison of auto and never that training notes quote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd

_SPEC = importlib.util.spec_from_file_location("complex_breakdown",
                                               Path(__file__).resolve().parents[1] / "scripts" / "complex_breakdown.py")
cb = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(cb)


def test_diff_ci_brackets_the_difference() -> None:
    same = np.array([1, 0, 1, 1])
    assert cb.diff_ci(same, same) == (0.0, 0.0, 0.0)
    d, lo, hi = cb.diff_ci(np.ones(50, bool), np.zeros(50, bool))
    assert d == lo == hi == 100.0
    mixed = np.array([1] * 30 + [0] * 70)
    d, lo, hi = cb.diff_ci(mixed, np.zeros(100, int))
    assert d == 30.0 and lo < 30.0 < hi


def test_breakdown_splits_relative_edits_and_wrong_cots(tmp_path: Path, capsys) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    (data / "query" / "test").mkdir(parents=True)
    run.mkdir()
    queries = [  # (qid, text, label, target, route, cot, auto rank, never rank, always rank)
        ("1", "man: light skin tone, but one shade darker", "reason", "man: medium-light skin tone", "reason",
         "Edit: medium-light skin tone. Target: man: medium-light skin tone.", 1, 3, 1),
        ("2", "woman: dark skin tone, but a shade lighter skin", "reason", "woman: medium-dark skin tone", "reason",
         "Edit: medium skin tone. Target: woman: medium skin tone.", 12, 2, 12),
        ("3", "Which emoji shows a fruit?", "reason", "apple", "reason", "This describes an apple.", 1, 1, 1),
        ("4", "the pear emoji", "direct", "pear", "direct", None, 1, 1, 2),
    ]
    lines = [json.dumps({"qid": q[0], "route": q[2], "target_name": q[3]}) for q in queries]
    (data / "query" / "test" / "mbeir_emoji_task2_test.jsonl").write_text("\n".join(lines) + "\n")
    pd.DataFrame({"qid": [q[0] for q in queries], "pair": "emoji_task2", "query_txt": [q[1] for q in queries],
                  "route": [q[4] for q in queries], "cot": [q[5] for q in queries],
                  "gold_rank": [q[6] for q in queries], "gold_rank_direct": [q[7] for q in queries],
                  "gold_rank_always": [q[8] for q in queries]}).to_parquet(run / "queries.parquet")
    cb.main(data, run)
    out = {line.split(" n=")[0].strip(): line for line in capsys.readouterr().out.splitlines() if " n=" in line}
    assert "n=   3" in out["all complex"] and "n=   2" in out["relative tone edits"]
    assert "n=   2" in out["CoT names the target"] and "n=   1" in out["CoT does not"]
    assert "R@1 100.0/ 50.0 (+50.0" in out["CoT names the target"]  # queries 1 and 3: never ranks 3 and 1
    assert "R@5  50.0/100.0 (-50.0" in out["relative tone edits"]  # query 2: auto rank 12, never rank 2


def test_knowledge_questions_by_fact_and_country() -> None:
    """A country question's fact is read from its wording (every template of each kind), and the country from
    the teacher's step, whatever the kind."""
    from trace_core.minibeir import countries

    for kind, templates in countries.QUESTIONS.items():
        for t in templates:
            assert cb.fact_kind(t.format(s="Port Louis", a="a")) == kind, t
    assert cb.fact_kind("Which emoji shows a large bell?") is None
    assert cb.country_of("Quito is the capital of Ecuador. Target: the ecuador flag emoji.") == "Ecuador"
    assert cb.country_of("A Nepalese is from Nepal. Target: the nepal flag emoji.") == "Nepal"
    assert cb.country_of("Male is the capital of the Maldives. Target: the maldives flag emoji.") == "Maldives"
    assert cb.country_of("Gansu is in China. Target: the china flag emoji.") == "China"
