"""Shared timing helpers for the benchmark scripts: best-of-repeats per-call time, a table, JSON."""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def per_call(fn: Callable[[], object], *, number: int = 20000, repeat: int = 7) -> float:
    """Seconds per call: the best of ``repeat`` runs of ``number`` calls (the least disturbed
    run on a shared, noisy machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def report(name: str, rows: list[tuple[str, float]], extra: dict | None = None) -> dict:
    """Prints a table of per-call times (µs) and writes benchmarks/results/NAME.json."""
    width = max(len(r[0]) for r in rows)
    print(f"{'call'.ljust(width)}  µs/call")
    print(f"{'-' * width}  -------")
    for label, seconds in rows:
        print(f"{label.ljust(width)}  {seconds * 1e6:7.3f}")
    data = {"benchmark": name, "python": sys.version.split()[0], "machine": platform.machine(),
            "us_per_call": {label: seconds * 1e6 for label, seconds in rows}} | (extra or {})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
    return data
