"""Would a bfloat16 language model serve TRACE-mini better? Side by side with the float32 model the app loads.

    PYTHONPATH=. python scripts/bf16_probe.py [assets/minibeir] [assets/trace-mini]

Both on one torch thread (as the app serves), both with `cpu_decoding_layout`; the bf16 copy casts the LM
(transformer and tied embeddings) to bfloat16 and keeps the image path, the `<|emb|>` head and the name head in
float32. Prints: resident memory after loading each, CoT decoding tokens/s (batch 1, reasoning forced, the two
alternated, medians), candidates/s and the cosine of candidate embeddings, and for complex and simple test
queries in auto mode how many keep their route and their chain of thought, and the cosine of their embeddings.
An experiment, not a serving option: `--precision` offers fp32 and int8 (see README › Benchmarks).
"""

from __future__ import annotations

import statistics
import sys
import time
import types
from pathlib import Path

import torch

from bench.model import _queries
from bench.precision import decode_rate
from trace_core.backbones.mini import MiniBackbone
from trace_core.encoder import TraceEncoder


def rss_mb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


def to_bf16(backbone: MiniBackbone) -> None:
    """The LM's weights to bfloat16, in place; inputs cast at its boundary, logits and soft words in float32."""
    m = backbone.model
    m.lm.to(torch.bfloat16)
    batch, word_table = m.batch, m.word_table
    m.batch = lambda seqs: (lambda e, k, p: (e.to(torch.bfloat16), k, p))(*batch(seqs))
    m.word_table = lambda: word_table().float()

    def logits(self, hidden):
        base = self.lm.get_output_embeddings()(hidden).float()
        return torch.cat([base, (hidden.float() @ self.emb_out + self.emb_bias).unsqueeze(-1)], dim=-1)

    m.logits = types.MethodType(logits, m)


def cosines(a, b) -> torch.Tensor:
    a = torch.stack([torch.as_tensor(x).float() for x in a])
    b = torch.stack([torch.as_tensor(x).float() for x in b])
    return torch.nn.functional.cosine_similarity(a, b)


def main(root: Path, model: str) -> None:
    torch.set_num_threads(1)
    base = rss_mb()
    fp32 = MiniBackbone.from_pretrained(model)
    after_fp32 = rss_mb()
    bf16 = MiniBackbone.from_pretrained(model)
    to_bf16(bf16)
    after_bf16 = rss_mb()
    print(f"memory: fp32 model +{after_fp32 - base} MB; bf16 model +{after_bf16 - after_fp32} MB "
          f"(weights: fp32 {sum(p.numel() * p.element_size() for p in fp32.model.parameters()) >> 20} MB, "
          f"bf16 {sum(p.numel() * p.element_size() for p in bf16.model.parameters()) >> 20} MB)")
    ea, eb = TraceEncoder(fp32), TraceEncoder(bf16)
    edits, _ = _queries(root, "emoji_task2", 40, route="reason")
    image_edits, _ = _queries(root, "emoji_task8", 40, route="reason")
    simple, cands = _queries(root, "emoji_task0", 40)
    for e in (ea, eb):
        decode_rate(e, edits[0])  # warm-up
    ra, rb = [], []
    for q in edits[1:8]:
        ra.append(decode_rate(ea, q)[0])
        rb.append(decode_rate(eb, q)[0])
    print(f"CoT decoding, tokens/s (median of {len(ra)}): fp32 {statistics.median(ra):.1f}, "
          f"bf16 {statistics.median(rb):.1f}")
    t = time.perf_counter()
    ca = ea.encode_candidates(cands, batch_size=len(cands))
    ta = time.perf_counter() - t
    t = time.perf_counter()
    cb = eb.encode_candidates(cands, batch_size=len(cands))
    tb = time.perf_counter() - t
    cos = cosines(ca, cb)
    print(f"candidates/s: fp32 {len(cands) / ta:.1f}, bf16 {len(cands) / tb:.1f}; "
          f"embedding cosine min {cos.min():.5f}, mean {cos.mean():.5f}")
    for name, qs in (("emoji_task2 complex", edits), ("emoji_task8 complex", image_edits), ("emoji_task0", simple)):
        a = ea.encode_queries(qs, reasoning="auto", batch_size=8)
        b = eb.encode_queries(qs, reasoning="auto", batch_size=8)
        cos = cosines([x.embedding for x in a], [y.embedding for y in b])
        print(f"{name}: {len(qs)} queries, same route {sum(x.route == y.route for x, y in zip(a, b, strict=True))}, "
              f"same CoT {sum(x.cot == y.cot for x, y in zip(a, b, strict=True))}, embedding cosine min {cos.min():.4f}, "
              f"median {cos.median():.5f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("assets/minibeir"),
         sys.argv[2] if len(sys.argv) > 2 else "assets/trace-mini")
