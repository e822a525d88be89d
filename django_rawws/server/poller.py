"""Readiness notification over epoll (Linux) or kqueue (macOS, BSD).

A thin layer: ``select.select`` and ``poll`` scale with the number of sockets
watched, these two with the number of sockets ready. Registration calls are
safe from any thread; ``poll`` is called by the I/O thread alone.
"""

from __future__ import annotations

import select

__all__ = ["Poller", "READ", "WRITE"]

READ = 1
WRITE = 2


class _EpollPoller:
    def __init__(self) -> None:
        self._epoll = select.epoll()

    @staticmethod
    def _mask(events: int) -> int:
        mask = 0
        if events & READ:
            mask |= select.EPOLLIN | select.EPOLLRDHUP
        if events & WRITE:
            mask |= select.EPOLLOUT
        return mask

    def register(self, fd: int, events: int) -> None:
        self._epoll.register(fd, self._mask(events))

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, self._mask(events))

    def unregister(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        ready = []
        err_mask = select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
        for fd, mask in self._epoll.poll(-1 if timeout is None else timeout):
            events = 0
            if mask & (select.EPOLLIN | err_mask):
                events |= READ
            if mask & (select.EPOLLOUT | select.EPOLLERR):
                events |= WRITE
            ready.append((fd, events))
        return ready

    def close(self) -> None:
        self._epoll.close()


class _KqueuePoller:  # pragma: no cover - exercised on macOS
    def __init__(self) -> None:
        self._kqueue = select.kqueue()
        self._registered: dict[int, int] = {}

    def _control(self, fd: int, old: int, new: int) -> None:
        changes = []
        for bit, kfilter in ((READ, select.KQ_FILTER_READ), (WRITE, select.KQ_FILTER_WRITE)):
            if new & bit and not old & bit:
                changes.append(select.kevent(fd, kfilter, select.KQ_EV_ADD))
            elif old & bit and not new & bit:
                changes.append(select.kevent(fd, kfilter, select.KQ_EV_DELETE))
        if changes:
            self._kqueue.control(changes, 0, 0)

    def register(self, fd: int, events: int) -> None:
        self._control(fd, 0, events)
        self._registered[fd] = events

    def modify(self, fd: int, events: int) -> None:
        self._control(fd, self._registered.get(fd, 0), events)
        self._registered[fd] = events

    def unregister(self, fd: int) -> None:
        old = self._registered.pop(fd, 0)
        try:
            self._control(fd, old, 0)
        except OSError:
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        merged: dict[int, int] = {}
        for kev in self._kqueue.control(None, 1024, timeout):
            bit = READ if kev.filter == select.KQ_FILTER_READ else WRITE
            if kev.flags & select.KQ_EV_EOF:
                bit |= READ
            merged[kev.ident] = merged.get(kev.ident, 0) | bit
        return list(merged.items())

    def close(self) -> None:
        self._kqueue.close()


def Poller() -> _EpollPoller | _KqueuePoller:  # noqa: N802 - a factory that reads as a class
    """Return the best poller of this platform."""
    if hasattr(select, "epoll"):
        return _EpollPoller()
    if hasattr(select, "kqueue"):  # pragma: no cover
        return _KqueuePoller()
    raise RuntimeError("django-rawws needs epoll (Linux) or kqueue (macOS, BSD)")  # pragma: no cover
