"""Frozen image features, computed once per image file and kept across runs.

TRACE-mini's vision encoder is frozen, so an image's features never change while the model trains: training
runs the encoder once over every image (`precompute`) and later steps only look them up (`get`). `save` writes
them to one file with each image file's size and modification time; `load` takes back only entries whose file
is unchanged and only when the file was written for the same encoder setting (`key`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from PIL import Image

from ..atomic import atomic_file


class FeatureStore:
    def __init__(self, encode: Callable[[list[Image.Image]], torch.Tensor], key: str):
        self.encode = encode  # images -> features [N, ...], one row an image
        self.key = key  # what the features depend on: a store written under another key is ignored
        self.features: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.features)

    def precompute(self, paths: Iterable[str], batch_size: int = 64, progress: bool = True) -> int:
        """Encode every image not yet cached; returns how many were new."""
        from ..records import load_image

        todo = sorted({p for p in paths if p not in self.features})
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), unit="img", desc="image features")
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            with torch.inference_mode(False):  # first met during inference, a cached feature must still train
                feats = self.encode([load_image(p) for p in chunk])
            self.features.update(zip(chunk, feats, strict=True))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return len(todo)

    def warm(self, paths: Iterable[str], store: str | os.PathLike | None = None) -> tuple[int, str | None, int]:
        """Make every image's features ready: first from `store` (when given), then by encoding the rest, and
        keep the store file up to date. Returns (taken from the store, the store, newly computed)."""
        taken = self.load(store) if store is not None else 0
        new = self.precompute(paths)
        if new and store is not None:
            self.save(store)
        return taken, None if store is None else str(store), new

    def get(self, path: str) -> torch.Tensor:
        """The features of one image file, computed on first use."""
        if path not in self.features:
            self.precompute([path], progress=False)
        return self.features[path]

    def load(self, store: str | os.PathLike) -> int:
        """Take cached features from a file written by `save` under the same key; an entry counts only while
        its image file keeps the size and modification time it had. Returns how many were taken."""
        store = Path(store)
        if not store.is_file():
            return 0
        try:
            saved = torch.load(store, weights_only=True)
        except Exception as exc:  # a truncated or foreign file: recompute rather than fail
            warnings.warn(f"ignoring the feature store {store.name}: {type(exc).__name__}", stacklevel=2)
            return 0
        if not isinstance(saved, dict) or saved.get("key") != self.key:
            return 0
        n = 0
        for path, (stamp, feats) in saved["features"].items():
            if path not in self.features and _file_stamp(path) == stamp:
                self.features[path] = feats
                n += 1
        return n

    def save(self, store: str | os.PathLike) -> None:
        """Write every cached feature (with its image file's stamp) to one file, atomically."""
        features = {p: (_file_stamp(p), f) for p, f in self.features.items() if Path(p).is_file()}
        Path(store).parent.mkdir(parents=True, exist_ok=True)
        atomic_file(store, lambda tmp: torch.save({"key": self.key, "features": features}, tmp))


def _file_stamp(path: str) -> list[int]:
    """Size and modification time (ns) of a file: a cached feature is stale once either changes."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]
