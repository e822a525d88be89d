"""What one client may take from the server: connection quotas, a message rate, log throttling.

Each piece is plain and lock-guarded where threads meet, so the I/O thread can
apply it to every accept and every read without a worker:

* :class:`QuotaTable` counts connections per key (a client address, or
  ``user:<pk>`` claimed by the application) and refuses a claim past its
  limit; a connection gives its claims back when its socket closes.
* :class:`TokenBucket` is the per-connection rate limit on what a client sends.
* :class:`ViolationLog` logs each kind of violation once per client per
  window, so a client that keeps breaking a limit costs one line a minute,
  not one per message or per attempt.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

#: Fragments (data frames that do not end a message) that cost as much as one
#: message. A message costs one token however it is fragmented, plus this
#: share per extra frame: a 1 MiB message in 64-byte frames costs 129, a
#: flood of empty fragments, which never completes a message, runs dry.
FRAGMENTS_PER_TOKEN = 128

__all__ = [
    "FRAGMENTS_PER_TOKEN",
    "QuotaTable",
    "TokenBucket",
    "ViolationLog",
    "address_key",
    "in_networks",
    "parse_networks",
]


def address_key(host: str) -> str:
    """The key the per-address quota counts ``host`` under.

    An IPv4 address counts on its own; an IPv6 address counts with its /64,
    the block one subscriber usually gets (counting single IPv6 addresses
    would let one client open a quota per address it picks). Anything that
    is not an IP address (a Unix socket path) is its own key.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"addr:{host}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"addr:{address.ipv4_mapped}"
        network = ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
        return f"addr:{network}"
    return f"addr:{address}"


def parse_networks(entries: Iterable[str]) -> tuple[Any, ...]:
    """Parse CIDR strings (bad entries skipped: the system checks report them)."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except (TypeError, ValueError):
            continue
    return tuple(networks)


def in_networks(host: str, networks: tuple[Any, ...]) -> bool:
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class QuotaTable:
    """Connections held per key, across the threads of one server (one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def claim(self, key: str, limit: int) -> bool:
        """Take one of ``limit`` slots of ``key``; False when all are taken."""
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= limit:
                return False
            self._counts[key] = count + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)

    def count(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; starts full.

    Only the I/O thread charges a connection's bucket (and the worker that
    runs ``accept()``, before the I/O thread reads the connection), under the
    connection's lock: no lock of its own.

    While the server itself stops reading the connection (backpressure: its
    consumer is behind), what the client sends waits in the kernel and is
    read in one go afterwards. :meth:`pause` and :meth:`resume` credit that
    time in full, beyond the burst, so a client within its rate is never
    charged for our own pause.
    """

    __slots__ = ("burst", "paused_since", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic() if now is None else now
        self.paused_since: float | None = None

    def charge(self, cost: float, now: float) -> float:
        """Refill for the time elapsed, take ``cost``; return the tokens there were before.

        The balance may go negative: the caller compares the cost with the
        returned balance to know how much of it was within the limit.
        """
        self._refill(now)
        before = self.tokens
        self.tokens = before - cost
        return before

    def pause(self, now: float) -> None:
        if self.paused_since is None:
            self._refill(now)
            self.paused_since = now

    def resume(self, now: float) -> None:
        if self.paused_since is not None:
            self._refill(now)
            self.tokens += (now - self.paused_since) * self.rate
            self.paused_since = None

    def _refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            if self.tokens < self.burst and self.paused_since is None:
                self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now


class ViolationLog:
    """Log a violation once per (kind, client) per ``window`` seconds; count the rest.

    The next line for the same pair says how many were not logged meanwhile.
    The table is bounded: past ``max_entries`` it forgets the pairs whose
    window is over, and everything if that is not enough.
    """

    def __init__(self, logger: logging.Logger, window: float = 60.0, max_entries: int = 4096) -> None:
        self.logger = logger
        self.window = window
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], list[float | int]] = {}

    def log(self, kind: str, client: str, message: str, *args: Any, level: int = logging.WARNING) -> bool:
        """Log ``message % args`` unless ``kind`` was logged for ``client`` within the window."""
        now = time.monotonic()
        key = (kind, client)
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                return False
            suppressed = int(entry[1]) if entry is not None else 0
            if len(self._seen) >= self.max_entries:
                self._forget(now)
            self._seen[key] = [now, 0]
        if suppressed:
            message += " (%d more since the last report)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args)
        return True

    def _forget(self, now: float) -> None:
        for key in [key for key, entry in self._seen.items() if now - entry[0] >= self.window]:
            del self._seen[key]
        if len(self._seen) >= self.max_entries:
            self._seen.clear()
