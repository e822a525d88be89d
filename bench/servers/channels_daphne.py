"""A peer: Django Channels on Daphne, echo + broadcast (``channels_project/``).

Runs Daphne's own command line in this process, as
``daphne -b HOST -p PORT channels_project.asgi:application`` would, so that the
harness reads one process's CPU, memory and threads. Daphne's defaults stay
(access log on stdout included, like runws's) except its message and frame
limits, 1 MiB each by default, raised to 16 MiB like our echo route: a
client sends a message as one frame, so both must allow it. Daphne announces
itself on stderr in its own words; this script adds the ``listening on``
line the other bench servers print once the port is bound, and leaves
without Python's thread joins once Daphne has stopped (see the end of main).
``RAWWS_BENCH_ASGI_APP`` names another application (the chat-orm server's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "channels_project.settings")

from _common import MAX_MESSAGE_SIZE, parse_args, raise_open_files_limit

# Importing Daphne installs Twisted's asyncio reactor, so it comes before the reactor import.
from daphne.cli import CommandLineInterface
from twisted.internet import reactor


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    raise_open_files_limit()
    cli = CommandLineInterface()

    def announce() -> None:
        # Daphne binds its TCP endpoints before it starts the reactor.
        for host, port in cli.server.listening_addresses:
            print(f"listening on {host}:{port}", flush=True)

    reactor.callWhenRunning(announce)
    # Returns when SIGTERM stops the reactor (Daphne lets Twisted install its signal handlers).
    cli.run(
        [
            "-b",
            args.host,
            "-p",
            str(args.port),
            "--websocket-max-message-size",
            str(MAX_MESSAGE_SIZE),
            "--websocket-max-frame-size",
            str(MAX_MESSAGE_SIZE),
            os.environ.get("RAWWS_BENCH_ASGI_APP", "channels_project.asgi:application"),
        ]
    )
    # Daphne has stopped and dropped every connection, but a consumer caught
    # mid-call by the stop (a fan-out backlog) goes on in asgiref's executor,
    # which ignores the cancellation, and waits in send() for the event loop
    # that just stopped. Python's exit joins that thread, so it would wait for
    # ever (in about half of our fan-out runs): leave without joining it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
