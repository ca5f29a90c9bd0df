"""How long each phase of a run took, and what it did in that time.

Every phase is timed and reported three ways: a ``phase`` event as it ends, ``phases`` in the run's metrics.json,
and one line per finished run (SFT and DPO alike) appended to the data home's ``runs/timings.jsonl``. That file is
where `/train`'s preview finds this machine's own speeds for its time estimate (``tui_chat/training/estimate.py``),
whichever way the run was started (the chat, `tui-chat train`, `python -m trainer sft` or `dpo`).

The phases, in order (a phase a run skips is absent):

- ``load``: reading the base model; ``replay``: its answers to the replay prompts (``generated``: how many were not
  in the cache); ``baseline``: its answers to the retention prompts and its perplexity on them (``generated``,
  ``cached``); ``distill``: its next-token distribution on the replayed answers (``tokens``);
- a preference run (dpo.py): ``reference``: the base model's log-probabilities of both sides of every pair, one
  forward pass without gradients (``pairs``, ``tokens``); its ``train`` tokens count both sides of each pair;
- ``eval_before``: validation loss and sample replies (``samples``, ``cached``); ``train``: the optimizer steps
  (``tokens``, ``steps``); ``eval_after`` (``samples``); ``save``: the model and tokenizer (it loads from then on);
  ``retention``: the trained model's answers to the retention prompts (``prompts``).

What no phase covers (rendering, preparing the model, the report) is the run's ``total_s`` less its ``startup_s``
and the phases.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from .progress import ProgressReporter

TIMINGS_FILE = "timings.jsonl"  # in the data home's runs/
# What a timings line keeps of a run's metrics: enough to estimate the next run, nothing of the user's data.
TIMING_FIELDS = ("base_model", "base_parameters", "method", "device", "precision", "processes", "threads",
                 "tokens_per_s", "startup_s", "total_s", "phases", "replay_tokens_each")


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that cannot be read: the part of a run spent
    starting Python and importing torch, transformers and the rest before the first line of the pipeline."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as uptime:
            now = float(uptime.read().split()[0])
        return round(max(0.0, now - int(fields[19]) / os.sysconf("SC_CLK_TCK")), 2)  # field 22: start, in ticks
    except (OSError, ValueError, IndexError):
        return None


class PhaseClock:
    """Times the phases of one run: ``with clock.phase("replay") as record: ...; record["generated"] = n``."""

    def __init__(self, progress: ProgressReporter) -> None:
        self.progress = progress
        self.phases: dict[str, dict[str, Any]] = {}

    @contextlib.contextmanager
    def phase(self, name: str, **counts: Any) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = dict(counts)
        started = time.perf_counter()
        yield record
        record["s"] = round(time.perf_counter() - started, 2)
        self.phases[name] = record
        self.progress.emit("phase", name=name, **record)

    def seconds(self, name: str) -> float:
        return self.phases.get(name, {}).get("s", 0.0)


def append_timing(runs_dir: Path, metrics: dict[str, Any]) -> Path:
    """Add a finished run's timings to ``runs_dir/timings.jsonl`` (created private: 0600)."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / TIMINGS_FILE
    line = json.dumps({"time": round(time.time(), 1), **{k: metrics.get(k) for k in TIMING_FIELDS}})
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(handle, "a", encoding="utf-8") as file:
        file.write(line + "\n")
    return path
