"""The v2 evidence report: CoT correctness, the bootstrap, oracle CoTs, the checklist, and the CLI end to end.

Pure functions (trace_core.minibeir.evidence) are checked on hand-built tables; `TraceEncoder.encode_with_cot`
against the encoder's own reasoning on the tiny Qwen2-VL; the report CLI on the M-BEIR fixture with v2 query
keys (per-query labels, teacher CoTs, target and reference names) and the tiny TRACE-mini.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import trace_core
import trace_core.minibeir.report as report
from tests.mbeir_fixture import build_fixture
from tests.test_encoder import _full_forward
from tests.tiny_mini import build_tiny_mini
from trace_core import EncoderConfig, Query
from trace_core.minibeir import evidence as E

INSTR_CIR = "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."


# ------------------------------------------------------------------------------------ CoT correctness
def test_cot_names_the_target_and_the_reference():
    target = "woman technologist: dark skin tone"
    # found: case, runs of whitespace and punctuation at the ends of the name do not matter
    assert E.cot_names("The result is the  Woman Technologist:\n dark skin tone emoji.", target)
    assert E.cot_names("... so: woman technologist: dark skin tone", " Woman technologist: dark skin tone. ")
    # not found: another skin tone, or only a part of the name
    assert not E.cot_names("The result is the woman technologist: medium skin tone emoji.", target)
    assert not E.cot_names("A technologist.", target)
    # whole words: "man technologist" is not named by a CoT about the woman technologist
    assert not E.cot_names("the woman technologist", "man technologist")
    assert E.cot_names("the man technologist", "man technologist")
    # a composed edit must also name its reference
    ref = "woman technologist"
    both = "Start from the woman technologist and darken the skin: woman technologist: dark skin tone."
    assert E.cot_names(both, target, ref)
    assert not E.cot_names("Darker skin: the dark skin tone version.", "dark skin tone version", ref)
    assert E.cot_names("Darker skin: the dark skin tone version.", "dark skin tone version", None)
    # no target name (an old corpus): not judged
    assert E.cot_names("anything", None) is None and E.cot_names("anything", "  ") is None


def test_query_keys_of_old_and_new_corpora():
    old = E.query_keys({"qid": "1:1", "query_txt": "x"})
    assert old == {"label": "direct", "teacher_cot": None, "target_name": None, "ref_name": None, "kind": None}
    new = E.query_keys({"route": "reason", "cot": "It is X.", "target_name": "x", "ref_name": None,
                        "kind": "edit-image"})
    assert new == {"label": "reason", "teacher_cot": "It is X.", "target_name": "x", "ref_name": None,
                   "kind": "edit-image"}


def _ev() -> pd.DataFrame:
    """A hand-built evidence table: pair a mixes labels, pair b is all complex."""
    rows = [
        # pair, label, route, cot, stop, tokens, target, ref, auto, never, always
        ("a", "direct", "direct", "", "direct", 0, None, None, 1, 1, 2),
        ("a", "direct", "direct", "", "direct", 0, None, None, 7, 7, 9),
        ("a", "direct", "reason", "hm", "emb", 3, None, None, 3, 2, 3),
        ("a", "reason", "reason", "It is the red apple.", "emb", 5, "red apple", None, 1, 8, 1),
        ("a", "reason", "direct", "", "direct", 0, "green apple", None, 9, 9, 4),
        ("b", "reason", "reason", "From the cat: the black cat.", "emb", 7, "black cat", "cat", 2, 6, 2),
        ("b", "reason", "reason", "The black cat.", "max_tokens", 8, "black cat", "white cat", 4, 4, 4),
        ("b", "reason", "reason", "A dog.", "emb", 2, "black dog", None, np.nan, 12, 11),
    ]
    cols = ["pair", "label", "route", "cot", "stop_reason", "cot_tokens", "target_name", "ref_name",
            "rank_auto", "rank_never", "rank_always"]
    ev = pd.DataFrame(rows, columns=cols)
    ev["qid"] = [f"q{i}" for i in range(len(ev))]
    return ev


def test_recalls_reason_rates_and_cot_stats_on_a_hand_built_table():
    ev = _ev()
    by_label = E.recalls_by_label(ev, {m: c for m, c in E.MODES.items() if c in ev})
    assert by_label["a"]["direct"]["n"] == 3
    assert by_label["a"]["direct"]["auto"] == {"recall@1": pytest.approx(1 / 3), "recall@5": pytest.approx(2 / 3),
                                               "recall@10": 1.0}
    assert by_label["b"]["reason"]["auto"]["recall@5"] == pytest.approx(2 / 3)  # the NaN rank is a miss
    assert by_label[E.POOLED]["reason"]["never"]["recall@5"] == pytest.approx(1 / 5)
    assert "baseline" not in by_label["a"]["direct"]

    rates = E.reason_rates(ev)
    assert rates["mixed_pairs"] == ["a"]
    assert rates["pairs"]["a"]["reason_rate_direct"] == pytest.approx(1 / 3)
    assert rates["pairs"]["b"]["reason_rate_direct"] is None and rates["pairs"]["b"]["reason_rate_reason"] == 1
    assert rates["pooled_mixed"]["reason_rate_reason"] == pytest.approx(1 / 2)
    assert rates["pooled_all"]["reason_rate_reason"] == pytest.approx(4 / 5)

    stats = E.cot_stats(ev)
    pooled = stats[E.POOLED]
    assert pooled["n_complex_reasoned"] == 4 and pooled["n_judged"] == 4
    assert pooled["names_target"] == pytest.approx(3 / 4)  # "A dog." misses "black dog"
    assert pooled["n_with_reference"] == 2 and pooled["names_reference"] == pytest.approx(1 / 2)
    assert pooled["correct"] == pytest.approx(2 / 4)  # the second cat CoT lacks its reference "white cat"
    assert pooled["capped"] == pytest.approx(1 / 4) and pooled["mean_cot_tokens"] == pytest.approx(22 / 4)
    assert pooled["n_all_cots"] == 5 and pooled["capped_all_cots"] == pytest.approx(1 / 5)
    assert stats["a"]["names_target"] == 1.0 and stats["a"]["names_reference"] is None


# ------------------------------------------------------------------------------------ bootstrap
def test_paired_bootstrap_interval_on_a_known_difference():
    n = 400
    rng = np.random.default_rng(1)
    never = (rng.random(n) < 0.3).astype(float)
    auto = never.copy()
    flip = rng.choice(np.flatnonzero(never == 0), size=60, replace=False)  # +60 hits: +15 points exactly
    auto[flip] = 1.0
    res = E.paired_bootstrap(auto, never, n_resamples=2000, seed=7)
    assert res["diff"] == pytest.approx(0.15)
    assert res["lo"] < 0.15 < res["hi"] and res["lo"] > 0
    assert res == E.paired_bootstrap(auto, never, n_resamples=2000, seed=7)  # seeded: deterministic
    # paired resampling: the interval is about +-2 * sqrt(p(1-p)/n) of the per-query differences
    assert res["hi"] - res["lo"] < 0.08

    # no effect: equal hits except a few both ways, the interval holds 0
    same = never.copy()
    same[np.flatnonzero(never == 0)[:5]] = 1
    same[np.flatnonzero(never == 1)[:5]] = 0
    flat = E.paired_bootstrap(same, never, n_resamples=2000, seed=7)
    assert flat["diff"] == 0 and flat["lo"] < 0 < flat["hi"]


def test_auto_minus_never_per_pair_and_pooled_within_pairs():
    rows = []
    for pair, n, gain in (("p", 100, 20), ("q", 50, 0)):
        for i in range(n):
            never = 3 if i < n // 2 else 20
            auto = 3 if i < n // 2 + gain else 20
            rows.append({"pair": pair, "qid": f"{pair}{i}", "label": "reason", "rank_auto": auto,
                         "rank_never": never})
    rows.append({"pair": "p", "qid": "simple", "label": "direct", "rank_auto": 50, "rank_never": 1})
    res = E.auto_minus_never(pd.DataFrame(rows), k=5, n_resamples=500, seed=0)
    assert res["p"]["diff"] == pytest.approx(0.2) and res["p"]["n"] == 100  # the simple query is left out
    assert res["p"]["auto_recall@5"] == pytest.approx(0.7) and res["p"]["never_recall@5"] == pytest.approx(0.5)
    assert res["q"]["diff"] == 0 and res["q"]["lo"] == 0 == res["q"]["hi"]
    assert res[E.POOLED]["diff"] == pytest.approx(20 / 150) and res[E.POOLED]["lo"] > 0


# ------------------------------------------------------------------------------------ oracle CoTs
def test_derangement_and_oracle_cots():
    names = ["a", "b", "b", "c", "d", "d", "e"]
    for seed in range(5):
        p = E.derange(names, seed)
        assert sorted(p) == list(range(len(names)))
        assert all(p[i] != i and names[p[i]] != names[i] for i in range(len(names)))
    assert list(E.derange(names, 3)) == list(E.derange(names, 3))
    rows = pd.DataFrame({"target_name": ["red apple", "black cat", None],
                         "teacher_cot": ["It is the red apple.", None, "A thing."]})
    cots = E.oracle_cots(rows, "The target is the {name} image.", seed=0)
    assert list(cots) == list(E.ORACLE_ROWS)
    assert cots["teacher CoT"] == ["It is the red apple.", None, "A thing."]
    assert cots["name only"] == ["The target is the red apple image.", "The target is the black cat image.", None]
    assert cots["wrong name"][0] != cots["name only"][0] and cots["wrong name"][2] is None
    assert cots["blank CoT"] == ["", "", ""]
    others = cots["another query's CoT"]
    assert all(o is None or o != t for o, t in zip(others, cots["teacher CoT"], strict=True))


def test_frozen_gold_ranks():
    q = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    c = np.array([[1.0, 0.1], [0.0, 1.0], [5.0, 5.0]])
    ranks = E.frozen_gold_ranks(q, c, ["x", "y", "z"], [{"y"}, {"y", "x"}, {"nope"}])
    assert ranks[0] == 3 and ranks[1] == 1 and np.isnan(ranks[2])


# ------------------------------------------------------------------------------------ checklist
def test_checklist_marks_pass_and_fail():
    good = dict(reason_rate_complex=0.8, reason_rate_simple=0.1, gain_r5=0.05, gain_lo=0.01, headline_auto=0.5,
                headline_never=0.45, headline_baseline=0.4, cot_correct=0.75, cap_share=0.02,
                image_pairs={"x_task4": (0.4, 0.35), "y_task0": (0.2, 0.2)})
    rows = E.checklist(**good)
    assert len(rows) == 8 and all(r["passed"] is True for r in rows)
    assert [E.mark(r["passed"]) for r in rows] == ["pass"] * 8

    bad = dict(good, reason_rate_complex=0.59, reason_rate_simple=0.25, gain_r5=0.05, gain_lo=-0.01,
               headline_never=0.5, headline_baseline=0.6, cot_correct=0.69, cap_share=0.06,
               image_pairs={"x_task4": (0.3, 0.35), "y_task0": (0.2, 0.1)})
    rows = E.checklist(**bad)
    assert [r["passed"] for r in rows] == [False] * 8
    assert "x_task4" in rows[-1]["shown"] and "y_task0" not in rows[-1]["shown"]
    # a big gain whose interval includes 0 fails; a significant gain under 3 points fails too
    assert E.checklist(**dict(good, gain_r5=0.02, gain_lo=0.005))[2]["passed"] is False
    # what was not measured is n/a, not a pass
    rows = E.checklist(**dict(good, headline_baseline=None, cot_correct=None, image_pairs={"x": (0.3, None)}))
    assert [r["passed"] for r in rows][4:] == [None, None, True, None]
    assert E.mark(None) == "n/a"


# ------------------------------------------------------------------------------------ encode_with_cot
def _queries() -> list[Query]:
    img = Image.new("RGB", (70, 90), (10, 200, 30))
    return [
        Query(text="a dog sleeping on a red sofa", instruction="Find me an everyday image that matches the "
              "given caption.", qid="q0"),
        Query(text="make the car blue", image=img, instruction=INSTR_CIR, qid="q1"),
        Query(image=Image.new("RGB", (112, 56), (200, 10, 10)), instruction="Find a caption.", qid="q2"),
        Query(text="remove the people in the background", image=img, instruction=INSTR_CIR, qid="q3"),
    ]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_encode_with_cot_reproduces_the_reasoned_embedding(tiny_qwen_dir):
    enc = trace_core.load_model(tiny_qwen_dir, config=EncoderConfig(max_cot_tokens=6))
    queries = _queries()
    reasoned = enc.encode_queries(queries, reasoning="always")
    never = enc.encode_queries(queries, reasoning="never")
    assert all(r.cot_tokens > 0 for r in reasoned)

    # the generated token ids: exact, whatever the tokenisation of their text
    by_ids = enc.encode_with_cot(queries, [r.cot_token_ids for r in reasoned], batch_size=3)
    for r, g in zip(reasoned, by_ids, strict=True):
        assert _cos(r.embedding, g.embedding) > 0.999
        assert g.route == "reason" and g.cot_token_ids == r.cot_token_ids and g.qid == r.qid
        assert g.p_emb == pytest.approx(r.p_emb, rel=1e-3)

    # the generated text, in one forward pass. The random model writes random bytes, whose text does not
    # tokenise back to them; let it write only whole words (other output rows zeroed), as a trained model does.
    bb, tok = enc.backbone, enc.backbone.tokenizer
    words = [i for t, i in tok.get_vocab().items() if re.fullmatch("\u0120[a-z]{3,}", t)]
    with torch.no_grad():
        keep = torch.zeros(bb.model.lm_head.weight.shape[0], 1)
        keep[words] = 1
        bb.model.lm_head.weight.mul_(keep)
    reasoned = enc.encode_queries(queries, reasoning="always")
    by_text = enc.encode_with_cot(queries, [r.cot for r in reasoned])
    for r, g in zip(reasoned, by_text, strict=True):
        assert r.cot_tokens > 1 and set(r.cot_token_ids) <= set(words), "precondition: whole words only"
        assert tok(r.cot, add_special_tokens=False)["input_ids"] == list(r.cot_token_ids)
        assert g.route == "reason" and g.cot == r.cot and np.isnan(g.p_emb)
        assert g.cot_token_ids == r.cot_token_ids
        assert _cos(r.embedding, g.embedding) > 0.999

    # a blank CoT is the never embedding (the end of the prompt: no output row is involved)
    blank = enc.encode_with_cot(queries, ["" for _ in queries])
    for n, b in zip(never, blank, strict=True):
        assert _cos(n.embedding, b.embedding) > 0.9999 and b.route == "direct" and b.cot_tokens == 0
    # a different CoT gives a different embedding
    other = enc.encode_with_cot(queries[:1], ["the car is blue"])[0]
    assert _cos(other.embedding, reasoned[0].embedding) < 0.999
    with pytest.raises(trace_core.InputError):
        enc.encode_with_cot(queries, ["x"])



def test_encode_with_cot_pools_the_emb_token_itself_for_ume_r1(tiny_qwen_dir):
    """emb_token pooling: <gen_emb> follows the given CoT and its own hidden state is the embedding."""
    enc = trace_core.load_model(tiny_qwen_dir, style="ume-r1", config=EncoderConfig(max_cot_tokens=4))
    queries = _queries()[:3]
    never = enc.encode_queries(queries, reasoning="never")
    for r, g in zip(never, enc.encode_with_cot(queries, ["", "", ""]), strict=True):
        assert _cos(r.embedding, g.embedding) > 0.999
    emb = enc.backbone.emb_token_id
    ids = [(5, 17, 40), (40,), (33, 34, 35, 36)]
    for q, g in zip(queries, enc.encode_with_cot(queries, ids), strict=True):
        hidden, _ = _full_forward(enc, q, (*g.cot_token_ids, emb))
        assert _cos(g.embedding, hidden.numpy()) > 0.999
    text = " make the car blue"  # as text, in one forward pass, and as the ids the tokenizer gives it
    as_text = enc.encode_with_cot(queries[:1], [text])[0]
    as_ids = enc.encode_with_cot(queries[:1], [enc.backbone.tokenizer(text)["input_ids"]])[0]
    assert as_text.cot_token_ids == as_ids.cot_token_ids and _cos(as_text.embedding, as_ids.embedding) > 0.999

# ------------------------------------------------------------------------------------ the CLI end to end
def _add_v2_keys(fx: dict) -> None:
    """Give the fixture's test queries the v2 keys: a mix of labels in every pair, names and teacher CoTs."""
    for pair, path in fx["query_files"].items():
        lines = []
        for i, line in enumerate(path.read_text().splitlines()):
            obj = json.loads(line)
            complex_ = i % 2 == 1
            name = f"{pair} item {i}"
            obj.update(route="reason" if complex_ else "direct",
                       cot=f"The target is the {name}." if complex_ else None,
                       target_name=name, ref_name=f"{pair} item ref" if pair == "cirr_task7" else None,
                       kind="edit-image" if pair == "cirr_task7" else "caption")
            lines.append(json.dumps(obj))
        path.write_text("\n".join(lines) + "\n")


def test_report_v2_end_to_end_and_reuse(tmp_path, monkeypatch):
    fx = build_fixture(tmp_path / "data")
    _add_v2_keys(fx)
    model = build_tiny_mini(tmp_path / "mini")
    out = tmp_path / "out"
    argv = ["--model", str(model), "--data", str(fx["root"]), "--out", str(out), "--work", str(tmp_path / "work"),
            "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "200"]
    assert report.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    ev = results["evidence"]
    assert set(ev["recall_by_label"]) == {*fx["pairs"], E.POOLED}
    for pair in fx["pairs"]:
        assert set(ev["recall_by_label"][pair]) == {"direct", "reason"}
        assert {"auto", "never", "always"} <= set(ev["recall_by_label"][pair]["reason"])
    assert ev["reason_rates"]["mixed_pairs"] == sorted(fx["pairs"])
    assert set(ev["auto_minus_never"]) == {*fx["pairs"], E.POOLED}
    assert ev["auto_minus_never"][E.POOLED]["n"] == 9  # 3 complex queries in each of 3 pairs
    # the pooled gain at every cut-off, R@5's equal to the table above
    assert [int(k) for k in ev["auto_minus_never_at"]] == list(E.KS)
    assert ev["auto_minus_never_at"]["5"]["diff"] == ev["auto_minus_never"][E.POOLED]["diff"]
    assert set(ev["headline_means"]) == {"auto", "never", "always"}
    # oracle rows: every complex query takes each given CoT; blank CoT equals the never run
    oracle = ev["oracle"]
    assert set(oracle) == {*fx["pairs"], E.POOLED}
    for pair in fx["pairs"]:
        assert oracle[pair]["n"] == 3
        for row in E.ORACLE_ROWS:
            assert oracle[pair][row]["n"] == 3 and 0 <= oracle[pair][row]["recall@5"] <= 1
    # frozen features: the image -> image pair (cirr_task7); every image pair is listed
    assert set(ev["frozen_features"]) == {"cirr_task7"}
    assert set(ev["image_pairs"]) == {"cirr_task7", "mscoco_task0"}
    assert ev["image_pairs"]["cirr_task7"]["passed"] in (True, False)
    assert ev["image_pairs"]["mscoco_task0"]["passed"] is None  # no minilm-bridge run given
    # the probe: three groups on non-emoji images
    assert set(ev["probe"]) == {"CIRR-style composed (image + edit)", "MSCOCO caption -> image",
                                "MSCOCO image -> caption"}
    assert ev["probe"]["CIRR-style composed (image + edit)"]["n"] == 3 * len(ev["probe_images"])
    assert all(0 <= g["reason_rate"] <= 1 for g in ev["probe"].values())
    assert len(ev["checklist"]) == 8
    md = (out / "RESULTS.md").read_text()
    for section in ("## Evidence by difficulty label", "## Chains of thought of the auto run",
                    "## Does reasoning help complex queries?", "## Oracle CoTs on complex queries",
                    "## Image pairs vs frozen features", "## Routing probe", "## Done when"):
        assert section in md
    assert "| R@1 |" in md and "| R@10 |" in md  # the gain at each cut-off

    # --reuse: nothing is evaluated, encoded or probed again, and the evidence is the same
    monkeypatch.setattr(report, "evaluate", lambda *a, **k: pytest.fail("a finished run was evaluated again"))
    monkeypatch.setattr(report, "load_model", lambda *a, **k: pytest.fail("the model was loaded again"))
    (out / "results.json").unlink()
    assert report.main([*argv, "--reuse"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["runs"] == results["runs"] and again["evidence"] == results["evidence"]
    # --no-oracle / --no-probe drop those sections
    assert report.main([*argv, "--reuse", "--no-oracle", "--no-probe"]) == 0
    lean = json.loads((out / "results.json").read_text())["evidence"]
    assert "oracle" not in lean and "probe" not in lean
    assert "## Oracle CoTs" not in (out / "RESULTS.md").read_text()
