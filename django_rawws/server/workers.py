"""A fixed pool of named worker threads that run application code.

The pool is the bound on concurrency, and so on database connections: a
thread keeps its own connections, as Django's request threads do.

With ``wake_delay`` set (the WebSocket pool), a task wakes a sleeping worker
only when no worker is awake, or when the oldest waiting task has waited
``wake_delay`` seconds (:meth:`WorkerPool.nudge`, called by the I/O loop,
which ``on_delayed`` wakes when such a wait begins).
Under the GIL, one or two threads carry a flow of short handler calls
faster than eight taking turns, while a handler blocked on the database
still gets help within ``wake_delay``. Without it (the HTTP pool, whose
tasks hold a keep-alive connection), every task wakes a sleeping worker.
The most recently idle worker is woken first: it is the one still in the
CPU's caches.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

logger = logging.getLogger("django_rawws.server")

__all__ = ["WorkerPool"]


class _Sleeper:
    """A worker's slot while it sleeps: the lock it waits on."""

    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # held: acquiring it again sleeps until release()


class WorkerPool:
    def __init__(
        self,
        size: int,
        *,
        name: str = "rawws-worker",
        wake_delay: float | None = None,
        on_delayed: Callable[[], None] | None = None,
        on_thread_start: Callable[[], None] | None = None,
        on_thread_exit: Callable[[], None] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.size = size
        self.wake_delay = wake_delay
        self._on_delayed = on_delayed
        self._name = name
        self._on_thread_start = on_thread_start
        self._on_thread_exit = on_thread_exit
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Under _lock: tasks not taken yet, with when they were submitted
        # (the queue delay is how the server tells it is overloaded); the
        # sleeping workers, the most recently idle last; tasks submitted and
        # not finished; whether stop() was called.
        self._backlog: collections.deque[tuple[float, Callable[[], None]]] = collections.deque()
        self._sleepers: list[_Sleeper] = []
        self._pending = 0
        self._stopping = False
        self._last_nudge = float("-inf")
        # When each worker's current task started (0.0: idle). One slot per
        # worker, written by that worker alone: no lock on the hot path.
        self._started = [0.0] * size

    def start(self, timeout: float = 10.0) -> None:
        """Start the threads; return once each has run ``on_thread_start`` (or ``timeout``)."""
        ready = threading.Semaphore(0)
        for index in range(self.size):
            thread = threading.Thread(
                target=self._run, args=(index, ready), name=f"{self._name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + timeout
        for _ in range(self.size):
            if not ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            self._pending += 1
            first = not self._backlog
            self._backlog.append((time.monotonic(), task))
            sleepers = self._sleepers
            if not sleepers:
                return  # every worker is busy: the first to finish takes it
            if self.wake_delay is not None and len(sleepers) < self.size:
                # A worker is awake and will take it, unless it is stuck:
                # then nudge() wakes another after wake_delay.
                sleeper = None
            else:
                sleeper = sleepers.pop()
        if sleeper is not None:
            sleeper.wake.release()
        elif first and self._on_delayed is not None:
            self._on_delayed()  # so that whoever calls nudge() looks again

    def nudge(self, now: float | None = None) -> None:
        """Wake a sleeping worker if the oldest task has waited ``wake_delay`` (the I/O loop calls this).

        At most one per ``wake_delay``: while workers stay stuck, one more
        joins every ``wake_delay``, not all of them at once. ``now`` defaults
        to the clock, read only when a task waits.
        """
        due = self.next_nudge()
        if due is None:
            return
        if now is None:
            now = time.monotonic()
        if now < due:
            return
        with self._lock:
            if not self._backlog or not self._sleepers:
                return
            sleeper = self._sleepers.pop()
            self._last_nudge = now
        sleeper.wake.release()

    def next_nudge(self) -> float | None:
        """When :meth:`nudge` may have something to do (monotonic time), or None."""
        backlog = self._backlog
        delay = self.wake_delay
        if delay is None or not backlog or not self._sleepers:
            return None
        try:
            oldest = backlog[0][0]
        except IndexError:
            return None
        return max(oldest, self._last_nudge) + delay

    def queue_delay(self) -> float:
        """Seconds the oldest task still waiting for a worker has waited (0.0: none waits)."""
        try:
            return max(0.0, time.monotonic() - self._backlog[0][0])
        except IndexError:
            return 0.0

    @property
    def queued_count(self) -> int:
        """Tasks submitted and not yet taken by a worker."""
        return len(self._backlog)

    @property
    def busy_count(self) -> int:
        return sum(1 for started in self._started if started)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no task is queued or running; return whether that happened."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def running_stacks(self) -> list[str]:
        """Stacks of the workers busy right now, for the shutdown log."""
        frames = sys._current_frames()
        stacks = []
        for index, thread in enumerate(self._threads):
            started = self._started[index]
            if started and thread.ident in frames:
                since = time.monotonic() - started
                stack = "".join(traceback.format_stack(frames[thread.ident]))
                stacks.append(f"{thread.name} (busy for {since:.1f}s):\n{stack}")
        return stacks

    def stop(self, timeout: float) -> bool:
        """Ask every thread to exit once the backlog is done; join them."""
        with self._lock:
            self._stopping = True
            sleepers, self._sleepers = self._sleepers, []
        for sleeper in sleepers:
            sleeper.wake.release()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            logger.error("worker threads still running at exit: %s", ", ".join(alive))
        return not alive

    def _run(self, index: int, ready: threading.Semaphore) -> None:
        started = self._started
        lock = self._lock
        backlog = self._backlog
        sleeper = _Sleeper()
        finished = False  # a task of this thread's to account for
        try:
            if self._on_thread_start is not None:
                try:
                    self._on_thread_start()
                except Exception:
                    logger.exception("error while a worker thread started")
            ready.release()
            while True:
                # One lock round per task: account for the one just finished,
                # then take the next, or sleep until a submit or nudge wakes us.
                with lock:
                    if finished:
                        finished = False
                        self._pending -= 1
                        if not self._pending:
                            self._idle.notify_all()
                    if backlog:
                        task: Callable[[], None] | None = backlog.popleft()[1]
                    elif self._stopping:
                        return
                    else:
                        self._sleepers.append(sleeper)
                        task = None
                if task is None:
                    sleeper.wake.acquire()
                    continue
                started[index] = time.monotonic()
                try:
                    task()
                except Exception:  # the task's own error handling failed
                    logger.exception("unhandled error in a worker task")
                finally:
                    # Not held while this thread waits for the next task: a
                    # finished connection's memory goes back at once.
                    task = None
                    started[index] = 0.0
                    finished = True
        finally:
            if self._on_thread_exit is not None:
                try:
                    self._on_thread_exit()
                except Exception:
                    logger.exception("error while a worker thread exited")
