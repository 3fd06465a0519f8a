"""The trainer: TRACE objective on TRACE-mini (tiny LM) and on a tiny Qwen2-VL; checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import trace_core
from tests.mbeir_fixture import build_fixture
from trace_core.backbones.mini import MiniConfig, TraceMini
from trace_core.prompts import TRACE_STYLE
from trace_core.train import TrainConfig, Trainer, load_examples, main

COT = "The caption names the main object, so the image must show that object clearly in the scene."


def _label(fx: dict) -> Path:
    """Give the fixture's train queries M-BEIR-CoT labels: odd queries reason, even ones go direct."""
    qf = fx["train_query_files"]["mscoco_task0"]
    lines = [json.loads(line) for line in qf.read_text().splitlines()]
    for i, line in enumerate(lines):
        line["route"], line["cot"] = ("reason", COT) if i % 2 else ("direct", None)
    qf.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return fx["root"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _label(build_fixture(tmp_path_factory.mktemp("mbeir")))


def _mini(lm_dir: Path, name_slots: int = 0) -> TraceMini:
    """A tiny TRACE-mini; without a name head unless asked (the head has its own tests in test_naming)."""
    torch.manual_seed(0)
    return TraceMini.create(MiniConfig(lora_r=4, lora_alpha=8, image_size=64, name_slots=name_slots), lm_dir=lm_dir)


def assert_resume_is_exact(lm_dir: Path, examples, cfg: TrainConfig, tmp: Path, until: int) -> None:
    """Train straight to the end in tmp/a; in tmp/b stop at step `until`, resume from the last checkpoint and
    finish: both runs end with the same weights."""
    straight = Trainer(_mini(lm_dir), TRACE_STYLE, examples, tmp / "a", cfg)
    straight.train(progress=False)
    first = Trainer(_mini(lm_dir), TRACE_STYLE, examples, tmp / "b", cfg)
    first.train(progress=False, until=until)
    resumed = Trainer(_mini(lm_dir), TRACE_STYLE, examples, tmp / "b", cfg)
    checkpoint = until - until % cfg.save_every
    assert resumed.resume() and resumed.step == checkpoint
    resumed.train(progress=False)
    for (name, a), (_, b) in zip(straight.model.trainable_state().items(),
                                 resumed.model.trainable_state().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_labels_are_read_and_checked(data, tmp_path):
    examples = load_examples(data)["mscoco_task0"]
    routes = {ex.query.qid: ex.cot for ex in examples}
    assert set(routes.values()) == {COT, None}
    assert all(len(ex.instructions) == 4 and ex.positive.did in ex.all_positives for ex in examples)
    bad = _label(build_fixture(tmp_path / "bad"))
    qf = next((bad / "query" / "train").glob("*.jsonl"))
    first = json.loads(qf.read_text().splitlines()[1])
    first["cot"] = None
    qf.write_text(json.dumps(first) + "\n")
    with pytest.raises(ValueError, match="needs a non-empty 'cot'"):
        load_examples(bad)


def test_training_lowers_both_losses_and_learns_the_route(data, lm_dir, tmp_path):
    model = _mini(lm_dir)
    examples = load_examples(data)
    cfg = TrainConfig(steps=40, batch_size=5, lr=5e-3, warmup=2, save_every=100, random_instruction=False)
    trainer = Trainer(model, TRACE_STYLE, examples, tmp_path / "run", cfg)
    batch = examples["mscoco_task0"]
    direct = [ex for ex in batch if ex.cot is None]
    reason = [ex for ex in batch if ex.cot is not None]
    with torch.no_grad():
        before = {"all": trainer.losses(batch), "direct": trainer.losses(direct), "reason": trainer.losses(reason)}
    trainer.train(progress=False)
    with torch.no_grad():
        after = {"all": trainer.losses(batch), "direct": trainer.losses(direct), "reason": trainer.losses(reason)}
    assert after["all"]["nce"] < 0.5 * before["all"]["nce"]
    assert after["direct"]["ce"] < 0.2 * before["direct"]["ce"]  # CE of the <|emb|> target: the route
    assert after["reason"]["ce"] < before["reason"]["ce"] - 0.1  # CE of the CoT (a 32-wide LM learns slowly)
    # the exported checkpoint is the trained model: its routing probability is the trained one
    enc = trace_core.load_model(tmp_path / "run" / "model")
    results = enc.encode_queries([ex.query for ex in direct], reasoning="never")
    p_emb = torch.tensor([r.p_emb for r in results])
    torch.testing.assert_close(-p_emb.log().mean(), after["direct"]["ce"], rtol=1e-3, atol=1e-4)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41))


def test_resume_continues_exactly(data, lm_dir, tmp_path):
    examples = load_examples(data)
    cfg = TrainConfig(steps=4, batch_size=3, lr=1e-3, warmup=1, save_every=2)
    assert_resume_is_exact(lm_dir, examples, cfg, tmp_path, until=2)  # interrupted at its checkpoint


def test_training_a_tiny_qwen2vl_through_the_cli(data, tiny_qwen_dir, tmp_path):
    out = tmp_path / "qwen-run"
    argv = ["--data", str(data), "--out", str(out), "--base", str(tiny_qwen_dir), "--steps", "3",
            "--batch-size", "4", "--save-every", "3"]
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    trained = trace_core.load_model(out / "model")
    base = trace_core.load_model(tiny_qwen_dir)
    q = trace_core.Query(text="a dog", instruction="Find me an everyday image that matches the given caption.")
    a = trained.encode_queries([q], reasoning="never")[0].embedding
    b = base.encode_queries([q], reasoning="never")[0].embedding
    assert a.shape == b.shape and not torch.allclose(torch.from_numpy(a), torch.from_numpy(b))
    # only LoRA and the <|emb|> rows moved: every other embedding row is untouched
    emb = base.backbone.emb_token_id
    w_new = trained.backbone.model.get_input_embeddings().weight
    w_old = base.backbone.model.get_input_embeddings().weight
    others = torch.arange(w_old.shape[0]) != emb
    torch.testing.assert_close(w_new[others], w_old[others])


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
