"""Training progress as events: a rich progress bar for people, or one JSON object per line for the app.

Every event is also appended to the run dir's ``progress.jsonl`` (once the run dir is known), which the loss plot
and the app's "show me that run again" read. Events (``event`` field; every object also has ``time``, unix s):

- ``start``: run_dir, model, method, device, dtype, total_steps, start_step (> 0 on --resume), epochs,
  train_conversations, val_conversations, train_tokens, assistant_tokens, real_token_fraction
- ``info``: message (a phase or a count worth telling: "evaluating before training", "2 conversations truncated")
- ``step``: step, total, epoch, loss (mean per assistant token), lr, tokens_per_s, eta_s, elapsed_s, threads
  (CPU threads the next step uses; null on a GPU)
- ``eval``: stage ("before" | "after", or "eval" from ``python -m trainer eval``), step, val_loss, val_ppl,
  val_tokens, bleu (0-100), rouge_l (0-1), samples (how many replies were generated)
- ``retention``: stage ("after"), warning (a sentence, or null), retention, facts_kept, facts_total, substance,
  mean_rouge_l, rouge_threshold, prompts, perplexity, base_perplexity (``trainer.retention.RetentionResult``)
- ``phase``: name, s (seconds it took), and what it did: generated, cached, tokens, samples, ... (a phase of the
  run ended; ``trainer.timings`` lists them)
- ``checkpoint``: step, path
- ``stopped``: step, reason (the signal), checkpoint: a resumable stop, the process exits with status 130
- ``ready``: run_dir: the model is saved and loads from now on; retention and the report follow, then ``done``
- ``done``: run_dir, elapsed_s, metrics (the metrics.json object)
- ``error``: message (one line); the process exits with status 1

Readers should ignore events and fields they do not know: new ones may be added.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

MODES = ("bar", "json", "none")


class ProgressReporter:
    """Sends events to stdout (as JSON lines or a rich bar) and to ``progress.jsonl``. ``enabled=False`` on
    non-main processes of a distributed run, so only one process talks."""

    def __init__(self, mode: str = "bar", *, stream: IO[str] | None = None, enabled: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.log_path: Path | None = None
        self.console = Console(file=self.stream)
        self._bar: Progress | None = None
        self._task: Any = None

    def log_to(self, path: Path) -> None:
        """Append every later event to ``path`` (the run dir's progress.jsonl)."""
        self.log_path = path

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        line = json.dumps(record, ensure_ascii=False, default=str)
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(line + "\n")
        try:
            if self.mode == "json":
                self.stream.write(line + "\n")
                self.stream.flush()
            elif self.mode == "bar":
                self._show(record)
        except (BrokenPipeError, ValueError):
            # The reader went away (the app quit, or its pipe closed): training goes on, progress.jsonl keeps
            # the record, and stdout stays quiet from now on.
            self.mode = "none"

    def info(self, message: str) -> None:
        self.emit("info", message=message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _show(self, record: dict[str, Any]) -> None:
        event = record["event"]
        if event == "start":
            self.console.print(
                f"training [bold]{record['model']}[/] ({record['method']}, {record['device']}, {record['dtype']}): "
                f"{record['train_conversations']} conversations, {record['train_tokens']} tokens "
                f"({record['real_token_fraction']:.0%} of computed tokens are real) -> {record['run_dir']}"
            )
            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("steps", total=record["total_steps"], status="")
            self._bar.start()
        elif event == "step" and self._bar is not None:
            status = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:.0f} tok/s"
            self._bar.update(self._task, completed=record["step"], status=status)
        elif event == "eval":
            self.console.print(
                f"eval ({record['stage']}): loss {record['val_loss']:.4f}  perplexity {record['val_ppl']:.2f}  "
                f"BLEU {record['bleu']:.1f}  ROUGE-L {record['rouge_l']:.3f}"
            )
        elif event == "checkpoint":
            self.console.print(f"checkpoint at step {record['step']}: {record['path']}")
        elif event == "stopped":
            self.close()
            self.console.print(f"stopped by {record['reason']} at step {record['step']}; resume with --resume")
        elif event == "done":
            self.close()
            self.console.print(f"done in {record['elapsed_s']:.0f} s: {record['run_dir']}")
        elif event == "error":
            self.close()  # the message itself goes to stderr, from the command's error handler
        elif event == "info":
            self.console.print(record["message"])
