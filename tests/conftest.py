import logging
from pathlib import Path

import pytest
import torch

from tests.tiny_mini import tiny_lm
from tests.tiny_qwen2vl import build_tiny_qwen2vl

logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL checkpoint on disk, with `<|emb|>` in its vocabulary."""
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl")


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory) -> Path:
    """A tiny random causal LM saved as a folder: the base LM of the trainer tests' TRACE-mini."""
    torch.manual_seed(0)
    lm, tok = tiny_lm()
    path = tmp_path_factory.mktemp("lm") / "lm"
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    return path
