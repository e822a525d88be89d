"""The hardening tests: abuse, overload and faults, against a real server over real sockets.

Servers run in threads of the test process (measured through /proc/self) or
in subprocesses (measured through /proc/<pid>), with deadlines far below the
production defaults so that every case ends in well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server.helpers import join_rawws_threads


@pytest.fixture(autouse=True)
def no_server_threads_left() -> Iterator[None]:
    """Every test leaves no rawws-* thread behind, so the next one measures from a clean state."""
    yield
    alive = join_rawws_threads()
    assert not alive, f"server threads still running after the test: {alive}"
