"""Runs in words, the same in the REPL, the TUI and `tui-chat models`: progress lines, run lines, finish summaries."""

from __future__ import annotations

from typing import Any, Collection, Sequence

from sessions import Store, TrainingRun, WinRate, counted, minute_text
from trainer.outcome import outcome_parts

from tui_chat.training.monitor import RunProgress, is_active

SPARK = "▁▂▃▄▅▆▇█"


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """The last ``width`` values as block characters, lowest to highest."""
    values = list(values)[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[round((v - low) / span * (len(SPARK) - 1))] for v in values)


def progress_bar(fraction: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def progress_line(name: str, progress: RunProgress) -> str:
    """``training NAME ████░░ 12/40 · loss 2.31 ▇▅▃ · 180 tokens/s · ETA 1 min 20 s`` (or the phase before steps)."""
    separator = ": " if _before_steps(progress) else " "
    return f"training {name}{separator}{progress_text(progress)}"


def _before_steps(progress: RunProgress) -> bool:
    return progress.total is None or (progress.step == 0 and progress.phase != "training")


def progress_text(progress: RunProgress) -> str:
    """A run's progress without its name: ``████░░ 12/40 · loss 2.31 ▇▅▃ · …``, or its phase before the steps."""
    if _before_steps(progress):
        return f"{progress.phase}…"
    parts = [f"{progress_bar(progress.fraction or 0.0)} {progress.step}/{progress.total}"]
    if progress.losses:
        parts.append(f"loss {progress.losses[-1]:.3f} {sparkline(progress.losses, 12)}")
    if progress.tokens_per_s:
        parts.append(f"{progress.tokens_per_s:,.0f} tokens/s")
    if progress.phase not in ("training", "finished", "stopped"):
        parts.append(f"{progress.phase}…")
    elif progress.eta_s is not None:
        parts.append(f"ETA {duration(progress.eta_s)}")
    return " · ".join(parts)


def _eval_change(metrics: dict[str, Any], key: str, label: str, digits: int) -> str | None:
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    if after.get(key) is None:
        return None
    new = f"{after[key]:.{digits}f}"
    return f"{label} {before[key]:.{digits}f} -> {new}" if before.get(key) is not None else f"{label} {new}"


def _retention(metrics: dict[str, Any]) -> str | None:
    """``retention 95% (19/20 general facts kept)``: how much of what the base model knew the run kept."""
    retention = metrics.get("retention")
    if not isinstance(retention, dict) or retention.get("retention") is None:
        return None
    text = f"retention {retention['retention']:.0%}"
    if retention.get("facts_total"):
        text += f" ({retention['facts_kept']}/{retention['facts_total']} general facts kept)"
    return text


def _preference(metrics: dict[str, Any]) -> str | None:
    """``preference accuracy 0% -> 100% on 4 held-out pairs``: a run with preference pairs (trainer.dpo)."""
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    if after.get("reward_accuracy") is None:
        return None
    return (f"preference accuracy {before.get('reward_accuracy', 0):.0%} -> {after['reward_accuracy']:.0%} on "
            f"{after.get('pairs', 0)} held-out pairs")


def metrics_text(metrics: dict[str, Any], *, said: Collection[str] = ()) -> str:
    """``validation perplexity 12.30 -> 8.10, BLEU 3.2 -> 10.5, ROUGE-L 0.120 -> 0.250, retention 95% (...)``:
    what the run measured, less the measures in ``said`` (``val_ppl``, ``retention``: said in words beside it by
    ``outcome_parts``, so a summary says each once)."""
    parts = [
        None if "val_ppl" in said else _eval_change(metrics, "val_ppl", "validation perplexity", 2),
        _eval_change(metrics, "bleu", "BLEU", 1),
        _eval_change(metrics, "rouge_l", "ROUGE-L", 3),
        _preference(metrics),
        None if "retention" in said else _retention(metrics),
    ]
    return ", ".join(part for part in parts if part)


def win_rate_text(win: WinRate) -> str | None:
    """``preferred over smollm2 in 7 of 10 comparisons (5 of 6 blind)``: the user's /compare picks between a run and
    its base; None before the first."""
    if not win.picks:
        return None
    blind = f" ({win.blind_wins} of {win.blind_picks} blind)" if win.blind_picks else ""
    return f"preferred over {win.against} in {win.wins} of {counted(win.picks, 'comparison')}{blind}"


def win_rate_of(store: Store, run: TrainingRun) -> WinRate | None:
    """The run's /compare record against the model it was trained from."""
    return store.win_rate(run.name, run.base_model) if run.base_model else None


def finish_summary(run: TrainingRun, win: WinRate | None = None) -> str:
    """How a run ended, in one line, with what to do next; ``win``: how it fared against its base in /compare."""
    metrics = run.metrics
    if run.status == "finished":
        took = metrics.get("wall_s") or metrics.get("elapsed_s")
        took = f" in {duration(took)}" if took else ""
        in_words = outcome_parts(metrics)
        outcome = " ".join(in_words.values())
        measured = ", ".join(
            part for part in (metrics_text(metrics, said=in_words), win and win_rate_text(win)) if part)
        steps = f" ({counted(metrics['steps'], 'step')})" if metrics.get("steps") else ""
        warning = (metrics.get("retention") or {}).get("warning")
        return (f"{run.name} finished{took}{steps}" + (f": {measured}" if measured else "")
                + (f". Warning: {warning}" if warning else "") + (f". {outcome[:-1]}" if outcome else "")
                + f". Chat with it: /model {run.name}")
    if run.status == "failed":
        return f"{run.name} failed: {run.error or 'no reason recorded'}. Log: {run.log_path}"
    if run.status == "cancelled":
        where = f"; its checkpoint is in {metrics['checkpoint']}" if metrics.get("checkpoint") else ""
        return f"{run.name} was cancelled at step {metrics.get('steps', 0)}{where}"
    return f"{run.name} is {run.status}"


def run_line(run: TrainingRun, progress: RunProgress | None = None) -> str:
    """One line for `/runs` and `tui-chat models`: when, name, status, base, and its progress or result."""
    started = minute_text(run.created_at)
    status = "stopping" if run.status == "cancelled" and is_active(run) else run.status
    line = f"{started}  {run.name}  {status}  (from {run.base_model}, {len(run.conversation_ids)} conversations)"
    if progress is not None and is_active(run):
        if progress.total:
            line += f"  step {progress.step}/{progress.total}"
        else:
            line += f"  {progress.phase}"
    elif run.status == "finished":
        measured = metrics_text(run.metrics)
        line += f"  {measured}" if measured else ""
    elif run.status == "failed":
        line += f"  {run.error}"
    return line
