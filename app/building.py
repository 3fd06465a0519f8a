"""What the server is still building after it started answering, and how far it is: read by the page.

`python app.py` serves as soon as the model is loaded and every pool is read; what is not shipped or cached
(a pool's index for another model, the embedding map, the evaluation of `--build-analysis`) is built by one
background thread, stage after stage (`Services.build_in_background`). Each stage reports here; the page shows
it (`status_markdown`) and a task whose index is not built yet says so instead of searching. No Gradio here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Stage:
    name: str  # key, e.g. "index:emoji_task0", "map", "analysis"
    label: str  # in words, for the page
    unit: str = "items"
    total: int = 0
    done: int = 0
    state: str = "waiting"  # waiting | running | done | failed
    error: str = ""
    started: float | None = None
    finished: float | None = None

    def eta_s(self) -> float | None:
        """Seconds left at the pace so far (None before there is a pace)."""
        if self.state != "running" or not self.started or not self.done or not self.total:
            return None
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        return (self.total - self.done) / rate


@dataclass
class Build:
    """The background stages, in the order they run; thread-safe."""

    stages: dict[str, Stage] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, label: str, total: int = 0, unit: str = "items") -> None:
        with self._lock:
            self.stages[name] = Stage(name, label, unit, total)

    def start(self, name: str) -> None:
        with self._lock:
            s = self.stages[name]
            s.state, s.started = "running", time.monotonic()

    def report(self, name: str, done: int, total: int | None = None) -> None:
        with self._lock:
            s = self.stages[name]
            s.done = done
            if total is not None:
                s.total = total

    def advance(self, name: str, n: int) -> None:
        """n more items done (a stage that counts as it goes)."""
        with self._lock:
            self.stages[name].done += n

    def finish(self, name: str) -> None:
        with self._lock:
            s = self.stages[name]
            s.state, s.finished = "done", time.monotonic()
            s.done = max(s.done, s.total)

    def fail(self, name: str, error: str) -> None:
        with self._lock:
            s = self.stages[name]
            s.state, s.error, s.finished = "failed", error, time.monotonic()

    def state_of(self, name: str) -> str | None:
        with self._lock:
            s = self.stages.get(name)
            return s.state if s else None

    @property
    def finished(self) -> bool:
        """Nothing left waiting or running (failed stages count as finished: they will not change)."""
        with self._lock:
            return all(s.state in ("done", "failed") for s in self.stages.values())

    def describe(self, name: str) -> str:
        """One stage in words: "embedding 96 of 1,200 candidates (8 %), about 2 min left"."""
        with self._lock:
            s = self.stages[name]
            return _words(s)


def _words(s: Stage) -> str:
    if s.state == "failed":
        return f"{s.label}: failed ({s.error})"
    if s.state == "done":
        took = f" in {s.finished - s.started:.0f} s" if s.started and s.finished else ""
        return f"{s.label}: ready{took}"
    if s.state == "waiting":
        return f"{s.label}: waiting for the stages before it"
    if not s.total:
        return f"{s.label}: running"
    eta = s.eta_s()
    left = f", about {_duration(eta)} left" if eta is not None else ""
    return f"{s.label}: {s.done:,} of {s.total:,} {s.unit} ({100 * s.done / s.total:.0f} %){left}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def status_markdown(build: Build | None) -> str:
    """The page's banner: empty once everything is built (and when nothing was ever built in the background)."""
    if build is None or not build.stages:
        return ""
    with build._lock:
        stages = list(build.stages.values())
    if all(s.state == "done" for s in stages):
        return ""
    lines = [f"- {_words(s)}" for s in stages if s.state != "done"]
    head = ("**Still building** (in the background; the tabs that need it say so and fill in when it is done, "
            "everything else works now):")
    if all(s.state in ("done", "failed") for s in stages):
        head = "**Some background work failed**; the rest works:"
    return head + "\n" + "\n".join(lines)
