"""How fast does one CPU thread stream a decoding step's weights through each kind of matrix-vector product?

    PYTHONPATH=. python scripts/gemv_probe.py

The 210 matrices of one SmolLM2-135M decoding step (30 layers: q, k, v, o, gate, up, down; random weights of the
same shapes), each multiplied by one vector, as a decoding step does, then by 4 and 16 (a batched step):
float32 row-major (as loaded) and column-major (`cpu_decoding_layout`), bfloat16, and int8 with torch's
`_weight_int8pack_mm` (bfloat16 vectors, what `--precision int8` runs for up to 16 rows). Prints GB/s of weights
read at one vector (the bytes each format holds) and ms per step at 1, 4 and 16, medians of 20, beside a plain
single-thread read of 1 GiB (the bound `bench/precision.py` uses).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.nn.functional import linear

from trace_core.backbones.weight_int8 import quantise_rows

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)] * 30


def median_s(step, repeats: int = 20) -> float:
    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    weights = [torch.randn(o, i) * 0.02 for o, i in SHAPES]
    n = sum(w.numel() for w in weights)
    kinds = {  # name: (bytes per weight, matrices, vector dtype, product)
        "float32, row-major": (4, [w for w in weights], torch.float32, linear),
        "float32, column-major": (4, [w.t().contiguous().t() for w in weights], torch.float32, linear),
        "bfloat16": (2, [w.to(torch.bfloat16) for w in weights], torch.bfloat16, linear),
        "int8 (_weight_int8pack_mm)": (1, [(q, s.to(torch.bfloat16)) for q, s in map(quantise_rows, weights)],
                                       torch.bfloat16, lambda v, qs: torch.ops.aten._weight_int8pack_mm(v, *qs)),
    }
    print(f"{'':<28} {'GB/s':>6}  ms per step at 1 / 4 / 16 vectors")
    for name, (size, mats, dtype, product) in kinds.items():
        ms = []
        for rows in (1, 4, 16):
            x = torch.randn(rows, 1536).to(dtype)
            parts = {576: x[:, :576].contiguous(), 1536: x}

            def step(mats=mats, parts=parts, product=product):
                for m in mats:
                    product(parts[m[0].shape[1] if isinstance(m, tuple) else m.shape[1]], m)

            ms.append(median_s(step))
        print(f"{name:<28} {n * size / ms[0] / 1e9:6.1f}  " + " / ".join(f"{t * 1e3:5.1f}" for t in ms)
              + f"  ({n * size / 1e6:.0f} MB)")
    a = torch.ones(1 << 28)
    s = median_s(a.sum, 5)
    print(f"{'plain read (sum of 1 GiB)':<28} {a.numel() * 4 / s / 1e9:6.1f} GB/s")


if __name__ == "__main__":
    main()
