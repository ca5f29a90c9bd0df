"""What a finished run leaves for people: metrics.json, loss.png (from progress.jsonl) and report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from . import rundir
from .evaluate import EvalResult
from .outcome import outcome_line
from .retention import RetentionResult, report_section

# The phases report.md lists, in run order, as people call them (timings.py defines them).
PHASE_NAMES = {
    "load": "load the base model", "replay": "replay answers", "check": "knowledge check: the base model's answers",
    "baseline": "retention: the base model's side", "distill": "replay distributions",
    "reference": "the base model's log-probabilities of the pairs (DPO)",
    "eval_before": "evaluate before", "train": "train",
    "interpolate": "choose the share of the update", "eval_after": "evaluate after", "save": "save",
    "retention": "retention: the trained model",
}


def read_progress(path: Path) -> list[dict[str, Any]]:
    """The events of a run's progress.jsonl (a line cut short by a crash is skipped)."""
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def plot_loss(events: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss per step, with the validation loss before/after as points. None when there are no steps."""
    # A resumed run repeats the steps after its last checkpoint: the later record of a step wins.
    by_step = {e["step"]: e for e in events if e.get("event") == "step"}
    steps = [by_step[k] for k in sorted(by_step)]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([e["step"] for e in steps], [e["loss"] for e in steps], label="train loss", linewidth=1.2)
    for e in events:
        if e.get("event") == "eval":
            x = 0 if e["stage"] == "before" else e.get("step", steps[-1]["step"])
            ax.scatter([x], [e["val_loss"]], label=f"val loss ({e['stage']})", zorder=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per assistant token (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _quote(text: str) -> str:
    return "<br>".join(text.replace("|", "\\|").splitlines()) or "(empty)"


def write_report(
    path: Path,
    metrics: dict[str, Any],
    before: EvalResult | None,
    after: EvalResult | None,
    has_plot: bool,
    sections: Sequence[str] = (),
) -> None:
    """report.md: settings, data counts, before/after metrics and sample replies side by side, then ``sections``
    (Markdown written by other parts of the run, e.g. retention)."""
    lines = [f"# Fine-tune of {metrics['base_model']}", ""]
    if outcome := outcome_line(metrics):
        lines += [f"**{outcome}**", ""]
    lines += [f"- method: {metrics['method']}, steps: {metrics['steps']}, epochs: {metrics['epochs']:.2f}"]
    lines += [f"- training time: {metrics['train_time_s']:.0f} s, {metrics['tokens_per_s']:.0f} tokens/s"]
    data = metrics["data"]
    lines += [
        f"- data: {data['train_conversations']} train / {data['val_conversations']} validation conversations; "
        f"{data['skipped_invalid']} invalid lines skipped, {data['truncated']} truncated, "
        f"{data['dropped_too_long']} dropped as too long; {data['real_token_fraction']:.0%} of computed tokens real",
        "",
    ]
    if before and after:
        lines += ["| | before | after |", "|---|---|---|"]
        for label, key, fmt in (
            ("validation loss", "val_loss", "{:.4f}"),
            ("perplexity", "val_ppl", "{:.2f}"),
            ("BLEU", "bleu", "{:.1f}"),
            ("ROUGE-L", "rouge_l", "{:.3f}"),
        ):
            lines.append(f"| {label} | {fmt.format(getattr(before, key))} | {fmt.format(getattr(after, key))} |")
        lines.append("")
        lines += ["## Sample replies", "", "| prompt | reference | before | after |", "|---|---|---|---|"]
        for b, a in zip(before.samples, after.samples):
            lines.append(f"| {_quote(b.prompt)} | {_quote(b.reference)} | {_quote(b.reply)} | {_quote(a.reply)} |")
        lines.append("")
    else:
        lines += ["No validation set: nothing was evaluated.", ""]
    lines += list(sections)
    if has_plot:
        lines += ["![loss](loss.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _replay_line(metrics: dict[str, Any]) -> str:
    replay = metrics["replay"]
    if not replay["conversations"]:
        return "- replay: off"
    learned = (
        "the model learned the base model's next-token distribution on them (self-distillation, --replay-loss kl"
        + (f"; weight {replay['weight']:g}, --replay-weight)" if "weight" in replay else ")")
        if replay["loss"] == "kl" else "the model learned their text (cross-entropy, --replay-loss ce)"
    )
    phase = metrics["phases"].get("replay", {})
    if "generated" not in phase:
        source = "the ones this run started with"
    elif phase["generated"]:
        source = f"{phase['generated']} answers generated now, the rest from the cache"
    else:
        source = "every answer from the cache: no generation"
    return (f"- replay: {replay['conversations']} general conversations answered by the base model were mixed into "
            f"training ({source}; {replay['prepare_s']:.0f} s to prepare); {learned}")


def _early_stop_line(metrics: dict[str, Any]) -> str:
    stop = metrics.get("early_stop")
    if not stop or not stop["val_losses"]:
        return ""
    losses = ", ".join(f"{v:.3f}" for v in stop["val_losses"])
    kept = stop.get("kept_epoch", stop["best_epoch"])
    return f"- validation loss after each epoch: {losses}; the weights of epoch {kept} were kept\n"


def _scale_line(metrics: dict[str, Any]) -> str:
    scale = metrics.get("adapter_scale")
    if not scale or (scale["alpha"] == 1 and not scale["points"]):
        return ""
    if not scale["points"]:
        return f"- share of the LoRA update kept: {scale['alpha']:g} (fixed)\n"
    base = scale["base"]
    tried = "; ".join(f"{p['alpha']:g}: {p['kept']} (validation loss {p['val_loss']:.3f})" for p in scale["points"])
    chosen = next(p for p in scale["points"] if p["alpha"] == scale["alpha"])
    why = (f"the largest that still gives all but {scale['allowed_loss']} of" if
           chosen["kept"] >= base["kept"] - scale["allowed_loss"] else "none gave all but "
           f"{scale['allowed_loss']}, this one the most of")
    return (f"- share of the LoRA update kept: {scale['alpha']:g} ({why} the {base['kept']} general answers the base "
            f"model gives, validation loss {base['val_loss']:.3f}); still given at {tried}\n")


def _time_section(metrics: dict[str, Any]) -> str:
    """Each phase's seconds, and which came from the cache of the base model's side."""
    lines = ["## Time", ""]
    if metrics.get("startup_s") is not None:
        lines.append(f"- start-up (Python and imports): {metrics['startup_s']:.1f} s")
    for name, label in PHASE_NAMES.items():
        phase = metrics["phases"].get(name)
        if phase is None:
            continue
        note = ""
        if phase.get("cached"):
            note = " (the base model's side came from the cache)"
        elif phase.get("generated"):
            note = f" ({phase['generated']} answers generated, then cached)"
        lines.append(f"- {label}: {phase['s']:.1f} s{note}")
    return "\n".join(lines) + "\n"


def write_run_report(
    run_dir: Path,
    metrics: dict[str, Any],
    before: EvalResult | None,
    after: EvalResult | None,
    retention: RetentionResult | None,
    retention_warning: str | None,
) -> None:
    """A finished run's loss.png, report.md and retention.json (metrics.json is written last, by the caller)."""
    has_plot = plot_loss(read_progress(run_dir / rundir.PROGRESS_LOG), run_dir / "loss.png") is not None
    schedule = metrics["schedule"]
    sections = [f"## Schedule and replay\n\n- schedule: {schedule['epochs']:g} epochs at lr {schedule['lr']:g} for "
                f"{schedule['user_conversations']} conversations\n{_early_stop_line(metrics)}{_scale_line(metrics)}"
                f"{_replay_line(metrics)}\n"]
    if retention is not None:
        sections.append(report_section(retention, retention_warning))
        rundir.write_json_atomic(run_dir / "retention.json", retention.as_dict())
    sections.append(_time_section(metrics))
    write_report(run_dir / "report.md", metrics, before, after, has_plot, sections)
