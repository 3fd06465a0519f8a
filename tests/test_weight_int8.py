"""TRACE-mini served with int8 weights (`--precision int8`, trace_core/backbones/weight_int8.py): the products are
those of the rounded weights, the model computes what float32 does up to that rounding, holds a fraction of the
memory, and its fingerprint keeps float32 caches from being taken for its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.services import Services
from tests.mbeir_fixture import build_fixture
from tests.tiny_mini import build_tiny_mini
from trace_core.backbones.weight_int8 import KERNEL_ROWS, Int8Embedding, Int8Linear, quantise_rows
from trace_core.lazy import LazyEncoder, default_precision, peek
from trace_core.loading import load_model
from trace_core.records import Candidate, Query


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build_tiny_mini(tmp_path_factory.mktemp("int8") / "mini")


@pytest.fixture(scope="module")
def both(mini):
    return load_model(str(mini)), load_model(str(mini), precision="int8")


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_rows_round_to_int8_within_half_a_step():
    w = torch.randn(48, 64) * torch.linspace(0.01, 3.0, 48)[:, None]  # rows of very different scales
    q, scale = quantise_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-6).all())


@pytest.mark.parametrize("rows", [1, KERNEL_ROWS, KERNEL_ROWS + 5])  # the int8 kernel, then the dequantised GEMM
@pytest.mark.parametrize("inner", [64, 40])  # 40: a width the kernel cannot take (it would crash the process)
def test_an_int8_linear_multiplies_by_the_rounded_weights(rows, inner):
    torch.manual_seed(0)
    w = torch.randn(24, inner)
    x = torch.randn(2, rows, inner)
    layer = Int8Linear(w)
    y = layer(x)
    assert y.shape == (2, rows, 24) and y.dtype == torch.float32
    rounded = x.to(torch.bfloat16).float() @ layer.dequantised().float().T
    assert torch.allclose(y, rounded, rtol=0.02, atol=0.05 * float(rounded.abs().mean()))
    exact = x @ w.T
    assert float((y - exact).norm() / exact.norm()) < 0.02


def test_an_int8_embedding_looks_up_and_scores_rows():
    torch.manual_seed(0)
    table = torch.randn(100, 32)
    emb = Int8Embedding(table)
    ids = torch.tensor([[3, 99], [0, 3]])
    assert emb(ids).shape == (2, 2, 32) and torch.allclose(emb(ids), table[ids], atol=float(emb.scale.max()))
    h = torch.randn(3, 32)
    assert torch.equal(emb.head(h).argmax(-1), (h @ table.T).argmax(-1))


def test_nothing_quantised_keeps_the_storage_the_weights_were_loaded_in():
    """transformers loads SmolLM2's weights as views into one mapped safetensors file: a float32 norm left as
    such a view would keep the whole file (about 500 MB) in memory."""
    from tests.tiny_mini import tiny_lm
    from trace_core.backbones.weight_int8 import quantise_llama

    lm, _ = tiny_lm()
    params = list(lm.parameters())
    flat = torch.cat([p.detach().flatten() for p in params])  # one storage for all, as a mapped file is
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    quantise_llama(lm)
    for t in [*lm.parameters(), *lm.buffers()]:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_int8_mini_computes_what_fp32_does_in_a_fraction_of_the_memory(both):
    fp32, int8 = both
    cands = [Candidate(did="c1", text="a red bicycle"), Candidate(did="c2", text="two cats on a sofa"),
             Candidate(did="c3", image=Image.new("RGB", (64, 64), (200, 30, 30)))]
    a, b = fp32.encode_candidates(cands), int8.encode_candidates(cands)
    assert _cos(a, b).min() > 0.99
    q = Query(qid="q", text="which animal is this?", image=Image.new("RGB", (64, 64), (20, 120, 40)))
    ra, rb = (e.encode_queries([q], reasoning="always")[0] for e in (fp32, int8))
    assert rb.route == "reason" and rb.cot_tokens > 0 and np.isfinite(rb.embedding).all()
    ra, rb = (e.encode_queries([q], reasoning="never")[0] for e in (fp32, int8))
    assert _cos(ra.embedding, rb.embedding) > 0.99
    # the name head spells the same words from its kept float32 rows
    model_a, model_b = fp32.backbone.model, int8.backbone.model
    feats = model_a.image_features([Image.new("RGB", (64, 64), (0, 0, 255))])
    assert model_a.read_names(feats) == model_b.read_names(feats)

    def lm_bytes(model) -> int:
        return sum(t.numel() * t.element_size() for t in [*model.lm.parameters(), *model.lm.buffers()])

    assert lm_bytes(model_b) < 0.4 * lm_bytes(model_a)
    assert not any(isinstance(m, torch.nn.Linear) for m in model_b.lm.model.modules())


def test_the_fingerprint_names_the_precision_and_the_files_say_so_before_loading(mini, both):
    fp32, int8 = both
    assert int8.fingerprint["revision"] == fp32.fingerprint["revision"] + "-int8"
    assert peek(mini, precision="int8").fingerprint == int8.fingerprint
    assert LazyEncoder.of(mini, precision="int8").fingerprint == int8.fingerprint
    assert default_precision(mini) == "int8"  # what the app serves TRACE-mini in on a CPU
    assert default_precision(mini / "lm") == "fp32"  # not a TRACE-mini checkpoint


def test_caches_of_one_precision_are_not_taken_for_the_other(mini, both, tmp_path):
    fp32, int8 = both
    fx = build_fixture(tmp_path / "mbeir")
    cache = str(tmp_path / "cache")
    Services.load(str(mini), fx["root"], "test", cache, encoder=fp32, embedding_map=False)
    calls: list[int] = []
    encode = int8.encode_candidates

    def counting(cands, **kw):
        calls.append(len(cands))
        return encode(cands, **kw)

    int8.encode_candidates = counting
    try:
        Services.load(str(mini), fx["root"], "test", cache, encoder=int8, embedding_map=False)
        assert len(calls) == len(fx["pairs"])  # every pool embedded anew for int8
        calls.clear()
        Services.load(str(mini), fx["root"], "test", cache, encoder=int8, embedding_map=False)
        assert calls == []  # and cached under its own fingerprint
    finally:
        del int8.encode_candidates


def test_the_benchmark_tab_says_when_the_served_precision_is_not_the_reports():
    from app.benchmark_tab import served_precision_note

    report = {"runs": {"TRACE-mini auto": {"model": {"revision": "abc123"}}, "baseline": {"model": {}}}}
    note = served_precision_note(report, {"revision": "abc123-int8"})
    assert note is not None and "int8" in note and "abc123-int8" in note and "precision-int8/" in note
    assert served_precision_note(report, {"revision": "abc123"}) is None  # served as evaluated
    assert served_precision_note(report, {"revision": "other-int8"}) is None  # another model: not this report's
    assert served_precision_note(None, {"revision": "abc123-int8"}) is None


def test_the_analysis_tabs_read_the_evaluation_of_the_precision_served(tmp_path):
    from app.services import default_analysis

    model = tmp_path / "model"
    (model / "precision-int8").mkdir(parents=True)
    assert default_analysis(model, "int8") == model / "queries.parquet"  # none of its own: the float32 one
    (model / "precision-int8" / "queries.parquet").write_bytes(b"")
    assert default_analysis(model, "int8") == model / "precision-int8" / "queries.parquet"
    assert default_analysis(model, "fp32") == model / "queries.parquet"


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_the_int8_products_hold_on_cpus_without_avx512(capability):
    """A Space's CPU may lack AVX-512: torch then runs its AVX2 or plain kernels (forced here with
    ATEN_CPU_CAPABILITY, in a process of its own, since a bad kernel call can crash the process)."""
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from trace_core.backbones.weight_int8 import Int8Linear\n"
        "torch.manual_seed(0)\n"
        "for o, i in [(576, 576), (192, 576), (576, 1536), (24, 40)]:\n"
        "    w = torch.randn(o, i); layer = Int8Linear(w)\n"
        "    for rows in (1, 16, 17):\n"
        "        x = torch.randn(rows, i); ref = x @ w.T\n"
        "        assert float((layer(x) - ref).norm() / ref.norm()) < 0.02, (o, i, rows)\n"
        "print(torch.backends.cpu.get_cpu_capability())\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `python -c` imports from its cwd
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == capability.upper()
