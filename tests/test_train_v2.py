"""TRACE-mini v2 training: direct-position InfoNCE, hard negatives, group-weighted pairs, self-generated CoTs."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from tests.mbeir_fixture import build_fixture
from tests.test_train import COT, _label, _mini, assert_resume_is_exact
from trace_core.batching import GroupSampler, not_negatives, pair_group, parse_group_weights
from trace_core.prompts import TRACE_STYLE
from trace_core.records import Candidate, Query
from trace_core.train import Example, TrainConfig, Trainer, _boolean, load_examples, swap_name

V2 = dict(random_instruction=False, hard_negatives=False, self_cot_from=1.0)  # each test turns on what it tests


def _v2(fx: dict) -> Path:
    """The labelled fixture plus: hard negatives on the MSCOCO train queries (9:6 is a positive of query 0;
    9:77 is not in the pool), a CIRR train pair whose image + text queries all reason, and a WebQA train pair
    (text -> text, no labels: direct)."""
    root = _label(fx)
    qf = fx["train_query_files"]["mscoco_task0"]
    lines = [json.loads(line) for line in qf.read_text().splitlines()]
    lines[1]["neg_cand_list"] = ["9:6"]
    lines[2]["neg_cand_list"] = ["9:7", "9:77"]
    lines[2]["target_name"], lines[2]["kind"] = "a pizza", "sibling"  # the name is read (wrong CoTs), kind not
    qf.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cirr = [json.loads(line) for line in fx["query_files"]["cirr_task7"].read_text().splitlines()]
    for line in cirr:
        line["route"], line["cot"] = "reason", COT
    (root / "query" / "train" / "mbeir_cirr_task7_train.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in cirr))
    webqa = fx["query_files"]["webqa_task1"].read_text()
    (root / "query" / "train" / "mbeir_webqa_task1_train.jsonl").write_text(webqa)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _v2(build_fixture(tmp_path_factory.mktemp("mbeir")))


def _by_qid(examples: list[Example]) -> dict[str, Example]:
    return {ex.query.qid: ex for ex in reversed(examples)}  # a query's first positive wins


def test_hard_negatives_are_read_from_the_pool(data):
    examples = load_examples(data)
    assert sorted(examples) == ["cirr_task7", "mscoco_task0", "webqa_task1"]
    coco = examples["mscoco_task0"]
    negs = {ex.query.qid: [c.did for c in ex.negatives] for ex in coco}
    assert negs == {"9:100": [], "9:101": ["9:6"], "9:102": ["9:7"], "9:103": []}  # 9:77: not in the pool
    names = {ex.query.qid: (ex.target_name, ex.ref_name) for ex in coco}
    assert names == {"9:100": (None, None), "9:101": (None, None), "9:102": ("a pizza", None), "9:103": (None, None)}
    neg = _by_qid(coco)["9:101"].negatives[0]
    assert neg.image is not None and Path(neg.image).is_file()
    assert {pair_group(e) for e in examples.values()} == {"complex", "text"}
    assert pair_group(examples["webqa_task1"]) == "text"


def test_direct_position_loss_only_for_reason_rows(data, lm_dir, tmp_path):
    examples = load_examples(data)
    trainer = Trainer(_mini(lm_dir), TRACE_STYLE, examples, tmp_path, TrainConfig(**V2))
    coco = examples["mscoco_task0"]
    direct = [ex for ex in coco if ex.cot is None]
    reason = [ex for ex in coco if ex.cot is not None]
    with torch.no_grad():
        d, r, mixed = trainer.losses(direct), trainer.losses(reason), trainer.losses(coco)
    assert float(d["nce_direct"]) == 0.0
    torch.testing.assert_close(d["loss"], d["nce"] + d["ce"])  # nothing from the direct position
    assert float(r["nce_direct"]) > 0
    torch.testing.assert_close(r["loss"], r["nce"] + r["ce"] + 0.5 * r["nce_direct"])
    # a reason row's prompt-end state is not its pre-token: the two InfoNCE terms differ
    assert abs(float(r["nce_direct"]) - float(r["nce"])) > 1e-4
    # in a mixed batch the term is the mean over the reason rows alone: the direct rows' states are unused
    fwd = trainer.model.forward_train
    calls = []

    def spy(prompts, targets=None, features=None):
        out = fwd(prompts, targets, features)
        if targets is not None:  # the queries: replace the direct rows' prompt-end states by noise
            keep = torch.tensor([len(t) > 1 for t in targets]).unsqueeze(-1)
            out = out._replace(direct=out.direct * keep + (~keep) * torch.randn_like(out.direct))
            calls.append(keep)
        return out

    trainer.model.forward_train = spy
    with torch.no_grad():
        again = trainer.losses(coco)
    assert calls and not calls[0].all() and calls[0].any()
    torch.testing.assert_close(again["nce_direct"], mixed["nce_direct"])


def test_a_hard_negative_adds_a_masked_column(data, lm_dir, tmp_path):
    examples = load_examples(data)
    coco = _by_qid(examples["mscoco_task0"])
    q0, q1, q2 = coco["9:100"], coco["9:101"], coco["9:102"]
    assert q0.positive.did == "9:0" and "9:6" in q0.all_positives
    cfg = TrainConfig(**{**V2, "hard_negatives": True})
    trainer = Trainer(_mini(lm_dir), TRACE_STYLE, examples, tmp_path, cfg)
    sizes = []
    fwd = trainer.model.forward_train

    def spy(prompts, targets=None, features=None):
        sizes.append((len(prompts), targets is None))
        return fwd(prompts, targets, features)

    trainer.model.forward_train = spy
    with torch.no_grad():
        out = trainer.losses([q0, q1, q2])
    assert sizes == [(3, False), (5, True)]  # 3 queries; 3 positives + 9:6 (from q1) + 9:7 (from q2)
    assert float(out["n_hard_neg"]) == 2 and torch.isfinite(out["loss"])
    columns = trainer._columns([q0, q1, q2])
    assert [c.did for c in columns] == ["9:0", "9:1", "9:2", "9:6", "9:7"]
    mask = not_negatives([q0, q1, q2], columns)
    # 9:6 is a positive of q0: no negative for it, a negative for q1 (whose hard negative it is) and q2
    assert mask.tolist() == [[False, False, False, True, False],
                             [False, False, False, False, False],
                             [False, False, False, False, False]]
    # a hard negative that is already a column (another row's positive) is not added twice
    q1_neg_is_q2_pos = Example(q1.pair, q1.query, q1.cot, q1.positive, q1.all_positives, q1.instructions,
                               (q2.positive,))
    assert [c.did for c in trainer._columns([q1_neg_is_q2_pos, q2])] == ["9:1", "9:2", "9:7"]
    off = Trainer(_mini(lm_dir), TRACE_STYLE, examples, tmp_path / "off", TrainConfig(**V2))
    assert [c.did for c in off._columns([q0, q1, q2])] == ["9:0", "9:1", "9:2"]


def _example(pair: str, cot: str | None = None, image: str | None = None) -> Example:
    return Example(pair, Query(text="q", image=image), cot, Candidate(text="c", did="1:0"), frozenset({"1:0"}),
                   ("find it",))


def test_group_sampler_follows_the_weights():
    examples = {"cirr_task7": [_example("cirr_task7", cot="think"), _example("cirr_task7")],
                "fiq_task7": [_example("fiq_task7", cot="think")],
                "mscoco_task0": [_example("mscoco_task0", image="a.png")],
                "nights_task4": [_example("nights_task4", image="b.png")],
                "webqa_task1": [_example("webqa_task1")]}
    sampler = GroupSampler(examples, "complex=0.40,image=0.45,text=0.15")
    assert sampler.pairs == {"complex": ["cirr_task7", "fiq_task7"], "image": ["mscoco_task0", "nights_task4"],
                             "text": ["webqa_task1"]}
    n = 20000
    draws = [sampler.draw(random.Random(0)) for _ in range(2)]
    assert draws[0] == draws[1]  # fixed by the RNG state alone
    rng = random.Random(0)
    draws = [sampler.draw(rng) for _ in range(n)]
    groups, pairs = Counter(g for g, _ in draws), Counter(p for _, p in draws)
    for group, weight in (("complex", 0.40), ("image", 0.45), ("text", 0.15)):
        assert abs(groups[group] / n - weight) < 0.015, (group, groups)
    assert abs(pairs["cirr_task7"] / n - 0.20) < 0.015 and abs(pairs["nights_task4"] / n - 0.225) < 0.015
    assert all(p in sampler.pairs[g] for g, p in draws)
    # a group without pairs is dropped, the others renormalised
    no_complex = {p: e for p, e in examples.items() if p not in ("cirr_task7", "fiq_task7")}
    rest = GroupSampler(no_complex, "complex=0.40,image=0.45,text=0.15")
    assert rest.groups == ["image", "text"] and rest.weights == pytest.approx([0.75, 0.25])
    rng = random.Random(1)
    share = sum(rest.draw(rng)[0] == "image" for _ in range(n)) / n
    assert abs(share - 0.75) < 0.015
    assert parse_group_weights("text=1") == {"text": 1.0}
    for bad in ("complex", "=1", "image=x", "text=-1"):
        with pytest.raises(ValueError, match="group_weights"):
            parse_group_weights(bad)
    with pytest.raises(ValueError, match="neither groups"):
        GroupSampler(examples, "complex=0.4,video=0.6")
    # a named pair weighs relative to the other pairs of its group; the group's share is unchanged
    tilted = GroupSampler(examples, "complex=0.5,image=0.5,cirr_task7=3")
    rng = random.Random(2)
    draws = Counter(tilted.draw(rng)[1] for _ in range(n))
    assert abs(draws["cirr_task7"] / n - 0.375) < 0.015 and abs(draws["fiq_task7"] / n - 0.125) < 0.015
    assert abs(draws["mscoco_task0"] / n - 0.25) < 0.015 and draws["webqa_task1"] == 0
    with pytest.raises(ValueError, match="none of its pairs"):
        GroupSampler(examples, "complex=1,cirr_task7=0,fiq_task7=0")
    with pytest.raises(ValueError, match="no weight"):
        GroupSampler(no_complex, "complex=1")
    assert _boolean("false") is False and _boolean("True") is True


def test_self_generated_cots_keep_training_live(data, lm_dir, tmp_path):
    examples = load_examples(data)
    model = _mini(lm_dir)
    cfg = TrainConfig(**{**V2, "self_cot_max_tokens": 6})
    trainer = Trainer(model, TRACE_STYLE, examples, tmp_path, cfg)
    coco = _by_qid(examples["mscoco_task0"])
    # image + text queries (their images are feature-cache keys) and a direct row that keeps its pre-token
    batch = [*examples["cirr_task7"][:3], coco["9:100"], coco["9:101"]]
    # greedy decoding reads the training prompts: an image stays a feature-cache key, not a re-encoded file
    assert isinstance(trainer._own_cot_encoder().render_query(batch[0].query).images[0], str)
    model.train()
    with torch.no_grad():
        plain = trainer.losses(batch)
    out = trainer.losses(batch, self_cot=True)
    assert float(out["self_cot"]) == pytest.approx(4 / 5)
    torch.testing.assert_close(out["ce"], plain["ce"])  # the CE is the teacher's
    assert abs(float(out["nce"]) - float(plain["nce"])) > 1e-5  # the reason rows embed after their own CoT
    torch.testing.assert_close(out["nce_direct"], plain["nce_direct"])
    out["loss"].backward()
    assert model.training and not model.vision.training
    lora = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert lora and not any(m.merged for m in lora)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_A" in n or "lora_B" in n)
    # the own CoTs are the encoder's greedy ones, capped, and reasoning was forced on
    queries = [ex.query for ex in batch]
    own = trainer.own_cots(queries)
    assert all(1 <= len(t) <= 6 for t in own)
    assert model.training
    import trace_core

    model.export(tmp_path / "model", TRACE_STYLE)
    exported = trace_core.load_model(tmp_path / "model")  # LoRA merged, images opened from disk
    again = exported.encode_queries(queries, reasoning="always")
    assert [list(r.cot_token_ids[:6]) for r in again] == own


def test_resume_with_the_v2_state_continues_exactly(data, lm_dir, tmp_path):
    examples = load_examples(data)
    cfg = TrainConfig(steps=6, batch_size=3, lr=1e-3, warmup=1, save_every=3, self_cot_from=0.3,
                      self_cot_prob=0.5, self_cot_max_tokens=4, group_weights="complex=0.5,text=0.5")
    # interrupted at step 4, one step past the checkpoint at 3: the resumed run drops step 4 from the log and
    # writes it again, so the log holds each step once
    assert_resume_is_exact(lm_dir, examples, cfg, tmp_path, until=4)

    def log(run):
        rows = [json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    a, b = log("a"), log("b")
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [(r["group"], r["pair"], r["self_cot"], r["n_hard_neg"]) for r in a] == \
           [(r["group"], r["pair"], r["self_cot"], r["n_hard_neg"]) for r in b]
    for x, y in zip(a, b, strict=True):
        numbers = [k for k, v in x.items() if isinstance(v, float | int)]
        assert [x[k] for k in numbers] == pytest.approx([y[k] for k in numbers], rel=1e-4, abs=1e-5)
    assert {"nce_direct", "n_hard_neg", "self_cot", "group"} <= set(a[0])
    assert {r["group"] for r in a} == {"complex", "text"}
    assert any(r["self_cot"] > 0 for r in a[3:])  # the resumed part used self-generated CoTs
    assert all(r["self_cot"] == 0 for r in a[:1])  # not before self_cot_from


def test_swap_name_writes_a_wrong_but_consistent_cot():
    cot = "Start: woman runner: light skin tone. Edit: man, dark skin tone. Target: man runner: dark skin tone."
    # the words that tell target and negative apart change everywhere but in the reference
    assert swap_name(cot, "man runner: dark skin tone", "woman runner: medium skin tone",
                     keep="woman runner: light skin tone") == (
        "Start: woman runner: light skin tone. Edit: woman, medium skin tone. "
        "Target: woman runner: medium skin tone.")
    # every mention of a plain name, any case, whole words only
    assert swap_name("This describes a Scooter. Target: the scooter emoji.", "scooter", "minibus") == \
        "This describes a minibus. Target: the minibus emoji."
    assert swap_name("Target: the man emoji.", "woman", "boy") is None  # "man" is not "woman"
    # nothing to corrupt: the name is only inside the kept reference, or the names are the same
    assert swap_name("Reference: baby. Edit: default yellow.", "baby", "child", keep="baby") is None
    assert swap_name("Target: baby.", "Baby", "baby") is None


def test_wrong_cot_rows_embed_after_a_cot_naming_their_negative(data, lm_dir, tmp_path):
    coco = _by_qid(load_examples(data)["mscoco_task0"])
    cot = "Start: a bus. Edit: red. Target: a red bus."
    # a reason row whose hard negative is the positive of a named row, and that row
    a = dataclasses.replace(coco["9:101"], cot=cot, target_name="a red bus", negatives=(coco["9:102"].positive,))
    b = dataclasses.replace(coco["9:102"], target_name="a blue bus", negatives=())
    model = _mini(lm_dir)
    seen = []
    fwd = model.forward_train

    def spy(prompts, targets=None, features=None):
        if targets is not None:
            seen.append([model.tokenizer.decode(t[:-1]) for t in targets])
        return fwd(prompts, targets, features)

    model.forward_train = spy
    on = dict(V2, hard_negatives=True, cot_noise_prob=1.0, steps=10, cot_noise_from=0.5)
    trainer = Trainer(model, TRACE_STYLE, {"mscoco_task0": [a, b]}, tmp_path, TrainConfig(**on))
    assert trainer.names[b.positive.did] == "a blue bus"
    with torch.no_grad():
        early = trainer.losses([a, b])  # step 0 < cot_noise_from x steps: the teacher's CoT only
        trainer.step = 5
        late = trainer.losses([a, b])
    assert float(early["wrong_cot"]) == 0 and float(late["wrong_cot"]) == pytest.approx(1 / 2)
    assert len(seen[0]) == 2 and seen[0][0].strip() == cot  # the CE's forward: the teacher CoT
    assert seen[-1] == ["Start: a bus. Edit: blue. Target: a blue bus."]  # then row 0 again, wrong
    torch.testing.assert_close(late["ce"], early["ce"])  # the CE is still the teacher's
    assert abs(float(late["nce"]) - float(early["nce"])) > 1e-5  # row 0 embeds after the wrong CoT
    torch.testing.assert_close(late["nce_direct"], early["nce_direct"])
    # by default what the wrong CoT names is no negative of its row; counted as one, the loss differs
    pushed = Trainer(model, TRACE_STYLE, {"mscoco_task0": [a, b]}, tmp_path / "pushed",
                     TrainConfig(**dict(on, cot_noise_named_negative=True)))
    pushed.step = 5
    with torch.no_grad():
        away = pushed.losses([a, b])
    assert float(away["wrong_cot"]) == pytest.approx(1 / 2)
    assert float(away["nce"]) > float(late["nce"]) + 1e-6  # one more negative column for row 0
    # off by default: the same late step embeds after the teacher's CoT
    off = Trainer(model, TRACE_STYLE, {"mscoco_task0": [a, b]}, tmp_path / "off",
                  TrainConfig(**dict(on, cot_noise_prob=0.0)))
    off.step = 5
    with torch.no_grad():
        plain = off.losses([a, b])
    assert float(plain["wrong_cot"]) == 0
    torch.testing.assert_close(plain["nce"], early["nce"])
