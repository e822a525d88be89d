"""``manage.py ws_status``: what a running ``runws`` is doing now.

It reads the live state ``runws`` serves on its inspection socket
(``RAWWS["INSPECT_SOCKET"]``, see :mod:`django_rawws.inspection`): the
connections with their user, path, age, bytes and buffered output, the
groups with their members, and the counters. The socket is a file only the
user running ``runws`` can open, so run this command as that user.

With the default socket path, every ``runws`` of this user is found; give
``--port`` (or ``--pid``) to pick one, or ``--socket`` for an exact path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError

from django_rawws.inspection import discover_sockets, query

__all__ = ["Command", "format_age", "format_bytes"]

#: Automatic groups, hidden from the table unless --all-groups.
_AUTOMATIC = ("conn:", "session:", "user:")


class Command(BaseCommand):
    help = "Shows the live state of running runws servers: connections, groups and counters."

    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, help="Only the server listening on this port.")
        parser.add_argument("--pid", type=int, help="Only the server with this process id.")
        parser.add_argument(
            "--socket", help="The inspection socket's path (default: found from RAWWS['INSPECT_SOCKET'])."
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON list, one object per server.")
        parser.add_argument(
            "--all-groups",
            action="store_true",
            help="Also list the automatic groups (conn:, session:, user:) in the table.",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=50,
            help="Connections and groups shown in the table (default 50; 0: all).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        paths = self.socket_paths(options)
        states = []
        failures = []
        for path in paths:
            try:
                states.append(query(path))
            except PermissionError as exc:
                failures.append(f"{path}: {exc}")
            except (ConnectionRefusedError, FileNotFoundError):
                if options["socket"]:
                    failures.append(f"{path}: nothing answers (the server stopped?)")
                # Found by the pattern: a server that died without removing its socket.
            except (OSError, ValueError) as exc:
                failures.append(f"{path}: {exc}")
        for failure in failures:
            self.stderr.write(failure)
        if not states:
            if failures:
                raise CommandError("No running runws answered.")
            raise CommandError(
                "No running runws found" + (f" on port {options['port']}" if options["port"] else "") + ". "
                "ws_status reads the socket runws opens (RAWWS['INSPECT_SOCKET']): run it as the user "
                "running runws, with the same settings, or pass --socket PATH (runws prints it in its banner)."
            )
        if options["json"]:
            self.stdout.write(json.dumps(states, indent=2))
            return
        for index, state in enumerate(states):
            if index:
                self.stdout.write("")
            self.write_state(state, limit=options["limit"], all_groups=options["all_groups"])

    def socket_paths(self, options: dict[str, Any]) -> list[Path]:
        if options["socket"]:
            return [Path(options["socket"])]
        from django_rawws.conf import get_config

        template = get_config()["INSPECT_SOCKET"]
        if not template:
            raise CommandError(
                "RAWWS['INSPECT_SOCKET'] is None: runws serves no live state. Set it back (the default is "
                "'{tmp}/rawws-{uid}/{port}-{pid}.sock') and restart runws."
            )
        try:
            return discover_sockets(template, port=options["port"], pid=options["pid"])
        except (ValueError, IndexError) as exc:
            raise CommandError(f"RAWWS['INSPECT_SOCKET'] = {template!r}: {exc}") from exc

    # ------------------------------------------------------------------ output

    def write_state(self, state: dict[str, Any], *, limit: int, all_groups: bool) -> None:
        counters = state.get("counters", {})
        by_phase = ", ".join(f"{count} {phase}" for phase, count in counters.get("by_phase", {}).items())
        title = f"runws pid {state.get('pid')} at {state.get('url') or state.get('address')}"
        if state.get("settings"):
            title += f" ({state['settings']})"
        self.stdout.write(self.style.MIGRATE_HEADING(title))
        self.stdout.write(
            f"  {counters.get('connections', 0)} connection(s){f' ({by_phase})' if by_phase else ''}, "
            f"{counters.get('groups', 0)} group(s), in {format_bytes(counters.get('bytes_in', 0))}, "
            f"out {format_bytes(counters.get('bytes_out', 0))}, buffered {format_bytes(counters.get('buffered', 0))}"
        )
        if "workers" in counters:
            busy = counters.get("workers_busy")
            line = f"  workers: {busy if busy is not None else '?'} busy of {counters['workers']}"
            if counters.get("queue_delay"):
                line += f", oldest queued task waited {counters['queue_delay']:.3f}s"
            self.stdout.write(line)
        if counters.get("shutting_down"):
            self.stdout.write(self.style.WARNING("  shutting down"))

        connections = state.get("connections", [])
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING("Connections"))
        if connections:
            header = ("id", "user", "path", "phase", "age", "in", "out", "buffered", "consumer")
            rows = [
                (
                    row["id"],
                    row.get("user") or "-",
                    row.get("path") or "-",
                    row.get("phase", "?"),
                    format_age(row.get("age", 0)),
                    format_bytes(row.get("bytes_in", 0)),
                    format_bytes(row.get("bytes_out", 0)),
                    format_bytes(row.get("buffered", 0)),
                    (row.get("consumer") or "-").rsplit(".", 1)[-1],
                )
                for row in _first(connections, limit)
            ]
            self.write_table(header, rows)
            self.write_more(len(connections), limit, "connections")
        else:
            self.stdout.write("  none")

        groups = state.get("groups", [])
        shown = [group for group in groups if all_groups or not group["name"].startswith(_AUTOMATIC)]
        hidden = len(groups) - len(shown)
        self.stdout.write("")
        heading = "Groups"
        if hidden:
            heading += f" ({hidden} automatic conn:/session:/user: groups hidden; --all-groups shows them)"
        self.stdout.write(self.style.MIGRATE_HEADING(heading))
        if shown:
            group_rows = [
                (
                    group["name"],
                    str(len(group["members"])),
                    ", ".join(group["members"][:5]) + (", ..." if len(group["members"]) > 5 else ""),
                )
                for group in _first(shown, limit)
            ]
            self.write_table(("group", "members", "ids"), group_rows)
            self.write_more(len(shown), limit, "groups")
        else:
            self.stdout.write("  none")

        backend = counters.get("group_backend")
        if isinstance(backend, dict) and backend:
            self.stdout.write("")
            self.stdout.write(self.style.MIGRATE_HEADING("Group backend"))
            for key, value in backend.items():
                self.stdout.write(f"  {key}: {value}")

    def write_table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        widths = [max(len(str(row[column])) for row in [header, *rows]) for column in range(len(header))]
        for index, row in enumerate([header, *rows]):
            line = "  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
            self.stdout.write(self.style.SQL_FIELD(line) if index == 0 else line)

    def write_more(self, total: int, limit: int, what: str) -> None:
        if limit and total > limit:
            self.stdout.write(
                f"  ... and {total - limit} more {what} (--limit 0 shows all, --json everything)"
            )


def _first(items: list[Any], limit: int) -> list[Any]:
    return items[:limit] if limit else items


def format_bytes(count: int) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 MiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_age(seconds: float) -> str:
    """``4.2s``, ``12m04s``, ``3h07m``, ``2d05h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
