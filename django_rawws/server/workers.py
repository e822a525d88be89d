"""A fixed pool of named worker threads that run application code.

The pool is the bound on concurrency, and so on database connections: a
thread keeps its own connections, as Django's request threads do. Idle
workers wait on a ``SimpleQueue`` (implemented in C, one futex per wake-up).
"""

from __future__ import annotations

import collections
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable

logger = logging.getLogger("django_rawws.server")

__all__ = ["WorkerPool"]


class WorkerPool:
    def __init__(
        self,
        size: int,
        *,
        name: str = "rawws-worker",
        on_thread_start: Callable[[], None] | None = None,
        on_thread_exit: Callable[[], None] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.size = size
        self._name = name
        self._on_thread_start = on_thread_start
        self._on_thread_exit = on_thread_exit
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # When each worker's current task started (0.0: idle). One slot per
        # worker, written by that worker alone: no lock on the hot path.
        self._started = [0.0] * size
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        # When each queued task was submitted, oldest first: the queue delay
        # is how the server tells it is overloaded. A worker pops one entry
        # per task it takes (deque appends and pops are atomic).
        self._queued: collections.deque[float] = collections.deque()

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
            self._queued.append(time.monotonic())
        self._tasks.put(task)

    def queue_delay(self) -> float:
        """Seconds the oldest task still waiting for a worker has waited (0.0: none waits)."""
        try:
            return max(0.0, time.monotonic() - self._queued[0])
        except IndexError:
            return 0.0

    @property
    def queued_count(self) -> int:
        """Tasks submitted and not yet taken by a worker."""
        return len(self._queued)

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
        """Ask every thread to exit after its current task; join them."""
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            logger.error("worker threads still running at exit: %s", ", ".join(alive))
        return not alive

    def _run(self, index: int, ready: threading.Semaphore) -> None:
        tasks = self._tasks
        started = self._started
        try:
            if self._on_thread_start is not None:
                try:
                    self._on_thread_start()
                except Exception:
                    logger.exception("error while a worker thread started")
            ready.release()
            while True:
                task = tasks.get()
                if task is None:
                    return
                try:
                    self._queued.popleft()
                except IndexError:  # pragma: no cover - one entry is appended per task
                    pass
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
                    with self._idle:
                        self._pending -= 1
                        if not self._pending:
                            self._idle.notify_all()
        finally:
            if self._on_thread_exit is not None:
                try:
                    self._on_thread_exit()
                except Exception:
                    logger.exception("error while a worker thread exited")
