"""atomic_directory: the old folder survives a failed write; a successful one replaces it whole."""

from __future__ import annotations

import pytest

from trace_core.atomic import atomic_directory


def test_success_replaces_and_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "artifact"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed halfway")
    assert (target / "a.txt").read_text() == "one"
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no temporary or old folders left
