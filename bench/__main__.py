"""`make bench`: run every benchmark in one go. Each module's main() prints its own side-by-side numbers.

Run one alone with `python -m bench NAME` (e.g. `python -m bench decode`).
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = [
    "decode",
    "decode_process",
    "small_runs",
    "store",
    "teach_preference",
    "train",
    "tui_stream",
]


def run(names: list[str]) -> None:
    for name in names:
        print(f"\n=== bench/{name}.py ===", flush=True)
        started = time.perf_counter()
        importlib.import_module(f"bench.{name}").main()
        print(f"--- {name}: {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    unknown = [name for name in sys.argv[1:] if name not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    run(sys.argv[1:] or BENCHMARKS)
