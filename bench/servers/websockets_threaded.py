"""A peer: the ``websockets`` library's threaded server, echo + broadcast.

Written as its documentation shows for ``websockets.sync.server.serve``: one
thread per connection, ``for message in websocket``, ``serve_forever()`` in the
main thread. ``websockets.sync`` has no broadcast helper, so the fan-out loops
over the members and sends to each, skipping those that closed meanwhile. The
loop holds the members' lock so that every member sees the messages of
concurrent senders in one order; a receiver that stops reading therefore
stalls the others, as a blocking send must. Defaults except ``max_size``
(16 MiB, like our echo route).

SIGTERM keeps Python's default action, so the process ends at once (exit
status -15); Ctrl-C shuts down gracefully. A graceful stop cannot be promised
here: when a load generator drops 1,500 connections at once, their 4,500
threads (handler, reader, keepalive) contend for the GIL and ``threading``'s
locks for 10 to 40 s on a 2-core machine, and a Python-level SIGTERM handler
gets to run only after that, past the harness's 10 s.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BROADCAST_PATH,
    ECHO_PATH,
    MAX_MESSAGE_SIZE,
    parse_args,
    raise_open_files_limit,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

MEMBERS: set[ServerConnection] = set()
MEMBERS_LOCK = threading.Lock()


def broadcast(message: str) -> None:
    """Send ``message`` to every member, in one order for all; closed ones are skipped."""
    with MEMBERS_LOCK:
        for member in MEMBERS:
            try:
                member.send(message)
            except ConnectionClosed:
                pass


def handler(websocket: ServerConnection) -> None:
    path = websocket.request.path if websocket.request is not None else ""
    if path == ECHO_PATH:
        for message in websocket:
            websocket.send(message)
    elif path == BROADCAST_PATH:
        with MEMBERS_LOCK:
            MEMBERS.add(websocket)
        try:
            for message in websocket:
                if isinstance(message, str):
                    broadcast(message)
        finally:
            with MEMBERS_LOCK:
                MEMBERS.discard(websocket)
    else:
        websocket.close(1008, "no such endpoint")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    raise_open_files_limit()
    with serve(handler, args.host, args.port, max_size=MAX_MESSAGE_SIZE) as server:
        port = server.socket.getsockname()[1]
        print(f"listening on {args.host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass  # leaving the block runs shutdown(): every connection closed with 1001


if __name__ == "__main__":
    main()
