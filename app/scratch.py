"""Where the app writes the files it hands to visitors: figure and table CSVs, search and map exports, the
map's points file.

Everything goes under one folder of this process in the system's temporary folder, removed when the process
exits. Files handed out by an event go to a fresh subfolder each (`fresh`), so that two visitors' downloads
never share a file and a file keeps its readable name; Gradio copies what an event returns into its own cache
(pruned by `gr.Blocks(delete_cache=...)`, see app/ui.py), so these originals are pruned once they are older
than `MAX_AGE_S`, when later ones are written. A Space that runs for weeks does not fill its disk. Files the
page links to directly (the map's points file, served as a static path) go to `pinned` folders, never pruned.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
from pathlib import Path

MAX_AGE_S = 3600.0  # an export's original is kept this long (Gradio serves its own copy)
PRUNE_EVERY_S = 60.0  # at most one sweep a minute

_lock = threading.Lock()
_root: Path | None = None
_last_prune = 0.0


def root() -> Path:
    """This process's scratch folder (created on first use, removed at exit)."""
    global _root
    with _lock:
        if _root is None or not _root.is_dir():
            _root = Path(tempfile.mkdtemp(prefix="trace-app-"))
            atexit.register(shutil.rmtree, _root, True)
        return _root


def fresh(prefix: str) -> Path:
    """A new empty folder for one event's files; prunes the old ones first (at most once a minute)."""
    base = root() / "files"
    base.mkdir(exist_ok=True)
    prune(base)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))


def pinned(name: str) -> Path:
    """A folder that lives as long as the process (for files the page links to by path)."""
    path = root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def prune(base: Path, max_age_s: float | None = None, force: bool = False) -> int:
    """Remove the entries of `base` last modified more than `max_age_s` ago; how many. Without `force` it sweeps
    at most once every PRUNE_EVERY_S seconds (writing an export stays cheap)."""
    global _last_prune
    now = time.time()
    with _lock:
        if not force and now - _last_prune < PRUNE_EVERY_S:
            return 0
        _last_prune = now
    cutoff = now - (MAX_AGE_S if max_age_s is None else max_age_s)
    removed = 0
    for entry in base.iterdir():
        try:
            if entry.stat().st_mtime >= cutoff:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except FileNotFoundError:  # another thread removed it first
            continue
    return removed
