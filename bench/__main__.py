"""`make bench`: run every benchmark in one go. Each module's main() prints its own side-by-side numbers.

Run one alone with `python -m bench NAME` (e.g. `python -m bench decode`); options after one name go to it
(`python -m bench gpu --device cpu --quick`). `gpu` needs CUDA, so `make bench` leaves it out.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = [
    "decode",
    "gpu",
    "learn",
    "serve",
    "small_runs",
    "store",
    "teach_preference",
    "train",
    "tui_stream",
]


def run(names: list[str], options: list[str]) -> None:
    for name in names:
        print(f"\n=== bench/{name}.py ===", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        if options:
            module.main(options)
        else:
            module.main()
        print(f"--- {name}: {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    first_option = next((i for i, arg in enumerate(args) if arg.startswith("-")), len(args))
    names, options = args[:first_option], args[first_option:]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if options and len(names) != 1:
        sys.exit(f"options ({' '.join(options)}) go to one benchmark: `python -m bench NAME {' '.join(options)}`")
    run(names or [name for name in BENCHMARKS if name != "gpu"], options)
