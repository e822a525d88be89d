"""A server that runs out of file descriptors, for test_accept_limits.py (run as a subprocess).

It lowers its own soft open-files limit to the descriptors it holds plus
``--spare``, serves an echo app on 127.0.0.1 port 0, prints the port and
serves until stdin closes.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys

from django_rawws.server import Server, ServerConfig


class Echo:
    def websocket_handshake(self, conn, handshake):
        conn.accept()

    def websocket_message(self, conn, message):
        conn.send(message)

    def websocket_event(self, conn, event):
        pass

    def websocket_disconnect(self, conn, code):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spare", type=int, default=12)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    server = Server(Echo(), config=ServerConfig(workers=2, accept_pause=0.1, http_workers=0))
    server.start()
    in_use = len(os.listdir("/proc/self/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + args.spare, hard))
    print(server.address[1], flush=True)
    sys.stdin.read()
    server.stop(2.0)


if __name__ == "__main__":
    main()
