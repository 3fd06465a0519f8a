"""app.scratch: the files the app hands out live under one folder of the process and old ones are pruned."""

import os
import time

import pandas as pd

from app import downloads, scratch


def _two_hours_old(path):
    past = time.time() - 7200
    os.utime(path, (past, past))


def test_fresh_folders_are_separate_and_under_the_process_root():
    a, b = scratch.fresh("figure"), scratch.fresh("figure")
    assert a != b and a.is_dir() and b.is_dir()
    assert a.parent == b.parent == scratch.root() / "files"


def test_prune_removes_only_entries_older_than_the_age(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / "x.csv").write_text("a")
    new.mkdir()
    _two_hours_old(old)
    assert scratch.prune(tmp_path, max_age_s=3600, force=True) == 1
    assert not old.exists() and (new.is_dir())


def test_prune_sweeps_at_most_once_a_minute(tmp_path):
    scratch.prune(tmp_path, force=True)  # a sweep just ran
    stale = tmp_path / "stale"
    stale.mkdir()
    _two_hours_old(stale)
    assert scratch.prune(tmp_path, max_age_s=3600) == 0 and stale.exists()  # too soon after the last sweep
    assert scratch.prune(tmp_path, max_age_s=3600, force=True) == 1


def test_figure_csv_is_written_into_scratch_with_the_figure_name():
    path = downloads.csv_file(pd.DataFrame({"pair": ["a"], "r5": [1.0]}), "Reason rate by pair")
    assert path.endswith("reason-rate-by-pair.csv")
    assert str(scratch.root()) in path
    assert pd.read_csv(path)["pair"].tolist() == ["a"]


def test_pinned_folder_survives_a_prune():
    pinned = scratch.pinned("map")
    (pinned / "points.json").write_text("{}")
    _two_hours_old(pinned)
    scratch.prune(scratch.root() / "files", max_age_s=0, force=True)  # prunes exports only
    assert (pinned / "points.json").is_file()


def test_sigterm_stops_the_app_and_removes_its_scratch_folder(tmp_path):
    """A Space or container stops the app with SIGTERM: it must exit cleanly, taking its scratch folder along."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--no-map"], cwd=root,
                            env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, "the app exited before it answered"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "the page did not answer"
                time.sleep(1)
        assert list(tmp_path.glob("trace-app-*"))  # the page's CSV downloads are written there
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(tmp_path.glob("trace-app-*"))
