"""Precision: chain-of-thought decoding against the machine's memory-bandwidth bound, fp32 and int8 (every LM
weight in int8, `trace_core/backbones/weight_int8.py`) side by side, each decoded as the app does (the fused
step, `trace_core/backbones/fused_decode.py`) and through transformers' step, and fp32 through transformers
with its weights as loaded (without `cpu_decoding_layout`: row-major, the merged LoRA wrappers kept).

Decoding one token at batch 1 reads every weight the step uses once, so its speed limit is the machine's memory
bandwidth over the bytes read per token. Measured here, on one thread (the app serves on one):
- bandwidth: a single-threaded sum over a 1 GiB float32 tensor (a streaming read), median of 5, in GB/s, on
  4 KB pages and on transparent huge pages (where the fused step keeps its weights); the bound takes the faster;
- bytes per token: the LM's weights a decode step reads (every linear layer, norms, one embedding row,
  `<|emb|>`'s output row), from the loaded modules, so int8 weights count one byte each (plus their scales);
  the KV cache a step also reads is left out (the issue's bound counts weights: 46 KB a cache column, float32
  keys and values of 30 layers: about 3 MB a token for a 45-token prompt and its CoT, 2-3 % of int8's 135 MB);
- tokens/s: the time between the first and the last generated token of `stream_query` (prefill excluded),
  reasoning forced, the three alternated, medians;
- ratio = tokens/s / (GB/s / bytes per token), the share of the bound reached.
Also per precision: the model's weight bytes held (LM, vision encoder, heads), candidates/s (one batched
forward), single-search latency of a direct-routed and of a reasoning query (encode + exact search in the pool;
queries share their prompt's start as the app serves them, `interface.SERVING`), and the held-out recall of the two evaluations (`python -m trace_core.evaluate ... --precision int8`; the bench
reads their results.json, it does not rerun them).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bench.model import _queries
from trace_core.backbones.fused_decode import huge_page_buffer
from trace_core.backbones.mini import MiniBackbone
from trace_core.embed_pool import pool_index
from trace_core.encoder import TraceEncoder
from trace_core.interface import SERVING
from trace_core.loading import load_model, wait_for_fused_decoding
from trace_core.mbeir import discover_pairs, load_pair
from trace_core.records import CotDelta, QueryResult


def _sum_rate(t: torch.Tensor, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        t.sum()
        rates.append(t.numel() * t.element_size() / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def memory_gbps(gib: float = 1.0, repeats: int = 5) -> dict[str, float]:
    """The machine's streaming read rate on one thread, GB/s: a sum over `gib` GiB of float32, median of `repeats`,
    on ordinary 4 KB pages (torch's allocator) and on transparent huge pages (the buffer the fused step's weights
    live in, `fused_decode.huge_page_buffer`). The bound takes the faster: the best this machine reads."""
    n = int(gib * (1 << 30)) // 4
    plain = _sum_rate(torch.ones(n), repeats)
    buffer = huge_page_buffer(n * 4)
    huge = torch.from_numpy(buffer).view(torch.float32)
    huge.fill_(1.0)
    rates = {"4k_pages": plain, "huge_pages": _sum_rate(huge, repeats)}
    del huge, buffer
    return {**rates, "best": max(rates.values())}


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def bytes_per_token(lm: nn.Module, extra_params: int = 0) -> int:
    """Weight bytes one decode step reads: every linear layer (int8 ones at one byte a weight plus their
    scales), every norm, one row of the input embeddings; `extra_params` float32 values besides."""
    from trace_core.backbones.weight_int8 import Int8Embedding, Int8Linear, _Head

    total = extra_params * 4
    for name, module in lm.named_modules():  # each module once (the tied int8 head's table is the embedding)
        if "lora_" in name:  # merged LoRA adapters (weights as loaded): kept, but a decode step skips them
            continue
        if isinstance(module, Int8Linear):
            total += nbytes([module.qweight, module.scale])
        elif isinstance(module, _Head):  # the whole int8 table, as the output head
            total += nbytes([module.table.qweight, module.table.scale_bf16])
        elif isinstance(module, Int8Embedding):  # one row, as the input embedding
            total += module.embedding_dim + module.scale.element_size()
        elif isinstance(module, nn.Embedding):
            total += module.weight.shape[1] * module.weight.element_size()
        elif isinstance(module, nn.Linear) or "Norm" in type(module).__name__:
            total += nbytes(module.parameters(recurse=False))
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer a model holds (each tensor once)."""
    return nbytes({id(t): t for t in [*model.parameters(), *model.buffers()]}.values())


def decode_rate(encoder, query) -> tuple[float, int]:
    """Tokens/s between the first and the last generated token (prefill excluded), and the token count."""
    stamps = []
    for ev in encoder.stream_query(query, reasoning="always"):
        if isinstance(ev, CotDelta):
            stamps.append((time.perf_counter(), ev.n_tokens))
        elif isinstance(ev, QueryResult):
            n = ev.cot_tokens
    if len(stamps) < 2:
        return float("nan"), n
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    return (n1 - n0) / (t1 - t0), n


def search_latency(encoder, index, query, reasoning: str) -> tuple[float, str, int]:
    t = time.perf_counter()
    r = encoder.encode_queries([query], reasoning=reasoning)[0]
    index.search(r.embedding, 10)
    return time.perf_counter() - t, r.route, r.cot_tokens


def recall(results: Path) -> dict | None:
    """Mean headline and R@5 of an evaluation (evaluate's results.json, or the report's 'TRACE-mini auto')."""
    if not results.is_file():
        return None
    data = json.loads(results.read_text())
    run = data["runs"]["TRACE-mini auto"] if "runs" in data else data
    return {"mean_headline": round(100 * run["average"]["headline"], 2),
            "mean_recall@5": round(100 * run["average"]["recall@5"], 2),
            "per_pair_headline": {p: round(100 * m.get("headline", m["recall@5"]), 1) for p, m in run["pairs"].items()}}


TRANSFORMERS = "{}, transformers step"
ROW_MAJOR = "fp32, transformers step, weights as loaded"


def run(model: str, root: Path, repeats: int, evaluations: dict[str, Path], cache_dir: str) -> dict:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # as the app serves: the fused step, queries sharing their prompt's start (SERVING), one thread
        encoders = {p: load_model(model, precision=p, config=SERVING) for p in ("fp32", "int8")}
        for e in encoders.values():
            wait_for_fused_decoding(e)
        for p in ("fp32", "int8"):  # the same weights, each step a transformers forward
            encoders[TRANSFORMERS.format(p)] = TraceEncoder(MiniBackbone.from_pretrained(model, precision=p, fused=False),
                                                            SERVING)
        # the same fp32 weights as loaded, without cpu_decoding_layout (row-major, LoRA wrappers kept): its gain
        encoders[ROW_MAJOR] = TraceEncoder(MiniBackbone.from_pretrained(model, precision="fp32", cpu_layout=False,
                                                                        fused=False), SERVING)
        gbps = memory_gbps()
        complex_, _ = _queries(root, "emoji_task2", max(repeats, 3), route="reason")
        simple, cands = _queries(root, "emoji_task0", 16)
        (pair,) = discover_pairs(root, "test", "emoji_task2")
        _, pool, _ = load_pair(pair)
        index = pool_index(encoders["int8"], pool, root, cache_dir, pair.pool_file.stem, progress=False,
                           shipped=[Path(__file__).resolve().parents[1] / "assets" / "cache"])
        rates: dict[str, list[float]] = {p: [] for p in encoders}
        tokens: dict[str, list[int]] = {p: [] for p in encoders}
        latency = {p: {"direct": [], "reason": []} for p in encoders}
        cand_rate: dict[str, list[float]] = {p: [] for p in encoders}
        for e in encoders.values():  # warm-up
            decode_rate(e, complex_[0])
        for i in range(repeats):
            for p, e in encoders.items():  # alternated: drift hits both alike
                r, n = decode_rate(e, complex_[i % len(complex_)])
                rates[p].append(r)
                tokens[p].append(n)
                t = time.perf_counter()
                e.encode_candidates(cands, batch_size=len(cands))
                cand_rate[p].append(len(cands) / (time.perf_counter() - t))
                for route, q in (("direct", simple[i % len(simple)]), ("reason", complex_[i % len(complex_)])):
                    s, got, _ = search_latency(e, index, q, "auto")
                    if got == route:
                        latency[p][route].append(s)
        rows = []
        for p, e in encoders.items():
            lm = e.backbone.model.lm
            per_token = bytes_per_token(lm, extra_params=e.backbone.hidden_size + 1)
            bound = gbps["best"] * 1e9 / per_token
            rate = statistics.median(rates[p])
            rows.append({
                "precision": p, "fused_step": e.backbone.fused is not None,
                "weights_MB": round(model_bytes(e.backbone.model) / 1e6, 1),
                "memory_GBps": round(gbps["best"], 1),
                "memory_GBps_4k_pages": round(gbps["4k_pages"], 1),
                "memory_GBps_huge_pages": round(gbps["huge_pages"], 1), "MB_per_token": round(per_token / 1e6, 1),
                "bound_tokens_per_s": round(bound, 1), "cot_tokens_per_s": round(rate, 1),
                "ratio_to_bound": round(rate / bound, 3),
                "candidates_per_s": round(statistics.median(cand_rate[p]), 2),
                "search_direct_s": round(statistics.median(latency[p]["direct"]), 3) if latency[p]["direct"] else None,
                "search_reasoning_s": round(statistics.median(latency[p]["reason"]), 3) if latency[p]["reason"] else None,
                "reasoning_cot_tokens": round(statistics.mean(tokens[p]), 1),
            })
        return {"rows": rows, "recall": {p: recall(path) for p, path in evaluations.items()}}
    finally:
        torch.set_num_threads(before)
