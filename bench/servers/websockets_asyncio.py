"""The peer: the ``websockets`` library's asyncio server, echo + broadcast.

Written as its documentation shows: one coroutine per connection,
``async for`` over the messages, ``websockets.asyncio.server.broadcast`` for
the fan-out. Defaults except ``max_size`` (16 MiB, like our echo route);
stock asyncio event loop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BROADCAST_PATH, ECHO_PATH, MAX_MESSAGE_SIZE, parse_args, raise_open_files_limit
from websockets.asyncio.server import ServerConnection, broadcast, serve

MEMBERS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    path = websocket.request.path if websocket.request is not None else ""
    if path == ECHO_PATH:
        async for message in websocket:
            await websocket.send(message)
    elif path == BROADCAST_PATH:
        MEMBERS.add(websocket)
        try:
            async for message in websocket:
                if isinstance(message, str):
                    broadcast(MEMBERS, message)
        finally:
            MEMBERS.discard(websocket)
    else:
        await websocket.close(1008, "no such endpoint")


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    raise_open_files_limit()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with serve(handler, args.host, args.port, max_size=MAX_MESSAGE_SIZE) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"listening on {args.host}:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
