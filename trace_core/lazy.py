"""`LazyEncoder`: a TRACE-mini encoder whose weights load in the background, after the page is served.

Loading TRACE-mini takes seconds, mostly importing transformers; what the app needs before its first search (the
fingerprint that keys every cache, the chain-of-thought cap, what the model is made of) is in the checkpoint's
files. So `app.py` builds its page around a `LazyEncoder`, starts serving, then calls `start()`: the model loads
in a thread, and the first call that needs it waits for it (a search sent in the first seconds answers a little
later; nothing fails). A failed load is raised by every call that needs the model, with its message.

Only TRACE-mini checkpoints are read this way (`peek` returns None for anything else, and for files that would
not load: a truncated weights file, a missing LM folder; load those eagerly, so that a bad checkpoint stops the
start as before). The fingerprint is the one the loaded encoder reports; `tests/test_lazy.py` checks that. A
background build that needs the model (an index that is neither shipped nor cached) starts the load itself,
possibly before the page is served.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .interface import EncoderConfig
from .prompts import TRACE_STYLE, PromptStyle
from .records import PRECISIONS, precision_revision

log = logging.getLogger(__name__)

MINI_TYPE = "trace_mini"  # = backbones.mini.MODEL_TYPE, repeated so that this module imports no backbone


@dataclass(frozen=True)
class Peek:
    """What a TRACE-mini checkpoint's files say without loading it."""

    fingerprint: dict
    style: PromptStyle
    max_cot_tokens: int
    lm: str  # its language model, e.g. "smollm2-135m-instruct"
    vision: str  # its image encoder


def _hidden_size(weights: Path) -> int:
    """The width of `<|emb|>`'s input vector, read from the safetensors header (the LM's hidden size).
    ValueError when the file is shorter or longer than its header says (a truncated copy)."""
    with open(weights, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != weights.stat().st_size:
        raise ValueError(f"{weights} is {weights.stat().st_size} bytes; its header says {8 + n + end}")
    return int(header["emb_in"]["shape"][0])


def peek(path: str | os.PathLike, config: EncoderConfig = EncoderConfig(), precision: str = "fp32") -> Peek | None:
    """The fingerprint and settings of the TRACE-mini checkpoint at `path` served at `precision`, from its files;
    None when `path` is not a TRACE-mini checkpoint folder or its files cannot be read this way (then load it as
    usual)."""
    from .backbones.identity import SMOLLM2, weights_fingerprint

    path = Path(path).expanduser()
    try:
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("model_type") != MINI_TYPE:
            return None
        style_file = path / "trace_style.json"
        style = PromptStyle.from_dict(json.loads(style_file.read_text())) if style_file.is_file() else TRACE_STYLE
        dim = _hidden_size(path / "trace_mini.safetensors")
        lm = str(cfg.get("lm", ""))
        if lm != SMOLLM2 and not (path / lm).is_dir():  # a local LM folder that is not there
            return None
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    fingerprint = {
        "model_id": path.resolve().name,
        "revision": precision_revision(weights_fingerprint(path), precision),
        "style": style.name,
        "prompt_hash": style.hash(),
        "candidate_prompt_hash": style.candidate_hash(),
        "dim": dim,
    }
    return Peek(fingerprint, style, config.max_cot_tokens or style.max_cot_tokens, str(cfg.get("lm", "")),
                str(cfg.get("vision", "")))


# Device files without which no GPU is visible to torch on Linux: NVIDIA's driver, ROCm's, WSL's.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def cuda_available() -> bool:
    """`torch.cuda.is_available()`, without importing torch (about 1.3 s) where no GPU can be: on Linux without any
    GPU device file torch says False, and the app serves its page before torch is imported."""
    if "torch" not in sys.modules and sys.platform.startswith("linux") and \
            not any(os.path.exists(f) for f in GPU_DEVICE_FILES):
        return False
    import torch

    return torch.cuda.is_available()


def default_precision(path: str | os.PathLike) -> str:
    """How the app serves a model when not told: TRACE-mini on a CPU in int8 (its caches are shipped for it),
    anything else (a Qwen-VL checkpoint, a GPU) in fp32."""
    return "int8" if peek(path) is not None and not cuda_available() else "fp32"


def is_trace_encoder(encoder) -> bool:
    """Whether `encoder` routes and reasons (a `TraceEncoder`, or a `LazyEncoder`, which loads one), not a
    baseline: what the walkthrough and the batcher need."""
    if isinstance(encoder, LazyEncoder):
        return True
    module = sys.modules.get(f"{__package__}.encoder")  # a TraceEncoder exists only once its module is imported
    return module is not None and isinstance(encoder, module.TraceEncoder)


class LoadError(RuntimeError):
    """The model of a `LazyEncoder` could not be loaded; the message says why."""


class LazyEncoder:
    """An `Encoder` that loads on `start()` (in a thread) and forwards everything to the loaded one.

    `fingerprint`, `style`, `max_cot_tokens` and `model_parts` answer at once; anything else waits for the load
    (and starts it, if `start()` was not called yet)."""

    def __init__(self, path: str | os.PathLike, load: Callable[[], object], peeked: Peek):
        self.path = Path(path)
        self._load = load
        self._peek = peeked
        self._loaded = threading.Event()
        self._started = threading.Event()
        self._encoder = None
        self._error: BaseException | None = None
        self.load_seconds: float | None = None
        self._lock = threading.Lock()
        self._on_start: list[Callable[[], None]] = []
        self._on_done: list[Callable[[BaseException | None], None]] = []

    @classmethod
    def of(cls, path: str | os.PathLike, precision: str = "fp32",
           config: EncoderConfig = EncoderConfig()) -> LazyEncoder | None:
        """A lazy TRACE-mini encoder for `path`, or None when `path` is not one (load it eagerly instead)."""
        peeked = peek(path, config, precision)
        if peeked is None:
            return None
        if precision not in PRECISIONS or (precision == "int8" and cuda_available()):
            return None  # load_model refuses these at once, with its message

        def load():
            from .loading import load_model

            return load_model(path, precision=precision, config=config)

        return cls(path, load, peeked)

    # ---- answered from the files
    @property
    def fingerprint(self) -> dict:
        return dict(self._peek.fingerprint)

    @property
    def style(self) -> PromptStyle:
        return self._peek.style

    @property
    def max_cot_tokens(self) -> int:
        return self._peek.max_cot_tokens

    @property
    def model_parts(self) -> tuple[str, str]:
        """(language model, image encoder) as the checkpoint's config names them."""
        return self._peek.lm, self._peek.vision

    # ---- the load
    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self._error is None

    @property
    def failed(self) -> BaseException | None:
        return self._error if self._loaded.is_set() else None

    def on_load(self, started: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
        """Call `started()` when the load starts and `done(error or None)` when it ends; at once for what
        already happened (the page's progress banner listens here)."""
        with self._lock:
            if not self._started.is_set():
                self._on_start.append(started)
            if not self._loaded.is_set():
                self._on_done.append(done)
            began, ended = self._started.is_set(), self._loaded.is_set()
        if began:
            started()
        if ended:
            done(self._error)

    def start(self) -> LazyEncoder:
        """Load the model in a daemon thread (once); returns at once."""
        with self._lock:
            if self._started.is_set():
                return self
            self._started.set()
            listeners, self._on_start = self._on_start, []
        for fn in listeners:
            fn()
        threading.Thread(target=self._run_load, name="trace-model-load", daemon=True).start()
        return self

    def _run_load(self) -> None:
        t0 = time.perf_counter()
        try:
            encoder = self._load()
            got = getattr(encoder, "fingerprint", None)
            if got != self._peek.fingerprint:  # the files said one thing, the loaded model another
                raise ValueError(f"the loaded model's fingerprint {got} is not the one read from its files "
                                 f"{self._peek.fingerprint}")
            self._encoder = encoder
            self.load_seconds = time.perf_counter() - t0
            log.info("model loaded in %.1f s (%s)", self.load_seconds, self.path)
        except BaseException as exc:  # noqa: BLE001 - kept and raised to every caller that needs the model
            self._error = exc
            log.exception("loading the model from %s failed", self.path)
        finally:
            with self._lock:
                self._loaded.set()
                listeners, self._on_done = self._on_done, []
            for fn in listeners:
                fn(self._error)

    def wait(self, timeout: float | None = None) -> object:
        """The loaded encoder, once it is (raises what the load raised; TimeoutError after `timeout` s)."""
        if not self._started.is_set():
            self.start()
        if not self._loaded.wait(timeout):
            raise TimeoutError(f"the model at {self.path} is still loading")
        if self._error is not None:
            raise LoadError(f"The model could not be loaded: {self._error}") from self._error
        return self._encoder

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy, pickle and the like: no waiting for the model
            raise AttributeError(name)
        return getattr(self.wait(), name)
