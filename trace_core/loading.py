"""`load_model`: a name or path in, a ready `Encoder` out (a `TraceEncoder`, or the minilm-bridge baseline).

What a path holds decides the backbone: a TRACE-mini checkpoint (config.json with model_type "trace_mini")
or a Qwen2-VL / Qwen2.5-VL checkpoint, which loads through transformers. Weights load from safetensors only, and remote code runs only when asked for.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .interface import Encoder, EncoderConfig
from .prompts import STYLES, PromptStyle

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """The model name or path points at nothing loadable; the message says what was tried."""


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def load_model(
    name_or_path: str | os.PathLike,
    *,
    style: str | PromptStyle | None = None,
    device: str | None = None,
    config: EncoderConfig = EncoderConfig(),
    trust_remote_code: bool = False,
    precision: str = "fp32",
) -> Encoder:
    """Load an encoder from a local checkpoint directory (or a hub id when the network allows it).

    style: a name from `trace_core.prompts.STYLES` or a `PromptStyle`; by default the checkpoint's own
    `trace_style.json`, else guessed from its special tokens.
    precision: "fp32", or "int8" for TRACE-mini on CPU (every LM weight in int8: `backbones/weight_int8.py`).
    """
    name = os.fspath(name_or_path)
    if name == "minilm-bridge":  # the zero-shot dual-encoder baseline (trace_core/baselines.py)
        from .baselines import BridgeEncoder

        if precision != "fp32":
            raise ValueError("the minilm-bridge baseline runs in fp32 only")
        return BridgeEncoder(device=device)
    if isinstance(style, str):
        if style not in STYLES:
            raise ValueError(f"unknown prompt style {style!r}; known: {', '.join(STYLES)}")
        style = STYLES[style]
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelNotFoundError(f"{path} is not a model checkpoint (no config.json)")
        model_type = json.loads(config_file.read_text()).get("model_type", "")
    elif path.exists():
        raise ModelNotFoundError(f"{path} is a file; give the checkpoint directory")
    elif _is_hub_id(name):
        model_type = None  # resolved by transformers; fails with its own message when offline
    else:
        raise ModelNotFoundError(f"no model at {name!r}: not a directory, and not a hub id like 'org/name'")

    from .backbones.mini import MODEL_TYPE as MINI_TYPE
    from .backbones.qwen2vl import QWEN_VL_TYPES, QwenVLBackbone
    from .encoder import TraceEncoder  # here: importing torch waits for a model to load

    if model_type == MINI_TYPE:
        from .backbones.mini import MiniBackbone

        if style is not None:
            raise ValueError("TRACE-mini has its own prompt style; --style applies to Qwen-VL checkpoints")
        backbone = MiniBackbone.from_pretrained(path, device=device, precision=precision)
        log.info("loaded TRACE-mini from %s", path)
        return TraceEncoder(backbone, config)
    if precision != "fp32":
        raise ValueError(f"precision {precision!r} is for TRACE-mini; Qwen-VL checkpoints load in their own dtype")
    if model_type is not None and model_type not in QWEN_VL_TYPES:
        supported = ", ".join((*QWEN_VL_TYPES, MINI_TYPE))
        raise ValueError(f"{name}: unsupported model type {model_type!r}; supported: {supported}")
    try:
        backbone = QwenVLBackbone.from_pretrained(
            name, style=style, device=device, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        if model_type is None:
            raise ModelNotFoundError(f"cannot load {name!r} from the hub (offline or unknown id): {exc}") from exc
        raise
    log.info("loaded %s (%s style, dim %d)", name, backbone.style.name, backbone.hidden_size)
    return TraceEncoder(backbone, config)


def wait_for_fused_decoding(encoder: Encoder, timeout: float = 600.0) -> bool:
    """Block until a TRACE-mini backbone's background compile of its fused decoding step is done (see
    `MiniBackbone.use_fused_decoding`), so that a benchmark or an evaluation decodes one way throughout.
    Whether the fused step is in use; False at once for other encoders."""
    backbone = getattr(encoder, "backbone", None)
    ready = getattr(backbone, "fused_ready", None)
    if ready is None:
        return False
    ready.wait(timeout)
    return backbone.fused is not None
