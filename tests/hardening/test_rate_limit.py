"""The rate limit on an open socket: a token bucket per connection, closed with 1008 past it.

A message costs one token, a ping or pong one, a fragment that does not end
its message 1/128 (``FRAGMENTS_PER_TOKEN``): so a flood of pings or of empty
fragments, which completes no message and would otherwise never pause the
reads, runs the bucket dry like a flood of messages. The tests use a tiny
rate (1 a second) so the burst alone decides, and count what the server
parsed to show the work one client can cause is bounded.
"""

from __future__ import annotations

import logging
import select
import time

import pytest
from websockets.sync.client import connect

from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.events import CloseReceived, Pong, TextMessage
from django_rawws.server import ServerConnection
from django_rawws.server.limits import FRAGMENTS_PER_TOKEN
from tests.server.helpers import (
    TIMEOUT,
    BlockingApp,
    RawClient,
    RecordingApp,
    masked_frame,
    running_server,
    ws_url,
)

from .measure import needs_proc, thread_cpu_seconds

BURST = 10

# One recv() of the server is at most 64 KiB; the smallest masked frame is 6 bytes.
MOST_FRAMES_PER_READ = 65536 // 6 + 1


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Frames the server parsed, per connection id (read after each read of the socket)."""
    counts: dict[str, int] = {}
    original = ServerConnection._receive_frames_locked

    def counting(self: ServerConnection, data: bytes) -> None:
        original(self, data)
        proto = self._proto
        if proto is not None:
            counts[self.id] = proto.frames_received

    monkeypatch.setattr(ServerConnection, "_receive_frames_locked", counting)
    return counts


def rate_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if "(MESSAGE_RATE)" in record.getMessage()]


def test_a_burst_past_message_burst_is_closed_with_1008_and_only_the_messages_within_it_are_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The close goes out at once: the messages within the burst reach the handler, their replies may not."""
    app = RecordingApp()
    with (
        running_server(app, message_rate=1, message_burst=BURST) as server,
        connect(ws_url(server)) as bystander,
    ):
        client = RawClient.connect(server)
        with client.sock:
            client.send_raw(b"".join(masked_frame(Opcode.TEXT, f"m{index}".encode()) for index in range(15)))
            events, code = client.events_until_close()
        assert code == 1008
        assert events == [TextMessage(f"m{index}") for index in range(len(events))]  # a prefix, if any
        bystander.send("unaffected")
        assert bystander.recv(TIMEOUT) == "unaffected"
        assert app.wait_disconnects() == [1008]
    assert [message for conn, message in app.messages if conn is app.handshakes[1]] == [
        f"m{index}" for index in range(BURST)
    ]
    [line] = rate_warnings(caplog)
    assert line.startswith("closing 127.0.0.1:")
    assert line.endswith("with 1008: more than 10 messages at once or 1 a second on average (MESSAGE_RATE)")


def test_pings_count_against_the_rate() -> None:
    app = RecordingApp()
    with running_server(app, message_rate=1, message_burst=BURST) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_raw(masked_frame(Opcode.PING, b"p") * (BURST + 1))
            pongs = 0
            code = None
            for _ in range(100):
                event = client.next_event(reply=False)
                if isinstance(event, Pong):
                    pongs += 1
                    continue
                assert isinstance(event, CloseReceived), event
                code = event.code
                break
        assert code == 1008
        assert pongs == BURST + 1  # the parser answers the pings of the read that crossed the limit
        assert app.wait_disconnects() == [1008]


FLOODS = [
    # (what, the flood's first bytes, the frame repeated, how many of those one token buys)
    (
        "empty fragments of a message that never ends",
        masked_frame(Opcode.TEXT, b"", fin=False),
        masked_frame(Opcode.CONTINUATION, b"", fin=False),
        FRAGMENTS_PER_TOKEN,
    ),
    ("one-byte messages", b"", masked_frame(Opcode.TEXT, b"x"), 1),
    ("empty pings", b"", masked_frame(Opcode.PING, b""), 1),
    ("unsolicited pongs", b"", masked_frame(Opcode.PONG, b""), 1),
]


@needs_proc
@pytest.mark.parametrize(
    ("start", "unit", "per_token"), [pytest.param(*flood[1:], id=flood[0]) for flood in FLOODS]
)
def test_a_flood_of_tiny_frames_is_cut_off_after_a_bounded_number_of_frames(
    parsed: dict[str, int], start: bytes, unit: bytes, per_token: int
) -> None:
    """Frames cost the parser as much as messages, whether or not they complete one: the rate runs dry."""
    app = RecordingApp()
    with running_server(app, message_rate=1, message_burst=BURST) as server:
        io_thread = server._io_thread
        assert io_thread is not None
        cpu_before = thread_cpu_seconds(io_thread)
        client = RawClient.connect(server)
        conn = app.handshakes[0]
        chunk = unit * (60_000 // len(unit))
        with client.sock:
            client.send_raw(start)
            sent = 0
            closed = False
            while sent < 300 and not closed:  # at most 18 MB
                try:
                    client.sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 1
                closed = bool(select.select([client.sock], [], [], 0)[0])
            # Pongs may come first, then the close.
            code = None
            for _ in range(100_000):
                event = client.next_event(reply=False)
                if event is None or isinstance(event, CloseReceived):
                    code = event.code if event is not None else None
                    break
            assert code == 1008
        cpu = thread_cpu_seconds(io_thread) - cpu_before
        assert app.wait_disconnects() == [1008]
    # The bucket holds BURST tokens; the read that crossed the limit is parsed
    # whole before the server looks.
    assert BURST * per_token < parsed[conn.id] <= BURST * per_token + MOST_FRAMES_PER_READ
    assert cpu < 1.0, f"the I/O thread spent {cpu:.2f}s on one flooding client"
    assert len(app.messages) <= BURST


def test_fragmented_messages_cost_one_token_plus_a_share_per_fragment() -> None:
    """A 64 KiB message in 1 KiB frames (64 frames) costs 1.5 tokens: 5 of them fit a burst of 10."""
    app = RecordingApp()
    with running_server(app, message_rate=1, message_burst=BURST) as server:
        client = RawClient.connect(server)
        with client.sock:
            payload = b"x" * 1024
            message = (
                masked_frame(Opcode.BINARY, payload, fin=False)
                + masked_frame(Opcode.CONTINUATION, payload, fin=False) * 62
                + masked_frame(Opcode.CONTINUATION, payload)
            )
            client.send_raw(message * 6)  # 6 x (1 + 63/128) = 8.95 tokens
            for _ in range(6):
                event = client.next_event()
                assert event is not None and getattr(event, "data", None) == payload * 64
            client.send_raw(masked_frame(Opcode.TEXT, b"one more") * 2)  # 10.95: the second is over
            assert client.events_until_close()[1] == 1008
        assert app.wait_disconnects() == [1008]
    assert [message for _, message in app.messages] == [payload * 64] * 6 + ["one more"]


def test_a_client_within_its_rate_is_not_charged_for_the_time_its_handler_kept_reads_paused() -> None:
    """50 messages a second against a rate of 100 and a burst of 5, while the handler blocks.

    The messages pile up in the kernel while the server does not read (its
    inbox is full), and arrive in one read afterwards: far more than the
    burst at once, yet within the rate over the time they were sent.
    """
    app = BlockingApp()
    with running_server(app, message_rate=100, message_burst=5, max_pending_messages=2) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_text("block")
            app.wait_entered()
            for index in range(25):
                client.send_text(f"{index}")
                time.sleep(0.02)  # pacing the load, not synchronising: 50 a second
            app.release.set()
            texts = []
            for _ in range(26):
                event = client.next_event()
                assert isinstance(event, TextMessage), event
                texts.append(event.text)
            client.send_raw(masked_frame(Opcode.CLOSE, b"\x03\xe8"))
            assert client.events_until_close() == ([], 1000)
    assert texts == ["released block", *(f"{index}" for index in range(25))]


def test_a_rate_violation_is_logged_once_per_client_not_once_per_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RecordingApp()
    with caplog.at_level(logging.WARNING, "django_rawws.server"):
        with running_server(app, message_rate=1, message_burst=BURST) as server:
            for _ in range(3):
                client = RawClient.connect(server)
                with client.sock:
                    client.send_raw(masked_frame(Opcode.TEXT, b"x") * (BURST + 5))
                    assert client.events_until_close()[1] == 1008
            assert app.wait_disconnects(3) == [1008, 1008, 1008]
    assert len(rate_warnings(caplog)) == 1


def test_with_the_rate_limit_off_a_burst_is_only_paused_by_backpressure() -> None:
    app = RecordingApp()
    with running_server(app, message_rate=None) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_raw(b"".join(masked_frame(Opcode.TEXT, b"%d" % index) for index in range(1000)))
            texts = []
            for _ in range(1000):
                event = client.next_event()
                assert isinstance(event, TextMessage), event
                texts.append(event.text)
    assert texts == [str(index) for index in range(1000)]


def test_the_clients_own_close_in_the_read_that_crosses_the_limit_wins() -> None:
    """Past the limit and closing in the same read: the client's close code stands, not 1008."""
    app = RecordingApp()
    with running_server(app, message_rate=1, message_burst=BURST) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_raw(
                masked_frame(Opcode.PING, b"") * (BURST + 5) + masked_frame(Opcode.CLOSE, b"\x0f\xa1")
            )
            _, code = client.events_until_close(reply=False)
        assert code == 4001
        assert app.wait_disconnects() == [4001]
