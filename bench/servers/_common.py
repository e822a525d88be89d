"""What the bench servers share: arguments, the open-files limit, waiting for SIGTERM."""

from __future__ import annotations

import argparse
import resource
import signal
import threading

ECHO_PATH = "/ws/echo/"
BROADCAST_PATH = "/ws/broadcast/"
#: The example project's echo route accepts up to 16 MiB; the peers get the same.
MAX_MESSAGE_SIZE = 16 << 20


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--workers", type=int, help="worker threads, where the server has them (default: its own)"
    )
    return parser.parse_args()


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (as runws does); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def termination_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a main thread that just waits."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
