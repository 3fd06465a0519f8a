"""Analysis functions: hand-checked tables, and the bias sweep replay against real re-evaluation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.difficulty import bias_sweep, by_band, difficulty_band, outcome_of, outcome_table
from analysis.figures import cost_benefit, reasoning_vs_difficulty
from tests.mbeir_fixture import build_fixture
from trace_core.evaluate import main as evaluate_main


def _table() -> pd.DataFrame:
    # q0: easy, direct, reasoning would not change; q1: hard, reasoned and helped (rank 30 -> 2);
    # q2: medium, reasoned and hurt (3 -> 9); q3: hard, skipped, reasoning would have helped (50 -> 4);
    # q4: easy, skipped, reasoning would hurt (1 -> 7)
    return pd.DataFrame({
        "pair": ["a", "a", "b", "b", "b"],
        "route": ["direct", "reason", "reason", "direct", "direct"],
        "emb_margin": [2.0, -1.0, -0.5, 0.5, 3.0],
        "gold_rank_direct": [1.0, 30.0, 3.0, 50.0, 1.0],
        "gold_rank_always": [1.0, 2.0, 9.0, 4.0, 7.0],
        "gold_rank": [1.0, 2.0, 9.0, 50.0, 1.0],
        "cot_tokens": [0, 20, 10, 0, 0],
        "cot_tokens_always": [5, 20, 10, 30, 15],
        "latency_s": [0.1, 1.0, 0.6, 0.1, 0.1],
    })


def test_bands_and_outcomes_by_hand():
    t = _table()
    assert list(difficulty_band(t["gold_rank_direct"])) == ["rank 1", "rank 21-100", "rank 2-5", "rank 21-100",
                                                            "rank 1"]
    cells = outcome_table(t, k=5).set_index(["route", "outcome"])["queries"]
    assert cells[("reasoned", "reasoning helped")] == 1 and cells[("reasoned", "reasoning hurt")] == 1
    assert cells[("skipped", "reasoning would have helped")] == 1
    assert cells[("skipped", "skipping was right (would hurt)")] == 1 and cells[("skipped", "no change")] == 1
    assert list(outcome_of(t, 5)) == ["skipped: no change", "reasoned: helped", "reasoned: hurt",
                                      "skipped: helped", "skipped: hurt"]
    bands = by_band(t, k=5).set_index("difficulty")
    assert bands.loc["rank 21-100", "queries"] == 2 and bands.loc["rank 21-100", "reason rate"] == 0.5
    assert bands.loc["rank 21-100", "R@5 always reason"] == 1.0 and bands.loc["rank 1", "R@5 direct"] == 1.0


def test_bias_sweep_by_hand():
    sweep = bias_sweep(_table(), biases=np.array([-10.0, 0.0, 10.0]), k=5).set_index("bias")
    # bias 0 replays the run: hits q0, q1, q4 -> 3/5; tokens 20 + 10
    assert sweep.loc[0.0, "R@5"] == pytest.approx(3 / 5) and sweep.loc[0.0, "mean generated tokens"] == 6.0
    assert sweep.loc[-10.0, "reason rate"] == 1.0 and sweep.loc[-10.0, "R@5"] == pytest.approx(3 / 5)
    assert sweep.loc[10.0, "reason rate"] == 0.0 and sweep.loc[10.0, "R@5"] == pytest.approx(3 / 5)
    assert sweep.loc[10.0, "mean generated tokens"] == 0.0
    assert len(cost_benefit(bias_sweep(_table())).data) == 2
    assert len(reasoning_vs_difficulty(by_band(_table())).data) == 4


def test_sweep_replay_equals_real_reevaluation(tiny_qwen_dir, tmp_path):
    fx = build_fixture(tmp_path / "mbeir")
    base = ["--mbeir-dir", str(fx["root"]), "--model", str(tiny_qwen_dir), "--cache-dir", str(tmp_path / "c")]
    assert evaluate_main([*base, "--out", str(tmp_path / "cf"), "--counterfactual"]) == 0
    table = pd.read_parquet(tmp_path / "cf" / "queries.parquet")
    margins = np.sort(table["emb_margin"].to_numpy())
    bias = -float(np.median(margins)) + 1e-3  # about half the queries switch route
    replay = bias_sweep(table, biases=np.array([bias]), k=5).iloc[0]
    assert evaluate_main([*base, "--out", str(tmp_path / "b"), "--routing-bias", str(bias)]) == 0
    real = json.loads((tmp_path / "b" / "results.json").read_text())
    real_table = pd.read_parquet(tmp_path / "b" / "queries.parquet")
    assert replay["reason rate"] == pytest.approx((real_table["route"] == "reason").mean())
    assert 0 < replay["reason rate"] < 1
    assert replay["R@5"] == pytest.approx((real_table["gold_rank"] <= 5).mean())
    assert replay["mean generated tokens"] == pytest.approx(real_table["cot_tokens"].mean())
    assert real["average"]["n_queries"] == len(table)
