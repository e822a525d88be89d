"""Unmasking throughput of django_rawws beside websockets, on this machine, in this run.

Run from the repository root::

    python bench/unmask.py [--repeat 21] [--min-time 0.05] [--output bench/results/unmask.json]

It times ``django_rawws.protocol.masking.apply_mask`` next to the two
implementations websockets ships: its C function (``websockets.speedups``)
and its pure-Python fallback (``websockets.utils``). Absolute MB/s depend on
the CPU, the memory system and the allocator's mood, so the figures that mean
something are the ratios between implementations measured side by side: the
samples are taken round-robin (every implementation once per round, the
order rotating) so that a noisy moment hurts all of them alike.

MB is 10**6 bytes. Each sample calls the function enough times to run for at
least ``--min-time`` seconds; the table shows the median of the samples and
their min-max range. A markdown table goes to stdout and everything (samples
included) to a JSON file. This is not a test: nothing here runs in the suite.
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

from django_rawws.protocol.masking import apply_mask as rawws_apply_mask  # noqa: E402

Mask = Callable[[bytes, bytes], bytes]

SIZES = {"1 KiB": 1 << 10, "64 KiB": 1 << 16, "1 MiB": 1 << 20, "16 MiB": 1 << 24}

# The targets, checked on the 1 MiB row.
TARGET_SIZE = "1 MiB"
TARGET_RATIO_TO_PURE_PYTHON = 1.5
TARGET_MB_PER_S = 300.0

OURS = "django_rawws"
WS_C = "websockets C (speedups)"
WS_PY = "websockets pure Python (utils)"


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


def measure(impls: dict[str, Mask], size: int, repeat: int, min_time: float) -> dict[str, list[float]]:
    """Return MB/s samples per implementation for payloads of ``size`` bytes."""
    data = os.urandom(size)
    mask = os.urandom(4)
    names = list(impls)
    # Calibration doubles as a warm-up (caches, allocator arenas, dict of ones).
    calls = {name: calls_per_sample(impls[name], data, mask, min_time) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeat):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                func, n = impls[name], calls[name]
                start = time.perf_counter()
                for _ in range(n):
                    func(data, mask)
                elapsed = time.perf_counter() - start
                samples[name].append(size * n / elapsed / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


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


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=21, help="samples per implementation and size")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per sample, at least")
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "unmask.json", help="where the JSON goes"
    )
    args = parser.parse_args(argv)

    impls, notes = implementations()
    check_agreement(impls)
    results: dict[str, dict[str, dict[str, object]]] = {}
    for label, size in SIZES.items():
        samples = measure(impls, size, args.repeat, args.min_time)
        results[label] = {name: {**summarize(values), "samples": values} for name, values in samples.items()}

    info = machine()
    names = list(impls)
    header = "| size | " + " | ".join(f"{name} MB/s" for name in names) + " | ours / C | ours / pure Python |"
    print(f"Python {info['python']} on {info['cpu']} ({info['cores']} cores); websockets {info['websockets']}")
    print(f"median of {args.repeat} samples (min-max), MB = 10^6 bytes\n")
    print(header)
    print("|" + " --- |" * (len(names) + 3))
    ratios: dict[str, dict[str, float | None]] = {}
    for label, row in results.items():
        cells = [f"{row[n]['median']:,.0f} ({row[n]['min']:,.0f}-{row[n]['max']:,.0f})" for n in names]
        ours = row[OURS]["median"]
        to_c = ours / row[WS_C]["median"] if WS_C in row else None  # type: ignore[operator]
        to_py = ours / row[WS_PY]["median"] if WS_PY in row else None  # type: ignore[operator]
        ratios[label] = {"ours_to_c": to_c, "ours_to_pure_python": to_py}
        fmt = lambda r: "n/a" if r is None else f"{r:.2f}x"  # noqa: E731
        print(f"| {label} | " + " | ".join(cells) + f" | {fmt(to_c)} | {fmt(to_py)} |")

    target_ratio = ratios[TARGET_SIZE]["ours_to_pure_python"]
    target_speed = results[TARGET_SIZE][OURS]["median"]
    verdict = {
        "mb_per_s": target_speed,
        "mb_per_s_target": TARGET_MB_PER_S,
        "mb_per_s_holds": target_speed >= TARGET_MB_PER_S,  # type: ignore[operator]
        "ratio_to_pure_python": target_ratio,
        "ratio_target": TARGET_RATIO_TO_PURE_PYTHON,
        "ratio_holds": None if target_ratio is None else target_ratio >= TARGET_RATIO_TO_PURE_PYTHON,
    }
    print(
        f"\ntargets on {TARGET_SIZE}: >= {TARGET_MB_PER_S:.0f} MB/s: "
        f"{'holds' if verdict['mb_per_s_holds'] else 'MISSED'} ({target_speed:,.0f}); "
        f">= {TARGET_RATIO_TO_PURE_PYTHON}x pure Python: "
        + ("n/a" if target_ratio is None else f"{'holds' if verdict['ratio_holds'] else 'MISSED'} ({target_ratio:.2f}x)")
    )
    for note in notes:
        print(f"note: {note}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "unmask",
        "command": " ".join(["python", "bench/unmask.py", *(argv if argv is not None else sys.argv[1:])]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "repeat": args.repeat,
        "min_time": args.min_time,
        "unit": "MB/s (10^6 bytes per second)",
        "sizes": SIZES,
        "results": results,
        "ratios": ratios,
        "targets": verdict,
        "notes": notes,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
