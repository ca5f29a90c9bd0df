"""How many CPU threads training uses: every core while the machine is otherwise idle, one fewer while something
else (the chat decoding a reply, another program) keeps a core busy. Re-decided between optimizer steps.

Measured here (2 cores, bundled model, LoRA, bf16 autocast, bench/train.py's data, tokens/s):
    quiet machine:                1 thread 169, 2 threads 250
    another process on one core:  1 thread 153, 2 threads  68 (OpenMP threads that lose their core stall the others
                                  at every barrier), 2 threads with OMP_WAIT_POLICY=passive 157 (but 188 when quiet)
So neither fixed count is right: all cores win by half when they are free and lose by half when they are not.
The load of *other* processes is what decides, read from /proc/stat (machine CPU time) minus this process's own.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

# Other processes' load, in cores, above which training gives one core up, and below which it takes it back. The
# gap keeps a load near one threshold from flipping the count every step.
GIVE_UP_AT = 0.5
TAKE_BACK_BELOW = 0.25


def available_cores() -> int:
    """Cores this process may run on (honours taskset and container CPU limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat), or None where that cannot be read."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # the first 8: guest time is already in user


@dataclass
class ThreadGovernor:
    """Sets ``torch.set_num_threads`` from the load other processes put on the machine; call ``update()`` after
    each step. Where the load cannot be read, it keeps one core free, as the chat's decoding does."""

    cores: int = field(default_factory=available_cores)
    threads: int = 0
    history: list[int] = field(default_factory=list)  # the count used for each step, for the run's metrics
    _mark: tuple[float, float, float] | None = None  # (wall s, machine busy s, own CPU s) at the last decision

    def start(self) -> int:
        """Pick the first count from a short look at the machine, set it and return it."""
        self._mark = self._read()
        if self._mark is None or self.cores < 2:
            return self._set(max(1, self.cores - 1))
        time.sleep(0.2)  # long enough for /proc/stat's 10 ms ticks to show a busy core
        return self._set(self._decide(self.cores - 1))

    def update(self) -> int:
        """Record the step just done and choose the count for the next one."""
        self.history.append(self.threads)
        return self.recheck()

    def recheck(self) -> int:
        """Choose the count again, between pieces of work that are not steps (batches of generated answers). On a
        quiet machine two threads generate ~1.6x faster than one; once another process holds a core they stall many
        times over (README: small runs), so it is re-decided before and between batches, as between steps."""
        if self._mark is not None and self.cores >= 2:
            self._set(self._decide(self.threads))
        return self.threads

    def others_cores(self) -> float | None:
        """Cores other processes kept busy since the last decision (and start a new interval)."""
        now = self._read()
        if now is None or self._mark is None:
            return None
        wall, busy, own = (b - a for a, b in zip(self._mark, now))
        self._mark = now
        return max(0.0, (busy - own) / wall) if wall > 0 else None

    def most_used(self) -> int:
        """The count most steps ran with (the current one before any step)."""
        return max(set(self.history), key=self.history.count) if self.history else self.threads

    def _decide(self, current: int) -> int:
        others = self.others_cores()
        if others is None:
            return current
        if others >= GIVE_UP_AT:
            return max(1, self.cores - max(1, round(others)))
        if others < TAKE_BACK_BELOW:
            return self.cores
        return current

    def _set(self, threads: int) -> int:
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
        return threads

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        busy = machine_busy_seconds()
        return None if busy is None else (time.monotonic(), busy, time.process_time())

