"""Atomic writes: a reader sees the old artifact or the new one, never half of one.

The one owner of this mechanism: every writer of an artifact (indexes and their shards, checkpoints, the
converted base LM, evaluation outputs, the embedding map) goes through `atomic_file` or `atomic_directory`.
The new content is written beside the target (same folder, so the same filesystem), flushed to disk, and
renamed into place; a crash at any moment leaves the old target or the new one under the target's name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (renames, creations), to disk. Folders cannot be opened on Windows."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it takes `target`'s place.

    Its files and the folder are flushed to disk; the old folder (if any) is renamed aside, the new one
    renamed in (the old one is put back if that fails), then the old one is removed. On an error the
    temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"cannot write the folder {target}: a file of that name exists")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes 0700; an artifact is a normal, readable folder
        for path in sorted(tmp.rglob("*"), reverse=True):  # files before the folders that hold them
            if not path.is_symlink():
                _fsync(path)
        _fsync(tmp)
        old = target.with_name(f"{tmp.name}.old")
        if target.exists():
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old.exists():
                os.replace(old, target)
            raise
        _fsync(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_file(path: str | os.PathLike, write: Callable[[str], T]) -> T:
    """Call `write(tmp_path)` on a temporary file beside `path`, then flush it and rename it into place.

    Returns what `write` returns. Readers see the old file or the new one, never half of one; on an error the
    temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        out = write(tmp)
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return out
