"""Weight-only int8 for a Llama-style language model on a CPU: int8 weights with one scale per output row,
products in bfloat16, the residual stream in float32.

Decoding one token multiplies every weight matrix by one vector, so its time is the time to read the weights:
int8 reads a quarter of float32's bytes. torch's `_weight_int8pack_mm` (its CPU kernel for int8 weights with
bfloat16 activations) streams them without ever building a float copy. For many rows at once (a prefill of
candidates or prompts), a dequantised bfloat16 copy of the one matrix in use and a bfloat16 GEMM is faster;
that copy is a temporary, so resident weights stay at one byte each.

Unlike dynamic quantisation (`torch.ao.quantization.quantize_dynamic`), which also rounds every activation to
8 bits and moved TRACE-mini's embeddings to cosine 0.70-0.76 of float32's, only the weights are rounded
here (per-row absmax, error <= scale / 2 per weight); a linear layer's input is rounded to bfloat16 (8 bits
of mantissa, not 8 bits in all), and norms, attention scores and the residual stream stay float32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..heap import release_freed_memory

# Up to this many rows the int8 kernel is used; above it, a dequantised bfloat16 GEMM (faster for a prefill).
KERNEL_ROWS = 16
# The kernel needs the inner dimension in multiples of 32 (torch 2.13 on x86: other widths crash the process);
# other widths take the dequantised product.
KERNEL_MULTIPLE = 32


def _product(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [rows, in] (bfloat16) times int8 weights [out, in] with their bfloat16 row scales -> [rows, out]
    bfloat16: the int8 kernel for a few rows, a dequantised bfloat16 GEMM for many (or an odd width)."""
    if x.shape[0] <= KERNEL_ROWS and qweight.shape[1] % KERNEL_MULTIPLE == 0:
        return torch.ops.aten._weight_int8pack_mm(x.contiguous(), qweight, scale)
    return nn.functional.linear(x, qweight.to(torch.bfloat16) * scale[:, None])


def quantise_rows(weight: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [out, in] -> int8 [out, in] and a float32 scale per row [out]: w ~= q * scale.

    `chunk` rows at a time, so that the float temporaries stay small (whole, the 49,152-row embedding table
    would take three 113 MB ones at the moment the loaded float32 weights are still in memory)."""
    w = weight.detach()
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(w.shape[0], dtype=torch.float32)
    for start in range(0, w.shape[0], chunk):
        rows = w[start : start + chunk].float()
        s = rows.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q[start : start + chunk] = torch.round(rows / s[:, None]).clamp_(-127, 127).to(torch.int8)
        scale[start : start + chunk] = s
    return q, scale


class Int8Linear(nn.Module):
    """A bias-free `nn.Linear` with int8 weights and one bfloat16 scale per output. The product runs in
    bfloat16; its result comes back in the input's dtype (float32 here: the residual stream stays float32)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        q, scale = quantise_rows(weight)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))

    def dequantised(self) -> torch.Tensor:
        return self.qweight.to(torch.bfloat16) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _product(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.qweight, self.scale)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int8Embedding(nn.Module):
    """An `nn.Embedding` with int8 rows and a float32 scale each; a lookup returns float32 vectors.

    Also serves as the tied output head (`head`): logits in float32, from the int8 kernel at one row per
    decoded token."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        q, scale = quantise_rows(weight)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Float32 rows for token ids (any shape) -> [..., H]."""
        return self.qweight[ids].float() * self.scale[ids].unsqueeze(-1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(ids)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden [..., H] -> logits [..., V] in float32."""
        y = _product(hidden.reshape(-1, hidden.shape[-1]).to(torch.bfloat16), self.qweight, self.scale_bf16)
        return y.float().view(*hidden.shape[:-1], self.num_embeddings)


def quantise_llama(lm: nn.Module) -> Int8Embedding:
    """A transformers causal LM (Llama family, tied or untied head), in place: every linear layer of the
    decoder to `Int8Linear`, the input embeddings to `Int8Embedding`; norms stay float32 (a few KB).
    Returns the embedding module; its `head` stands for the output head when the weights are tied (the
    float32 head is then dropped), else the head is quantised as its own `Int8Embedding`."""
    decoder = lm.model
    tied = lm.get_output_embeddings() is not None and (
        lm.get_output_embeddings().weight.data_ptr() == decoder.embed_tokens.weight.data_ptr())
    embedding = Int8Embedding(decoder.embed_tokens.weight)
    head = embedding if tied else Int8Embedding(lm.get_output_embeddings().weight)
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                if child.bias is not None:
                    raise ValueError(f"{name}: int8 serving expects bias-free linear layers (Llama)")
                setattr(parent, name, Int8Linear(child.weight))
    decoder.embed_tokens = embedding
    lm.lm_head = _Head(head)
    # What stays float32 (the norms) are views into the storage the weights were loaded in (transformers maps
    # the whole safetensors file): copies of their own let that mapping go, about 500 MB for SmolLM2.
    for module in lm.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(p.detach().clone(), requires_grad=False))
    release_freed_memory()
    return embedding


class _Head(nn.Module):
    """The output head as a module (`lm.lm_head`), reading an `Int8Embedding`'s rows."""

    def __init__(self, table: Int8Embedding):
        super().__init__()
        self.table = table

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.table.head(hidden)
