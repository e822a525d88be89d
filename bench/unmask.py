"""Unmasking throughput of django_rawws beside websockets, on this machine, in this run.

Run from the repository root::

    python bench/unmask.py [--repeat 21] [--min-time 0.05] [--output bench/results/unmask.json]

Table 1 times ``django_rawws.protocol.masking.apply_mask`` next to the two
implementations websockets ships: its C function (``websockets.speedups``)
and its pure-Python fallback (``websockets.utils``), on 1 KiB, 64 KiB, 1 MiB
and 16 MiB payloads. Table 2 puts the same sizes through
``Connection.receive_data`` three ways: a masked frame unmasked by our
function, the same with websockets' C function patched in, and an unmasked
frame (client role, no unmasking at all); it shows what unmasking costs in the
receive path and so what a C accelerator would save.

Absolute MB/s depend on the CPU, the memory system, the allocator's mood and
whatever else the machine is doing, so the figures that mean something are
the ratios between implementations measured side by side: samples are taken
round-robin (every implementation once per round, the order rotating), so a
noisy moment hurts all of them alike. MB is 10**6 bytes. Each sample runs at
least ``--min-time`` seconds; tables show the median of the samples and their
min-max range. Markdown goes to stdout, everything (samples included) to a
JSON file. This is not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django_rawws.protocol import connection as connection_module
from django_rawws.protocol import masking
from django_rawws.protocol.connection import Connection, Role
from django_rawws.protocol.events import BinaryMessage
from django_rawws.protocol.frames import encode_frame
from django_rawws.protocol.masking import apply_mask as rawws_apply_mask

Mask = Callable[[bytes, bytes], bytes]
Samples = dict[str, list[float]]  # implementation -> MB/s of each sample

SIZES = {"1 KiB": 1 << 10, "64 KiB": 1 << 16, "1 MiB": 1 << 20, "16 MiB": 1 << 24}

# The targets, checked on the 1 MiB row.
TARGET_SIZE = "1 MiB"
TARGET_RATIO_TO_PURE_PYTHON = 1.5
TARGET_MB_PER_S = 300.0

OURS = "django_rawws"
WS_C = "websockets C (speedups)"
WS_PY = "websockets pure Python (utils)"

# What the I/O layer reads per recv() call (websockets uses the same size).
READ_SIZE = 1 << 16
RECEIVE_OURS = "masked, our unmasking"
RECEIVE_C = "masked, websockets C unmasking"
RECEIVE_UNMASKED = "unmasked (client role)"


# -------------------------------------------------------------- measurement


def implementations() -> tuple[dict[str, Mask], list[str]]:
    """Return the implementations available here, ours first, and notes on missing ones."""
    impls: dict[str, Mask] = {OURS: rawws_apply_mask}
    notes = []
    try:
        from websockets.speedups import apply_mask as ws_c
    except ImportError as exc:
        notes.append(f"{WS_C} unavailable: {exc}")
    else:
        impls[WS_C] = ws_c
    try:
        from websockets.utils import apply_mask as ws_py
    except ImportError as exc:
        notes.append(f"{WS_PY} unavailable: {exc}")
    else:
        impls[WS_PY] = ws_py
    return impls, notes


def check_agreement(impls: dict[str, Mask]) -> None:
    """Refuse to time implementations that disagree (odd lengths included)."""
    mask = os.urandom(4)
    for size in (0, 1, 3, 125, 1021, 8191, 8192, 8195, 65537):
        data = os.urandom(size)
        expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        for name, func in impls.items():
            if bytes(func(data, mask)) != expected:
                raise SystemExit(f"{name} computes a wrong result for {size} bytes")


def calls_per_sample(func: Mask, data: bytes, mask: bytes, min_time: float) -> int:
    """Return how many calls make a sample last at least ``min_time`` seconds."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            func(data, mask)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls
        calls = max(calls * 2, int(calls * min_time / max(elapsed, 1e-9) * 1.1))


def measure(
    funcs: dict[str, Mask], data: bytes, mask: bytes, repeat: int, min_time: float, size: int | None = None
) -> Samples:
    """Return MB/s samples of ``func(data, mask)`` per function, counting ``size`` bytes a call.

    ``size`` defaults to ``len(data)``. The call is written out in the loop,
    without a wrapper, whose cost would show on the C function.
    """
    size = len(data) if size is None else size
    names = list(funcs)
    # Calibration doubles as a warm-up (caches, allocator arenas, cached tables).
    calls = {name: calls_per_sample(funcs[name], data, mask, min_time) for name in names}
    samples: Samples = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeat):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                func, n = funcs[name], calls[name]
                start = time.perf_counter()
                for _ in range(n):
                    func(data, mask)
                elapsed = time.perf_counter() - start
                samples[name].append(size * n / elapsed / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def measure_receive(impls: dict[str, Mask], size: int, repeat: int, min_time: float) -> Samples:
    """MB/s of ``Connection.receive_data`` for one binary message of ``size`` bytes, read in 64 KiB.

    One connection per way receives the message again and again, as an open
    connection receives a stream of messages.
    """
    payload = os.urandom(size)
    wires = {
        Role.SERVER: encode_frame(0x2, payload, mask=os.urandom(4)),
        Role.CLIENT: encode_frame(0x2, payload),
    }
    chunks = {
        role: [wire[i : i + READ_SIZE] for i in range(0, len(wire), READ_SIZE)]
        for role, wire in wires.items()
    }
    connections = {role: Connection(role, max_message_size=size) for role in wires}

    def receiver(role: Role, unmask: Mask | None) -> Mask:
        # Shaped like an unmasking function so that measure() can time it.
        conn, pieces = connections[role], chunks[role]

        def receive(_data: bytes, _mask: bytes) -> bytes:
            original = connection_module.apply_mask
            if unmask is not None:
                connection_module.apply_mask = unmask  # type: ignore[assignment]
            try:
                for piece in pieces:
                    conn.receive_data(piece)
            finally:
                connection_module.apply_mask = original
            return b""

        return receive

    ways = {RECEIVE_OURS: receiver(Role.SERVER, None)}
    if WS_C in impls:
        ways[RECEIVE_C] = receiver(Role.SERVER, impls[WS_C])
    ways[RECEIVE_UNMASKED] = receiver(Role.CLIENT, None)
    samples = measure(ways, b"", b"", repeat, min_time, size)
    for role, conn in connections.items():
        if conn.receive_data(wires[role]) != [BinaryMessage(payload)]:
            raise SystemExit(f"the {role.value} connection did not receive the message intact")
    return samples


CROSSOVER_SIZES = {f"{kib} KiB": kib << 10 for kib in (1, 2, 4, 8, 16, 64, 256)} | {"1 MiB": 1 << 20}
INTEGER_FORM = "integer form"
TRANSLATE_FORM = "translate form"


def measure_forms(size: int, repeat: int, min_time: float) -> Samples:
    """MB/s of our two pure-Python forms, each forced by moving masking._TRANSLATE_FROM."""

    def forced(threshold: int) -> Mask:
        def run(data: bytes, mask: bytes) -> bytes:
            original = masking._TRANSLATE_FROM
            masking._TRANSLATE_FROM = threshold
            try:
                return masking.apply_mask(data, mask)
            finally:
                masking._TRANSLATE_FROM = original

        return run

    forms = {INTEGER_FORM: forced(sys.maxsize), TRANSLATE_FORM: forced(0)}
    return measure(forms, os.urandom(size), os.urandom(4), repeat, min_time)


# ------------------------------------------------------------------ report


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    ws_version: str | None
    try:
        from websockets.version import version as ws_version
    except ImportError:
        ws_version = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "websockets": ws_version,
    }


def summarize(samples: Samples) -> dict[str, dict[str, float]]:
    return {
        name: {"median": statistics.median(values), "min": min(values), "max": max(values)}
        for name, values in samples.items()
    }


def cell(stats: dict[str, float]) -> str:
    return f"{stats['median']:,.0f} ({stats['min']:,.0f}-{stats['max']:,.0f})"


def ratio(a: float, b: float | None) -> str:
    return "n/a" if b is None else f"{a / b:.2f}x"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def crossover(repeat: int, min_time: float) -> int:
    """Print where the translate form overtakes the integer form (stdout only)."""
    rows = []
    for label, size in CROSSOVER_SIZES.items():
        stats = summarize(measure_forms(size, repeat, min_time))
        integer, translate = stats[INTEGER_FORM], stats[TRANSLATE_FORM]
        rows.append([label, cell(integer), cell(translate), ratio(translate["median"], integer["median"])])
    print(
        f"masking._TRANSLATE_FROM = {masking._TRANSLATE_FROM}; median of {repeat} samples (min-max), MB/s\n"
    )
    print_table(["size", INTEGER_FORM, TRANSLATE_FORM, "translate / integer"], rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=21, help="samples per implementation and size")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per sample, at least")
    parser.add_argument(
        "--crossover",
        action="store_true",
        help=f"only compare our two forms around masking._TRANSLATE_FROM (now {masking._TRANSLATE_FROM})",
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "unmask.json", help="where the JSON goes"
    )
    args = parser.parse_args(argv)
    if args.crossover:
        return crossover(args.repeat, args.min_time)

    impls, notes = implementations()
    check_agreement(impls)
    unmask_samples: dict[str, Samples] = {}
    receive_samples: dict[str, Samples] = {}
    for label, size in SIZES.items():
        unmask_samples[label] = measure(impls, os.urandom(size), os.urandom(4), args.repeat, args.min_time)
        receive_samples[label] = measure_receive(impls, size, args.repeat, args.min_time)
    unmask = {label: summarize(samples) for label, samples in unmask_samples.items()}
    receive = {label: summarize(samples) for label, samples in receive_samples.items()}

    info = machine()
    print(
        f"Python {info['python']} on {info['cpu']} ({info['cores']} cores); websockets {info['websockets']}"
    )
    print(f"median of {args.repeat} samples (min-max), MB/s with MB = 10^6 bytes\n")

    names = list(impls)
    ratios: dict[str, dict[str, float | None]] = {}
    rows = []
    for label, row in unmask.items():
        ours = row[OURS]["median"]
        c = row[WS_C]["median"] if WS_C in row else None
        py = row[WS_PY]["median"] if WS_PY in row else None
        ratios[label] = {
            "ours_to_c": None if c is None else ours / c,
            "ours_to_pure_python": None if py is None else ours / py,
        }
        rows.append([label, *(cell(row[name]) for name in names), ratio(ours, c), ratio(ours, py)])
    print_table(["size", *names, "ours / C", "ours / pure Python"], rows)

    speed = unmask[TARGET_SIZE][OURS]["median"]
    to_py = ratios[TARGET_SIZE]["ours_to_pure_python"]
    speed_holds = speed >= TARGET_MB_PER_S
    ratio_holds = None if to_py is None else to_py >= TARGET_RATIO_TO_PURE_PYTHON
    targets = {
        "mb_per_s": speed,
        "mb_per_s_target": TARGET_MB_PER_S,
        "mb_per_s_holds": speed_holds,
        "ratio_to_pure_python": to_py,
        "ratio_target": TARGET_RATIO_TO_PURE_PYTHON,
        "ratio_holds": ratio_holds,
    }
    verdict = {True: "holds", False: "MISSED", None: "n/a"}
    print(
        f"\ntargets on {TARGET_SIZE}: >= {TARGET_MB_PER_S:.0f} MB/s {verdict[speed_holds]} "
        f"({speed:,.0f}); >= {TARGET_RATIO_TO_PURE_PYTHON}x the pure-Python fallback "
        f"{verdict[ratio_holds]} ({'n/a' if to_py is None else f'{to_py:.2f}x'})"
    )

    print(f"\nReceiving one binary message with Connection.receive_data, {READ_SIZE // 1024} KiB per call:\n")
    ways = list(next(iter(receive.values())))
    shares = {}
    rows = []
    for label, row in receive.items():
        # Time per byte with unmasking, minus time per byte without, over the former.
        share = 1 - row[RECEIVE_OURS]["median"] / row[RECEIVE_UNMASKED]["median"]
        shares[label] = share
        rows.append([label, *(cell(row[way]) for way in ways), f"{share:.0%}"])
    print_table(["size", *ways, "unmasking's share of receive time"], rows)
    for note in notes:
        print(f"note: {note}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "unmask",
        "command": " ".join(["python", "bench/unmask.py", *(sys.argv[1:] if argv is None else argv)]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "repeat": args.repeat,
        "min_time": args.min_time,
        "unit": "MB/s (10^6 bytes per second)",
        "sizes": SIZES,
        "unmask": unmask,
        "unmask_ratios": ratios,
        "targets": targets,
        "receive_read_size": READ_SIZE,
        "receive": receive,
        "unmasking_share_of_receive": shares,
        "samples": {"unmask": unmask_samples, "receive": receive_samples},
        "notes": notes,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
