"""trace_core/backbones/fused_decode.py: TRACE-mini's decoding step as one compiled call computes what the
transformers step computes (float32 and int8 weights), through the encoder's whole loop: left-padded prompts
of different lengths, rows leaving the batch, a CoT longer than the cache's first room, a switch-over in the
middle of a CoT; and models it does not compute exactly keep the transformers step."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tests.tiny_mini import build_tiny_mini
from trace_core.backbones import fused_decode
from trace_core.backbones.base import RenderedPrompt
from trace_core.backbones.mini import MiniBackbone
from trace_core.encoder import EncoderConfig, TraceEncoder
from trace_core.records import Query

PROMPTS = ["a red fox", "two zebras standing in the long grass near a river at dusk", "emoji of a cat",
           "which animal has black and white stripes and lives in africa"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return build_tiny_mini(tmp_path_factory.mktemp("fused") / "mini", seed=3)


def _pair(mini, precision: str) -> tuple[MiniBackbone, MiniBackbone]:
    """The same checkpoint twice: decoding through transformers, and through the fused step (compiled now)."""
    plain = MiniBackbone.from_pretrained(mini, precision=precision, fused=False)
    fused = MiniBackbone.from_pretrained(mini, precision=precision, fused=False)
    assert fused.use_fused_decoding() and fused.fused is not None
    return plain, fused


def _teacher_forced(backbone: MiniBackbone, steps: list[list[int]], keep_after: dict[int, list[int]]):
    """Prefill PROMPTS, then feed steps[t] (one token per remaining row); rows are dropped as keep_after says.
    Returns the (hidden, logits, best) of every step (best: the argmax the step computed, or None)."""
    out = backbone.prefill([RenderedPrompt(p, []) for p in PROMPTS])
    state, seen = out.state, []
    for t, tokens in enumerate(steps):
        if t in keep_after:
            state = backbone.select(state, torch.tensor(keep_after[t]))
        step = backbone.step(state, torch.tensor(tokens))
        state = step.state
        seen.append((step.hidden.clone(), step.logits.clone(), step.best))
    return seen


def _steps(vocab: int, emb_token: int) -> tuple[list[list[int]], dict[int, list[int]]]:
    """Random tokens for 4 rows, then rows 0 and 2 leave, then row 1 (of the two left) alone; 80 steps outgrow the
    cache's first room (64)."""
    rng = np.random.default_rng(0)
    sizes = [4] * 10 + [2] * 30 + [1] * 40
    steps = [rng.integers(0, vocab, n).tolist() for n in sizes]
    steps[5][2] = emb_token  # the <|emb|> token's own input vector
    return steps, {10: [1, 3], 40: [1]}


def _largest_gap(got, want, which: int) -> float:
    """The largest difference of hidden states (0) or logits (1) over the steps, relative to the step's largest."""
    return max(float((a[which] - b[which]).abs().max()) / float(b[which].abs().max())
               for a, b in zip(got, want, strict=True))


def test_fused_steps_compute_the_transformers_steps(mini):
    plain, fused = _pair(mini, "fp32")
    steps, keep_after = _steps(plain.model.vocab, plain.emb_token_id)
    got, want = _teacher_forced(fused, steps, keep_after), _teacher_forced(plain, steps, keep_after)
    for (h1, l1, best), (h2, l2, _) in zip(got, want, strict=True):
        assert h1.shape == h2.shape and l1.shape == l2.shape == (h1.shape[0], plain.model.vocab + 1)
        assert torch.equal(best, l1.argmax(-1))  # the step's own greedy choice: torch's argmax of its logits
    # sums in another order: measured 3e-7 of the largest value; a sign error in the rotary embedding moves 3e-3
    assert _largest_gap(got, want, 0) <= 1e-5 and _largest_gap(got, want, 1) <= 1e-5


def test_fused_int8_steps_are_as_close_to_float32_as_torchs_int8_kernel(mini):
    """int8 weights: the fused step multiplies them with the input quantised to int16 (`_quantise`), torch's int8
    kernel with the input rounded to bfloat16. Neither is exact; the fused step must be as close to the float32
    model as torch's int8 step is (measured: hidden states 8.6e-3 against 9.4e-3, logits 6.6e-3 against 7.4e-3),
    and close to torch's int8 step (1.2e-3 and 4.3e-3)."""
    plain8, fused8 = _pair(mini, "int8")
    exact = MiniBackbone.from_pretrained(mini, precision="fp32", fused=False)
    steps, keep_after = _steps(plain8.model.vocab, plain8.emb_token_id)
    got, torch8, want = (_teacher_forced(b, steps, keep_after) for b in (fused8, plain8, exact))
    for which in (0, 1):
        assert _largest_gap(got, want, which) <= 1.05 * _largest_gap(torch8, want, which)
        assert _largest_gap(got, torch8, which) <= 1e-2


@pytest.mark.parametrize("rows, n_in", [(1, 576), (3, 1536), (2, 200), (1, 40)])
def test_the_int8_kernel_is_the_integer_arithmetic_it_describes(rows, n_in):
    """`_matvec_int8` (x86 integer dot products written in LLVM IR) against the same arithmetic in numpy: whole
    groups of 64, a shorter last group, several rows, inputs with an outlier."""
    rng = np.random.default_rng(n_in)
    w = rng.integers(-127, 128, (48, n_in)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, 48).astype(np.float32)
    x = rng.standard_normal((rows, n_in)).astype(np.float32)
    x[0, 7] = 60.0  # one value far above the others, as LLM activations have
    groups = (n_in + fused_decode.GROUP - 1) // fused_decode.GROUP
    xq, xs = np.empty((rows, n_in), np.int16), np.empty((rows, groups), np.float32)
    fused_decode._quantise(x, xq, xs)
    if n_in % 64 == 0:  # each group's step: its largest magnitude over 32767
        assert np.allclose(xs, np.abs(x).reshape(rows, groups, 64).max(-1) / 32767, rtol=1e-6)
    steps = np.repeat(xs.astype(np.float64), fused_decode.GROUP, axis=1)[:, :n_in]
    assert np.all(np.abs(xq * steps - x) <= (0.5 + 1e-3) * steps)  # half a step of each value, + float32 rounding
    y = np.empty((rows, 48), np.float32)
    fused_decode._matvec_int8(w, scale, xq, xs, y)
    want = np.zeros((rows, 48))
    for g in range(groups):
        cut = slice(g * 64, min(n_in, g * 64 + 64))
        want += (xq[:, cut].astype(np.int64) @ w[:, cut].T.astype(np.int64)) * xs[:, g : g + 1].astype(np.float64)
    want *= scale
    assert np.allclose(y, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert np.allclose(y, x @ (w.astype(np.float32).T * scale), rtol=0, atol=2e-4 * np.abs(want).max())




@pytest.mark.parametrize("n_in", [576, 1536, 200, 40])
def test_the_quantiser_rounds_as_its_float32_definition(n_in):
    """`_quantise` (whole groups in vector code): each group's step is its largest magnitude / 32767 and each value
    rint(x * (1 / step)), in float32, bit for bit; an all-zero group takes step 1, ties round to even."""
    rng = np.random.default_rng(n_in)
    x = (rng.standard_normal((3, n_in)) * rng.uniform(0.01, 100, (3, 1))).astype(np.float32)
    x[0, : min(n_in, 64)] = 0.0
    x[1, 5] = -700.0
    x[2, : min(n_in, 64)] = np.float32(0.5)
    groups = (n_in + 63) // 64
    xq, xs = np.empty((3, n_in), np.int16), np.empty((3, groups), np.float32)
    fused_decode._quantise(x, xq, xs)
    for g in range(groups):
        part = x[:, g * 64 : (g + 1) * 64]
        top = np.abs(part).max(axis=1)
        step = np.where(top > 0, top / np.float32(32767.0), np.float32(1.0)).astype(np.float32)
        inv = (np.float32(1.0) / step).astype(np.float32)
        assert np.array_equal(xs[:, g], step)
        assert np.array_equal(xq[:, g * 64 : (g + 1) * 64], np.rint(part * inv[:, None]).astype(np.int16))

@pytest.mark.parametrize("rows, n_in", [(4, 576), (9, 1536), (6, 200), (5, 40)])
def test_a_batch_takes_the_int8_kernel_rows_at_a_time_with_the_same_numbers(rows, n_in):
    """From ROWS rows on, `_linear` takes `_matvec_int8_rows` (the weights widened once for ROWS rows; the rows
    past the last whole block one at a time): every row's numbers are those of `_matvec_int8`, bit for bit."""
    rng = np.random.default_rng(rows)
    w = rng.integers(-127, 128, (37, n_in)).astype(np.int8)
    scale = rng.uniform(0.001, 0.01, 37).astype(np.float32)
    x = rng.standard_normal((rows, n_in)).astype(np.float32) * rng.uniform(0.1, 10, (rows, 1)).astype(np.float32)
    x[-1, 3] = 80.0
    groups = (n_in + fused_decode.GROUP - 1) // fused_decode.GROUP
    xq, xs = np.empty((rows, n_in), np.int16), np.empty((rows, groups), np.float32)
    fused_decode._quantise(x, xq, xs)
    one, many, linear = (np.full((rows, 37), np.nan, np.float32) for _ in range(3))
    fused_decode._matvec_int8(w, scale, xq, xs, one)
    fused_decode._matvec_int8_rows(w, scale, xq, xs, many)
    fused_decode._linear(w, scale, x, xq, xs, linear, False, True)
    assert rows >= fused_decode.ROWS and np.array_equal(one, many) and np.array_equal(one, linear)


def test_the_encoder_writes_the_same_cots_and_embeddings(mini):
    plain, fused = _pair(mini, "fp32")
    config = EncoderConfig(max_cot_tokens=90)  # past the cache's first room: it grows
    queries = [Query(qid=f"q{i}", text=p, instruction="Find the matching image.") for i, p in enumerate(PROMPTS)]
    a = TraceEncoder(plain, config).encode_queries(queries, reasoning="always")
    b = TraceEncoder(fused, config).encode_queries(queries, reasoning="always")
    assert [r.cot_token_ids for r in a] == [r.cot_token_ids for r in b]
    assert max(r.cot_tokens for r in a) > 64
    # with the repetition guard, the step's argmax gives way where it would repeat an n-gram
    guarded = [TraceEncoder(bb, config).encode_queries(queries, reasoning="always", no_repeat_ngram=2)
               for bb in (plain, fused)]
    assert [r.cot_token_ids for r in guarded[0]] == [r.cot_token_ids for r in guarded[1]]
    assert [r.cot_token_ids for r in guarded[0]] != [r.cot_token_ids for r in a]  # the guard changed some
    for x, y in zip(a, b, strict=True):
        assert float(np.dot(x.embedding, y.embedding)) > 0.99999
        assert x.stop_reason == y.stop_reason


def test_a_cot_under_way_carries_on_in_the_fused_step(mini):
    """The background compile switches decoding over between two steps: the transformers cache is taken over."""
    plain, fused = _pair(mini, "fp32")
    decoder, fused.fused = fused.fused, None
    out = fused.prefill([RenderedPrompt(p, []) for p in PROMPTS])
    first = fused.step(out.state, torch.tensor([5, 6, 7, 8]))  # transformers
    fused.fused = decoder  # the compile finished
    second = fused.step(first.state, torch.tensor([9, 10, 11, 12]))
    assert second.state.fused is not None
    ref = plain.step(plain.step(plain.prefill([RenderedPrompt(p, []) for p in PROMPTS]).state,
                                torch.tensor([5, 6, 7, 8])).state, torch.tensor([9, 10, 11, 12]))
    assert torch.allclose(second.logits, ref.logits, rtol=1e-4, atol=1e-4 * float(ref.logits.abs().max()))


def test_loading_compiles_in_the_background_and_switches_on(mini):
    backbone = MiniBackbone.from_pretrained(mini)
    assert backbone.fused_ready.wait(120)
    assert backbone.fused is not None


def test_benchmarks_and_evaluations_can_wait_for_the_switch(mini, monkeypatch):
    from trace_core.loading import load_model, wait_for_fused_decoding

    encoder = load_model(str(mini))
    assert wait_for_fused_decoding(encoder) is True and encoder.backbone.fused is not None
    monkeypatch.setenv("TRACE_FUSED_DECODING", "0")
    assert wait_for_fused_decoding(load_model(str(mini))) is False
    assert wait_for_fused_decoding(object()) is False  # an encoder without a backbone: nothing to wait for


def test_models_it_does_not_compute_exactly_keep_the_transformers_step(tmp_path, monkeypatch):
    directory = build_tiny_mini(tmp_path / "biased", seed=1)
    config = json.loads((directory / "lm" / "config.json").read_text())
    config["attention_bias"] = True  # biases the fused step has no room for
    (directory / "lm" / "config.json").write_text(json.dumps(config))
    backbone = MiniBackbone.from_pretrained(directory, fused=False)
    assert not fused_decode.supports(backbone.model.lm)
    assert backbone.use_fused_decoding() is False and backbone.fused is None and backbone.fused_ready.is_set()
    result = TraceEncoder(backbone, EncoderConfig(max_cot_tokens=8)).encode_queries(
        [Query(qid="q", text="a cat", instruction="Find it.")], reasoning="always")[0]
    assert result.cot_tokens > 0  # still decodes, through transformers


def test_the_switch_can_be_turned_off(mini, monkeypatch):
    monkeypatch.setenv("TRACE_FUSED_DECODING", "0")
    backbone = MiniBackbone.from_pretrained(mini)
    assert backbone.fused_ready.is_set() and backbone.fused is None


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_other_process_compiles_what_this_one_loads(mini, precision, tmp_path):
    """The background compile runs in another process (it would hold this one's GIL for some 13 s): what it
    leaves in numba's cache must be the kernels a real model's decoder takes, so that loading them compiles
    nothing. Checked in a fresh process with a fresh cache folder."""
    import subprocess
    import sys
    from pathlib import Path

    code = f"""
from trace_core.backbones import fused_decode as fd
from trace_core.backbones.mini import MiniBackbone
b = MiniBackbone.from_pretrained({str(mini)!r}, precision={precision!r}, fused=False)
d = fd.FusedDecoder(b.model.lm, b.model.emb_out, b.model.emb_bias, b.model.emb_in)
assert fd.compile_in_subprocess(d.int8, d.cols)
d.warm_up()
print("hits", sum(fd._step.stats.cache_hits.values()), "misses", sum(fd._step.stats.cache_misses.values()))
"""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "hits 1 misses 0"


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state: the parent's pid
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")
def test_the_compile_process_ends_with_the_app(tmp_path):
    """An app stopped during its first 13 s leaves no compiler running behind it."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(root)}  # empty cache: a long compile
    parent = subprocess.Popen([sys.executable, "-c", "from trace_core.backbones import fused_decode as fd\n"
                               "fd.compile_in_subprocess(True, False)"], env=env)
    try:
        deadline = time.time() + 60
        while not (kids := _children(parent.pid)):
            assert time.time() < deadline and parent.poll() is None, "no compile process started"
            time.sleep(0.1)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10
        while any(_running(k) for k in kids):
            assert time.time() < deadline, "the compile process outlived its parent"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_weights_move_to_one_huge_page_buffer_in_step_order_with_their_values(mini, precision):
    backbone = MiniBackbone.from_pretrained(mini, precision=precision, fused=False)
    lm = backbone.model.lm
    weights = fused_decode.decode_weights(lm)
    before = [(w.clone(), w.stride(), id(w)) for w in weights]
    table = lm.get_input_embeddings()
    moved = fused_decode.move_to_huge_pages(weights)
    after = fused_decode.decode_weights(lm)
    for w, (value, stride, ident) in zip(after, before, strict=True):
        assert id(w) == ident and w.stride() == stride and torch.equal(w, value)  # the modules' own tensors
    starts = [w.data_ptr() for w in after]
    assert starts == sorted(starts) and starts[0] % fused_decode.HUGE_PAGE == 0  # one buffer, in step order
    assert starts[-1] + after[-1].numel() * after[-1].element_size() - starts[0] <= moved
    # the input embeddings read the moved table too (tied to the head, or the int8 table both share)
    shared = table.qweight if precision == "int8" else table.weight
    assert shared.data_ptr() == starts[-1]
    with pytest.raises(ValueError, match="not dense"):
        fused_decode.move_to_huge_pages([torch.zeros(4, 6)[:, ::2]])
