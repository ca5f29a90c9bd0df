"""What a finished DPO run leaves for people: report.md (the preference numbers before and after, sample replies,
retention, time) and loss.png; report.py's pieces, with the preference metrics in place of SFT's."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from . import rundir
from .report import _quote, _replay_line, _time_section, plot_loss, read_progress
from .retention import RetentionResult, report_section

# (label, metrics key, format) of the before/after table.
ROWS = (
    ("preference accuracy (implicit reward margin > 0)", "reward_accuracy", "{:.0%}"),
    ("mean reward margin", "reward_margin", "{:.3f}"),
    ("chosen reply more likely than rejected", "logp_accuracy", "{:.0%}"),
    ("DPO loss", "dpo_loss", "{:.4f}"),
)


def write_preference_report(
    run_dir: Path,
    metrics: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    prompts: Sequence[list[dict[str, str]]],
    retention: RetentionResult | None,
    retention_warning: str | None,
) -> None:
    """report.md, loss.png and retention.json of a DPO run (metrics.json is written last, by the caller).
    ``before`` / ``after``: the held-out metrics plus ``replies``, greedy answers to ``prompts``."""
    has_plot = plot_loss(read_progress(run_dir / rundir.PROGRESS_LOG), run_dir / "loss.png") is not None
    data, schedule = metrics["data"], metrics["schedule"]
    lines = [
        f"# Preference training (DPO) of {metrics['base_model']}", "",
        f"- method: {metrics['method']}, beta {metrics['beta']:g}, steps: {metrics['steps']}, "
        f"epochs: {metrics['epochs']:.2f} at lr {schedule['lr']:g}",
        f"- training time: {metrics['train_time_s']:.0f} s, {metrics['tokens_per_s']:.0f} tokens/s",
        f"- data: {data['train_pairs']} train / {data['val_pairs']} validation pairs"
        + (f", and {data['sft_conversations']} conversations learned by cross-entropy alongside (the combined "
           "objective)" if data["sft_conversations"] else "")
        + f"; {data['skipped_invalid']} "
        f"invalid lines skipped, {data['dropped']} dropped as too long; {data['real_token_fraction']:.0%} of "
        "computed tokens real",
        _replay_line(metrics),
        "- the reference is the base model; a reply's implicit reward is beta x (its log-probability now - under the "
        "reference), so before training every margin is 0",
        "",
    ]
    if before and after:
        lines += [f"On {before['pairs']} held-out pairs:", "", "| | before | after |", "|---|---|---|"]
        lines += [f"| {label} | {fmt.format(before[key])} | {fmt.format(after[key])} |" for label, key, fmt in ROWS]
        lines += ["", "## Sample replies (held-out prompts, greedy)", "", "| prompt | before | after |", "|---|---|---|"]
        lines += [f"| {_quote(p[-1]['content'])} | {_quote(b)} | {_quote(a)} |"
                  for p, b, a in zip(prompts, before["replies"], after["replies"])]
        lines.append("")
    else:
        lines += ["No validation pairs: nothing was evaluated.", ""]
    if retention is not None:
        lines.append(report_section(retention, retention_warning))
        rundir.write_json_atomic(run_dir / "retention.json", retention.as_dict())
    lines.append(_time_section(metrics))
    if has_plot:
        lines += ["![loss](loss.png)", ""]
    (run_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
