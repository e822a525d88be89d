"""The worker pool: which thread wakes for a task, and that a stuck worker never strands one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from django_rawws.server.workers import WorkerPool

from .helpers import TIMEOUT


@pytest.fixture
def pools() -> Iterator[list[WorkerPool]]:
    started: list[WorkerPool] = []
    yield started
    for pool in started:
        pool.stop(TIMEOUT)


def start(pools: list[WorkerPool], size: int, **options: object) -> WorkerPool:
    pool = WorkerPool(size, name="rawws-test-worker", **options)  # type: ignore[arg-type]
    pool.start()
    pools.append(pool)
    return pool


def test_a_flow_of_short_tasks_is_carried_by_one_awake_thread(pools: list[WorkerPool]) -> None:
    """With a wake delay, tasks submitted while a worker is awake go to it, not to seven more threads."""
    pool = start(pools, 8, wake_delay=60.0)
    ran_on: list[str] = []
    done = threading.Event()
    count = 200

    def task() -> None:
        ran_on.append(threading.current_thread().name)
        if len(ran_on) == count:
            done.set()

    for _ in range(count):
        pool.submit(task)
    assert done.wait(TIMEOUT)
    assert len(set(ran_on)) == 1, sorted(set(ran_on))


def test_a_task_behind_a_stuck_worker_runs_once_the_wake_delay_has_passed(pools: list[WorkerPool]) -> None:
    delayed = threading.Event()
    pool = start(pools, 2, wake_delay=0.05, on_delayed=delayed.set)
    release = threading.Event()
    stuck = threading.Event()
    second = threading.Event()

    def block() -> None:
        stuck.set()
        release.wait(TIMEOUT)

    pool.submit(block)
    assert stuck.wait(TIMEOUT)
    pool.submit(second.set)
    try:
        assert delayed.is_set()  # whoever nudges was told a task waits
        assert pool.queued_count == 1
        pool.nudge(time.monotonic())  # too early: nobody is woken
        assert pool.queued_count == 1 and not second.is_set()
        pool.nudge(time.monotonic() + 1.0)  # past the delay
        assert second.wait(TIMEOUT)
    finally:
        release.set()
    assert pool.wait_idle(TIMEOUT)


def test_without_a_wake_delay_every_task_wakes_a_sleeping_worker(pools: list[WorkerPool]) -> None:
    """The HTTP pool: each task holds its connection, so none may wait for another."""
    pool = start(pools, 3)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def hold() -> None:
        entered.release()
        release.wait(TIMEOUT)

    try:
        for _ in range(3):
            pool.submit(hold)
        for _ in range(3):
            assert entered.acquire(timeout=TIMEOUT)  # three at once, no nudge needed
    finally:
        release.set()
    assert pool.wait_idle(TIMEOUT)


def test_stop_runs_the_backlog_then_every_thread_exits(pools: list[WorkerPool]) -> None:
    pool = WorkerPool(2, name="rawws-test-worker", wake_delay=60.0)
    pool.start()
    ran = []
    for n in range(50):
        pool.submit(lambda n=n: ran.append(n))
    assert pool.stop(TIMEOUT)
    assert sorted(ran) == list(range(50))
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("rawws-test-worker")]


def test_while_workers_stay_stuck_one_more_wakes_per_wake_delay_not_all_at_once(pools: list[WorkerPool]) -> None:
    pool = start(pools, 4, wake_delay=10.0)
    release = threading.Event()
    entered = threading.Semaphore(0)

    def block() -> None:
        entered.release()
        release.wait(TIMEOUT)

    try:
        for _ in range(4):
            pool.submit(block)
        assert entered.acquire(timeout=TIMEOUT)  # the first wakes a worker; the rest wait for it
        assert pool.queued_count == 3
        now = time.monotonic()
        pool.nudge(now + 10.0)  # the oldest waited the delay: one more worker
        assert entered.acquire(timeout=TIMEOUT)
        pool.nudge(now + 10.0)  # no time passed since that nudge: nobody else
        assert pool.queued_count == 2
        pool.nudge(now + 20.0)  # another delay later: one more
        assert entered.acquire(timeout=TIMEOUT)
        assert pool.queued_count == 1
    finally:
        release.set()
    assert pool.wait_idle(TIMEOUT)
