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
from typing import Any, ClassVar

from .base import BaseGroupBackend

__all__ = ["MemoryGroupBackend"]

logger = logging.getLogger("django_rawws.groups")


class MemoryGroupBackend(BaseGroupBackend):
    """Groups of this process's connections; sends reach them directly, never blocking.

    Takes no options.
    """

    cross_process = False

    # Once per process, not per instance: settings changes in tests build new
    # instances, and the warning is about the process.
    _warned_no_server: ClassVar[bool] = False
    _warn_lock: ClassVar[threading.Lock] = threading.Lock()

    def _publish_raw(self, group: str, message: str | bytes, excluded: frozenset[str]) -> int:
        if not self._servers:
            self._warn_no_server(group)
            return 0
        return self.local.send_raw(group, message, excluded)

    def _publish_event(self, group: str, event: dict[str, Any], excluded: frozenset[str]) -> int:
        if not self._servers:
            self._warn_no_server(group)
            return 0
        return self.local.send_event(group, event, excluded)

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
