"""A running server's live state, served to ``manage.py ws_status`` over a Unix socket.

``runws`` opens the socket named by ``RAWWS["INSPECT_SOCKET"]``; the command
connects, sends one line (``status``) and reads one JSON document back:
connections (id, user, path, age, bytes, buffered), groups and their members,
and counters. The state names users and paths, so who may read it matters
more than how: not an HTTP endpoint, which anyone who reaches the port could
ask, but a file only the same user can open.

* The socket file is created with mode 0600 (the umask is tightened around
  ``bind()``, then the mode is set again), and removed when the server stops.
* Its directory must not let another user swap the file: it must be ours (the
  default, ``{tmp}/rawws-{uid}``, is created with mode 0700), or root's and
  either closed to others or sticky (``/tmp``). Otherwise nothing is opened.
* Where the system tells (``SO_PEERCRED``, Linux), both ends check the other
  runs as the same user (root is let in: it could read the process anyway).
* Session keys never leave the process: ``session:<key>`` groups are shown as
  ``session:#<digest>``.

The snapshot is taken without the connections' locks, from another thread:
each number is one the server really had, but the set is not one instant.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import selectors
import socket
import stat
import string
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "InspectionServer",
    "discover_sockets",
    "expand_socket_path",
    "query",
    "remove_stale_sockets",
    "snapshot",
]

logger = logging.getLogger("django_rawws.server")

#: Bumped when the document changes in a way a reader must know.
FORMAT_VERSION = 1

#: Placeholders of ``RAWWS["INSPECT_SOCKET"]``.
PLACEHOLDERS = ("tmp", "uid", "port", "pid")

_MAX_REQUEST = 1024
_CLIENT_TIMEOUT = 5.0
_AUTOMATIC_SESSION = "session:"


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def expand_socket_path(template: str, *, port: int | str, pid: int | str | None = None) -> Path:
    """``RAWWS["INSPECT_SOCKET"]`` with its placeholders filled in.

    ``{tmp}`` is the system temp directory, ``{uid}`` the user id, ``{port}``
    the server's port and ``{pid}`` its process id (this one by default).
    """
    return Path(
        template.format(
            tmp=tempfile.gettempdir().rstrip(os.sep),
            uid=_uid(),
            port=port,
            pid=os.getpid() if pid is None else pid,
        )
    )


def discover_sockets(template: str, *, port: int | None = None, pid: int | None = None) -> list[Path]:
    """The socket files ``template`` may have produced (any port and pid unless given), sorted."""
    pattern = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        pattern.append(glob.escape(literal))
        if field is None:
            continue
        if field == "tmp":
            pattern.append(glob.escape(tempfile.gettempdir().rstrip(os.sep)))
        elif field == "uid":
            pattern.append(str(_uid()))
        elif field == "port":
            pattern.append(str(port) if port is not None else "*")
        elif field == "pid":
            pattern.append(str(pid) if pid is not None else "*")
        else:
            raise ValueError(f"unknown placeholder {{{field}}} in {template!r}")
    return sorted(Path(path) for path in glob.glob("".join(pattern)))


def remove_stale_sockets(template: str) -> list[Path]:
    """Remove the sockets ``template`` produced for servers that are gone; return them.

    A server killed without its shutdown (SIGKILL, a crash) leaves its file
    behind. A socket of this user that refuses connections has no server:
    ``runws`` sweeps those at start, so the directory does not fill up.
    """
    removed: list[Path] = []
    if not hasattr(socket, "AF_UNIX"):
        return removed
    for path in discover_sockets(template):
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != _uid():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                try:
                    os.unlink(path)
                except OSError:
                    continue
                removed.append(path)
            except OSError:
                continue
    return removed


# ------------------------------------------------------------------- the state


def snapshot(server: Any, backend: Any = None, *, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The server's live state as a JSON-ready dict.

    ``backend`` is the group backend the server is attached to (its groups
    and counters are included); ``info`` is merged in at the top (``runws``
    adds its URL and settings module).
    """
    now = time.monotonic()
    connections = list(server.connections())
    rows = []
    members: dict[str, list[str]] = {}
    phases: dict[str, int] = {}
    totals = {"bytes_in": 0, "bytes_out": 0, "buffered": 0}
    for conn in connections:
        groups = sorted(_groups_of(backend, conn))
        for group in groups:
            members.setdefault(group, []).append(conn.id)
        phase = getattr(getattr(conn, "phase", None), "name", "?").lower()
        phases[phase] = phases.get(phase, 0) + 1
        row = {
            "id": conn.id,
            "remote": _format_address(getattr(conn, "remote_address", None)),
            "path": _path_of(conn),
            "phase": phase,
            "age": round(max(0.0, now - getattr(conn, "created", now)), 3),
            "user": _user_of(conn, groups),
            "consumer": _consumer_of(conn),
            "subprotocol": getattr(conn, "subprotocol", None),
            "bytes_in": int(getattr(conn, "bytes_in", 0)),
            "bytes_out": int(getattr(conn, "bytes_out", 0)),
            "buffered": int(getattr(conn, "buffered_amount", 0)),
            "groups": [_redact(group) for group in groups],
        }
        for key in totals:
            totals[key] += row[key]
        rows.append(row)
    rows.sort(key=lambda row: -row["age"])
    counters: dict[str, Any] = {
        "connections": len(connections),
        "by_phase": dict(sorted(phases.items())),
        **totals,
        "groups": len(members),
        "shutting_down": bool(getattr(server, "shutting_down", False)),
    }
    config = getattr(server, "config", None)
    if config is not None:
        counters["max_connections"] = getattr(config, "max_connections", None)
    pool = getattr(server, "pool", None)
    if pool is not None:
        counters["workers"] = getattr(pool, "size", None)
        for name, key in (("busy_count", "workers_busy"), ("queued_count", "tasks_queued")):
            value = getattr(pool, name, None)
            value = value() if callable(value) else value
            if isinstance(value, int):
                counters[key] = value
        delay = getattr(pool, "queue_delay", None)
        if callable(delay):
            counters["queue_delay"] = round(delay(), 3)
    if backend is not None:
        stats = getattr(backend, "stats", None)
        if callable(stats):
            try:
                counters["group_backend"] = _jsonable(stats())
            except Exception as exc:  # noqa: BLE001 - a backend that can't count must not hide the rest
                counters["group_backend"] = {"error": str(exc)}
    try:
        address = _format_address(server.address)
    except (AssertionError, OSError):  # not bound yet, or closed already
        address = None
    document: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "pid": os.getpid(),
        "address": address,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(info or {}),
        "counters": counters,
        "connections": rows,
        "groups": [{"name": _redact(name), "members": ids} for name, ids in sorted(members.items())],
    }
    return document


def _groups_of(backend: Any, conn: Any) -> set[str]:
    if backend is None:
        return set()
    try:
        return set(backend.groups_of(conn))
    except Exception:  # noqa: BLE001 - a backend error shows as no groups, not as a failed status
        return set()


def _path_of(conn: Any) -> str:
    """The request target's path (no query string: it may carry a token)."""
    path = getattr(conn, "path", "") or ""
    return str(path)


def _user_of(conn: Any, groups: Iterable[str]) -> str | None:
    """The user's primary key, without a query: an evaluated user, else the ``user:<pk>`` group."""
    request = getattr(getattr(conn, "app_state", None), "request", None)
    user = getattr(request, "__dict__", {}).get("user") if request is not None else None
    if user is not None:
        wrapped = getattr(user, "_wrapped", user)
        from django.utils.functional import empty

        if wrapped is not empty and wrapped is not None:
            if getattr(wrapped, "is_authenticated", False):
                return str(wrapped.pk)
            return None
    for group in groups:
        if group.startswith("user:"):
            return group[len("user:") :]
    return None


def _consumer_of(conn: Any) -> str | None:
    consumer = getattr(getattr(conn, "app_state", None), "consumer", None)
    if consumer is None:
        return None
    cls = type(consumer)
    return f"{cls.__module__}.{cls.__qualname__}"


def _redact(group: str) -> str:
    """``session:<key>`` → ``session:#<digest>``: a session key is a password."""
    if group.startswith(_AUTOMATIC_SESSION):
        digest = hashlib.sha256(group.encode("utf-8")).hexdigest()[:10]
        return f"{_AUTOMATIC_SESSION}#{digest}"
    return group


def _format_address(address: Any) -> str | None:
    if address is None:
        return None
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ------------------------------------------------------------- the socket


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end, where the system says (Linux), else None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None or sys.platform != "linux":
        return None
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


def _same_user(uid: int | None) -> bool:
    return uid is None or uid == _uid() or uid == 0


def _check_directory(directory: Path, *, create: bool) -> None:
    """Make sure no other user can replace a file in ``directory``.

    Raises:
        PermissionError: the directory belongs to someone else, or others
            may write in it without the sticky bit.
    """
    if create and not os.path.lexists(directory):
        # Only the leaf gets 0700; a missing parent is made with the umask.
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{directory} is not a directory (a symbolic link?)")
    uid = _uid()
    if info.st_uid not in (uid, 0):
        raise PermissionError(f"{directory} belongs to uid {info.st_uid}, not to this user ({uid})")
    writable_by_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable_by_others and not info.st_mode & stat.S_ISVTX:
        raise PermissionError(
            f"{directory} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}) and not sticky"
        )


class InspectionServer:
    """Serve :func:`snapshot` of ``server`` on the Unix socket ``path`` from a thread of its own.

    ``backend`` is a callable returning the group backend (or None), read
    at each request so that it follows the one the server is attached to.
    """

    def __init__(
        self,
        server: Any,
        path: str | os.PathLike[str],
        *,
        backend: Callable[[], Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.server = server
        self.path = Path(path)
        self.backend = backend
        self.info = dict(info or {})
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> InspectionServer:
        """Create the socket (mode 0600) and start serving.

        Raises:
            OSError: the directory is not private enough (PermissionError),
                another live server uses the path (EADDRINUSE), or the path
                is too long for a Unix socket.
        """
        if not hasattr(socket, "AF_UNIX"):
            raise OSError(errno.EAFNOSUPPORT, "Unix sockets are not available on this system")
        _check_directory(self.path.parent, create=True)
        self._remove_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # The file is created by bind() with the process umask: close it
            # to everyone but the owner for that instant. The umask is
            # process-wide, which is why this runs at startup.
            previous = os.umask(0o177)
            try:
                listener.bind(str(self.path))
            finally:
                os.umask(previous)
            os.chmod(self.path, 0o600)
            info = os.lstat(self.path)
            self._inode = (info.st_dev, info.st_ino)
            listener.listen(8)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="rawws-inspect", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and remove the socket file (if it is still ours)."""
        if self._stopping:
            return
        self._stopping = True
        if self._wake is not None:
            try:
                self._wake[1].send(b"\0")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5.0)
        if self._listener is not None:
            self._listener.close()
        try:
            info = os.lstat(self.path)
            if self._inode == (info.st_dev, info.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        if self._wake is not None:
            for end in self._wake:
                end.close()

    def __enter__(self) -> InspectionServer:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _remove_stale(self) -> None:
        """A socket file left by a server that died (nobody answers) is removed; a live one is not."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != _uid():
            raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket of this user")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            os.unlink(self.path)
        else:
            raise OSError(errno.EADDRINUSE, f"another server answers on {self.path}")
        finally:
            probe.close()

    def _serve(self) -> None:
        assert self._listener is not None and self._wake is not None
        wake = self._wake[0]
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is wake:
                        return
                    try:
                        client, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    with client:
                        self._answer(client)

    def _answer(self, client: socket.socket) -> None:
        """One request, one JSON document, then EOF. Errors are logged, never raised into the loop."""
        try:
            client.setblocking(True)
            client.settimeout(_CLIENT_TIMEOUT)
            if not _same_user(_peer_uid(client)):
                client.sendall(json.dumps({"error": "permission denied"}).encode() + b"\n")
                return
            request = b""
            while b"\n" not in request and len(request) < _MAX_REQUEST:
                chunk = client.recv(_MAX_REQUEST)
                if not chunk:
                    break
                request += chunk
            command = request.split(b"\n", 1)[0].strip().decode("ascii", "replace")
            if command == "status":
                backend = self.backend() if self.backend is not None else None
                document = snapshot(self.server, backend, info=self.info)
            else:
                document = {"error": f"unknown command {command!r}; this server knows 'status'"}
            client.sendall(json.dumps(document, default=str).encode("utf-8") + b"\n")
        except Exception:
            logger.exception("inspection socket %s: could not answer", self.path)


def query(path: str | os.PathLike[str], command: str = "status", *, timeout: float = _CLIENT_TIMEOUT) -> Any:
    """Ask the server at ``path``; return the decoded JSON answer.

    Raises:
        PermissionError: the socket file is not this user's, or the server
            runs as another user.
        OSError: nothing listens there (ConnectionRefusedError,
            FileNotFoundError), or it did not answer within ``timeout``.
        ValueError: the answer is not JSON.
    """
    path = Path(path)
    info = os.lstat(path)
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.ENOTSOCK, f"{path} is not a socket")
    if info.st_uid not in (_uid(), 0):
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to this user: not trusting it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        if not _same_user(_peer_uid(sock)):
            raise PermissionError(f"the server on {path} runs as another user: not trusting it")
        sock.sendall(command.encode("ascii") + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return json.loads(b"".join(chunks).decode("utf-8"))
