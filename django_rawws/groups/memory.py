"""The in-memory group backend: one process, nothing to install.

Groups live in the memory of the process that runs the server, so a send
reaches the connections of this process only. That is the whole site while
it runs as one ``runws`` process; it is nobody when the push comes from a
process without a server (a gunicorn worker, ``manage.py shell``, a task
queue): such a push logs a warning, once per process, and returns 0. Several
processes need the Redis backend.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

from .base import BaseGroupBackend
from .resume import Entry, MessageId, ResumeWindow, envelope

__all__ = ["MemoryGroupBackend"]

logger = logging.getLogger("django_rawws.groups")


class MemoryGroupBackend(BaseGroupBackend):
    """Groups of this process's connections; sends reach them directly, never blocking.

    Takes the options every backend takes (``resumable``, ``resume_count``,
    ``resume_age``) and no others.
    """

    cross_process = False

    #: Sends to resumable groups between two sweeps of idle windows.
    _SWEEP_EVERY = 1024

    # Once per process, not per instance: settings changes in tests build new
    # instances, and the warning is about the process.
    _warned_no_server: ClassVar[bool] = False
    _warn_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._windows: dict[str, ResumeWindow] = {}
        self._windows_lock = threading.Lock()
        self._sends_since_sweep = 0

    def _publish_raw(self, group: str, message: str | bytes, excluded: frozenset[str]) -> int:
        if not self._servers:
            self._warn_no_server(group)
            return 0
        if self.is_resumable(group):
            assert isinstance(message, str)  # prepare_raw() checked it
            window = self._window(group)
            # Held across the fan-out: the live flow follows id order.
            with window.lock:
                msg_id = window.append(message, excluded, self.resume_count, self.resume_age)
                return self._deliver_raw(group, envelope(msg_id, group, message), excluded, msg_id)
        return self._deliver_raw(group, message, excluded)

    def _publish_event(self, group: str, event: dict[str, Any], excluded: frozenset[str]) -> int:
        if not self._servers:
            self._warn_no_server(group)
            return 0
        return self.local.send_event(group, event, excluded)

    def _fetch_backlog(self, group: str, after: MessageId) -> tuple[list[Entry], MessageId | None]:
        with self._windows_lock:
            window = self._windows.get(group)
        if window is None:
            return [], None
        return window.after(after, self.resume_count, self.resume_age)

    def _window(self, group: str) -> ResumeWindow:
        with self._windows_lock:
            window = self._windows.get(group)
            if window is None:
                window = self._windows[group] = ResumeWindow()
            self._sends_since_sweep += 1
            if self._sends_since_sweep >= self._SWEEP_EVERY:
                self._sends_since_sweep = 0
                self._sweep_windows_locked()
            return window

    def _sweep_windows_locked(self) -> None:
        """Forget the windows of groups silent for longer than the resume age (they hold nothing)."""
        deadline = time.monotonic() - self.resume_age
        for name in [name for name, window in self._windows.items() if window.touched < deadline]:
            del self._windows[name]

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        if self.resumable:
            with self._windows_lock:
                stats["resume_windows"] = len(self._windows)
        return stats

    def _warn_no_server(self, group: str) -> None:
        cls = MemoryGroupBackend
        with cls._warn_lock:
            if cls._warned_no_server:
                return
            cls._warned_no_server = True
        logger.warning(
            "group send to %r reached nobody: this process runs no WebSocket server, and the in-memory "
            "group backend only reaches connections of its own process. Use the Redis backend to push "
            "from web workers, commands and tasks. (Logged once per process.)",
            group,
        )
