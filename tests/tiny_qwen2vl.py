"""A tiny, randomly initialised Qwen2-VL checkpoint built from a config (no download), for offline tests.

It has a real byte-level BPE tokenizer (trained here on a few sentences, with Qwen's special tokens), a real
Qwen2-VL image processor at 56-112 px, and a 2-layer, 32-wide Qwen2-VL with a 2-block vision tower. Its outputs
are meaningless; tests use it to check the mechanics (routing, pooling, caching, batching) against oracles.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CORPUS = [
    "Find me an everyday image that matches the given caption.",
    "a dog sleeping on a red sofa next to a window",
    "Retrieve a day-to-day image that aligns with the modification instructions of the provided image.",
    "make the car blue and remove the people in the background",
    "Summarize the above image in one word. Your output must only be",
    "user assistant system You are a helpful assistant. sentence",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer with Qwen's special tokens, trained here on a few sentences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )


def build_tiny_qwen2vl(directory: Path, seed: int = 0, with_emb_token: bool = True) -> Path:
    """Write a tiny Qwen2-VL checkpoint (config, safetensors, tokenizer, image processor) to `directory`."""
    tokenizer = build_tokenizer()
    if with_emb_token:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|emb|>"]})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer) + 8,  # real checkpoints also have spare rows beyond the tokenizer
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(directory)
    return directory
