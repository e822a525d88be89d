"""Every knob of the server, as plain values.

The server reads no Django settings: ``django_rawws.conf`` turns the
``RAWWS`` setting into a :class:`ServerConfig`, tests build one directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..protocol.deflate import DeflateOptions

__all__ = ["LOOPBACK", "ServerConfig", "default_worker_count"]

#: The loopback networks, never counted per address.
LOOPBACK = ("127.0.0.0/8", "::1/128")


def default_worker_count() -> int:
    """Four workers per core, at most 32: handlers mostly wait on the database."""
    return min(32, (os.cpu_count() or 1) * 4)


@dataclass(frozen=True)
class ServerConfig:
    #: Threads running application code; also the bound on database
    #: connections per alias.
    workers: int = field(default_factory=default_worker_count)
    #: Open WebSockets and handshakes in progress; past it, 503.
    max_connections: int = 10_000
    #: Connections per client address (IPv6: per /64), counted by the I/O
    #: thread at accept; past it, 429. ``None`` disables.
    max_connections_per_address: int | None = 256
    #: Peers not counted per address (CIDRs): the loopback, where a local
    #: proxy or a load test connects from, and the trusted proxies, whose
    #: address every client behind them shares (the application counts those
    #: clients with ``conn.claim_client_address()``).
    quota_exempt: tuple[str, ...] = LOOPBACK
    #: Messages a client may send per second on average, and at once (a
    #: token bucket per connection; a ping or pong costs as much as a
    #: message, a fragment that does not end its message 1/128 of one);
    #: past it, 1008. ``None`` disables.
    message_rate: float | None = 1000.0
    message_burst: int = 2000
    #: Seconds work may wait for a worker before the server calls itself
    #: overloaded: new handshakes then get 503, and connections whose inbox
    #: is full are closed with 1013. ``None`` disables.
    overload_delay: float | None = 5.0
    #: Largest incoming message after decompression, and largest frame.
    max_message_size: int = 1 << 20
    max_frame_size: int | None = None
    #: Request-head limits of the opening handshake.
    max_request_line: int = 8192
    max_headers: int = 128
    max_head: int = 16384
    #: Seconds a client has to complete its request head.
    handshake_timeout: float = 10.0
    #: Seconds without anything received before a ping; seconds to wait for
    #: its pong. ``None`` disables keepalive.
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    #: Seconds to wait for the peer's close frame after sending ours.
    close_timeout: float = 10.0
    #: Seconds to keep reading (and discarding) after an error response or a
    #: failing close, so the peer reads the status or code before the FIN.
    linger_timeout: float = 2.0
    #: Bytes buffered for a slow reader before it is closed with 1008.
    max_outgoing_buffer: int = 4 << 20
    #: Messages waiting for a worker per connection before reading pauses.
    max_pending_messages: int = 16
    #: Group events and calls waiting for a worker per connection; past it
    #: the connection is closed with 1008 (its consumer cannot keep up).
    max_pending_events: int = 1024
    #: permessage-deflate; ``DeflateOptions(enabled=False)`` turns it off.
    deflate: DeflateOptions = field(default_factory=DeflateOptions)
    #: Outgoing messages shorter than this go uncompressed.
    compression_threshold: int = 128
    #: Threads serving plain HTTP requests through the application's
    #: ``http_request``; 0 answers them 426 instead.
    http_workers: int = 4
    #: Plain-HTTP path answered 200 by the I/O thread itself; None disables.
    health_path: str | None = "/healthz"
    #: listen() backlog, capped by the system's SOMAXCONN.
    backlog: int = 4096
    #: SO_REUSEPORT on the listening socket.
    reuse_port: bool = False
    #: One line per connection on the ``django_rawws.access`` logger.
    access_log: bool = True
    #: Seconds the accept loop pauses after EMFILE/ENFILE.
    accept_pause: float = 0.5
