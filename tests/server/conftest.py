"""Fixtures of the server tests: a running server with a plain (non-Django) app.

``running_server(app, **config)`` is the context manager behind them, for
tests that need their own app or configuration.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from django_rawws.server import Server

from .helpers import RecordingApp, join_rawws_threads, running_server

__all__ = ["running_server"]


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def server(app: RecordingApp) -> Iterator[Server]:
    """A server running the ``app`` fixture (an echo app) with the test defaults."""
    with running_server(app) as server:
        yield server


@pytest.fixture(autouse=True)
def no_server_threads_left() -> Iterator[None]:
    """Every test leaves no rawws-* thread behind, so the next one starts clean."""
    yield
    alive = join_rawws_threads()
    assert not alive, f"server threads still running after the test: {alive}"
