"""Out of file descriptors: the server pauses accepting, logs once, and resumes when descriptors free up."""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import TIMEOUT, handshake_request

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to count descriptors")


def answered(sockets: list[socket.socket], deadline: float, enough: int | None = None) -> set[socket.socket]:
    """The sockets that received a 101 before ``deadline``, or once ``enough`` did."""
    done: set[socket.socket] = set()
    buffers = {sock: b"" for sock in sockets}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        target = len(sockets) if enough is None else enough
        while len(done) < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                sock = key.fileobj
                data = sock.recv(4096)  # type: ignore[union-attr]
                buffers[sock] += data  # type: ignore[index]
                if b"\r\n\r\n" in buffers[sock] or not data:  # type: ignore[index]
                    selector.unregister(sock)
                    if buffers[sock].startswith(b"HTTP/1.1 101"):  # type: ignore[index]
                        done.add(sock)  # type: ignore[arg-type]
    return done


def test_emfile_pauses_accepting_logs_once_and_resumes_when_descriptors_free_up() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.server.emfile_server", "--spare", "12"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    clients: list[socket.socket] = []
    try:
        port = int(process.stdout.readline())  # type: ignore[union-attr]
        for _ in range(30):
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            sock.sendall(handshake_request())
            clients.append(sock)
        first = answered(clients, time.monotonic() + 1.0)
        # Twelve spare descriptors: some clients got in, the rest wait in the backlog.
        assert 0 < len(first) < len(clients)
        waiting = [sock for sock in clients if sock not in first]
        for sock in list(first):
            sock.close()
            clients.remove(sock)
        # Enough descriptors came back for at least as many as before.
        expected = min(len(first), len(waiting))
        late = answered(waiting, time.monotonic() + TIMEOUT, enough=expected)
        assert len(late) >= expected
    finally:
        for sock in clients:
            sock.close()
        _, stderr = process.communicate(input="", timeout=30)
    assert process.returncode == 0
    assert stderr.count("accept() failed") == 1, stderr
    assert "raise the open-files limit" in stderr
