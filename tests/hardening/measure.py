"""What the hardening tests measure, read from ``/proc``, and a bounded poll.

Figures are read from the kernel's view of a process (the test process for a
server running in threads, a child's pid for a subprocess): descriptors,
threads, resident memory, and the CPU time of one thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

HAS_PROC = Path("/proc/self/fd").exists()

needs_proc = pytest.mark.skipif(not HAS_PROC, reason="needs /proc to measure the server")

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def fd_count(pid: int | str = "self") -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int | str = "self") -> int:
    return int(_status_field(pid, "Threads"))


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of ``pid`` (VmRSS)."""
    value = _status_field(pid, "VmRSS")
    number, unit = value.split()
    assert unit == "kB", value
    return int(number) * 1024


def thread_cpu_seconds(thread: threading.Thread) -> float:
    """User plus system CPU time of one thread of this process."""
    assert thread.native_id is not None
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    # The command name may contain spaces: the fields start after its ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_field(pid: int | str, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise KeyError(name)


def poll_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Evaluate ``predicate`` until it holds or ``timeout`` passes (for figures nothing notifies)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)


class LogWaiter(logging.Handler):
    """Collects the messages of a logger and lets a test wait for one, without polling."""

    def __init__(self, logger_name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger_name)
        self.messages: list[str] = []
        self.changed = threading.Condition()

    def __enter__(self) -> LogWaiter:
        self.logger.addHandler(self)
        self._level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.messages.append(record.getMessage())
            self.changed.notify_all()

    def count(self, prefix: str) -> int:
        with self.changed:
            return sum(message.startswith(prefix) for message in self.messages)

    def wait_for(self, prefix: str, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(m.startswith(prefix) for m in self.messages), timeout)
