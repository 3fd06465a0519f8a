"""One decoding step of a Llama-family LM in one compiled call, for the CPU: TRACE-mini's chain-of-thought
decoding near the machine's memory-bandwidth bound.

Decoding one token reads every weight once and does little else, so its speed limit is the memory bandwidth.
Through transformers a step of SmolLM2-135M runs each of its 30 layers as a score of torch operators, each a
Python call with its dispatch and its allocation, and torch's matrix-vector kernels stream 6-14 GB/s on one
thread here (`scripts/gemv_probe.py`) against 27-33 GB/s for a plain read. This module runs the whole step
(every layer's norms, projections, rotary embedding, attention over the KV cache, MLP, the final norm and the
output head) as one numba function with loops written for streaming: each weight matrix is read once per step
whatever the batch size, from its own memory (the torch modules' weights, no copy). Share of the bandwidth
bound at batch 1 (bench/precision.py): float32 0.28-0.35 through transformers, 0.70-0.88 here; int8 0.13-0.15
through transformers, 0.62-0.72 here (0.46-0.50 while this step widened each int8 weight to float32, which is
compute-bound on one core; 0.62-0.63 before its weights moved to huge pages, `move_to_huge_pages`).

The numbers:
- float32 weights: those of the torch step up to float rounding (float32 products, summed in another order);
- int8 weights (`weight_int8`): int8 x int16 integer dot products. Each input vector is quantised to int16 in
  groups of 64 values, each group scaled to its largest magnitude (`_quantise`), and each group's integer sum
  times its scale and the row's scale is summed in float32 (`_dot_groups`, x86 VNNI where the CPU has it; from
  batch 4 on, 4 rows at a time, `_dot_groups_rows`, the same sums: a batched step is bound by them). This
  is not torch's int8 kernel, which rounds the input to bfloat16 (8 significant bits against about 15 here) and
  its output too: the fused step is at least as close to the float32 model as torch's int8 step is
  (tests/test_fused_decode.py), and differs from it by about a bfloat16 rounding.
Norms, rotary embedding, attention and the residual stream are float32, as in transformers.

The prefill stays in torch (transformers): its KV cache is copied into this module's cache at the first step.
`supports(lm)` says whether a model is one this step computes exactly (Llama, no biases, SiLU, default rotary
embedding, no sliding window); `MiniBackbone` falls back to the torch step otherwise, and when numba is absent.
The first call compiles the kernels (8-13 s here), cached on disk by numba for later processes (1 s).
"""

from __future__ import annotations

import math
import mmap
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numba as nb
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.typed import List

from .base import cache_layer_kv

_FLAGS = dict(fastmath=True, cache=True, nogil=True)
_WARM: set[tuple[bool, bool]] = set()  # the weight kinds (int8, cols) whose step this process has compiled or loaded


GROUP = 64  # int8 weights: the input is quantised to int16 in groups of this many values, each with its scale


ROWS = 4  # batched decoding: `_dot_groups_rows` takes this many input rows at a time


def _contiguous(*arrays) -> bool:
    """Whether these numba array types are C-contiguous: the vector code below reads rows as plain memory."""
    return all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)


def _emit_dot_groups(builder, wp, xps, sps, n):
    """LLVM IR for `_dot_groups` over several input rows at once: wp the int8 weights, xps / sps each row's int16
    values and group scales (pointers), n the length. Each 32 weights are widened once for all the rows; every
    row's sums are formed exactly as for one row alone (the same instructions, in the same order). -> one float32
    sum per row."""
    i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
    v32i8, v32i16, v32i32 = ir.VectorType(i8, 32), ir.VectorType(i16, 32), ir.VectorType(i32, 32)
    v16i32, v16f32 = ir.VectorType(i32, 16), ir.VectorType(f32, 16)
    module = builder.module
    fma = cgutils.get_or_insert_function(module, ir.FunctionType(v16f32, [v16f32] * 3), "llvm.fma.v16f32")
    total = cgutils.get_or_insert_function(module, ir.FunctionType(f32, [f32, v16f32]),
                                           "llvm.vector.reduce.fadd.v16f32")
    groups = builder.udiv(n, ir.Constant(i64, GROUP))
    even = ir.Constant(v16i32, list(range(0, 32, 2)))
    odd = ir.Constant(v16i32, list(range(1, 32, 2)))
    zeros_f = ir.Constant(v16f32, None)
    entry = builder.block
    head = builder.append_basic_block("dot.head")
    body = builder.append_basic_block("dot.body")
    done = builder.append_basic_block("dot.done")
    builder.branch(head)
    builder.position_at_end(head)
    g = builder.phi(i64)
    accs = [builder.phi(v16f32) for _ in xps]
    g.add_incoming(ir.Constant(i64, 0), entry)
    for acc in accs:
        acc.add_incoming(zeros_f, entry)
    builder.cbranch(builder.icmp_unsigned("<", g, groups), body, done)
    builder.position_at_end(body)
    start = builder.mul(g, ir.Constant(i64, GROUP))
    lanes = [ir.Constant(v16i32, None)] * len(xps)
    for chunk in range(GROUP // 32):
        at = builder.add(start, ir.Constant(i64, 32 * chunk))
        wv = builder.sext(builder.load(builder.bitcast(builder.gep(wp, [at]), v32i8.as_pointer()), align=1), v32i32)
        for r, xp in enumerate(xps):
            xv = builder.load(builder.bitcast(builder.gep(xp, [at]), v32i16.as_pointer()), align=2)
            prod = builder.mul(wv, builder.sext(xv, v32i32), flags=["nsw"])
            pairs = builder.add(builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd),
                                flags=["nsw"])
            lanes[r] = builder.add(lanes[r], pairs, flags=["nsw"])
    for r, (sp, acc) in enumerate(zip(sps, accs, strict=True)):
        scale = builder.load(builder.gep(sp, [g]))
        scale = builder.shuffle_vector(builder.insert_element(zeros_f, scale, ir.Constant(i32, 0)), zeros_f,
                                       ir.Constant(v16i32, None))
        acc.add_incoming(builder.call(fma, [builder.sitofp(lanes[r], v16f32), scale, acc]), body)
    g.add_incoming(builder.add(g, ir.Constant(i64, 1)), body)
    builder.branch(head)
    builder.position_at_end(done)
    sums = []
    for acc in accs:
        out = builder.call(total, [ir.Constant(f32, 0.0), acc])
        out.fastmath.add("reassoc")
        sums.append(out)
    return sums


@intrinsic
def _dot_groups(typingctx, w, xq, xs, n):
    """sum over the first n // GROUP groups g of xs[g] * (w . xq over group g): w int8 [>= n], xq int16, xs float32
    [groups]. In LLVM IR, as x86 integer dot products: each 32 products of int8 x int16 summed pairwise into 16
    int32 lanes (AVX-512 VNNI's vpdpwssd where the CPU has it, vpmaddwd + vpaddd otherwise; LLVM picks), each
    group's lanes converted to float32 and scaled. 32 weights cost two instructions (widen, multiply-add)
    against six for widening each weight to float32: a step's products stream 28-29 GB/s on one core here (from
    huge pages) instead of 12-14. The int32 lanes hold at most 4 products of a group (|sum| < 2^25): no overflow."""
    sig = types.float32(w, xq, xs, types.intp)

    def codegen(context, builder, signature, args):
        wp, xp, sp = (context.make_array(signature.args[i])(context, builder, args[i]).data for i in range(3))
        return _emit_dot_groups(builder, wp, [xp], [sp], args[3])[0]

    return sig, codegen


@intrinsic
def _dot_groups_rows(typingctx, w, xq, xs, b0, n, sums):
    """`_dot_groups` of the weights w with ROWS input rows at once, xq[b0 + r] and xs[b0 + r] (2-D, each row
    contiguous), into sums[r]: the same sums, bit for bit, with each 32 weights widened once. At batch 4 and more
    the int8 step is bound by its multiply-adds, not by memory, and this saves the widening of 3 rows in 4."""
    if not _contiguous(w, xq, xs, sums):
        return None  # not typed: a strided array would be read wrongly
    sig = types.void(w, xq, xs, types.intp, types.intp, sums)

    def codegen(context, builder, signature, args):
        i8, i64 = ir.IntType(8), ir.IntType(64)
        wp = context.make_array(signature.args[0])(context, builder, args[0]).data
        rows = []
        for i in (1, 2):  # each row's pointer: data + (b0 + r) * the row stride in bytes
            array = context.make_array(signature.args[i])(context, builder, args[i])
            stride = cgutils.unpack_tuple(builder, array.strides, 2)[0]
            base = builder.bitcast(array.data, i8.as_pointer())
            rows.append([builder.bitcast(builder.gep(base, [builder.mul(builder.add(args[3], ir.Constant(i64, r)),
                                                                        stride)]), array.data.type)
                         for r in range(ROWS)])
        out = context.make_array(signature.args[5])(context, builder, args[5]).data
        for r, total in enumerate(_emit_dot_groups(builder, wp, rows[0], rows[1], args[4])):
            builder.store(total, builder.gep(out, [ir.Constant(i64, r)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _group_top(typingctx, x, lo):
    """max |x[lo + i]| over i < GROUP (float32), as four 16-lane vectors: the maximum, whatever the order."""
    if not _contiguous(x):
        return None
    sig = types.float32(x, types.intp)

    def codegen(context, builder, signature, args):
        f32, v16f32 = ir.FloatType(), ir.VectorType(ir.FloatType(), 16)
        xp = context.make_array(signature.args[0])(context, builder, args[0]).data
        fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f32, [v16f32]), "llvm.fabs.v16f32")
        vmax = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f32, [v16f32] * 2),
                                              "llvm.maxnum.v16f32")
        top = None
        for k in range(GROUP // 16):
            at = builder.add(args[1], ir.Constant(ir.IntType(64), 16 * k))
            v = builder.call(fabs, [builder.load(builder.bitcast(builder.gep(xp, [at]), v16f32.as_pointer()), align=4)])
            top = v if top is None else builder.call(vmax, [top, v])
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [v16f32]),
                                                "llvm.vector.reduce.fmax.v16f32")
        return builder.call(reduce, [top])

    return sig, codegen


@intrinsic
def _round_group(typingctx, x, xq, lo, inv):
    """xq[lo + i] = int16(rint(x[lo + i] * inv)) for i < GROUP: `_quantise`'s rounding, 16 values at a time."""
    if not _contiguous(x, xq):
        return None
    sig = types.void(x, xq, types.intp, types.float32)

    def codegen(context, builder, signature, args):
        v16f32, v16i16 = ir.VectorType(ir.FloatType(), 16), ir.VectorType(ir.IntType(16), 16)
        xp = context.make_array(signature.args[0])(context, builder, args[0]).data
        qp = context.make_array(signature.args[1])(context, builder, args[1]).data
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16f32, [v16f32]), "llvm.rint.v16f32")
        zeros = ir.Constant(v16f32, None)
        inv = builder.shuffle_vector(builder.insert_element(zeros, args[3], ir.Constant(ir.IntType(32), 0)), zeros,
                                     ir.Constant(ir.VectorType(ir.IntType(32), 16), None))
        for k in range(GROUP // 16):
            at = builder.add(args[2], ir.Constant(ir.IntType(64), 16 * k))
            v = builder.load(builder.bitcast(builder.gep(xp, [at]), v16f32.as_pointer()), align=4)
            q = builder.fptosi(builder.call(rint, [builder.fmul(v, inv)]), v16i16)
            builder.store(q, builder.bitcast(builder.gep(qp, [at]), v16i16.as_pointer()), align=2)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(**_FLAGS)
def _quantise(x, xq, xs):
    """Each row of x [B, I] as int16 in groups of GROUP (the last may be shorter), each group scaled to its
    largest magnitude: x[b, i] ~ xq[b, i] * xs[b, i // GROUP], within half a step (1 / 65534 of the group's
    largest value; bfloat16, which torch's int8 kernel rounds its input to, keeps 1 / 512 of each value).
    Whole groups in vector code (`_group_top`, `_round_group`: the same numbers as the loops of a shorter one);
    x and xq C-contiguous."""
    n = x.shape[1]
    for b in range(x.shape[0]):
        xb, qb = x[b], xq[b]
        for g in range((n + GROUP - 1) // GROUP):
            lo, hi = g * GROUP, min(n, g * GROUP + GROUP)
            if hi - lo == GROUP:
                top = _group_top(xb, lo)
            else:
                top = np.float32(0.0)
                for i in range(lo, hi):
                    top = max(top, abs(xb[i]))
            step = top / np.float32(32767.0) if top > 0 else np.float32(1.0)
            inv = np.float32(1.0) / step
            if hi - lo == GROUP:
                _round_group(xb, qb, lo, inv)
            else:
                for i in range(lo, hi):
                    qb[i] = np.int16(np.rint(xb[i] * inv))
            xs[b, g] = step


@nb.njit(**_FLAGS)
def _matvec_int8(w, scale, xq, xs, y):
    """y[b] = scale * (W x[b]) for int8 W [O, I] and x quantised by `_quantise`: integer dot products per group."""
    n_out, n_in = w.shape
    whole = n_in // GROUP * GROUP
    for o in range(n_out):
        wo = w[o]
        for b in range(xq.shape[0]):
            acc = _dot_groups(wo, xq[b], xs[b], n_in)
            if whole < n_in:  # a last, shorter group
                rest = 0
                for i in range(whole, n_in):
                    rest += np.int64(wo[i]) * np.int64(xq[b, i])
                acc += np.float32(rest) * xs[b, whole // GROUP]
            y[b, o] = acc * scale[o]


@nb.njit(**_FLAGS)
def _matvec_int8_rows(w, scale, xq, xs, y):
    """`_matvec_int8` for a batch of at least ROWS rows, ROWS at a time (`_dot_groups_rows`): the same numbers,
    bit for bit, about 10 % faster from batch 4 on. (Batch 1 keeps `_matvec_int8`, whose loop is shorter. Both
    keep the shorter group's sum inline: as a function of a row's views it made a step 1.7x slower.)"""
    n_out, n_in = w.shape
    nb_rows = xq.shape[0]
    blocked = nb_rows // ROWS * ROWS
    whole = n_in // GROUP * GROUP
    sums = np.empty(nb_rows, np.float32)
    for o in range(n_out):
        wo = w[o]
        for b in range(0, blocked, ROWS):
            _dot_groups_rows(wo, xq, xs, b, n_in, sums[b:])
        for b in range(blocked, nb_rows):
            sums[b] = _dot_groups(wo, xq[b], xs[b], n_in)
        for b in range(nb_rows):
            acc = sums[b]
            if whole < n_in:  # a last, shorter group
                rest = 0
                for i in range(whole, n_in):
                    rest += np.int64(wo[i]) * np.int64(xq[b, i])
                acc += np.float32(rest) * xs[b, whole // GROUP]
            y[b, o] = acc * scale[o]


@nb.njit(**_FLAGS)
def _matvec(w, scale, x, y, cols):
    """y[b] = scale * (W x[b]) for every row b of x [B, I]; y [B, O]; float32 weights (int8 ones take
    `_matvec_int8`).

    `cols=False`: w is [O, I] (row-major): one dot product per output, the weight row read from memory once for
    all B rows. `cols=True`: w is [I, O] (a column-major weight seen transposed): y accumulates x[b, i] * w[i]
    row by row."""
    nb_rows = x.shape[0]
    if cols:
        n_in, n_out = w.shape
        for b in range(nb_rows):
            for o in range(n_out):
                y[b, o] = 0.0
        for i in range(n_in):
            wi = w[i]
            for b in range(nb_rows):
                xi = x[b, i]
                yb = y[b]
                for o in range(n_out):
                    yb[o] += xi * wi[o]
        for b in range(nb_rows):
            for o in range(n_out):
                y[b, o] *= scale[o]
        return
    n_out, n_in = w.shape
    for o in range(n_out):
        wo = w[o]
        for b in range(nb_rows):
            xb = x[b]
            acc = np.float32(0.0)
            for i in range(n_in):
                acc += wo[i] * xb[i]
            y[b, o] = acc * scale[o]


@nb.njit(**_FLAGS)
def _input(x, int8, xq, xs):
    """What the linear layers reading x take of it: with `int8`, x quantised (`_quantise`) into views of the
    buffers xq and xs; else nothing (views of size 0)."""
    if not int8:
        return xq[:0].reshape((0, 0)), xs[:0].reshape((0, 0))
    groups = (x.shape[1] + GROUP - 1) // GROUP
    q = xq[: x.size].reshape(x.shape)
    s = xs[: x.shape[0] * groups].reshape((x.shape[0], groups))
    _quantise(x, q, s)
    return q, s


@nb.njit(**_FLAGS)
def _linear(w, scale, x, q, s, y, cols, int8):
    """A bias-free linear layer of the input x; with `int8`, int8 weights times x as `_input` quantised it (q, s)."""
    if int8:
        if q.shape[0] >= ROWS:
            _matvec_int8_rows(w, scale, q, s, y)
        else:
            _matvec_int8(w, scale, q, s, y)
    else:
        _matvec(w, scale, x, y, cols)


@nb.njit(**_FLAGS)
def _rms_norm(x, weight, eps, out):
    for b in range(x.shape[0]):
        ss = np.float32(0.0)
        for i in range(x.shape[1]):
            ss += x[b, i] * x[b, i]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(x.shape[1]) + eps)
        for i in range(x.shape[1]):
            out[b, i] = weight[i] * (x[b, i] * inv)


@nb.njit(**_FLAGS)
def _rope(v, n_heads, head_dim, cos, sin):
    """Rotary embedding in place (transformers' rotate_half layout); v [B, n_heads * head_dim], cos/sin [B, D/2]."""
    half = head_dim // 2
    for b in range(v.shape[0]):
        for h in range(n_heads):
            base = h * head_dim
            for j in range(half):
                a = v[b, base + j]
                c = v[b, base + half + j]
                v[b, base + j] = a * cos[b, j] - c * sin[b, j]
                v[b, base + half + j] = c * cos[b, j] + a * sin[b, j]


@nb.njit(**_FLAGS)
def _step(ids, table, table_scale, emb_in, emb_id, x, slots, col, mask, kc, vc, cos, sin, n_heads, n_kv,
          head_dim, eps, in_norm, post_norm, final_norm, weights, scales, cols, int8,
          head, head_scale, emb_out, emb_bias, hidden_out, logits_out, emb_logit, best):
    """Feed one token per row: ids [B]. Their input vectors are looked up here into x [B, H] (the residual
    stream): row r of `table` times table_scale[r] (int8 rows and their scales, or float32 rows and ones), as the
    model's embedding computes it, and `emb_in` for `<|emb|>` (id `emb_id`). Row b's cache is kc/vc[:, slots[b]]
    and its new key and value go to column `col`; mask [slots, T] marks the columns each cache row attends to.
    weights/scales: per layer, q k v o gate up down. Writes the final hidden states [B, H], the head's logits
    [B, V], `<|emb|>`'s logit [B] and each row's greedy choice over both [B] (the first of equal maxima, as
    torch's argmax)."""
    nb_rows, hidden = x.shape
    last_row = table.shape[0] - 1
    for b in range(nb_rows):
        if ids[b] == emb_id:
            for i in range(hidden):
                x[b, i] = emb_in[i]
        else:
            r = min(ids[b], last_row)
            for i in range(hidden):
                x[b, i] = np.float32(table[r, i]) * table_scale[r]
    n_layers = len(in_norm)
    inter = weights[4].shape[0] if not cols else weights[4].shape[1]
    widest = max(hidden, inter, n_heads * head_dim)
    h = np.empty((nb_rows, hidden), np.float32)
    q = np.empty((nb_rows, n_heads * head_dim), np.float32)
    k = np.empty((nb_rows, n_kv * head_dim), np.float32)
    v = np.empty((nb_rows, n_kv * head_dim), np.float32)
    att = np.empty((nb_rows, n_heads * head_dim), np.float32)
    o = np.empty((nb_rows, hidden), np.float32)
    g = np.empty((nb_rows, inter), np.float32)
    u = np.empty((nb_rows, inter), np.float32)
    xq = np.empty(nb_rows * widest, np.int16)
    xs = np.empty(nb_rows * ((widest + GROUP - 1) // GROUP), np.float32)
    scores = np.empty(col + 1, np.float32)
    group = n_heads // n_kv
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for b in range(nb_rows):
        mask[slots[b], col] = True
    for layer in range(n_layers):
        base = layer * 7
        _rms_norm(x, in_norm[layer], eps, h)
        hq, hs = _input(h, int8, xq, xs)  # quantised once for the three projections
        _linear(weights[base], scales[base], h, hq, hs, q, cols, int8)
        _linear(weights[base + 1], scales[base + 1], h, hq, hs, k, cols, int8)
        _linear(weights[base + 2], scales[base + 2], h, hq, hs, v, cols, int8)
        _rope(q, n_heads, head_dim, cos, sin)
        _rope(k, n_kv, head_dim, cos, sin)
        for b in range(nb_rows):
            s = slots[b]
            for kv in range(n_kv):
                for d in range(head_dim):
                    kc[layer, s, kv, col, d] = k[b, kv * head_dim + d]
                    vc[layer, s, kv, col, d] = v[b, kv * head_dim + d]
        for b in range(nb_rows):
            s = slots[b]
            for hd in range(n_heads):
                kv = hd // group
                qh = q[b, hd * head_dim : (hd + 1) * head_dim]
                top = np.float32(-np.inf)
                for c in range(col + 1):
                    if mask[s, c]:
                        kr = kc[layer, s, kv, c]
                        acc = np.float32(0.0)
                        for d in range(head_dim):
                            acc += qh[d] * kr[d]
                        acc *= scale
                        scores[c] = acc
                        if acc > top:
                            top = acc
                total = np.float32(0.0)
                for c in range(col + 1):
                    if mask[s, c]:
                        e = np.exp(scores[c] - top)
                        scores[c] = e
                        total += e
                out = att[b, hd * head_dim : (hd + 1) * head_dim]
                for d in range(head_dim):
                    out[d] = 0.0
                for c in range(col + 1):
                    if mask[s, c]:
                        p = scores[c] / total
                        vr = vc[layer, s, kv, c]
                        for d in range(head_dim):
                            out[d] += p * vr[d]
        aq, as_ = _input(att, int8, xq, xs)
        _linear(weights[base + 3], scales[base + 3], att, aq, as_, o, cols, int8)
        for b in range(nb_rows):
            for i in range(hidden):
                x[b, i] += o[b, i]
        _rms_norm(x, post_norm[layer], eps, h)
        hq, hs = _input(h, int8, xq, xs)
        _linear(weights[base + 4], scales[base + 4], h, hq, hs, g, cols, int8)
        _linear(weights[base + 5], scales[base + 5], h, hq, hs, u, cols, int8)
        for b in range(nb_rows):
            for i in range(inter):
                gi = g[b, i]
                g[b, i] = gi / (np.float32(1.0) + np.exp(-gi)) * u[b, i]
        gq, gs = _input(g, int8, xq, xs)
        _linear(weights[base + 6], scales[base + 6], g, gq, gs, o, cols, int8)
        for b in range(nb_rows):
            for i in range(hidden):
                x[b, i] += o[b, i]
    _rms_norm(x, final_norm, eps, hidden_out)
    fq, fs = _input(hidden_out, int8, xq, xs)
    _linear(head, head_scale, hidden_out, fq, fs, logits_out, False, int8)
    for b in range(nb_rows):
        acc = np.float32(0.0)
        for i in range(hidden):
            acc += hidden_out[b, i] * emb_out[i]
        emb_logit[b] = acc + emb_bias
        top, at = logits_out[b, 0], 0
        for o in range(1, logits_out.shape[1]):
            if logits_out[b, o] > top:
                top, at = logits_out[b, o], o
        best[b] = logits_out.shape[1] if emb_logit[b] > top else at


def supports(lm) -> bool:
    """Whether `_step` computes this transformers LM exactly: a Llama without biases, SiLU MLP, the default
    rotary embedding, full attention, weights on the CPU in float32 or `weight_int8`."""
    from .weight_int8 import Int8Embedding, Int8Linear, _Head

    config = lm.config
    rope = getattr(lm.model, "rotary_emb", None)
    if (config.model_type != "llama" or getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
            or config.hidden_act != "silu" or getattr(config, "pretraining_tp", 1) != 1
            or rope is None or getattr(rope, "rope_type", "default") != "default"
            or getattr(config, "sliding_window", None)):
        return False
    linears = _linears(lm)
    if all(isinstance(m, Int8Linear) for m in linears):
        return isinstance(lm.get_output_embeddings(), _Head) and isinstance(lm.get_input_embeddings(), Int8Embedding)
    if all(isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
           for m in linears):
        layouts = {_column_major(m.weight) for m in linears}
        head, table = lm.get_output_embeddings(), lm.get_input_embeddings()
        return (len(layouts) == 1 and isinstance(head, torch.nn.Linear) and head.bias is None
                and head.weight.dtype == torch.float32 and head.weight.is_contiguous()
                and type(table) is torch.nn.Embedding and table.weight.dtype == torch.float32
                and table.weight.is_contiguous() and table.max_norm is None)  # padding_idx: gradients only
    return False


HUGE_PAGE = 2 << 20  # bytes of an x86 transparent huge page


def huge_page_buffer(nbytes: int) -> np.ndarray:
    """A zeroed uint8 buffer of `nbytes`, aligned to a huge page, in an anonymous mapping advised for transparent
    huge pages (where the system has them: Linux with THP "always" or "madvise"; elsewhere plain pages). The
    mapping lives as long as any view of the buffer."""
    area = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            area.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # THP off ("never") or not built in: plain pages
            pass
    buffer = np.frombuffer(area, np.uint8)
    start = -buffer.ctypes.data % HUGE_PAGE
    return buffer[start : start + nbytes]


def decode_weights(lm) -> list[torch.Tensor]:
    """The weight matrices a decoding step streams, in the order it reads them: each layer's q k v o gate up down,
    then the output head (int8: `qweight`; float32: `weight`, column-major or row-major as laid out)."""
    from .weight_int8 import Int8Linear

    linears = _linears(lm)
    if isinstance(linears[0], Int8Linear):
        return [m.qweight for m in linears] + [lm.get_output_embeddings().table.qweight]
    return [m.weight for m in linears] + [lm.get_output_embeddings().weight]


def move_to_huge_pages(tensors: list[torch.Tensor]) -> int:
    """Move the data of these tensors, in place and in this order, into one buffer on transparent huge pages
    (`huge_page_buffer`); values, shapes and strides stay, so every module holding one of them (a tied embedding
    and head alike) reads the new memory. Returns the bytes moved.

    A decoding step reads every weight once, in order. On 4 KB pages the CPU's hardware prefetcher stops at every
    page boundary (and the TLB covers a few MB), so a step's 211 int8 products streamed 21-24 GB/s on one core
    here; from one huge-page buffer in step order, 27-29 GB/s (`scripts/huge_page_probe.py`; a plain read: 26-32
    GB/s on 4 KB pages, 30-33 on huge pages). Each tensor must be dense: contiguous, or column-major
    (`cpu_decoding_layout`)."""
    sizes = []
    for t in tensors:
        if t.storage_offset() != 0 or not (t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous())):
            raise ValueError(f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} is not dense")
        sizes.append(-(-t.numel() * t.element_size() // 64) * 64)  # each starts on a cache line
    buffer = huge_page_buffer(sum(sizes))
    at = 0
    with torch.no_grad():
        for t, size in zip(tensors, sizes, strict=True):
            flat = torch.from_numpy(buffer[at : at + t.numel() * t.element_size()]).view(t.dtype)
            moved = flat.as_strided(t.shape, t.stride())
            moved.copy_(t)
            t.data = moved
            at += size
    return at


def _projections(layer) -> list:
    a, m = layer.self_attn, layer.mlp
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]


def _linears(lm) -> list:
    """Every projection of the LM, in the order a step runs them: per layer q k v o gate up down."""
    return [m for layer in lm.model.layers for m in _projections(layer)]


def _column_major(w: torch.Tensor) -> bool:
    return not w.is_contiguous() and w.t().is_contiguous()


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


@dataclass
class FusedState:
    """The decoding state of `FusedDecoder`: a KV cache with a row for every query the prefill had (`slots[b]` is
    batch row b's cache row; rows that left the batch stay, unused), the columns each row attends to, and the
    column the next token goes to (the same for every row: prompts are left-padded). Each step writes into these
    arrays in place and returns a state over the same arrays: a state is used once."""

    keys: np.ndarray  # [L, N, KV, T, D] float32
    values: np.ndarray  # [L, N, KV, T, D]
    mask: np.ndarray  # [N, T] bool
    slots: np.ndarray  # [B] int64
    next_pos: np.ndarray  # [B] int64: the next token's position (rotary embedding)
    col: int  # the cache column the next token is written to

    def select(self, rows: np.ndarray) -> FusedState:
        return FusedState(self.keys, self.values, self.mask, self.slots[rows], self.next_pos[rows], self.col)


class FusedDecoder:
    """The decoding steps of one LM (`supports(lm)` must hold), reading the LM's own weight memory."""

    def __init__(self, lm, emb_out: torch.Tensor, emb_bias: torch.Tensor, emb_in: torch.Tensor):
        """`emb_out`, `emb_bias`: `<|emb|>`'s output row and bias (its logit is the last column); `emb_in`: its input
        vector (fed for token id V, the first after the LM's vocabulary)."""
        from .weight_int8 import Int8Linear

        config = lm.config
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.eps = np.float32(config.rms_norm_eps)
        rope = lm.model.rotary_emb
        self.inv_freq = _numpy(rope.inv_freq.float())
        self.rope_scaling = np.float32(getattr(rope, "attention_scaling", 1.0))
        layers = lm.model.layers
        self.in_norm = List([_numpy(layer.input_layernorm.weight) for layer in layers])
        self.post_norm = List([_numpy(layer.post_attention_layernorm.weight) for layer in layers])
        self.final_norm = _numpy(lm.model.norm.weight)
        linears = _linears(lm)
        self.int8 = isinstance(linears[0], Int8Linear)
        if self.int8:
            self.cols = False
            self.weights = List([_numpy(m.qweight) for m in linears])
            self.scales = List([_numpy(m.scale.float()) for m in linears])
            table = lm.get_output_embeddings().table
            self.head, self.head_scale = _numpy(table.qweight), _numpy(table.scale_bf16.float())
            embedding = lm.get_input_embeddings()
            self.table, self.table_scale = _numpy(embedding.qweight), _numpy(embedding.scale)
        else:
            self.cols = _column_major(linears[0].weight)
            self.weights = List([_numpy(m.weight.t() if self.cols else m.weight) for m in linears])
            self.scales = List([np.ones(m.weight.shape[0], np.float32) for m in linears])
            self.head = _numpy(lm.get_output_embeddings().weight)
            self.head_scale = np.ones(self.head.shape[0], np.float32)
            self.table = _numpy(lm.get_input_embeddings().weight)
            self.table_scale = np.ones(self.table.shape[0], np.float32)  # times 1: the float32 rows as they are
        self.emb_in = _numpy(emb_in.float()).reshape(-1)
        self.emb_id = self.table.shape[0]
        self.emb_out = _numpy(emb_out.float()).reshape(-1)
        self.emb_bias = np.float32(float(emb_bias))
        self.n_layers = len(layers)

    def start(self, cache, attention_mask: torch.Tensor, next_pos: torch.Tensor, room: int = 64) -> FusedState:
        """The state after a prefill: its transformers KV cache copied in, with `room` free columns."""
        prefill = attention_mask.shape[1]
        n = attention_mask.shape[0]
        shape = (self.n_layers, n, self.n_kv, prefill + room, self.head_dim)
        keys, values = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        for layer in range(self.n_layers):
            k, v = cache_layer_kv(cache, layer)
            keys[layer, :, :, :prefill] = _numpy(k.float())
            values[layer, :, :, :prefill] = _numpy(v.float())
        mask = np.zeros((n, prefill + room), np.bool_)
        mask[:, :prefill] = _numpy(attention_mask) != 0
        return FusedState(keys, values, mask, np.arange(n, dtype=np.int64), _numpy(next_pos).astype(np.int64), prefill)

    @classmethod
    def synthetic(cls, int8: bool, cols: bool) -> FusedDecoder:
        """A decoder of 2 tiny random layers whose arrays have the types of a real one with these weights (int8,
        or float32 column-major `cols`): compiling its step compiles the real one's (numba's cache is keyed by
        argument types)."""
        rng = np.random.default_rng(0)
        self = cls.__new__(cls)
        self.n_heads, self.n_kv, self.head_dim, self.n_layers = 2, 1, 4, 2
        hidden, inter = 8, 16
        self.eps, self.rope_scaling = np.float32(1e-5), np.float32(1.0)
        self.inv_freq = np.ones(self.head_dim // 2, np.float32)
        self.in_norm = List([np.ones(hidden, np.float32) for _ in range(self.n_layers)])
        self.post_norm = List([np.ones(hidden, np.float32) for _ in range(self.n_layers)])
        self.final_norm = np.ones(hidden, np.float32)
        shapes = [(8, 8), (4, 8), (4, 8), (8, 8), (inter, 8), (inter, 8), (8, inter)] * self.n_layers  # [out, in]
        self.int8, self.cols = int8, cols and not int8
        if int8:
            self.weights = List([rng.integers(-127, 128, s).astype(np.int8) for s in shapes])
            self.head = rng.integers(-127, 128, (32, hidden)).astype(np.int8)
        else:
            self.weights = List([rng.standard_normal(s[::-1] if self.cols else s, np.float32)
                                 for s in shapes])
            self.head = rng.standard_normal((32, hidden), np.float32)
        self.table, self.table_scale = self.head, np.ones(32, np.float32)  # tied, as in SmolLM2
        self.emb_in, self.emb_id = np.ones(hidden, np.float32), 32
        self.scales = List([np.ones(s[0], np.float32) for s in shapes])
        self.head_scale = np.ones(32, np.float32)
        self.emb_out, self.emb_bias = np.ones(hidden, np.float32), np.float32(0.0)
        return self

    def warm_up(self) -> None:
        """Compile the step (or read it from numba's cache): one step of one row on an empty cache."""
        shape = (self.n_layers, 1, self.n_kv, 2, self.head_dim)
        mask = np.zeros((1, 2), np.bool_)
        state = FusedState(np.zeros(shape, np.float32), np.zeros(shape, np.float32), mask, np.zeros(1, np.int64),
                           np.zeros(1, np.int64), 0)
        self.step(state, np.zeros(1, np.int64))
        _WARM.add((self.int8, self.cols))

    def is_warm(self) -> bool:
        """Whether this process already has the step for this decoder's weight kind (nothing to compile)."""
        return (self.int8, self.cols) in _WARM

    def step(self, state: FusedState, ids) -> tuple[FusedState, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feed one token per row: ids [B] (numpy or torch). -> new state, hidden [B, H], logits [B, V + 1] (the
        last column `<|emb|>`'s) and the greedy choice [B] (each row's argmax over them)."""
        if state.col >= state.mask.shape[1]:
            state = _grow(state)
        rows = len(state.slots)
        ids = np.ascontiguousarray(ids.numpy() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64).reshape(rows)
        angles = state.next_pos[:, None].astype(np.float32) * self.inv_freq[None, :]
        cos = (np.cos(angles) * self.rope_scaling).astype(np.float32)
        sin = (np.sin(angles) * self.rope_scaling).astype(np.float32)
        width = len(self.final_norm)
        stream = np.empty((rows, width), np.float32)  # the residual stream, from the looked-up input vectors
        hidden = np.empty((rows, width), np.float32)
        logits = np.empty((rows, self.head.shape[0] + 1), np.float32)
        best = np.empty(rows, np.int64)
        _step(ids, self.table, self.table_scale, self.emb_in, self.emb_id, stream, state.slots, state.col,
              state.mask, state.keys, state.values, cos, sin, self.n_heads, self.n_kv, self.head_dim, self.eps,
              self.in_norm, self.post_norm, self.final_norm, self.weights, self.scales, self.cols, self.int8,
              self.head, self.head_scale, self.emb_out, self.emb_bias, hidden, logits[:, :-1], logits[:, -1], best)
        new = FusedState(state.keys, state.values, state.mask, state.slots, state.next_pos + 1, state.col + 1)
        return new, torch.from_numpy(hidden), torch.from_numpy(logits), torch.from_numpy(best)


def _grow(state: FusedState) -> FusedState:
    """The same state with twice the columns (a CoT longer than the room left at the start)."""
    extra = state.mask.shape[1]
    pad = [(0, 0)] * 3 + [(0, extra), (0, 0)]
    return FusedState(np.pad(state.keys, pad), np.pad(state.values, pad), np.pad(state.mask, [(0, 0), (0, extra)]),
                      state.slots, state.next_pos, state.col)


def compile_in_subprocess(int8: bool, cols: bool, timeout: float = 600.0) -> bool:
    """Compile the step for these weight types in another process, which leaves it in numba's on-disk cache for
    this one to load (about 1 s). Compiling here instead holds this process's GIL for some 8-13 s, and a search
    served meanwhile runs 2-4x slower. Whether the other process succeeded (numba cannot always write its cache;
    `warm_up` then compiles here)."""
    root = Path(__file__).resolve().parents[2]  # the folder that holds the trace_core package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    # The child ends with this process (a stopped app leaves no compiler running): it watches its parent's pid.
    code = ("import os, threading, time\n"
            f"def watch():\n    while os.getppid() == {os.getpid()}:\n        time.sleep(0.5)\n    os._exit(1)\n"
            "threading.Thread(target=watch, daemon=True).start()\n"
            "from trace_core.backbones.fused_decode import FusedDecoder\n"
            f"FusedDecoder.synthetic(int8={bool(int8)}, cols={bool(cols)}).warm_up()\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, timeout=timeout, capture_output=True)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
