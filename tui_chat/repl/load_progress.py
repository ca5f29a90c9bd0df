"""Showing a model load on a console: a transient progress bar on a terminal, one line per step elsewhere."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tui_chat.inference.contract import Engine, EngineInfo


def load_with_progress(engine: Engine, console: Console, *, announce: bool = False) -> EngineInfo:
    """Load ``engine`` (a no-op when it is ready) while showing what it is doing on ``console``.

    ``announce`` adds a line saying what loaded where, and how long it took (on a terminal, where the progress
    bar vanishes; elsewhere the step lines already say it).
    """
    if engine.ready:
        return engine.info()
    if not console.is_terminal:
        return engine.load(_StepPrinter(console))
    started = time.perf_counter()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"loading {engine.name}", total=None)

        def report(what: str, fraction: float | None) -> None:
            total = None if fraction is None else 1.0
            progress.update(task, description=what, total=total, completed=fraction or 0)

        info = engine.load(report)
    if announce:
        elapsed = time.perf_counter() - started
        line = f"{info.name} loaded on {info.device} ({info.dtype}, {info.context_limit} tokens of context)"
        console.print(f"{line} in {elapsed:.1f} s", style="dim", markup=False, highlight=False)
    return info


class _StepPrinter:
    """For logs and pipes: a line whenever the step changes, never one per percent."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last = ""

    def __call__(self, what: str, fraction: float | None) -> None:
        if what != self.last:
            self.console.print(what, markup=False, highlight=False)
            self.last = what
