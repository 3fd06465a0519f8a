import logging
from pathlib import Path

import pytest

from tests.tiny_qwen2vl import build_tiny_qwen2vl

logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL checkpoint on disk, with `<|emb|>` in its vocabulary."""
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl")
