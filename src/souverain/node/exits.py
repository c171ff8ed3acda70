"""Why an engine process ended, in words a person can act on, and when exits are a crash loop;
and how a child process is made to end with the thread that started it."""

from __future__ import annotations

import contextlib
import ctypes
import signal
from collections import deque
from pathlib import Path

CRASH_LOOP_EXITS = 3  # this many exits …
CRASH_LOOP_WINDOW_S = 120.0  # … within this many seconds make a crash loop
TAIL_LINES = 3
TAIL_LINE_CHARS = 200
_PR_SET_PDEATHSIG = 1

_SIGNAL_HINTS = {
    signal.SIGKILL: "killed (SIGKILL): out of memory, or stopped from outside",
    signal.SIGSEGV: "crashed (SIGSEGV, segmentation fault)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGBUS: "crashed (SIGBUS)",
    signal.SIGFPE: "crashed (SIGFPE)",
    signal.SIGTERM: "terminated (SIGTERM)",
}


def describe_exit(code: int | None, *, build_hint: str, log_tail: str = "") -> str:
    """`code` is a Popen return code: negative for a signal."""
    if code is None:
        what = "engine exited"
    elif code < 0:
        what = "engine " + _signal_words(-code, build_hint)
    else:
        what = f"engine exited with code {code}"
    return f"{what}; last log lines: {log_tail}" if log_tail else what


def _signal_words(number: int, build_hint: str) -> str:
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"killed by signal {number}"
    if sig == signal.SIGILL:
        return (
            "died of an illegal instruction (SIGILL): this build uses CPU instructions this "
            f"node cannot run; rebuild {build_hint} without native flags (README: Engine builds)"
        )
    return _SIGNAL_HINTS.get(sig, f"killed by {sig.name}")


def log_tail(path: Path, *, since: int = 0, lines: int = TAIL_LINES, max_bytes: int = 8192) -> str:
    """The last lines an engine wrote to its log after byte `since` (where this run of
    the engine began), shortened, joined with ' | '."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(since, size - max_bytes, 0))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip()[:TAIL_LINE_CHARS] for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


class CrashLoop:
    """Remembers recent exits; `looping` once there were too many too close together."""

    def __init__(
        self, *, exits: int = CRASH_LOOP_EXITS, window_s: float = CRASH_LOOP_WINDOW_S
    ) -> None:
        self._window_s = window_s
        self._recent: deque[float] = deque(maxlen=exits)

    def record(self, at: float) -> None:
        self._recent.append(at)

    def clear(self) -> None:
        self._recent.clear()

    @property
    def looping(self) -> bool:
        full = len(self._recent) == self._recent.maxlen
        return full and self._recent[-1] - self._recent[0] <= self._window_s


def die_with_parent() -> None:
    """Runs in a child between fork and exec: SIGKILL it when the thread that started it
    ends (PR_SET_PDEATHSIG), so engines and training workers never outlive their actor."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
