"""Server benchmark: django_rawws beside its peers, in one run, on this machine.

Run from the repository root (``cd bench && npm ci`` once; the harness runs it
itself when ``bench/node_modules`` is missing)::

    python bench/run.py [--quick] [--servers rawws,runws,runws-redis,websockets,
                                   websockets-threaded,channels,node-ws]
                        [--scenarios echo-small,echo-large,idle,idle-deflate,churn,
                                     fanout,backpressure,fanout-redis,soak,chat-orm]
                        [--repeat N] [--quiet-wait SECONDS] [--duration SECONDS]
                        [--extra-server NAME=COMMAND] [--profile]

Every server runs as its own subprocess on a free port of 127.0.0.1, started
fresh for each run (so memory and thread counts start from the same place),
with the soft open-files limit raised to the hard one. The load comes from
Node's ``ws`` client (``bench/clients/*.mjs``), which is not the bottleneck and
says so: each client reports its own CPU time. Scenarios run the servers
interleaved (rep 1: A B C, rep 2: B C A, ...) so that a noisy moment of the
machine hurts them alike; the table shows medians with their min-max range
and the ratio of our median to the reference peer's (``websockets`` asyncio).
Server CPU time, memory and threads come from ``/proc/<pid>`` (Linux only).
The other peers, shown beside it without ratios: ``websockets-threaded``
(websockets' ``sync`` server, a thread per connection), ``channels`` (Django
Channels on Daphne, sync consumers, the default in-memory channel layer; needs
``bench/requirements.txt``) and ``node-ws`` (Node's ``ws`` server).

A run that fails (a server that does not start, a client that times out) is
recorded with its error and the benchmark goes on. Correctness problems
(echo mismatches, missing or duplicated deliveries, connections that did not
open) are figures in the table and listed under it.

``fanout-redis`` runs only on ``runws-redis`` (and that server only there):
two ``runws`` processes sharing groups through Redis (``RAWWS_BENCH_REDIS_URL``,
default ``redis://127.0.0.1:6379/0``, keys under ``rawws-bench-<pid>``), one
sender on the first, the receivers alternating between both.

``echo-large`` echoes 4 MiB binary messages twice on one server process: with
the all-zero masking key (which a server may skip unmasking for) and with
random keys, as browsers mask. ``idle-deflate`` is ``idle`` with
permessage-deflate offered as Chrome offers it, and counts the connections
that negotiated it. ``churn`` times whole connect, echo, close-handshake
cycles. ``backpressure`` runs a 64 KiB fan-out to 100 receivers alone, then
beside 10 receivers that stop reading, sampling the server's VmRSS and its
side of their sockets in ``/proc/net/tcp`` (when it let go of them) every
0.1 s; it reports the healthy receivers' p99 with over without (issue 6:
at most 1.25x).

``soak`` runs only when ``--scenarios`` names it, on ours only, once by
default: steady echo traffic plus connection churn for ``--duration`` seconds
(180, ``--quick`` 30) while the server's VmRSS, threads and open fds are
sampled every second; it reports their growth from the end of warm-up to the
end and flags 5% or more.

``chat-orm`` runs only when ``--scenarios`` names it, on ``runws-chat`` and
``channels-chat`` only (and those servers only there), and needs PostgreSQL
(``RAWWS_BENCH_PG_HOST``/``_PORT``/``_USER``/``_PASSWORD``, default
``127.0.0.1:5432`` as ``postgres``; database ``RAWWS_BENCH_PG_DB``, default
``rawws_bench``, created and migrated at each server start by
``servers/chat_orm_launch.py``). 200 clients in 10 rooms send chat messages
open loop at 250, 500, 1000 then 2000 msg/s; each server saves every message
with the ORM and sends it to its room (ours: an event ``push``; Channels: the
tutorial's sync consumer on the in-memory layer). Per rate: delivered % and
p50/p99; stepping stops at the first rate not held (100% delivered, p99
under 100 ms). The harness empties the table first, counts the rows after,
and samples the database's connections in ``pg_stat_activity`` every 0.1 s.

Outputs: a markdown table on stdout and everything, raw client reports
included, in ``bench/results/<timestamp>.json`` (gitignored). ``--profile``
instead runs echo-small once per server of ours with ``py-spy record``
attached and prints where each kind of thread spends its time. Not a test:
nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import platform
import queue
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLIENTS = BENCH / "clients"
SERVERS = BENCH / "servers"
RESULTS = BENCH / "results"
EXAMPLE_MANAGE = ROOT / "example_project" / "manage.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

#: Samples per second of py-spy in --profile.
PROFILE_RATE = 250

#: The peer every ratio is taken against.
REFERENCE = "websockets"


class RunFailed(Exception):
    """A run could not complete; recorded with this message, not fatal."""


# ----------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    ours: bool
    #: (python, port) -> argv
    command: Callable[[str, int], list[str]]
    #: extra environment variables
    env: Callable[[], dict[str, str]] = dict
    #: None when the server can run here, else why not
    unavailable: Callable[[], str | None] = lambda: None
    #: When set, the only scenarios this server takes part in.
    only_scenarios: tuple[str, ...] = ()


def _example_settings_module() -> str:
    """The settings module example_project/manage.py defaults to."""
    text = EXAMPLE_MANAGE.read_text(encoding="utf-8")
    match = re.search(r"""DJANGO_SETTINGS_MODULE["']\s*,\s*["']([\w.]+)["']""", text)
    return match.group(1) if match else "example_project.settings"


def _runws_unavailable() -> str | None:
    if not EXAMPLE_MANAGE.exists():
        return f"{EXAMPLE_MANAGE.relative_to(ROOT)} does not exist yet"
    return None


#: Redis for the cross-process scenario, and the key prefix of this harness run.
REDIS_URL = os.environ.get("RAWWS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = f"rawws-bench-{os.getpid()}"


def _runws_redis_unavailable() -> str | None:
    """runws's reason, or Redis not answering PING at RAWWS_BENCH_REDIS_URL."""
    reason = _runws_unavailable()
    if reason:
        return reason
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or HOST, parts.port or 6379), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                return f"Redis at {REDIS_URL} did not answer PING"
    except OSError as exc:
        return f"no Redis at {REDIS_URL} ({exc})"
    return None


def _channels_unavailable() -> str | None:
    """Why the servers' interpreter (the default one: .venv's, else this one) cannot import Channels and Daphne."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    probe = subprocess.run(
        [python, "-c", "import channels, daphne"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (
            f"{python} cannot import channels and daphne ({last_line}); pip install -r bench/requirements.txt"
        )
    return None


def _node_ws_unavailable() -> str | None:
    if shutil.which("node") is None:
        return "no `node` on PATH"
    if not (BENCH / "node_modules" / "ws").exists():
        return "bench/node_modules/ws is missing (run `npm ci` in bench/)"
    return None


#: PostgreSQL of the chat-orm scenario; its servers' settings read the same variables.
CHAT_PG = {
    "host": os.environ.get("RAWWS_BENCH_PG_HOST", "127.0.0.1"),
    "port": os.environ.get("RAWWS_BENCH_PG_PORT", "5432"),
    "user": os.environ.get("RAWWS_BENCH_PG_USER", "postgres"),
    "password": os.environ.get("RAWWS_BENCH_PG_PASSWORD", ""),
}
#: The database both chat-orm servers use (created by servers/chat_orm_launch.py).
CHAT_DB = os.environ.get("RAWWS_BENCH_PG_DB", "rawws_bench")
#: The table of benchchat.models.Message.
CHAT_TABLE = "benchchat_message"


def _pg_connect(dbname: str) -> Any:
    """An autocommit psycopg connection; ``postgres`` is the maintenance database, never counted."""
    import psycopg

    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=5, **CHAT_PG)


@functools.cache
def _chat_unavailable() -> str | None:
    """Why the harness cannot reach PostgreSQL, which it watches and reads in chat-orm."""
    try:
        import psycopg
    except ImportError:
        return f"this Python ({sys.executable}) cannot import psycopg, which the harness needs for PostgreSQL"
    try:
        with _pg_connect("postgres"):
            pass
    except psycopg.Error as exc:
        return f"no PostgreSQL at {CHAT_PG['host']}:{CHAT_PG['port']} as {CHAT_PG['user']} ({exc})"
    return None


def _chat_server(settings: str, server: Callable[[str, int], list[str]]) -> Callable[[str, int], list[str]]:
    """The command of a chat-orm server: migrate (creating the database if missing), then exec it."""

    def command(python: str, port: int) -> list[str]:
        return [python, str(SERVERS / "chat_orm_launch.py"), settings, *server(python, port)]

    return command


SERVER_SPECS = [
    ServerSpec(
        "rawws",
        "rawws raw Server",
        ours=True,
        command=lambda python, port: [python, str(SERVERS / "rawws_plain.py"), "--port", str(port)],
    ),
    ServerSpec(
        "runws",
        "rawws runws (Django)",
        ours=True,
        command=lambda python, port: [
            python,
            str(EXAMPLE_MANAGE),
            "runws",
            "--noreload",
            "--settings=bench_settings",
            f"--pythonpath={SERVERS}",
            f"{HOST}:{port}",
        ],
        env=lambda: {
            "DJANGO_SETTINGS_MODULE": "bench_settings",
            "RAWWS_BENCH_BASE_SETTINGS": _example_settings_module(),
        },
        unavailable=_runws_unavailable,
    ),
    ServerSpec(
        "runws-redis",
        "rawws runws ×2 + Redis",
        ours=True,
        command=lambda python, port: [
            python,
            str(EXAMPLE_MANAGE),
            "runws",
            "--noreload",
            "--settings=bench_settings_redis",
            f"--pythonpath={SERVERS}",
            f"{HOST}:{port}",
        ],
        env=lambda: {
            "DJANGO_SETTINGS_MODULE": "bench_settings_redis",
            "RAWWS_BENCH_BASE_SETTINGS": _example_settings_module(),
            "RAWWS_BENCH_REDIS_URL": REDIS_URL,
            "RAWWS_BENCH_REDIS_PREFIX": REDIS_PREFIX,
        },
        unavailable=_runws_redis_unavailable,
        only_scenarios=("fanout-redis",),
    ),
    ServerSpec(
        "websockets",
        "websockets asyncio",
        ours=False,
        command=lambda python, port: [python, str(SERVERS / "websockets_asyncio.py"), "--port", str(port)],
    ),
    ServerSpec(
        "websockets-threaded",
        "websockets threaded",
        ours=False,
        command=lambda python, port: [python, str(SERVERS / "websockets_threaded.py"), "--port", str(port)],
    ),
    ServerSpec(
        "channels",
        "Channels + Daphne (in-memory layer)",
        ours=False,
        command=lambda python, port: [python, str(SERVERS / "channels_daphne.py"), "--port", str(port)],
        unavailable=_channels_unavailable,
    ),
    ServerSpec(
        "node-ws",
        "Node ws",
        ours=False,
        command=lambda python, port: ["node", str(SERVERS / "node_ws.mjs"), "--port", str(port)],
        unavailable=_node_ws_unavailable,
    ),
    ServerSpec(
        "runws-chat",
        "rawws runws, chat on PostgreSQL",
        ours=True,
        command=_chat_server(
            "bench_chat_settings",
            lambda python, port: [python, "-m", "django", "runws", "--noreload", f"{HOST}:{port}"],
        ),
        unavailable=_chat_unavailable,
        only_scenarios=("chat-orm",),
    ),
    ServerSpec(
        "channels-chat",
        "Channels + Daphne, chat on PostgreSQL",
        ours=False,
        # Daphne through the same launcher as the channels peer: it leaves
        # once Daphne stops instead of waiting for a consumer thread stuck
        # in a send to the stopped event loop.
        command=_chat_server(
            "bench_chat_channels_settings",
            lambda python, port: [python, str(SERVERS / "channels_daphne.py"), "--port", str(port)],
        ),
        env=lambda: {"RAWWS_BENCH_ASGI_APP": "benchchat.asgi:application"},
        unavailable=lambda: _chat_unavailable() or _channels_unavailable(),
        only_scenarios=("chat-orm",),
    ),
]


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one, here and so in every child (they inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _format_command(template: str, python: str, port: int) -> list[str]:
    return shlex.split(template.format(python=python, port=port))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _log_excerpt(path: Path) -> str:
    tail = _tail(path)
    return f"; its log ends with:\n{tail}" if tail else " (nothing in its log)"


def machine_busy_seconds() -> float:
    """CPU-seconds all processes of the machine spent busy so far (all cores)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerProcess:
    """One server subprocess: start on a free port, read /proc, stop."""

    def __init__(self, spec: ServerSpec, python: str, log: Path) -> None:
        self.spec = spec
        self.python = python
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.port = _free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env()}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.spec.command(self.python, self.port),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RunFailed(
                    f"{self.spec.name} exited with {self.proc.returncode} at start{_log_excerpt(self.log)}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RunFailed(
            f"{self.spec.name} did not listen on {self.port} within {timeout:.0f}s{_log_excerpt(self.log)}"
        )

    def cpu_seconds(self) -> float:
        """User + system time of every thread of the process so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status(self) -> dict[str, int]:
        """VmRSS (KiB) and thread count."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                values["rss_kib"] = int(value.split()[0])
            elif key == "Threads":
                values["threads"] = int(value)
        return values

    def open_fds(self) -> int:
        """Open file descriptors: sockets, the listener, pipes, logs."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """SIGTERM, then SIGKILL after ``timeout``; say which it took."""
        if self.proc is None or self.proc.poll() is not None:
            return {"exit": None if self.proc is None else self.proc.returncode, "note": "had already exited"}
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
            return {"exit": code, "stop_s": round(time.monotonic() - start, 3)}
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return {"exit": "killed", "note": f"still running {timeout:.0f}s after SIGTERM"}


# ----------------------------------------------------------------- clients


class Client:
    """A Node load generator speaking JSON lines (see clients/common.mjs)."""

    def __init__(self, script: str, cfg: dict[str, Any], log: Path) -> None:
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                ["node", str(CLIENTS / script), json.dumps(cfg)],
                cwd=BENCH,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.reports: list[dict[str, Any]] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, phase: str, timeout: float) -> dict[str, Any]:
        """The next report, which must be ``phase``; RunFailed otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RunFailed(f"no {phase!r} from the client within {timeout:.0f}s") from None
            if line is None:
                self.proc.wait(5)
                raise RunFailed(
                    f"client exited ({self.proc.returncode}) before {phase!r}: {_tail(self.log, 5)}"
                )
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                continue  # not ours (a library's stray print)
            self.reports.append(report)
            if report.get("phase") == "error":
                raise RunFailed(f"client error: {report.get('error')} {report.get('state', '')}")
            if report.get("phase") != phase:
                raise RunFailed(f"client said {report.get('phase')!r}, expected {phase!r}")
            return report

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str = "{:,.0f}"
    #: "higher", "lower" or None (informational): only for the reader
    better: str | None = None


@dataclass
class RunContext:
    server: ServerProcess
    params: dict[str, Any]
    logdir: Path
    tag: str
    #: called with the server between the client's barrier and its timed phase
    on_timed_start: Callable[[ServerProcess], None] | None = None
    on_timed_end: Callable[[ServerProcess], None] | None = None

    def client(self, script: str, cfg: dict[str, Any]) -> Client:
        return Client(script, cfg, self.logdir / f"{self.tag}.client.log")


def _latency(report: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    latency = report.get("latency_ms") or {}
    return {
        f"{prefix}p50_ms": latency.get("p50"),
        f"{prefix}p99_ms": latency.get("p99"),
        f"{prefix}max_ms": latency.get("max"),
    }


def _others_cores(busy: float, server_cpu: float, client_cpu: float, elapsed: float) -> float:
    """CPU the rest of the machine used meanwhile, in cores: 0 on a quiet machine."""
    return max(0.0, busy - server_cpu - client_cpu) / elapsed


def _delivery_problems(
    p: dict[str, Any], ready: dict[str, Any], done: dict[str, Any], prefix: str = "", what: str = "deliveries"
) -> list[str]:
    """What a fan-out client saw go wrong: receivers that did not connect, lost or extra deliveries."""
    problems = []
    if ready["connected"] < p["receivers"]:
        problems.append(
            f"{prefix}{p['receivers'] - ready['connected']} receivers did not connect: {ready['errors']}"
        )
    for key in ("missing", "duplicates", "reordered", "foreign"):
        if done[key]:
            problems.append(f"{prefix}{done[key]} {key} {what}")
    return problems


def _fanout_figures(
    p: dict[str, Any], ready: dict[str, Any], done: dict[str, Any], server_cpu: float, busy: float
) -> tuple[dict[str, Any], list[str]]:
    """The fan-out scenarios' metrics and problems, from the client's reports and the CPU around them."""
    client_cpu = done["client_cpu_s"]["total"]
    metrics = {
        "delivered_pct": done["delivered_pct"],
        "duplicates": done["duplicates"],
        "reordered": done["reordered"],
        **_latency(done),
        "server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        "others_cores": _others_cores(busy, server_cpu, client_cpu, done["elapsed_s"]),
    }
    return metrics, _delivery_problems(p, ready, done)


def scenario_echo(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    p = ctx.params
    cfg = {
        "url": ctx.server.url + "/ws/echo/",
        "clients": p["clients"],
        "rounds": p["rounds"],
        "size": p["size"],
    }
    client = ctx.client("echo.mjs", cfg)
    try:
        ready = client.expect("ready", 60)
        if ctx.on_timed_start:
            ctx.on_timed_start(ctx.server)
        cpu0, busy0 = ctx.server.cpu_seconds(), machine_busy_seconds()
        client.go()
        done = client.expect("done", p["timeout_s"])
        cpu1, busy1 = ctx.server.cpu_seconds(), machine_busy_seconds()
        if ctx.on_timed_end:
            ctx.on_timed_end(ctx.server)
    finally:
        client.close()
    elapsed = done["elapsed_s"]
    server_cpu = cpu1 - cpu0
    metrics = {
        "msg_per_s": done["msg_per_s"],
        "msg_per_cpu_s": done["messages"] / server_cpu if server_cpu > 0 else None,
        **_latency(done),
        "server_cores": server_cpu / elapsed,
        "client_cores": done["client_cpu_s"]["total"] / elapsed,
        # Anything else running on the machine meanwhile (0 on a quiet machine).
        "others_cores": _others_cores(busy1 - busy0, server_cpu, done["client_cpu_s"]["total"], elapsed),
        "messages": done["messages"],
    }
    problems = []
    if ready["connected"] < p["clients"]:
        problems.append(f"{p['clients'] - ready['connected']} clients did not connect: {ready['errors']}")
    if done["messages"] < done["expected"]:
        problems.append(f"{done['expected'] - done['messages']} round trips missing")
    if done["mismatched"]:
        problems.append(f"{done['mismatched']} echoes differ from what was sent")
    return metrics, problems, {"ready": ready, "done": done, "server_cpu_s": server_cpu}


def scenario_idle(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Connections held open; with ``deflate`` they offer permessage-deflate as browsers do."""
    p = ctx.params
    deflate = p.get("deflate", False)
    time.sleep(0.5)
    before = ctx.server.status()
    cfg = {
        "url": ctx.server.url + "/ws/echo/",
        "connections": p["connections"],
        "probe": p["probe"],
        "deflate": deflate,
    }
    client = ctx.client("idle.mjs", cfg)
    try:
        opened = client.expect("opened", p["timeout_s"])
        time.sleep(p["settle_s"])
        after = ctx.server.status()
        client.go()
        done = client.expect("done", 60)
    finally:
        client.close()
    count = done["opened"]
    metrics = {
        "opened": count,
        "kib_per_conn": (after["rss_kib"] - before["rss_kib"]) / count if count else None,
        "rss_after_mib": after["rss_kib"] / 1024,
        "threads_before": before["threads"],
        "threads_after": after["threads"],
        "probe_ok": done["probe_ok"],
        "open_per_s": done["open_per_s"],
        "deflate_negotiated": done.get("deflate_negotiated"),
    }
    problems = []
    if deflate and done.get("deflate_negotiated", 0) < count:
        problems.append(
            f"permessage-deflate negotiated on {done.get('deflate_negotiated', 0)} of {count} connections; "
            f"accepted parameters: {done.get('deflate_params')}"
        )
    if count < p["connections"]:
        problems.append(f"opened {count} of {p['connections']}: {done['errors']}")
    if done["probe_ok"] < done["probe_sent"]:
        problems.append(
            f"{done['probe_sent'] - done['probe_ok']} of {done['probe_sent']} probed connections did not echo"
        )
    if done["closed_early"]:
        problems.append(f"{done['closed_early']} connections closed by the server while idle")
    return metrics, problems, {"opened": opened, "done": done, "before": before, "after": after}


def scenario_fanout(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    p = ctx.params
    cfg = {
        "url": ctx.server.url + "/ws/broadcast/",
        "receivers": p["receivers"],
        "messages": p["messages"],
        "rate": p["rate"],
        "size": p["size"],
        "drain_timeout_s": p["drain_timeout_s"],
    }
    client = ctx.client("fanout.mjs", cfg)
    try:
        ready = client.expect("ready", 60)
        cpu0, busy0 = ctx.server.cpu_seconds(), machine_busy_seconds()
        client.go()
        done = client.expect("done", p["messages"] / p["rate"] + p["drain_timeout_s"] + 30)
        cpu1, busy1 = ctx.server.cpu_seconds(), machine_busy_seconds()
    finally:
        client.close()
    metrics, problems = _fanout_figures(p, ready, done, cpu1 - cpu0, busy1 - busy0)
    return metrics, problems, {"ready": ready, "done": done}


def scenario_fanout_redis(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """1 sender, N receivers over two runws processes sharing groups through Redis.

    ``ctx.server`` is the first process; the second is started here with the
    same command. The sender talks to the first; receivers alternate between
    both, so half the deliveries cross Redis to the other process.
    """
    p = ctx.params
    second = ServerProcess(ctx.server.spec, ctx.server.python, ctx.logdir / f"{ctx.tag}.server2.log")
    second.start()
    try:
        cfg = {
            "url": ctx.server.url + "/ws/broadcast/",  # checked by common.mjs: loopback only
            "urls": [ctx.server.url + "/ws/broadcast/", second.url + "/ws/broadcast/"],
            "sender_url": ctx.server.url + "/ws/broadcast/",
            "receivers": p["receivers"],
            "messages": p["messages"],
            "rate": p["rate"],
            "size": p["size"],
            "drain_timeout_s": p["drain_timeout_s"],
        }
        client = ctx.client("fanout_multi.mjs", cfg)
        try:
            ready = client.expect("ready", 60)
            cpu0 = ctx.server.cpu_seconds() + second.cpu_seconds()
            busy0 = machine_busy_seconds()
            client.go()
            done = client.expect("done", p["messages"] / p["rate"] + p["drain_timeout_s"] + 30)
            cpu1 = ctx.server.cpu_seconds() + second.cpu_seconds()
            busy1 = machine_busy_seconds()
        finally:
            client.close()
    finally:
        stop_second = second.stop(timeout=10.0)
    metrics, problems = _fanout_figures(p, ready, done, cpu1 - cpu0, busy1 - busy0)
    if stop_second.get("exit") == "killed":
        problems.append(f"the second server {stop_second['note']} (killed)")
    return metrics, problems, {"ready": ready, "done": done, "second_stop": stop_second}


#: Growth past warm-up the soak scenario accepts (issue 7: under 5%).
SOAK_LIMIT_PCT = 5.0


def _soak_sample(server: ServerProcess, t0: float) -> dict[str, Any]:
    return {"t": round(time.monotonic() - t0, 2), **server.status(), "fds": server.open_fds()}


def scenario_soak(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Steady echo traffic plus connection churn; /proc sampled every second.

    Growth is end against the end of warm-up (the first ``warmup_frac`` of the
    run), both taken under load, so what a leak adds shows and what merely
    warms up (allocator arenas, worker threads, caches) does not.
    """
    p = ctx.params
    cfg = {
        "url": ctx.server.url + "/ws/echo/",
        "connections": p["connections"],
        "interval_ms": p["interval_ms"],
        "churn_per_s": p["churn_per_s"],
        "duration_s": p["duration_s"],
        "size": p["size"],
    }
    client = ctx.client("soak.mjs", cfg)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample(t0: float) -> None:
        while not stop.is_set():
            try:
                samples.append(_soak_sample(ctx.server, t0))
            except OSError:
                return  # the server went away; the client will say so
            stop.wait(p["sample_s"])

    try:
        ready = client.expect("ready", 60)
        cpu0 = ctx.server.cpu_seconds()
        t0 = time.monotonic()
        sampler = threading.Thread(target=sample, args=(t0,), daemon=True)
        client.go()
        sampler.start()
        done = client.expect("done", p["duration_s"] + 60)
        stop.set()
        sampler.join(5)
        cpu1 = ctx.server.cpu_seconds()
    finally:
        stop.set()
        client.close()
    # Only samples taken while the traffic ran (not the churn drain after it).
    under_load = [s for s in samples if s["t"] <= p["duration_s"]] or samples
    warm_t = p["duration_s"] * p["warmup_frac"]
    warm = next((s for s in under_load if s["t"] >= warm_t), under_load[-1])
    end = under_load[-1]

    def growth(key: str) -> float | None:
        return 100.0 * (end[key] - warm[key]) / warm[key] if warm[key] else None

    peak_rss = max(s["rss_kib"] for s in under_load)
    metrics = {
        "rss_growth_pct": growth("rss_kib"),
        "threads_growth_pct": growth("threads"),
        "fds_growth_pct": growth("fds"),
        "rss_warm_mib": warm["rss_kib"] / 1024,
        "rss_end_mib": end["rss_kib"] / 1024,
        "rss_peak_mib": peak_rss / 1024,
        "threads_warm": warm["threads"],
        "threads_end": end["threads"],
        "fds_warm": warm["fds"],
        "fds_end": end["fds"],
        "churned": done["churned"],
        "echoed": done["echoed"],
        "errors": done["failed"] + done["churn_failed"] + done["mismatched"] + done["steady_closed"],
        "server_cores": (cpu1 - cpu0) / done["elapsed_s"],
    }
    problems = []
    for key, sample_key, what in (
        ("rss_growth_pct", "rss_kib", "RSS (KiB)"),
        ("threads_growth_pct", "threads", "threads"),
        ("fds_growth_pct", "fds", "open fds"),
    ):
        value = metrics[key]
        if value is not None and value >= SOAK_LIMIT_PCT:
            problems.append(
                f"{what} grew {value:.1f}% after warm-up, over the {SOAK_LIMIT_PCT:.0f}% limit: "
                f"{warm[sample_key]} -> {end[sample_key]}"
            )
    if ready["connected"] < p["connections"]:
        missing = p["connections"] - ready["connected"]
        problems.append(f"{missing} steady connections did not open: {ready['errors']}")
    if done["steady_closed"]:
        problems.append(f"{done['steady_closed']} steady connections closed by the server")
    if done["churn_failed"]:
        problems.append(f"{done['churn_failed']} churn connections failed: {done['churn_errors']}")
    if done["mismatched"]:
        problems.append(f"{done['mismatched']} echoes differ from what was sent")
    if done["churn_skipped"]:
        problems.append(
            f"{done['churn_skipped']} churn slots skipped (too many in flight: the server lagged)"
        )
    return metrics, problems, {"ready": ready, "done": done, "warm": warm, "end": end, "samples": samples}


def _client_run(
    ctx: RunContext,
    script: str,
    cfg: dict[str, Any],
    timeout_s: float,
    label: str,
) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    """One client through "ready" and "done": (ready, done, server CPU-s, machine busy CPU-s).

    CPU figures cover the timed phase only (go to "done"). ``label`` names
    the client's log, for scenarios that run several clients against one server.
    """
    client = Client(script, cfg, ctx.logdir / f"{ctx.tag}.{label}.client.log")
    try:
        ready = client.expect("ready", 120)
        cpu0, busy0 = ctx.server.cpu_seconds(), machine_busy_seconds()
        client.go()
        done = client.expect("done", timeout_s)
        cpu1, busy1 = ctx.server.cpu_seconds(), machine_busy_seconds()
    finally:
        client.close()
    return ready, done, cpu1 - cpu0, busy1 - busy0


#: The two ways echo-large's client masks its frames: all-zero key, ws's random keys.
ECHO_LARGE_MASKS = ("zero", "random")


def scenario_echo_large(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Large binary round trips, once with the all-zero masking key and once with random keys.

    Both runs use the same server process, zero first; each client warms up
    on its own. MB/s counts payload bytes echoed (each once, though they
    cross the loopback both ways), MB = 10^6 bytes.
    """
    p = ctx.params
    metrics: dict[str, Any] = {}
    problems: list[str] = []
    raw: dict[str, Any] = {}
    others = 0.0
    for mask in ECHO_LARGE_MASKS:
        cfg = {
            "url": ctx.server.url + "/ws/echo/",
            "clients": p["clients"],
            "rounds": p["rounds"],
            "warmup": p["warmup"],
            "size": p["size"],
            "binary": True,
            "mask": mask,
        }
        ready, done, server_cpu, busy = _client_run(ctx, "echo.mjs", cfg, p["timeout_s"], f"mask-{mask}")
        elapsed = done["elapsed_s"]
        client_cpu = done["client_cpu_s"]["total"]
        megabytes = done["messages"] * p["size"] / 1e6
        metrics.update(
            {
                f"{mask}_mb_per_s": megabytes / elapsed,
                f"{mask}_mb_per_cpu_s": megabytes / server_cpu if server_cpu > 0 else None,
                f"{mask}_p50_ms": (done.get("latency_ms") or {}).get("p50"),
                f"{mask}_server_cores": server_cpu / elapsed,
                f"{mask}_client_cores": client_cpu / elapsed,
            }
        )
        others = max(others, _others_cores(busy, server_cpu, client_cpu, elapsed))
        if ready["connected"] < p["clients"]:
            problems.append(
                f"{mask} mask: {p['clients'] - ready['connected']} clients did not connect: {ready['errors']}"
            )
        if done["messages"] < done["expected"]:
            problems.append(f"{mask} mask: {done['expected'] - done['messages']} round trips missing")
        if done["mismatched"]:
            problems.append(f"{mask} mask: {done['mismatched']} echoes differ from what was sent")
        raw[mask] = {"ready": ready, "done": done, "server_cpu_s": server_cpu}
    metrics["others_cores"] = others
    return metrics, problems, raw


def scenario_churn(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Short-lived connections: open, one echo, close handshake started by the client."""
    p = ctx.params
    cfg = {
        "url": ctx.server.url + "/ws/echo/",
        "cycles": p["cycles"],
        "workers": p["workers"],
        "size": p["size"],
        "warmup": p["warmup"],
    }
    ready, done, server_cpu, busy = _client_run(ctx, "churn.mjs", cfg, p["timeout_s"], "churn")
    elapsed = done["elapsed_s"]
    client_cpu = done["client_cpu_s"]["total"]
    completed = done["completed"]
    metrics = {
        "per_s": done["per_s"],
        "failed": done["failed"],
        **_latency(done),
        "server_cpu_ms_per_conn": 1000 * server_cpu / completed if completed else None,
        "server_cores": server_cpu / elapsed,
        "client_cores": client_cpu / elapsed,
        "others_cores": _others_cores(busy, server_cpu, client_cpu, elapsed),
    }
    problems = []
    if done["failed"]:
        problems.append(f"{done['failed']} of {done['cycles']} cycles failed: {done['errors']}")
    if ready["warmup_failed"]:
        problems.append(f"{ready['warmup_failed']} warm-up cycles failed: {ready['warmup_errors']}")
    return metrics, problems, {"ready": ready, "done": done, "server_cpu_s": server_cpu}


#: /proc/net/tcp state of an established connection.
TCP_ESTABLISHED = "01"
#: The issue's bound on the healthy receivers' p99 with frozen receivers beside them.
BACKPRESSURE_P99_TARGET = 1.25


def _loopback_connections(server_port: int) -> dict[int, dict[str, Any]]:
    """IPv4 TCP connections to ``server_port``, by client port: each side's state and queue.

    ``server_tx`` is what the server's kernel holds unacknowledged (sent or
    not), ``client_rx`` what the client's kernel received and nobody read.
    A side missing from the table has no socket any more.
    """
    connections: dict[int, dict[str, Any]] = collections.defaultdict(dict)
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].rpartition(":")[2], 16)
            remote_port = int(fields[2].rpartition(":")[2], 16)
            tx_queue, _, rx_queue = fields[4].partition(":")
            if local_port == server_port and remote_port:
                connections[remote_port].update(server_state=fields[3], server_tx=int(tx_queue, 16))
            elif remote_port == server_port:
                connections[local_port].update(client_state=fields[3], client_rx=int(rx_queue, 16))
    return connections


class _BackpressureWatch:
    """A thread sampling the server's VmRSS and its side of the frozen receivers' sockets.

    A frozen receiver counts as dropped at the first sample where the
    server's socket for it has left ESTABLISHED (closing with data still
    queued: FIN_WAIT1; or gone): the moment the server let go of it, which
    a client that reads nothing could not see. Time 0 is the go of the
    sending phase.
    """

    def __init__(self, server: ServerProcess, interval_s: float) -> None:
        self.server = server
        self.interval_s = interval_s
        self.frozen_ports: list[int] = []
        self.rss_kib: list[int] = []
        #: client port -> seconds from the go until the server let go of it
        self.dropped_at: dict[int, float] = {}
        #: client port -> most bytes the two kernels held for it at once
        self.kernel_peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backpressure-watch", daemon=True)
        self._t0 = 0.0

    def start(self, ready: dict[str, Any]) -> None:
        self.frozen_ports = list(ready.get("frozen_ports") or [])
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.rss_kib.append(self.server.status()["rss_kib"])
                # Read in every run, frozen receivers or not, so both runs pay the same.
                table = _loopback_connections(self.server.port)
            except OSError:
                return  # the server went away; the client will say so
            now = time.monotonic() - self._t0
            for port in self.frozen_ports:
                if port in self.dropped_at:
                    continue
                sides = table.get(port, {})
                if sides.get("server_state") != TCP_ESTABLISHED:
                    self.dropped_at[port] = now
                    continue
                held = sides.get("server_tx", 0) + sides.get("client_rx", 0)
                self.kernel_peak[port] = max(self.kernel_peak.get(port, 0), held)
            self._stop.wait(self.interval_s)


def scenario_backpressure(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """The fan-out with large texts, first with every receiver reading, then beside frozen ones.

    Both runs on one server process, the healthy one first so that what the
    frozen run makes the server hold shows in its RSS peak. A frozen
    receiver's socket is paused by the client after the handshake; a
    sampler reads the server's VmRSS and /proc/net/tcp every ``sample_s``.
    """
    p = ctx.params
    base_cfg = {
        "url": ctx.server.url + "/ws/broadcast/",
        "receivers": p["receivers"],
        "messages": p["messages"],
        "rate": p["rate"],
        "size": p["size"],
        "drain_timeout_s": p["drain_timeout_s"],
        "resume_s": p["resume_s"],
        # Stop watching before the frozen ones read again (and before the client closes them).
        "drained_barrier": True,
    }
    send_timeout = p["messages"] / p["rate"] + p["drain_timeout_s"] + 30
    metrics: dict[str, Any] = {"others_cores": 0.0}
    problems: list[str] = []
    raw: dict[str, Any] = {}
    rss_start = ctx.server.status()["rss_kib"]
    watches: dict[str, _BackpressureWatch] = {}
    for run_name, frozen in (("free", 0), ("frozen", p["frozen"])):
        watch = watches[run_name] = _BackpressureWatch(ctx.server, p["sample_s"])
        client = Client(
            "fanout.mjs", {**base_cfg, "frozen": frozen}, ctx.logdir / f"{ctx.tag}.{run_name}.client.log"
        )
        try:
            ready = client.expect("ready", 120)
            watch.start(ready)
            cpu0, busy0 = ctx.server.cpu_seconds(), machine_busy_seconds()
            client.go()
            client.expect("drained", send_timeout)
            cpu1, busy1 = ctx.server.cpu_seconds(), machine_busy_seconds()
            watch.stop()
            client.go()
            done = client.expect("done", p["resume_s"] + 30)
        finally:
            watch.stop()
            client.close()
        server_cpu = cpu1 - cpu0
        client_cpu = done["client_cpu_s"]["total"]
        metrics.update(
            {
                f"{run_name}_delivered_pct": done["delivered_pct"],
                **_latency(done, f"{run_name}_"),
                f"{run_name}_rss_peak_mib": max(watch.rss_kib, default=0) / 1024 or None,
                f"{run_name}_server_cpu_s": server_cpu,
                f"{run_name}_client_cpu_s": client_cpu,
            }
        )
        others = _others_cores(busy1 - busy0, server_cpu, client_cpu, done["elapsed_s"])
        metrics["others_cores"] = max(metrics["others_cores"], others)
        problems += _delivery_problems(
            p, ready, done, prefix=f"{run_name}: ", what="deliveries to the reading receivers"
        )
        raw[run_name] = {
            "ready": ready,
            "done": done,
            "server_cpu_s": server_cpu,
            "rss_kib": watch.rss_kib,
            "dropped_at_s": watch.dropped_at,
            "kernel_peak_bytes": watch.kernel_peak,
        }
    frozen_watch = watches["frozen"]
    frozen_count = len(frozen_watch.frozen_ports)
    drops = sorted(frozen_watch.dropped_at.values())
    free_p99, frozen_p99 = metrics.get("free_p99_ms"), metrics.get("frozen_p99_ms")
    p99_ratio = frozen_p99 / free_p99 if free_p99 and frozen_p99 is not None else None
    metrics.update(
        {
            "p99_ratio": p99_ratio,
            "frozen_dropped": len(drops),
            "dropped_after_s": statistics.median(drops) if drops else None,
            "last_dropped_after_s": drops[-1] if drops else None,
            "kernel_held_kib": max(frozen_watch.kernel_peak.values(), default=0) / 1024 or None,
            "rss_start_mib": rss_start / 1024,
        }
    )
    if p99_ratio is not None and p99_ratio > BACKPRESSURE_P99_TARGET:
        problems.append(
            f"p99 with frozen receivers is {p99_ratio:.2f}× the p99 without, "
            f"over the {BACKPRESSURE_P99_TARGET}× target ({frozen_p99:.1f} ms vs {free_p99:.1f} ms)"
        )
    if frozen_count < p["frozen"]:
        problems.append(f"only {frozen_count} of {p['frozen']} frozen receivers connected")
    frozen_done = raw["frozen"]["done"]
    codes = frozen_done.get("frozen_close_codes") or {}
    if drops and set(codes) - {"1008"}:
        # The server says why it drops a reader with a 1008 close frame; see whether it got there.
        problems.append(
            f"reading again, the frozen receivers saw close codes {codes} (1008 expected from a dropped one) "
            f"after {frozen_done['frozen_received_after_resume']} messages"
        )
    if len(drops) < frozen_count:
        problems.append(
            f"{frozen_count - len(drops)} of {frozen_count} frozen receivers never dropped by the server; "
            f"reading again, they got {frozen_done['frozen_received_after_resume']} messages"
            f" and {frozen_done['frozen_open_at_end']} were still open {p['resume_s']} s later"
        )
    return metrics, problems, raw


#: The offered rates of chat-orm, in messages per second, tried in this order.
CHAT_RATES = (250, 500, 1000, 2000)


class _PgConnectionWatch:
    """Counts the chat database's backends in ``pg_stat_activity`` every ``interval`` seconds.

    Its own connection is to the maintenance database, so it never counts
    itself. ``take_window_peak`` gives the peak since its previous call (one
    rate step), ``peak`` the peak of the whole run.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.error: str | None = None
        self._window_peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        try:
            with _pg_connect("postgres") as conn:
                while not self._stop.is_set():
                    (count,) = conn.execute(query, [CHAT_DB]).fetchone()
                    with self._lock:
                        self.samples += 1
                        self.peak = max(self.peak, count)
                        self._window_peak = max(self._window_peak, count)
                    self._stop.wait(self.interval)
        except Exception as exc:  # noqa: BLE001 - reported with the run, never fatal
            self.error = f"{type(exc).__name__}: {exc}"

    def take_window_peak(self) -> int:
        with self._lock:
            peak, self._window_peak = self._window_peak, 0
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _chat_connections() -> int:
    """The chat database's backends now (from the maintenance database, so not counting this one)."""
    with _pg_connect("postgres") as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        return conn.execute(query, [CHAT_DB]).fetchone()[0]


def _chat_rows() -> int:
    with _pg_connect(CHAT_DB) as conn:
        return conn.execute(f"SELECT count(*) FROM {CHAT_TABLE}").fetchone()[0]


def _chat_rows_settled(sent: int, timeout: float) -> int:
    """The table's row count once it reaches ``sent`` or stops growing for a second (bounded)."""
    deadline = time.monotonic() + timeout
    rows, since = _chat_rows(), time.monotonic()
    while rows < sent and time.monotonic() < deadline and time.monotonic() - since < 1.0:
        time.sleep(0.2)
        now_rows = _chat_rows()
        if now_rows != rows:
            rows, since = now_rows, time.monotonic()
    return rows


def scenario_chat_orm(ctx: RunContext) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Open-loop chat through the ORM: offered rates stepped up until one is not held.

    The server has migrated before listening; the table is emptied here, so
    the rows counted after the run are this run's. PostgreSQL's connections
    to the bench database are sampled from a thread of the harness.
    """
    p = ctx.params
    with _pg_connect(CHAT_DB) as conn:
        conn.execute(f"TRUNCATE {CHAT_TABLE} RESTART IDENTITY")
    step_timeout = p["step_s"] + p["drain_s"] + 30
    cfg = {
        "url": ctx.server.url + "/ws/chat/",
        "clients": p["clients"],
        "rooms": p["rooms"],
        "rates": list(p["rates"]),
        "step_s": p["step_s"],
        "drain_s": p["drain_s"],
        "p99_limit_ms": p["p99_limit_ms"],
        "size": p["size"],
        "deadline_s": 60 + step_timeout * len(p["rates"]),
    }
    client = ctx.client("chat.mjs", cfg)
    watch = _PgConnectionWatch(p["pg_poll_s"])
    steps: list[dict[str, Any]] = []
    try:
        ready = client.expect("ready", 60)
        pg_at_ready = _chat_connections()
        watch.start()
        cpu0, busy0, t0 = ctx.server.cpu_seconds(), machine_busy_seconds(), time.monotonic()
        cpu_mark = cpu0
        client.go()
        for _ in p["rates"]:
            step = client.expect("step", step_timeout)
            cpu = ctx.server.cpu_seconds()
            step["server_cores"] = (cpu - cpu_mark) / step["elapsed_s"]
            step["pg_connections_peak"] = watch.take_window_peak()
            cpu_mark = cpu
            steps.append(step)
            client.go()
            if not step["more"]:
                break
        done = client.expect("done", 30)
        cpu1, busy1, elapsed = ctx.server.cpu_seconds(), machine_busy_seconds(), time.monotonic() - t0
    finally:
        watch.stop()
        client.close()
    for step, final in zip(steps, done["steps"]):
        step["late"] = final["late"]  # counted until the end of the run
    saved = _chat_rows_settled(done["sent"], timeout=15)
    server_cpu, client_cpu = cpu1 - cpu0, done["client_cpu_s"]["total"]
    held = [s["rate"] for s in steps if s["held"]]
    metrics: dict[str, Any] = {
        "held_rate": max(held, default=0),
        "pg_connections_peak": watch.peak,
        "sent": done["sent"],
        "saved": saved,
        "server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        "others_cores": _others_cores(busy1 - busy0, server_cpu, client_cpu, elapsed),
    }
    for step in steps:
        metrics[f"r{step['rate']}_delivered_pct"] = step["delivered_pct"]
        metrics[f"r{step['rate']}_p50_ms"] = step["latency_ms"]["p50"]
        metrics[f"r{step['rate']}_p99_ms"] = step["latency_ms"]["p99"]
    problems = []
    if ready["connected"] < p["clients"]:
        problems.append(f"{p['clients'] - ready['connected']} clients did not connect: {ready['errors']}")
    for step in steps:
        if not step["held"]:
            problems.append(
                f"not held at {step['rate']} msg/s: {step['delivered_pct']:.2f}% delivered within the drain "
                f"({step['late']} late), p99 {step['latency_ms']['p99'] or 0:,.0f} ms; higher rates not tried"
            )
        for key in ("duplicates", "misrouted", "send_skipped"):
            if step[key]:
                problems.append(f"{step[key]} {key.replace('_', ' ')} at {step['rate']} msg/s")
    if done["foreign"]:
        problems.append(f"{done['foreign']} messages that were not sent by the client")
    if done["closed_early"]:
        problems.append(f"{done['closed_early']} connections closed by the server during the run")
    if saved != done["sent"]:
        problems.append(f"{saved} rows saved for {done['sent']} messages sent")
    if watch.error:
        problems.append(f"watching pg_stat_activity failed: {watch.error}")
    if pg_at_ready:
        problems.append(
            f"{pg_at_ready} connections to {CHAT_DB} were open before the first message (counted in the peak): "
            "the server's handshakes, or another process"
        )
    raw = {
        "ready": ready,
        "steps": steps,
        "done": done,
        "saved": saved,
        "pg_connections_at_ready": pg_at_ready,
        "pg_samples": watch.samples,
    }
    return metrics, problems, raw


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[RunContext], tuple[dict[str, Any], list[str], dict[str, Any]]]
    metrics: list[Metric]
    params: dict[str, Any]
    quick: dict[str, Any] = field(default_factory=dict)
    repeat: int = 3
    #: When set, the only servers this scenario runs on.
    servers: tuple[str, ...] | None = None
    #: False for a long scenario that runs only when ``--scenarios`` names it.
    by_default: bool = True

    def applies_to(self, spec: ServerSpec) -> bool:
        if self.servers is not None:
            return spec.name in self.servers
        return not spec.only_scenarios or self.name in spec.only_scenarios

    def settings(self, quick: bool) -> dict[str, Any]:
        return {**self.params, **(self.quick if quick else {})}


LATENCY = [
    Metric("p50_ms", "latency p50 (ms)", "{:,.2f}", "lower"),
    Metric("p99_ms", "latency p99 (ms)", "{:,.2f}", "lower"),
]

IDLE_METRICS = [
    Metric("opened", "opened", better="higher"),
    Metric("kib_per_conn", "RSS per connection (KiB)", "{:.1f}", "lower"),
    Metric("rss_after_mib", "RSS with all open (MiB)", "{:.0f}", "lower"),
    Metric("threads_before", "threads before"),
    Metric("threads_after", "threads after"),
    Metric("probe_ok", "probes echoed", better="higher"),
    Metric("open_per_s", "opened per second (client-paced)", better="higher"),
]

SCENARIOS = [
    Scenario(
        "echo-small",
        "echo-small: {clients} clients × {rounds} round trips of a {size}-byte text",
        scenario_echo,
        [
            Metric("msg_per_s", "msg/s", better="higher"),
            Metric("msg_per_cpu_s", "msg per server CPU-second", better="higher"),
            *LATENCY,
            Metric("server_cores", "server CPU (cores)", "{:.2f}"),
            Metric("client_cores", "client CPU (cores)", "{:.2f}"),
            Metric("others_cores", "other processes' CPU (cores)", "{:.2f}"),
        ],
        {"clients": 50, "rounds": 2000, "size": 32, "timeout_s": 180},
        quick={"rounds": 1000},
    ),
    Scenario(
        "idle",
        "idle: {connections:,} connections to /ws/echo/, then {probe} random ones echo",
        scenario_idle,
        IDLE_METRICS,
        {"connections": 10_000, "probe": 100, "settle_s": 1.0, "timeout_s": 180},
        quick={"connections": 2_000},
    ),
    Scenario(
        "fanout",
        "fan-out: {receivers} receivers on /ws/broadcast/, one sender at {rate} msg/s for {messages} messages",
        scenario_fanout,
        [
            Metric("delivered_pct", "delivered (%)", "{:.2f}", "higher"),
            Metric("duplicates", "duplicates", better="lower"),
            Metric("reordered", "reordered", better="lower"),
            *LATENCY,
            Metric("max_ms", "latency max (ms)", "{:,.2f}", "lower"),
            Metric("server_cpu_s", "server CPU (s)", "{:.2f}", "lower"),
            Metric("client_cpu_s", "client CPU (s)", "{:.2f}"),
            Metric("others_cores", "other processes' CPU (cores)", "{:.2f}"),
        ],
        {"receivers": 1000, "messages": 100, "rate": 20, "size": 32, "drain_timeout_s": 15},
        quick={"messages": 40},
    ),
    Scenario(
        "fanout-redis",
        "cross-process fan-out: {receivers} receivers over two runws processes sharing Redis, "
        "one sender at {rate} msg/s for {messages} messages",
        scenario_fanout_redis,
        [
            Metric("delivered_pct", "delivered (%)", "{:.2f}", "higher"),
            Metric("duplicates", "duplicates", better="lower"),
            Metric("reordered", "reordered", better="lower"),
            *LATENCY,
            Metric("max_ms", "latency max (ms)", "{:,.2f}", "lower"),
            Metric("server_cpu_s", "servers' CPU, both (s)", "{:.2f}", "lower"),
            Metric("client_cpu_s", "client CPU (s)", "{:.2f}"),
            Metric("others_cores", "other processes' CPU, Redis included (cores)", "{:.2f}"),
        ],
        {"receivers": 1000, "messages": 100, "rate": 20, "size": 32, "drain_timeout_s": 15},
        quick={"messages": 40},
        servers=("runws-redis",),
    ),
    Scenario(
        "echo-large",
        "echo-large: {clients} clients × {rounds} round trips of a {size:,}-byte binary message, "
        "all-zero masking key then random keys; MB/s = payload bytes echoed per second, MB = 10^6",
        scenario_echo_large,
        [
            Metric("zero_mb_per_s", "MB/s echoed, zero mask", "{:,.1f}", "higher"),
            Metric("random_mb_per_s", "MB/s echoed, random masks", "{:,.1f}", "higher"),
            Metric("zero_mb_per_cpu_s", "MB per server CPU-second, zero mask", "{:,.1f}", "higher"),
            Metric("random_mb_per_cpu_s", "MB per server CPU-second, random masks", "{:,.1f}", "higher"),
            Metric("zero_p50_ms", "round trip p50 (ms), zero mask", "{:,.1f}", "lower"),
            Metric("random_p50_ms", "round trip p50 (ms), random masks", "{:,.1f}", "lower"),
            Metric("zero_server_cores", "server CPU (cores), zero mask", "{:.2f}"),
            Metric("random_server_cores", "server CPU (cores), random masks", "{:.2f}"),
            Metric("zero_client_cores", "client CPU (cores), zero mask", "{:.2f}"),
            Metric("random_client_cores", "client CPU (cores), random masks", "{:.2f}"),
            Metric("others_cores", "other processes' CPU (cores, busier run)", "{:.2f}"),
        ],
        # Already small: --quick runs it as it is.
        {"clients": 4, "rounds": 10, "warmup": 1, "size": 4 << 20, "timeout_s": 300},
    ),
    Scenario(
        "idle-deflate",
        "idle-deflate: {connections:,} connections to /ws/echo/ offering permessage-deflate as Chrome does "
        "(`permessage-deflate; client_max_window_bits`), then {probe} random ones echo",
        scenario_idle,
        [
            Metric("deflate_negotiated", "permessage-deflate negotiated"),
            *IDLE_METRICS,
        ],
        {"connections": 10_000, "probe": 100, "settle_s": 1.0, "timeout_s": 180, "deflate": True},
        quick={"connections": 2_000},
    ),
    Scenario(
        "churn",
        "churn: {cycles:,} cycles of connect, one {size}-byte echo, close handshake started by the client, "
        "from {workers} concurrent workers; latency = the whole cycle, until the TCP connection has closed",
        scenario_churn,
        [
            Metric("per_s", "connections per second", better="higher"),
            Metric("failed", "failed cycles", better="lower"),
            Metric("p50_ms", "cycle p50 (ms)", "{:,.2f}", "lower"),
            Metric("p99_ms", "cycle p99 (ms)", "{:,.2f}", "lower"),
            Metric("server_cpu_ms_per_conn", "server CPU per connection (ms)", "{:.2f}", "lower"),
            Metric("server_cores", "server CPU (cores)", "{:.2f}"),
            Metric("client_cores", "client CPU (cores)", "{:.2f}"),
            Metric("others_cores", "other processes' CPU (cores)", "{:.2f}"),
        ],
        {"cycles": 2000, "workers": 8, "size": 32, "warmup": 100, "timeout_s": 300},
        quick={"cycles": 1000},
    ),
    Scenario(
        "backpressure",
        "backpressure: fan-out of {size:,}-byte texts at {rate} msg/s for {messages} messages to {receivers} "
        "reading receivers (not fanout's 1000: at this size that is more than 2 cores carry), "
        'alone ("free"), then beside {frozen} receivers that stop reading ("frozen")',
        scenario_backpressure,
        [
            Metric("free_delivered_pct", "delivered (%), free", "{:.2f}", "higher"),
            Metric("frozen_delivered_pct", "delivered (%) to the reading ones, frozen", "{:.2f}", "higher"),
            Metric("free_p50_ms", "latency p50 (ms), free", "{:,.2f}", "lower"),
            Metric("frozen_p50_ms", "latency p50 (ms), frozen", "{:,.2f}", "lower"),
            Metric("free_p99_ms", "latency p99 (ms), free", "{:,.2f}", "lower"),
            Metric("frozen_p99_ms", "latency p99 (ms), frozen", "{:,.2f}", "lower"),
            Metric("p99_ratio", "p99 frozen / free (target ≤ 1.25)", "{:.2f}", "lower"),
            Metric("frozen_dropped", "frozen receivers dropped by the server"),
            Metric("dropped_after_s", "dropped after (s from the first message), median", "{:.1f}"),
            Metric("last_dropped_after_s", "last dropped after (s)", "{:.1f}"),
            Metric("kernel_held_kib", "kernel buffers held for one frozen receiver, most (KiB)", "{:,.0f}"),
            Metric("rss_start_mib", "server RSS at start (MiB)", "{:.1f}"),
            Metric("free_rss_peak_mib", "server RSS peak (MiB), free", "{:.1f}", "lower"),
            Metric("frozen_rss_peak_mib", "server RSS peak (MiB), frozen", "{:.1f}", "lower"),
            Metric("free_server_cpu_s", "server CPU (s), free", "{:.2f}", "lower"),
            Metric("frozen_server_cpu_s", "server CPU (s), frozen", "{:.2f}", "lower"),
            Metric("free_client_cpu_s", "client CPU (s), free", "{:.2f}"),
            Metric("frozen_client_cpu_s", "client CPU (s), frozen", "{:.2f}"),
            Metric("others_cores", "other processes' CPU (cores, busier run)", "{:.2f}"),
        ],
        {
            "receivers": 100,
            "frozen": 10,
            "messages": 300,
            "rate": 20,
            "size": 64 << 10,
            "drain_timeout_s": 15,
            "resume_s": 3,
            "sample_s": 0.1,
        },
        # No smaller --quick size: the frozen receivers' backlog must pass the
        # kernel buffers (about 4 MB on loopback) plus a 4 MiB server bound.
    ),
    Scenario(
        "soak",
        "soak: {connections} connections echoing every {interval_ms} ms plus {churn_per_s} connections/s "
        "churned, for {duration_s} s; growth from the end of warm-up (first {warmup_frac:.0%}) to the end",
        scenario_soak,
        [
            Metric("rss_growth_pct", "RSS growth (%)", "{:+.1f}", "lower"),
            Metric("threads_growth_pct", "threads growth (%)", "{:+.1f}", "lower"),
            Metric("fds_growth_pct", "open fds growth (%)", "{:+.1f}", "lower"),
            Metric("rss_warm_mib", "RSS after warm-up (MiB)", "{:.1f}"),
            Metric("rss_end_mib", "RSS at the end (MiB)", "{:.1f}"),
            Metric("rss_peak_mib", "RSS peak (MiB)", "{:.1f}"),
            Metric("threads_warm", "threads after warm-up"),
            Metric("threads_end", "threads at the end"),
            Metric("fds_warm", "open fds after warm-up"),
            Metric("fds_end", "open fds at the end"),
            Metric("churned", "connections churned", better="higher"),
            Metric("echoed", "messages echoed", better="higher"),
            Metric("errors", "errors", better="lower"),
            Metric("server_cores", "server CPU (cores)", "{:.2f}"),
        ],
        {
            "connections": 200,
            "interval_ms": 100,
            "churn_per_s": 20,
            "duration_s": 180,
            "warmup_frac": 0.2,
            "sample_s": 1.0,
            "size": 32,
        },
        quick={"duration_s": 30},
        repeat=1,
        # Ours only: the question is whether our server leaks, not a comparison.
        servers=("rawws", "runws"),
        by_default=False,
    ),
    Scenario(
        "chat-orm",
        "chat-orm: {clients} clients in {rooms} rooms; each message saved with the ORM on PostgreSQL, then "
        "sent to its room; open loop at {rates} msg/s, {step_s} s each, until a rate is not held "
        "(100% delivered within a {drain_s} s drain and p99 < {p99_limit_ms} ms)",
        scenario_chat_orm,
        [
            Metric("held_rate", "highest rate held (msg/s)", better="higher"),
            Metric("pg_connections_peak", "PostgreSQL connections, peak"),
            *(
                metric
                for rate in CHAT_RATES
                for metric in (
                    Metric(f"r{rate}_delivered_pct", f"{rate} msg/s: delivered (%)", "{:.2f}", "higher"),
                    Metric(f"r{rate}_p50_ms", f"{rate} msg/s: latency p50 (ms)", "{:,.1f}", "lower"),
                    Metric(f"r{rate}_p99_ms", f"{rate} msg/s: latency p99 (ms)", "{:,.1f}", "lower"),
                )
            ),
            Metric("sent", "messages sent"),
            Metric("saved", "rows saved"),
            Metric("server_cpu_s", "server CPU (s)", "{:.1f}"),
            Metric("client_cpu_s", "client CPU (s)", "{:.1f}"),
            Metric("others_cores", "other processes' CPU, PostgreSQL included (cores)", "{:.2f}"),
        ],
        {
            "clients": 200,
            "rooms": 10,
            "rates": list(CHAT_RATES),
            "step_s": 5,
            "drain_s": 3,
            "p99_limit_ms": 100,
            "size": 32,
            "pg_poll_s": 0.1,
        },
        quick={"step_s": 2, "drain_s": 2},
        servers=("runws-chat", "channels-chat"),
        # Needs PostgreSQL, and takes about a minute per run.
        by_default=False,
    ),
]


# --------------------------------------------------------------- reporting


def _summary(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _cell(summary: dict[str, float] | None, fmt: str) -> str:
    if summary is None:
        return "—"
    median = fmt.format(summary["median"])
    if summary["n"] == 1 or summary["min"] == summary["max"]:
        return median
    return f"{median} ({fmt.format(summary['min'])}–{fmt.format(summary['max'])})"


def summarize(runs: list[dict[str, Any]], specs: list[ServerSpec]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        mine = [run for run in runs if run["scenario"] == scenario.name]
        if not mine:
            continue
        per_server = {}
        for spec in specs:
            theirs = [run for run in mine if run["server"] == spec.name]
            if not theirs:
                continue
            ok = [run for run in theirs if run["ok"]]
            per_server[spec.name] = {
                "runs": len(theirs),
                "failed": len(theirs) - len(ok),
                "metrics": {
                    m.key: _summary([run["metrics"].get(m.key) for run in ok]) for m in scenario.metrics
                },
            }
        out[scenario.name] = per_server
    return out


def markdown(
    summary: dict[str, Any],
    runs: list[dict[str, Any]],
    specs: list[ServerSpec],
    quick: bool,
    settings_by_name: dict[str, dict[str, Any]] | None = None,
) -> str:
    lines = []
    names = {spec.name: spec for spec in specs}
    for scenario in SCENARIOS:
        per_server = summary.get(scenario.name)
        if not per_server:
            continue
        settings = (settings_by_name or {}).get(scenario.name) or scenario.settings(quick)
        shown = [name for name in names if name in per_server]
        ours = [name for name in shown if names[name].ours and REFERENCE in per_server]
        reps = max(per_server[name]["runs"] for name in shown)
        lines.append(f"#### {scenario.title.format(**settings)} ({reps} run{'s' if reps > 1 else ''} each)")
        lines.append("")
        header = [
            "metric",
            *(names[name].label for name in shown),
            *(f"{name} / {REFERENCE}" for name in ours),
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for metric in scenario.metrics:
            label = metric.label + {"higher": " ↑", "lower": " ↓"}.get(metric.better or "", "")
            row = [label]
            for name in shown:
                row.append(_cell(per_server[name]["metrics"].get(metric.key), metric.fmt))
            for name in ours:
                mine = per_server[name]["metrics"].get(metric.key)
                ref = per_server[REFERENCE]["metrics"].get(metric.key)
                if metric.better and mine and ref and ref["median"]:
                    row.append(f"{mine['median'] / ref['median']:.2f}×")
                else:
                    row.append("—")
            lines.append("| " + " | ".join(row) + " |")
        failed = {name: per_server[name]["failed"] for name in shown if per_server[name]["failed"]}
        if failed:
            lines.append(
                "| failed runs | "
                + " | ".join(str(per_server[n]["failed"]) for n in shown)
                + " |"
                + " |" * len(ours)
            )
        lines.append("")
        notes = []
        for run in runs:
            if run["scenario"] != scenario.name:
                continue
            who = f"{names[run['server']].label}, run {run['rep'] + 1}"
            if not run["ok"]:
                notes.append(f"- {who}: FAILED: {run['error'].splitlines()[0] if run['error'] else '?'}")
            for problem in run.get("problems", []):
                notes.append(f"- {who}: {problem}")
        if notes:
            lines.extend(notes)
            lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ driver


def _command_output(argv: list[str]) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=30, cwd=ROOT, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(python: str) -> dict[str, Any]:
    """The machine and the versions, for the JSON and docs/benchmarks.md."""
    model = ""
    for line in _command_output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    # The peers' packages too, where installed (None when not).
    probe = (
        "import json, sys, importlib.metadata as m\n"
        "def v(name):\n"
        "    try:\n"
        "        return m.version(name)\n"
        "    except m.PackageNotFoundError:\n"
        "        return None\n"
        "print(json.dumps({'python': sys.version.split()[0], "
        "**{name: v(name) for name in ('django', 'websockets', 'channels', 'daphne', 'twisted', 'asgiref', "
        "'psycopg', 'redis')}}))"
    )
    try:
        versions = json.loads(_command_output([python, "-c", probe]) or "{}")
    except json.JSONDecodeError:
        versions = {}
    ws_package = BENCH / "node_modules" / "ws" / "package.json"
    versions["node"] = _command_output(["node", "--version"])
    versions["ws (node)"] = json.loads(ws_package.read_text())["version"] if ws_package.exists() else None
    commit = _command_output(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_command_output(["git", "status", "--porcelain", "--", "django_rawws"]))
    meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(meminfo[1]) / (1 << 20), 1),
        "kernel": platform.release(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "versions": versions,
        "django_rawws": commit + (" (modified)" if dirty else ""),
    }


def ensure_node_modules() -> None:
    if shutil.which("node") is None:
        sys.exit("bench/run.py needs Node.js (node >= 18) for its load generators")
    if not (BENCH / "node_modules" / "ws").exists():
        print("bench/node_modules is missing: running `npm ci` in bench/", file=sys.stderr)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BENCH, check=True)


def wait_for_quiet(budget: float, threshold: float = 0.25) -> float:
    """Wait (up to ``budget`` seconds) until other processes use under ``threshold`` cores; return their use."""
    deadline = time.monotonic() + budget
    while True:
        busy0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(1.0)
        others = (machine_busy_seconds() - busy0) / (time.monotonic() - t0)
        if others < threshold or time.monotonic() >= deadline:
            return others
        time.sleep(2.0)


def run_one(
    scenario: Scenario, spec: ServerSpec, rep: int, python: str, settings: dict[str, Any], logdir: Path
) -> dict[str, Any]:
    tag = f"{scenario.name}-{spec.name}-{rep + 1}"
    record: dict[str, Any] = {
        "scenario": scenario.name,
        "server": spec.name,
        "rep": rep,
        "ok": False,
        "error": None,
    }
    server = ServerProcess(spec, python, logdir / f"{tag}.server.log")
    started = time.monotonic()
    try:
        server.start()
        metrics, problems, raw = scenario.run(RunContext(server, settings, logdir, tag))
        record.update(ok=True, metrics=metrics, problems=problems, raw=raw)
    except RunFailed as exc:
        record["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a harness bug must not lose the other runs
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        record["stop"] = server.stop(timeout=10.0)
        if record["stop"].get("exit") == "killed":
            record.setdefault("problems", []).append(f"the server {record['stop']['note']} (killed)")
        record["wall_s"] = round(time.monotonic() - started, 2)
        record["server_log"] = str(server.log.relative_to(ROOT))
    return record


class PySpyRecorder:
    """``py-spy record`` attached to a server for the timed phase of a scenario."""

    def __init__(self, py_spy: str, out: Path) -> None:
        self.argv = [py_spy, "record", "--threads", "--rate", str(PROFILE_RATE), "--format", "raw"]
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.seconds = 0.0

    def start(self, server: ServerProcess) -> None:
        argv = [*self.argv, "-o", str(self.out), "--pid", str(server.pid)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it attach before the timed phase
        self.seconds = -time.monotonic()

    def stop(self, server: ServerProcess) -> None:
        self.seconds += time.monotonic()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        self.proc.wait(30)


def profile(specs: list[ServerSpec], python: str, quick: bool, logdir: Path, stamp: str) -> None:
    """echo-small once per server of ours under ``py-spy record``; top frames to stdout."""
    py_spy = shutil.which("py-spy") or str(Path(python).parent / "py-spy")
    if not Path(py_spy).exists():
        sys.exit(f"py-spy not found: `{Path(python).parent / 'pip'} install py-spy`")
    scenario = next(s for s in SCENARIOS if s.name == "echo-small")
    # Long enough for a few thousand samples.
    settings = {**scenario.settings(quick), "rounds": 1000 if quick else 6000}
    for spec in specs:
        if not spec.ours or not scenario.applies_to(spec):
            continue
        out = RESULTS / f"{stamp}-profile-{spec.name}.txt"
        recorder = PySpyRecorder(py_spy, out)
        server = ServerProcess(spec, python, logdir / f"profile-{spec.name}.server.log")
        try:
            server.start()
            metrics, _, _ = scenario_echo(
                RunContext(server, settings, logdir, f"profile-{spec.name}", recorder.start, recorder.stop)
            )
        finally:
            server.stop()
        print(
            f"\n## {spec.label}: echo-small under py-spy ({metrics['msg_per_s']:,.0f} msg/s while sampled)\n"
        )
        print(summarize_profile(out, recorder.seconds))
        print(f"\ncollapsed stacks: {out.relative_to(ROOT)}")


def summarize_profile(path: Path, seconds: float, top: int = 12) -> str:
    """Where each kind of thread spends its wall time, by function (line numbers dropped).

    py-spy samples the threads it does not judge idle: running, runnable, or
    inside a system call such as ``send``; a thread woken and waiting for the
    GIL or a CPU shows at the line where it waits (``tasks.get()`` in
    ``WorkerPool._run`` for a worker). py-spy's ``--gil`` mode finds almost no
    samples on this Python, so CPU time is read from /proc instead (the
    table's server CPU).
    """
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    samples: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        thread = re.sub(r"\s*\(\d+\)|\s*\(?0x[0-9a-f]+\)?", "", frames[0]).replace("thread:", "").strip()
        group = re.sub(r"-\d+$", "-N", thread)
        samples[group] += count
        own[group][frames[-1]] += count
        for frame in set(frames[1:]):
            total[group][frame] += count
    if not samples:
        return "(no samples)"
    lines = [
        f"{sum(samples.values())} samples over {seconds:.1f}s at {PROFILE_RATE} Hz, every thread, idle included"
    ]
    for group, n in samples.most_common():
        threads = n / (PROFILE_RATE * seconds)
        lines += ["", f"{group} ({threads:.1f} thread(s)' worth of samples), self:"]
        lines += [f"  {100 * k / n:5.1f}%  {name}" for name, k in own[group].most_common(top)]
        lines += [f"{group}, total (anywhere on the stack):"]
        lines += [f"  {100 * k / n:5.1f}%  {name}" for name, k in total[group].most_common(top + 3)[3:]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run each, smaller scenarios")
    parser.add_argument("--servers", help="comma-separated: " + ",".join(s.name for s in SERVER_SPECS))
    parser.add_argument("--scenarios", help="comma-separated: " + ",".join(s.name for s in SCENARIOS))
    parser.add_argument("--repeat", type=int, help="runs per scenario and server (default 3, --quick 1)")
    parser.add_argument(
        "--python", help="interpreter of the Python servers (default: .venv/bin/python if present)"
    )
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/<timestamp>.json)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to use under 0.25 core",
    )
    parser.add_argument(
        "--duration",
        type=int,
        metavar="SECONDS",
        help="length of the soak scenario (default 180, --quick 30)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile echo-small on our servers with py-spy instead"
    )
    parser.add_argument(
        "--extra-server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="an experiment to run as one of ours, e.g. 'w1={python} bench/servers/rawws_plain.py --workers 1 --port {port}'",
    )
    args = parser.parse_args()

    venv_python = ROOT / ".venv" / "bin" / "python"
    python = args.python or (str(venv_python) if venv_python.exists() else sys.executable)
    wanted_servers = set(args.servers.split(",")) if args.servers else None
    wanted_scenarios = set(args.scenarios.split(",")) if args.scenarios else None
    extra_names = {item.partition("=")[0] for item in args.extra_server}
    for wanted, known in ((wanted_servers, SERVER_SPECS), (wanted_scenarios, SCENARIOS)):
        unknown = (wanted or set()) - {item.name for item in known} - extra_names
        if unknown:
            parser.error(f"unknown: {', '.join(sorted(unknown))}")

    ensure_node_modules()
    _raise_open_files_limit()
    # SIGTERM unwinds like Ctrl-C, so the running server and client are stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    logdir = RESULTS / f"{stamp}-logs"
    logdir.mkdir()

    extra = []
    for item in args.extra_server:
        name, _, command = item.partition("=")
        if not name or "{port}" not in command:
            parser.error(f"--extra-server wants NAME=COMMAND with {{port}} in it, got {item!r}")
        extra.append(ServerSpec(name, name, ours=True, command=functools.partial(_format_command, command)))
    specs, skipped = [], {}
    for spec in [*SERVER_SPECS, *extra]:
        if wanted_servers is not None and spec.name not in wanted_servers:
            continue
        reason = spec.unavailable()
        if reason:
            skipped[spec.name] = reason
            print(f"skipping {spec.label}: {reason}", file=sys.stderr)
        else:
            specs.append(spec)

    if args.profile:
        profile(specs, python, args.quick, logdir, stamp)
        return

    load = os.getloadavg()[0]
    if load > 0.5:
        print(
            f"warning: the 1-minute load average is {load:.2f}: other processes will skew the figures",
            file=sys.stderr,
        )
    scenarios = [s for s in SCENARIOS if (s.name in wanted_scenarios if wanted_scenarios else s.by_default)]

    def settings_of(scenario: Scenario) -> dict[str, Any]:
        settings = scenario.settings(args.quick)
        if args.duration and "duration_s" in settings:
            settings["duration_s"] = args.duration
        return settings

    runs = []
    started = time.monotonic()
    for scenario in scenarios:
        settings = settings_of(scenario)
        repeat = args.repeat or (1 if args.quick else scenario.repeat)
        for rep in range(repeat):
            # Rotate the order each repetition so no server always goes first.
            order = specs[rep % len(specs) :] + specs[: rep % len(specs)]
            for spec in order:
                if not scenario.applies_to(spec):
                    continue
                others = wait_for_quiet(args.quiet_wait) if args.quiet_wait else None
                record = run_one(scenario, spec, rep, python, settings, logdir)
                record["others_before_cores"] = others
                status = "ok" if record["ok"] else f"FAILED: {record['error'].splitlines()[0]}"
                print(
                    f"[{time.monotonic() - started:6.0f}s] {scenario.name} {spec.name} run {rep + 1}/{repeat}: {status}",
                    file=sys.stderr,
                )
                runs.append(record)

    summary = summarize(runs, specs)
    table = markdown(summary, runs, specs, args.quick, {s.name: settings_of(s) for s in scenarios})
    env = environment(python)
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    output = args.output or RESULTS / f"{stamp}.json"
    output.write_text(
        json.dumps(
            {
                "timestamp": stamp,
                "command": command.strip(),
                "quick": args.quick,
                "environment": env,
                "servers": {
                    s.name: {"label": s.label, "ours": s.ours, "command": s.command(python, 0)} for s in specs
                },
                "skipped_servers": skipped,
                "scenarios": {s.name: settings_of(s) for s in scenarios},
                "summary": summary,
                "runs": runs,
                "markdown": table,
                "duration_s": round(time.monotonic() - started, 1),
            },
            indent=1,
        )
    )
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v is not None)
    print(
        f"Machine: {env['cpus']} × {env['cpu_model']}, {env['memory_gib']} GiB, Linux {env['kernel']}; {versions}; django_rawws {env['django_rawws']}"
    )
    print(f"Ratios: median of ours / median of {REFERENCE}. ↑ higher is better, ↓ lower is better.\n")
    print(table)
    for name, reason in skipped.items():
        print(f"(skipped {name}: {reason})")
    print(
        f"raw results: {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}; logs: {logdir.relative_to(ROOT)}/"
    )


if __name__ == "__main__":
    main()
