"""django_rawws's raw server with a minimal echo + broadcast app, no Django.

This measures the server layer alone (I/O thread, worker hand-off, the
sans-I/O core): the app is written against the documented app interface and
does nothing a real one would not. ``/ws/echo/`` sends every message back
as it came; ``/ws/broadcast/`` sends every text message to every client
connected there, sender included, framed once (``SharedMessage``).
Default ``ServerConfig`` except the 16 MiB message limit of the example's
echo route.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BROADCAST_PATH,
    ECHO_PATH,
    MAX_MESSAGE_SIZE,
    parse_args,
    raise_open_files_limit,
    termination_event,
)

from django_rawws.exceptions import NotFound
from django_rawws.server import Server, ServerConfig, ServerConnection, SharedMessage


class BenchApp:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._broadcast: set[ServerConnection] = set()

    def websocket_handshake(self, conn: ServerConnection, handshake: Any) -> None:
        if conn.path == ECHO_PATH:
            conn.accept()
        elif conn.path == BROADCAST_PATH:
            conn.accept()
            with self._lock:
                self._broadcast.add(conn)
        else:
            raise NotFound()

    def websocket_message(self, conn: ServerConnection, message: str | bytes) -> None:
        if conn.path == ECHO_PATH:
            conn.send(message)
        elif isinstance(message, str):
            shared = SharedMessage(message)
            with self._lock:
                members = list(self._broadcast)
            for member in members:
                member.send_shared(shared)

    def websocket_event(self, conn: ServerConnection, event: Any) -> None:
        pass

    def websocket_disconnect(self, conn: ServerConnection, code: int) -> None:
        with self._lock:
            self._broadcast.discard(conn)

    def worker_exit(self) -> None:
        pass


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    raise_open_files_limit()
    stop = termination_event()
    config = ServerConfig(max_message_size=MAX_MESSAGE_SIZE)
    if args.workers:
        config = dataclasses.replace(config, workers=args.workers)
    server = Server(BenchApp(), args.host, args.port, config)
    server.start()
    print(f"listening on {args.host}:{server.address[1]}", flush=True)
    while not stop.wait(3600):
        pass
    sys.exit(0 if server.stop(grace=2.0) else 1)


if __name__ == "__main__":
    main()
