"""What names a checkpoint, from its files alone (no torch: the app's page is built from these before torch is
imported): the packaged base LM's name, and the revision hash of a checkpoint folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"  # MiniConfig.lm naming the packaged SmolLM2-135M-Instruct

# The files that define what a checkpoint computes. Anything else in its folder (an evaluation's results.json,
# a model card, logs) may change without changing the model, and must not change its revision.
MODEL_FILES = frozenset({
    "config.json", "generation_config.json", "trace_style.json", "preprocessor_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
    "model.safetensors.index.json",
})


def weights_fingerprint(path: Path) -> str:
    """A cheap revision id for local weights: hash of the model files' names, sizes and safetensors headers."""
    h = hashlib.sha256()
    files = sorted(path.glob("*.safetensors")) + sorted(f for f in path.glob("*.json") if f.name in MODEL_FILES)
    for f in files:
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        if f.suffix == ".safetensors":
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]
