"""The naming stage (trace_core.naming, `train --stage naming`) and the frozen-feature store of training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.test_train import _mini
from trace_core.naming import MAX_NAME_WORDS, NAMING_PAIR, image_names, naming_examples, naming_sentence
from trace_core.prompts import TRACE_STYLE
from trace_core.records import Candidate, Query
from trace_core.train import Example, TrainConfig, Trainer, main


def _ex(query: Query, positive: Candidate, negatives=()) -> Example:
    return Example("p", query, None, positive, frozenset({positive.did}), ("find it",), tuple(negatives))


def _png(path: Path, colour) -> str:
    Image.new("RGB", (40, 40), colour).save(path)
    return str(path)


def test_images_take_the_name_their_training_records_give_them():
    examples = {"a": [
        # composed query: its image is the reference, not the text positive; the candidates are named
        _ex(Query(text="but darker", image="ref.png"), Candidate(text="dark cat", image="dark.png", did="1"),
            [Candidate(text="light cat", image="light.png", did="2"), Candidate(image="unnamed.png", did="3")]),
        # image -> name: the query image takes its positive's text
        _ex(Query(image="dog.png"), Candidate(text="dog", did="4")),
        # image -> image: nothing to name
        _ex(Query(image="q.png"), Candidate(image="c.png", did="5")),
    ], "b": [
        _ex(Query(text="a cat"), Candidate(text="another name", image="dark.png", did="1")),  # first name kept
        _ex(Query(image="blank.png"), Candidate(text="   ", did="6")),
    ]}
    assert image_names(examples) == {"dark.png": "dark cat", "light.png": "light cat", "dog.png": "dog"}
    named = naming_examples(examples)
    assert [ex.query.image for ex in named] == ["dark.png", "dog.png", "light.png"]  # sorted: same every run
    first = named[0]
    assert first.pair == NAMING_PAIR and first.cot == "The image shows dark cat."
    assert first.query.text is None and first.positive.text == "dark cat"
    assert len({ex.positive.did for ex in named}) == 3 and all(ex.positive.did in ex.all_positives for ex in named)
    long = " ".join(f"w{i}" for i in range(30))
    assert naming_sentence(long) == f"The image shows {' '.join(long.split()[:MAX_NAME_WORDS])}."


def test_the_naming_stage_trains_the_image_tokens_on_the_cot_loss_alone(lm_dir, tmp_path):
    paths = [_png(tmp_path / f"{i}.png", c) for i, c in enumerate(["red", "blue", "green"])]
    named = naming_examples({"x": [_ex(Query(image=p), Candidate(text=n, did=n))
                                   for p, n in zip(paths, ["red square", "blue square", "green square"], strict=True)]})
    cfg = TrainConfig(steps=3, batch_size=3, warmup=1, lambda_ret=0.0, lambda_direct=0.0, hard_negatives=False,
                      self_cot_from=1.0, random_instruction=False, group_weights="complex=1", save_every=3)
    trainer = Trainer(_mini(lm_dir, name_slots=4), TRACE_STYLE, {NAMING_PAIR: named}, tmp_path / "run", cfg)
    calls = []
    fwd = trainer.model.forward_train

    def spy(prompts, targets=None, features=None):
        calls.append(targets is None)
        return fwd(prompts, targets, features)

    trainer.model.forward_train = spy
    with torch.no_grad():
        out = trainer.losses(named)
    assert calls == [False]  # the queries only: no candidate pass
    torch.testing.assert_close(out["loss"], out["ce"])
    assert float(out["nce"]) == 0.0 and float(out["ce"]) > 0
    trainer.model.forward_train = fwd
    before = trainer.model.projector[1].weight.detach().clone()
    trainer.train(progress=False)
    assert not torch.equal(before, trainer.model.projector[1].weight)  # the image path learns from the CE
    assert (tmp_path / "run" / "model" / "trace_mini.safetensors").is_file()


def test_feature_store_roundtrip_and_staleness(lm_dir, tmp_path):
    paths = [_png(tmp_path / f"{i}.png", c) for i, c in enumerate(["red", "blue"])]
    model = _mini(lm_dir)
    assert model.feature_store.precompute(paths, progress=False) == 2
    assert model.feature_store.precompute(paths, progress=False) == 0  # already cached
    store = tmp_path / "cache" / "features.pt"
    model.feature_store.save(store)
    fresh = _mini(lm_dir)
    assert fresh.feature_store.load(store) == 2
    torch.testing.assert_close(fresh.feature_store.get(paths[0]), model.feature_store.get(paths[0]))
    assert fresh.feature_store.precompute(paths, progress=False) == 0
    assert _mini(lm_dir).feature_store.warm(paths, store) == (2, str(store), 0)  # all from the store
    # an image rewritten since: its stored feature is stale and not taken
    _png(Path(paths[1]), "yellow")
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = _mini(lm_dir)
    assert third.feature_store.load(store) == 1
    assert third.feature_store.precompute(paths, progress=False) == 1
    assert not torch.allclose(third.feature_store.get(paths[1]), model.feature_store.get(paths[1]))
    # features of another encoder setting are never taken
    from trace_core.backbones.mini import MiniConfig, TraceMini

    other = TraceMini.create(MiniConfig(lora_r=4, lora_alpha=8, image_size=64, image_grid=2), lm_dir=lm_dir)
    assert other.feature_store.load(store) == 0
    assert other.feature_store.load(tmp_path / "missing.pt") == 0


@pytest.mark.parametrize("corrupt", [b"", b"not a torch file"])
def test_a_corrupt_feature_store_is_ignored(lm_dir, tmp_path, corrupt):
    store = tmp_path / "features.pt"
    store.write_bytes(corrupt)
    with pytest.warns(UserWarning, match="ignoring the feature store"):
        assert _mini(lm_dir).feature_store.load(store) == 0


def _named_fixture(tmp_path: Path) -> Path:
    """The labelled M-BEIR fixture with a caption on every image candidate of its train pool: its images have
    names."""
    from tests.mbeir_fixture import build_fixture
    from tests.test_train import _label

    fx = build_fixture(tmp_path / "mbeir")
    root = _label(fx)
    pool = root / "cand_pool" / "local" / "mbeir_mscoco_task0_cand_pool.jsonl"
    lines = [json.loads(line) for line in pool.read_text().splitlines()]
    for i, line in enumerate(lines):
        line["txt"] = f"picture number {i}"
    pool.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_cli_naming_stage_and_naming_pair_in_the_joint_stage(tiny_qwen_dir, tmp_path):
    data = _named_fixture(tmp_path)
    common = ["--data", str(data), "--base", str(tiny_qwen_dir), "--batch-size", "2", "--save-every", "2"]
    assert main([*common, "--stage", "naming", "--out", str(tmp_path / "naming"), "--steps", "2"]) == 0
    log = [json.loads(line) for line in (tmp_path / "naming" / "train_log.jsonl").read_text().splitlines()]
    assert [r["pair"] for r in log] == [NAMING_PAIR] * 2
    assert all(r["ce"] > 0 and r["nce"] == 0 and r["loss"] == r["ce"] for r in log)  # the CoT loss alone
    assert (tmp_path / "naming" / "model").is_dir()
    # the joint stage with the naming pair, weighed by its name: only it is drawn, under the full objective
    assert main([*common, "--naming", "--out", str(tmp_path / "joint"), "--steps", "2",
                 "--group-weights", "complex=1,mscoco_task0=0"]) == 0
    log = [json.loads(line) for line in (tmp_path / "joint" / "train_log.jsonl").read_text().splitlines()]
    assert [r["pair"] for r in log] == [NAMING_PAIR] * 2 and all(r["nce"] > 0 for r in log)


def test_cli_naming_stage_without_named_images_exits_2(tmp_path, capsys):
    from tests.mbeir_fixture import build_fixture
    from tests.test_train import _label

    data = _label(build_fixture(tmp_path / "mbeir"))  # text -> image only: no image has a name
    assert main(["--stage", "naming", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "no named training images" in capsys.readouterr().err


def test_the_name_head_learns_to_spell_image_names_and_feeds_them_to_the_lm_as_words(lm_dir, tmp_path):
    from trace_core.backbones.mini import MiniBackbone, MiniConfig, TraceMini

    names = ["red square", "blue square", "green square", "yellow square"]
    paths = [_png(tmp_path / f"{i}.png", n.split()[0]) for i, n in enumerate(names)]
    model = _mini(lm_dir, name_slots=MiniConfig().name_slots)  # the default: new models have a head
    assert model.config.name_slots > 0
    features = model.image_features([Image.open(p) for p in paths])
    before = model.read_names(features)
    assert before == [""] * 4  # unfitted: every slot spells the end piece
    exact = model.fit_name_head(features, names, steps=300, batch_size=8, lr=3e-3)
    assert exact == 1.0 and model.read_names(features) == names
    assert not any(p.requires_grad for p in model.namer.parameters())  # frozen outside its own stage
    # the slots enter the LM as soft words: the first slot of "red square" is (nearly) the word " red"
    tokens = model.image_tokens(features[:1])[0]
    assert tokens.shape[0] == model.config.image_tokens
    slots = tokens[-model.config.name_slots:]
    table = model.word_table()
    first = model.tokenizer(" red", add_special_tokens=False)["input_ids"][0]
    assert torch.nn.functional.cosine_similarity(slots[0], table[first], dim=0) > 0.9
    # a checkpoint keeps the head although it is frozen; inference reads the same names back
    model.export(tmp_path / "ckpt")
    loaded = MiniBackbone.from_pretrained(tmp_path / "ckpt", device="cpu").model
    assert loaded.read_names(loaded.image_features([Image.open(p) for p in paths])) == names
    # the head is slim by default (a rank-64 bottleneck: it ships inside the checkpoint); v2 run 3's
    # checkpoints, written before the bottleneck, load as the full-width head they hold
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (config["name_width"], config["name_rank"]) == (512, 64) and model.namer.up is not None
    del config["name_width"], config["name_rank"]
    run3 = MiniConfig.from_dict(config)
    assert (run3.name_width, run3.name_rank) == (1024, 0)
    # checkpoints from before the head load without one
    del config["name_slots"]
    assert MiniConfig.from_dict(config).name_slots == 0
    plain = TraceMini.create(MiniConfig(lora_r=4, lora_alpha=8, image_size=64, name_slots=0), lm_dir=lm_dir)
    assert plain.image_tokens(features[:1]).shape[1] == plain.config.image_tokens == 9 + 2
    with pytest.raises(ValueError, match="no name head"):
        plain.fit_name_head(features, names)
    with pytest.raises(ValueError, match="4 feature rows for 3 names"):
        model.fit_name_head(features, names[:3])


def test_cli_names_stage_needs_a_model_with_a_name_head(tiny_qwen_dir, tmp_path, capsys):
    data = _named_fixture(tmp_path)
    assert main(["--stage", "names", "--data", str(data), "--base", str(tiny_qwen_dir),
                 "--out", str(tmp_path / "o")]) == 2
    assert "name head" in capsys.readouterr().err
