"""The TRACE-mini evidence report: every run, the routing agreement, the shipped analysis files, --reuse."""

from __future__ import annotations

import json

import pytest

import trace_core.minibeir.report as report
from tests.mbeir_fixture import build_fixture
from tests.tiny_mini import build_tiny_mini


def test_report_writes_every_run_and_reuses_finished_ones(tmp_path, monkeypatch):
    fx = build_fixture(tmp_path / "data")
    model = build_tiny_mini(tmp_path / "mini")
    argv = ["--model", str(model), "--data", str(fx["root"]), "--ablation", str(model), "--out", str(tmp_path / "out"),
            "--work", str(tmp_path / "work"), "--cache-dir", str(tmp_path / "cache")]
    assert report.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["runs"]) == {"TRACE-mini auto", "never reason", "always reason", "λ_gen = 0 ablation (auto)",
                                    "λ_gen = 0 ablation (never)"}
    assert results["routing_vs_labels"]["never reason"]["reason_rate_when_direct"] == 0
    assert results["routing_vs_labels"]["always reason"]["reason_rate_when_direct"] == 1
    for run in results["runs"].values():
        assert set(run["pairs"]) == set(fx["pairs"]) and 0 <= run["average"]["headline"] <= 1
    out = tmp_path / "out"
    assert (out / "queries.parquet").is_file() and "| **average** |" in (out / "RESULTS.md").read_text()
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == sorted(f"{p}.npz" for p in fx["pairs"])

    monkeypatch.setattr(report, "evaluate", lambda *a, **k: pytest.fail("a finished run was evaluated again"))
    (out / "results.json").unlink()
    assert report.main([*argv, "--reuse"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["runs"] == results["runs"] and again["routing_vs_labels"] == results["routing_vs_labels"]
