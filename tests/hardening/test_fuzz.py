"""Random and mutated handshakes and frames against a running server, over real sockets.

Hypothesis generates whole client conversations: random bytes; a valid
handshake mutated (bytes flipped, cut, inserted, repeated); plain HTTP
keep-alive requests, mutated; a valid handshake followed by frames, valid
ones mixed with frames of any opcode, flags, masking and length encoding
(declared lengths included), optionally mutated or cut short; each ended by
a close, a reset or a half-close. The budget is fixed (300 examples per
application, derandomized, so CI runs the same corpus every time) and each
example waits at most 50 ms for the server. It runs against the server's
plain echo app and against the Django side with an HTTP pool.

After a warm-up round, the server's threads never exceed the configured
number (the I/O thread and the workers, plus the HTTP pool and the
slow-handler watchdog for the Django side); once the fuzzing is over every
connection is gone, the process's descriptors come back to the post-warm-up
count (polled until a deadline), nothing was logged at ERROR by the server,
and it still echoes.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from django_rawws.handler import DjangoApplication
from django_rawws.protocol.masking import apply_mask
from tests.server.helpers import (
    TIMEOUT,
    RecordingApp,
    handshake_request,
    rawws_threads,
    rst_close,
    running_server,
    ws_url,
)

from .measure import fd_count, needs_proc, poll_until

WORKERS = 4
HTTP_WORKERS = 2
WAIT = 0.05
EXAMPLES = 300

CONFIG = {
    "workers": WORKERS,
    "handshake_timeout": 0.5,
    "close_timeout": 0.5,
    "linger_timeout": 0.2,
    "max_message_size": 16 << 10,
    "ping_interval": 0.3,
    "ping_timeout": 0.3,
}

# ---------------------------------------------------------------- strategies


def _frame(
    opcode: int,
    fin: bool,
    rsv: int,
    masked: bool,
    payload: bytes,
    length_bytes: int | None,
    declared: int | None,
) -> bytes:
    length = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if length_bytes is None:
        length_bytes = 0 if length < 126 else 2 if length < 65536 else 8
    mask_bit = 0x80 if masked else 0
    if length_bytes == 0:
        header = bytes([first, mask_bit | min(length, 125)])
    elif length_bytes == 2:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", length & 0xFFFF)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", length & (2**64 - 1))
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + apply_mask(payload, mask)


valid_frames = st.one_of(
    st.text(max_size=200).map(lambda text: _frame(1, True, 0, True, text.encode("utf-8"), None, None)),
    st.binary(max_size=200).map(lambda data: _frame(2, True, 0, True, data, None, None)),
    st.binary(max_size=125).map(lambda data: _frame(9, True, 0, True, data, None, None)),
    st.tuples(st.text(min_size=2, max_size=50), st.integers(1, 3)).map(
        lambda case: (
            _frame(1, False, 0, True, case[0].encode()[: case[1]], None, None)
            + _frame(0, True, 0, True, case[0].encode()[case[1] :], None, None)
        )
    ),
)

any_frames = st.builds(
    _frame,
    opcode=st.one_of(st.sampled_from([0, 1, 2, 8, 9, 10]), st.integers(0, 15)),
    fin=st.booleans(),
    rsv=st.one_of(st.just(0), st.integers(0, 7)),
    masked=st.sampled_from([True, True, True, False]),  # mostly masked, as a client must
    payload=st.one_of(
        st.binary(max_size=64),
        st.text(max_size=64).map(lambda text: text.encode("utf-8")),
        st.sampled_from([b"\x03\xe8", b"\x03\xe8bye", b"\x0f\xa0", b"\x00", b"\xff\xfe\xfd"]),
    ),
    length_bytes=st.sampled_from([None, None, None, 2, 8]),
    declared=st.one_of(st.none(), st.none(), st.integers(0, 2**63 + 5)),
)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
        if kind == "flip":
            data[where] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[where : where + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "repeat":
            data[where:where] = data[where : where + draw(st.integers(1, 64))] * draw(st.integers(2, 50))
        else:
            del data[where:]
    return bytes(data)


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    request = handshake_request(
        draw(st.sampled_from(["/", "/ws/echo/", "/ws/echo/?a=b", "/%ff"])),
        headers=draw(
            st.sampled_from(
                [
                    (),
                    [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")],
                    [("Origin", "null")],
                ]
            )
        ),
    )
    kind = draw(
        st.sampled_from(
            ["random", "mutated handshake", "plain HTTP", "frames", "mutated frames", "cut frames"]
        )
    )
    if kind == "random":
        return draw(st.binary(max_size=1024))
    if kind == "mutated handshake":
        return draw(mutated(request))
    if kind == "plain HTTP":
        # Keep-alive requests after a first one: the HTTP pool's own head reading.
        first = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        return first + draw(mutated(first * draw(st.integers(1, 3))))
    body = b"".join(draw(st.lists(st.one_of(valid_frames, any_frames), max_size=8)))
    if kind == "mutated frames" and body:
        body = draw(mutated(body))
    elif kind == "cut frames" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    return request + body


# ------------------------------------------------------------------- driver


def converse(address: tuple[str, int], data: bytes, ending: str) -> None:
    """Send ``data``, read what comes for at most WAIT seconds (or to EOF), then end as told."""
    sock = socket.create_connection(address, timeout=TIMEOUT)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return
        if ending == "half-close":
            sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        remaining = 1 << 20
        while remaining > 0:
            readable, _, _ = select.select([sock], [], [], WAIT)
            if not readable:
                break
            try:
                chunk = sock.recv(65536)
            except (BlockingIOError, ConnectionResetError):
                break
            if not chunk:
                break
            remaining -= len(chunk)
    finally:
        if ending == "reset":
            rst_close(sock)
        else:
            sock.close()


endings = st.sampled_from(["close", "reset", "half-close"])


class EchoApp(RecordingApp):
    """The server's own echo app (no plain HTTP: those requests get 426)."""


def _wsgi(environ: dict[str, object], start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])  # type: ignore[operator]
    return [b"ok"]


def _django_app() -> DjangoApplication:
    """The Django side with tests.wsurls (``/ws/echo/``) and a WSGI app for plain HTTP on its own pool."""
    return DjangoApplication(wsgi_application=_wsgi)


@needs_proc
@pytest.mark.parametrize(
    ("make_app", "max_threads", "echo_path"),
    [
        # The I/O thread and the workers.
        pytest.param(EchoApp, 1 + WORKERS, "/", id="plain-app"),
        # ... plus the HTTP pool and the slow-handler watchdog.
        pytest.param(_django_app, 1 + WORKERS + HTTP_WORKERS + 1, "/ws/echo/", id="django-app"),
    ],
)
def test_fuzzed_conversations_leave_threads_and_descriptors_bounded_and_the_server_echoing(
    caplog: pytest.LogCaptureFixture, make_app: Any, max_threads: int, echo_path: str
) -> None:
    app = make_app()
    thread_counts: list[int] = []
    with caplog.at_level(logging.WARNING), running_server(app, http_workers=HTTP_WORKERS, **CONFIG) as server:
        address = server.address

        # Warm-up: one of each kind of ending, so lazily created objects exist.
        warm_up = (
            handshake_request(echo_path) + b"\x81\x80abcd",
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"\x00" * 10,
            handshake_request()[:30],
        )
        for data in warm_up:
            for ending in ("close", "reset", "half-close"):
                converse(address, data, ending)
        assert poll_until(lambda: not server.connections() and not server._http_sockets, TIMEOUT)
        baseline = fd_count()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=conversations(), ending=endings)
        def fuzz(data: bytes, ending: str) -> None:
            converse(address, data, ending)
            thread_counts.append(len(rawws_threads()))

        fuzz()

        assert poll_until(lambda: not server.connections() and not server._http_sockets, TIMEOUT)
        assert poll_until(lambda: fd_count() <= baseline, TIMEOUT), (fd_count(), baseline)
        assert len(thread_counts) >= EXAMPLES
        assert max(thread_counts) <= max_threads, max(thread_counts)
        with connect(ws_url(server, echo_path)) as ws:
            ws.send("still echoing")
            assert ws.recv(TIMEOUT) == "still echoing"
        if isinstance(app, RecordingApp):
            # The corpus gets past the handshake, and past the frame parser, often enough to mean something.
            assert len(app.handshakes) >= 30 and len(app.messages) >= 30
            assert app.wait_until(lambda: len(app.disconnects) == len(app.handshakes))
    # (django.server logs a client's 505 at ERROR: its request line, not our failure.)
    errors = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.name.startswith("django_rawws")
    ]
    assert errors == []
