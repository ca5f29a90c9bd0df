"""Follow a training run from the chat: read its log, keep its progress, and record how it ended.

The trainer runs as a separate process and writes one JSON object a line to its log (``runs/<name>.log``; stderr
goes there too). ``RunMonitor.poll()`` reads what was appended since the last call, without blocking and without
threads, so a front end calls it from a timer (the TUI) or between prompts (the REPL). When the process has gone it
records the run's end in the store: ``finished`` with the trainer's metrics after a ``done`` event, ``cancelled``
after a cancel, else ``failed`` with the error line that explains it.

Whether the process still runs: the ``Popen`` when this process started it, else its pid (reaped if it is our child,
and checked to still be a trainer, since pids are reused).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessions import Store, TrainingRun

from tui_chat.training.errors import TrainingError

ACTIVE = ("pending", "running")
TEXT_TAIL = 40  # non-JSON log lines kept for the failure message (tracebacks, warnings)
TRACEBACK = "Traceback (most recent call last):"


@dataclass(frozen=True)
class RunEvent:
    """One thing that happened: a trainer event (``start``, ``step``, ``eval``, ``info``, ``checkpoint``,
    ``stopped``, ``done``, ``error``) with its fields, or the run's end as this monitor saw it (``finished``,
    ``failed``, ``cancelled``)."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def ends_run(self) -> bool:
        return self.kind in ("finished", "failed", "cancelled")


@dataclass
class RunProgress:
    """The run as its log tells it so far."""

    phase: str = "starting the trainer"  # what it is doing now, in words
    step: int = 0
    total: int | None = None
    losses: list[float] = field(default_factory=list)  # training loss per step (mean per reply token)
    tokens_per_s: float | None = None
    eta_s: float | None = None  # seconds of training steps left (evaluation and saving come on top)
    elapsed_s: float | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # "before" / "after" -> val_ppl, bleu, rouge_l
    checkpoint: str | None = None

    @property
    def fraction(self) -> float | None:
        return self.step / self.total if self.total else None


def is_active(run: TrainingRun) -> bool:
    """Pending, running, or cancelled but not yet seen to stop (it finishes its step and saves a checkpoint)."""
    return run.status in ACTIVE or (run.status == "cancelled" and run.finished_at is None)


def trainer_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live trainer process (not gone, not a zombie, not an unrelated process reusing the pid)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, though not ours to judge further
    proc = Path("/proc") / str(pid)
    if proc.is_dir():  # Linux: rule out zombies and reused pids
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return False
        return state != "Z" and b"trainer" in command
    return True


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"the trainer was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the trainer was killed by signal {-code}"
    return f"the trainer exited with status {code}"


class RunMonitor:
    """Follows one run. ``poll()`` returns the new events; ``progress`` is the state so far; ``run`` is the stored
    run, refreshed when it ends."""

    def __init__(self, store: Store, run: TrainingRun, process: subprocess.Popen | None = None) -> None:
        self.store = store
        self.run = run
        self.process = process
        self.progress = RunProgress()
        self.ended = not is_active(run)
        self._offset = 0
        self._partial = b""
        self._text: deque[str] = deque(maxlen=TEXT_TAIL)
        self._error: str | None = None
        self._done: dict[str, Any] | None = None
        self._stopped: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def log_path(self) -> Path | None:
        return Path(self.run.log_path) if self.run.log_path else None

    def poll(self) -> list[RunEvent]:
        """Read what the trainer wrote since the last call; when the process has gone, record the run's end."""
        if self.ended:
            return []
        alive, exit_code = self._process_state()  # before reading: whatever it wrote before exiting is read below
        events = [self._apply(record) for record in self._read()]
        if self._done is not None:
            events.append(self._finish("finished"))
        elif not alive:
            status = self.store.get_training_run(self.run.id).status
            events.append(self._finish("cancelled" if status == "cancelled" else "failed", exit_code))
        return events

    # ---- reading -------------------------------------------------------------------------------------------------

    def _read(self) -> list[dict[str, Any]]:
        path = self.log_path
        if path is None:
            return []
        try:
            with path.open("rb") as log:
                log.seek(self._offset)
                chunk = log.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the rest
        records = []
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            record = _event(line)
            if record is not None:
                records.append(record)
            elif line.strip():
                self._text.append(line)
        return records

    def _apply(self, record: dict[str, Any]) -> RunEvent:
        kind = record.get("event", "")
        progress = self.progress
        if kind == "info":
            progress.phase = str(record.get("message", progress.phase))
        elif kind == "start":
            progress.total = record.get("total_steps")
            progress.step = record.get("start_step", 0)
            progress.phase = "starting"
        elif kind == "step":
            progress.phase = "training"
            progress.step = record.get("step", progress.step)
            progress.total = record.get("total", progress.total)
            if isinstance(record.get("loss"), (int, float)):
                progress.losses.append(float(record["loss"]))
            progress.tokens_per_s = record.get("tokens_per_s")
            progress.eta_s = record.get("eta_s")
            progress.elapsed_s = record.get("elapsed_s")
            if progress.step == progress.total:
                progress.phase = "evaluating and saving"
        elif kind == "eval":
            progress.evals[str(record.get("stage"))] = record
        elif kind == "checkpoint":
            progress.checkpoint = record.get("path")
        elif kind == "stopped":
            self._stopped = record
            progress.step = record.get("step", progress.step)
            progress.checkpoint = record.get("checkpoint", progress.checkpoint)
            progress.phase = "stopped"
        elif kind == "error":
            self._error = str(record.get("message", "")).strip() or None
        elif kind == "done":
            self._done = record
            progress.phase = "finished"
            progress.elapsed_s = record.get("elapsed_s")
        return RunEvent(kind, record)

    # ---- the end -------------------------------------------------------------------------------------------------

    def _process_state(self) -> tuple[bool, int | None]:
        """(alive, exit code when known)."""
        if self.process is not None:
            code = self.process.poll()
            return code is None, code
        pid = self.run.pid
        if pid is None:
            return False, None
        try:
            waited, status = os.waitpid(pid, os.WNOHANG)  # reaps it if this process started it (no zombie)
        except ChildProcessError:
            return trainer_alive(pid), None
        if waited == 0:
            return True, None
        return False, os.waitstatus_to_exitcode(status)

    def _failure(self, exit_code: int | None) -> str:
        """The line that best explains a run that ended without finishing."""
        if self._error:
            return self._error
        text = list(self._text)
        if TRACEBACK in text:
            after = text[len(text) - 1 - text[::-1].index(TRACEBACK):]
            last = next((line for line in reversed(after) if not line.startswith((" ", "\t"))), None)
            if last and last != TRACEBACK:
                return last.strip()
        if self.run.pid is None:
            return "the app stopped before the trainer started"
        if exit_code is not None:
            return _exit_text(exit_code)
        return "the trainer stopped without finishing (killed, or the machine restarted)"

    def _finish(self, status: str, exit_code: int | None = None) -> RunEvent:
        now = time.time()
        if status == "finished":
            done = self._done or {}
            finished_at = done.get("time", now)
            # wall_s: launch to done, the wait the user sees (the trainer's own elapsed_s starts after its imports).
            metrics = {**done.get("metrics", {}), "elapsed_s": done.get("elapsed_s"),
                       "wall_s": round(finished_at - self.run.created_at, 1)}
            self.run = self.store.update_training_run(
                self.run.id, status="finished", metrics=metrics, finished_at=finished_at, error=None
            )
        elif status == "cancelled":
            metrics = {"steps": self.progress.step, "checkpoint": self.progress.checkpoint}
            self.run = self.store.update_training_run(self.run.id, status="cancelled", metrics=metrics,
                                                      finished_at=now)
        else:
            self.run = self.store.update_training_run(
                self.run.id, status="failed", error=self._failure(exit_code), finished_at=now,
                metrics={"steps": self.progress.step},
            )
        self.ended = True
        return RunEvent(status, {"run": self.run})


def _event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "event" in record else None


def reconcile_runs(store: Store) -> list[RunMonitor]:
    """Bring the runs the store last saw pending or running up to date (the app may have closed meanwhile).

    Returns a monitor for each: ``monitor.ended`` ones finished, failed or were cancelled while nobody watched (the
    store now says so); the others still run and the caller keeps polling them.
    """
    monitors = []
    for run in store.list_training_runs():
        if is_active(run):
            monitor = RunMonitor(store, run)
            monitor.poll()
            monitors.append(monitor)
    return monitors


class RunWatch:
    """The runs one front end follows: the ones it started and the ones still going when it opened. Poll it from a
    timer or between prompts; it returns the runs that ended since the last poll."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.monitors: dict[int, RunMonitor] = {}

    def catch_up(self) -> list[TrainingRun]:
        """Start following the runs still going (``reconcile_runs``); return the ones that ended while nobody
        watched, for the front end to tell."""
        ended = []
        for monitor in reconcile_runs(self.store):
            if monitor.ended:
                ended.append(monitor.run)
            else:
                self.monitors.setdefault(monitor.run.id, monitor)
        return ended

    def follow(self, monitor: RunMonitor) -> None:
        self.monitors[monitor.run.id] = monitor

    def poll(self) -> list[TrainingRun]:
        """Read every followed run's new events; return the runs that ended (and stop following them)."""
        ended = []
        for run_id, monitor in list(self.monitors.items()):
            monitor.poll()
            if monitor.ended:
                ended.append(monitor.run)
                del self.monitors[run_id]
        return ended

    @property
    def active(self) -> list[RunMonitor]:
        return list(self.monitors.values())

    def progress_of(self, run: TrainingRun) -> RunProgress | None:
        monitor = self.monitors.get(run.id)
        return monitor.progress if monitor else None

    def find(self, name: str | None) -> TrainingRun:
        """The run called ``name``; without a name, the one run being followed. NotFound or TrainingError (one line)
        when that does not single out a run."""
        if name:
            return self.store.get_training_run(name)
        active = self.active
        if len(active) == 1:
            return self.store.get_training_run(active[0].run.id)
        if not active:
            raise TrainingError("no run is training; /runs lists them")
        raise TrainingError(f"{len(active)} runs are training; name one: " + ", ".join(m.name for m in active))
