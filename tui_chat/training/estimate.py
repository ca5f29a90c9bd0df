"""How long a training run will take on this device, and where it runs beside the chat's own model.

The time comes from this machine's own runs: every finished run appends its phases to the data home's
``runs/timings.jsonl`` (trainer/timings.py), whoever started it. A run is estimated phase by phase from the last
``HISTORY`` runs of the same base model, method and device (another model's runs, scaled by model size, when this
one never ran): start-up, loading, the base model's answers (only those not cached yet: ``RunWork`` says which),
evaluation, the training steps at the measured tokens/s (a preference pair's chosen and rejected sides both, every
epoch, and once more for the base model's reference pass), retention, saving. Before the first run on a CPU it comes
from ``REFERENCE``, a run measured on tui-chat's own 2-core test machine, and says so. A model's size is read from
its safetensors headers (no weights load).
"""

from __future__ import annotations

import json
import math
import statistics
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

GIB = 1024**3
TRAINER_NICE = 10  # niceness added to the trainer on CPU: the chat's replies win the cores when both want them
HISTORY = 5  # runs an estimate is drawn from: recent enough to follow the machine, enough to smooth one odd run
MAX_SPEEDUP = 10.0  # a much smaller model is not that much faster: start-up, the tokenizer and the loop cost too
# A first run of the bundled SmolLM2-135M-Instruct (LoRA, bf16 autocast) on tui-chat's 2-core test machine: five
# short conversations (one held out), nothing cached, every phase: its runs/timings.jsonl line (`python -m bench
# small_runs` prints one). Full fine-tunes train slower per token (FULL_SLOWDOWN).
REFERENCE: dict[str, Any] = {
    "base_model": "smollm2", "base_parameters": 134_515_008, "method": "lora", "device": "cpu",
    "precision": "bf16 autocast", "startup_s": 3.82, "total_s": 53.62, "tokens_per_s": 495.9,
    "replay_tokens_each": 55.25,
    "phases": {
        "load": {"s": 0.64},
        "replay": {"conversations": 16, "generated": 21, "s": 7.02},
        "baseline": {"generated": 48, "cached": False, "s": 7.18},
        "distill": {"tokens": 884, "s": 0.7},
        "eval_before": {"samples": 1, "cached": False, "s": 2.71},
        "train": {"start_step": 0, "steps": 24, "tokens": 8680, "s": 18.57},
        "eval_after": {"samples": 1, "cached": False, "s": 0.49},
        "save": {"s": 1.88},
        "retention": {"prompts": 48, "s": 9.24},
    },
}
# A training step is a forward and a backward pass (~2x the forward's FLOPs): a forward alone, as the DPO reference
# pass does, costs about a third of a trained token.
REFERENCE_SHARE = 3
# The same machine trained 54 tokens/s with LoRA and 38 with a full fine-tune, both through `/train`.
FULL_SLOWDOWN = 54 / 38
REFERENCE_WHERE = "tui-chat's 2-core test machine; your first run measures this one"
# Training memory per parameter on a GPU (fp32 master weights; bf16 is autocast only): full fine-tuning holds the
# weights, their gradients and two AdamW moments (4 + 4 + 8 bytes); LoRA holds the frozen weights and tiny adapters.
BYTES_PER_PARAMETER = {"full": 16, "lora": 4}
ACTIVATION_SHARE = 0.25  # activations and workspace, on top of the above (micro-batch 4 x 1024 tokens)
MIN_WORKSPACE = GIB  # CUDA context and allocator slack


@dataclass(frozen=True)
class SpeedEstimate:
    tokens_per_s: float
    overhead_s: float  # seconds outside the training steps: start-up, loading, evaluation, saving
    source: str  # where the numbers come from, said in the preview

    def seconds(self, tokens: int) -> float:
        return tokens / self.tokens_per_s + self.overhead_s


@dataclass(frozen=True)
class DevicePlan:
    """Where the trainer runs and what the preview says about sharing it with the chat."""

    device: str  # "cpu", "cuda" or "mps"
    notes: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)  # for the trainer process (CUDA_VISIBLE_DEVICES="" -> CPU)
    nice: int = 0  # niceness added to the trainer process


def count_parameters(model_dir: Path) -> int | None:
    """Parameters in a saved model, from its safetensors headers (tied weights are stored once); None when unknown
    (no safetensors, an adapter, a Hub id)."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files or (Path(model_dir) / "adapter_config.json").is_file():
        return None
    total = 0
    try:
        for path in files:
            with path.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
            total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total or None


def training_memory(parameters: int, method: str) -> int:
    """Bytes of GPU memory a run needs, roughly."""
    return int(parameters * BYTES_PER_PARAMETER[method] * (1 + ACTIVATION_SHARE)) + MIN_WORKSPACE


def plan_device(
    available: str,
    method: str | None,
    parameters: int | None,
    *,
    cpu_count: int,
    threads: int | None = None,
    gpu_memory: tuple[int, int] | None = None,
    load: float = 0.0,
) -> DevicePlan:
    """Decide where the trainer runs. ``available``: the best device here ("cuda", "mps", "cpu"); ``method``: the
    one asked for (None: the trainer's default for the device); ``gpu_memory``: (free, total) bytes on the GPU now,
    the chat's own model included in what is used; ``load``: the machine's load average over the last minute."""
    if available == "cuda" and gpu_memory is not None:
        free, _ = gpu_memory
        if parameters is None:
            return DevicePlan("cuda", (f"GPU: {free / GIB:.1f} GiB free; the base model's size is unknown, so "
                                       "whether training fits beside the chat's model is not checked",))
        need = training_memory(parameters, method or "full")
        if need <= free:
            return DevicePlan("cuda", (f"GPU: training needs ~{need / GIB:.1f} GiB and {free / GIB:.1f} GiB is free "
                                       "beside the chat's model: both fit",))
        cpu = plan_device("cpu", method, parameters, cpu_count=cpu_count, threads=threads, load=load)
        note = (f"GPU: training needs ~{need / GIB:.1f} GiB but only {free / GIB:.1f} GiB is free beside the chat's "
                "model, so it runs on the CPU instead (slower); to train on the GPU, free memory (close other GPU "
                "programs, or /model a smaller model) and /train again")
        return DevicePlan("cpu", (note, *cpu.notes), {"CUDA_VISIBLE_DEVICES": ""}, cpu.nice)
    if available == "cpu":
        if threads:
            share = f"training uses {threads} of {cpu_count} cores at low priority"
        else:  # the trainer's default (trainer/cpu_threads.py): it gives a core back while the chat decodes
            share = (f"training uses the {cpu_count} cores at low priority, one fewer while the chat writes a reply"
                     if cpu_count > 1 else "training uses the one core at low priority")
        notes = [f"CPU: {share}; replies come slower while it runs"]
        if load >= cpu_count:
            notes.append(busy_note(load, cpu_count))
        return DevicePlan("cpu", tuple(notes), nice=TRAINER_NICE)
    return DevicePlan(available, (f"{available.upper()}: training shares the device with the chat's model",))


def busy_note(load: float, cpu_count: int) -> str:
    """Why the estimate will be short while other programs keep every core busy. The estimate is not scaled by the
    load: at low priority the trainer gets what the others leave, which the load average does not tell (measured
    here: a run estimated at 50 s took 146 s while five other jobs kept two cores busy)."""
    return (f"this machine is busy now (load {load:.1f} on {cpu_count} core{'s' if cpu_count != 1 else ''}): the "
            "run takes longer than estimated while that lasts, as training runs at low priority")


@dataclass(frozen=True)
class RunWork:
    """What a previewed run will do: the inputs of its time estimate."""

    trained_tokens: int  # tokens the training steps process (every epoch, replay included)
    replay_tokens: int  # of the replay conversations, one pass (distillation reads them once)
    replay_answers: int  # replay answers the base model still has to generate (the rest are cached)
    retention: bool  # the run checks retention (--no-eval turns evaluation and retention off)
    baseline_cached: bool  # the base model's retention answers and perplexity are cached
    eval_samples: int  # sample replies per evaluation (0: no validation set)
    eval_before_cached: bool  # the base model's evaluation on this validation set is cached
    chooses_scale: bool = False  # the run chooses how much of its LoRA update to keep (trainer/interpolate.py)
    check_answers: int = 0  # the knowledge check's base answers that choice measures with, still to generate
    # A preference run (trainer/dpo.py): the base model's log-probabilities of both sides of every pair, one
    # forward pass without gradients before training. The pairs' training passes are in ``trained_tokens``.
    reference_tokens: int = 0


@dataclass(frozen=True)
class TimeEstimate:
    seconds: float  # the whole run, launch to done
    train_s: float  # of which the training steps
    tokens_per_s: float
    first_time_s: float  # of which the base model's answers not cached yet (paid once per base model)
    source: str  # where the numbers come from, said in the preview


def _rates(record: dict[str, Any]) -> dict[str, float]:
    """What one run measured: seconds per unit of work, or per phase where the work is fixed."""
    phases = record.get("phases") or {}
    rates: dict[str, float] = {}
    units = (("replay", "generated"), ("distill", "tokens"), ("reference", "tokens"), ("train", "tokens"),
             ("eval_before", "samples"), ("eval_after", "samples"))
    for name, unit in units:
        phase = phases.get(name) or {}
        if phase.get(unit) and not phase.get("cached"):
            rates[name] = phase["s"] / phase[unit]
    for name in ("load", "retention", "save", "interpolate"):
        if name in phases:
            rates[name] = phases[name]["s"]
    if "check" in phases and not phases["check"].get("generated"):  # reading its cached answers; generating them
        rates["check"] = phases["check"]["s"]  # is priced per answer at replay's rate (shorter answers: an upper bound)
    if "baseline" in phases:
        rates["baseline_cached" if phases["baseline"].get("cached") else "baseline"] = phases["baseline"]["s"]
    if record.get("startup_s") is not None:
        rates["startup"] = record["startup_s"]
        if record.get("total_s") is not None:  # rendering, preparing the model, the report: the rest
            rates["other"] = max(0.0, record["total_s"] - record["startup_s"] - sum(p["s"] for p in phases.values()))
    if record.get("replay_tokens_each"):
        rates["replay_tokens_each"] = record["replay_tokens_each"]
    return rates


SIZE_FREE = frozenset({"startup", "replay_tokens_each"})  # what a bigger model does not change


def _device_type(device: Any) -> str:
    return str(device or "").split(":", 1)[0]


def read_timings(path: Path) -> list[dict[str, Any]]:
    """The lines of a data home's runs/timings.jsonl, oldest first (a damaged line is skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("phases"), dict):
            records.append(record)
    return records


def _speedup(theirs: int | None, ours: int | None) -> float:
    """How much faster than a run of a model of ``theirs`` parameters this one of ``ours`` goes."""
    return min(MAX_SPEEDUP, theirs / ours) if theirs and ours else 1.0


def _median_rates(records: Sequence[dict[str, Any]], parameters: int | None) -> dict[str, float]:
    """Each rate's median over ``records``, scaled to a model of ``parameters``."""
    measured: dict[str, list[float]] = {}
    for record in records:
        speedup = _speedup(record.get("base_parameters"), parameters)
        for name, value in _rates(record).items():
            measured.setdefault(name, []).append(value if name in SIZE_FREE else value / speedup)
    return {name: statistics.median(values) for name, values in measured.items()}


def estimate_time(
    records: Sequence[dict[str, Any]], work: RunWork, *, base_name: str, method: str, device: str,
    parameters: int | None,
) -> TimeEstimate | None:
    """The time of a run doing ``work``, from the newest comparable ``records`` (``read_timings``); on a CPU with
    none, from ``REFERENCE``. None when nothing comparable was ever measured (a GPU before its first run)."""
    comparable = [r for r in records if r.get("method") == method and _device_type(r.get("device")) == device]
    same = [r for r in comparable if r.get("base_model") == base_name][-HISTORY:]
    others = [r for r in comparable if r.get("base_parameters")][-HISTORY:]
    slower = 1.0
    if same:
        chosen, source = same, f"from your last {_runs(len(same))} of {base_name} on this machine"
    elif others and parameters:
        chosen = others
        source = f"from your last {_runs(len(others))} of other models on this machine, scaled by model size"
    elif device == "cpu":
        chosen, slower = [], FULL_SLOWDOWN if method == "full" else 1.0
        source = REFERENCE_WHERE + ("" if parameters else " (this model's size is unknown)")
    else:
        return None
    # What the chosen runs did not measure (a phase they all skipped, or found cached) comes from the reference.
    rates = {**_median_rates([REFERENCE], parameters), **_median_rates(chosen, parameters)}

    def rate(name: str) -> float:
        return rates.get(name, 0.0)  # 0: a phase no run has measured costs too little to have been timed

    train_s = work.trained_tokens * rate("train") * slower
    first_time_s = work.replay_answers * rate("replay")
    seconds = rate("startup") + rate("load") + rate("other") + train_s + rate("save")
    if method == "lora":  # distillation: the base model's distribution on the replay, once
        seconds += work.replay_tokens * rate("distill")
    if work.reference_tokens:  # before any preference run measured it: a forward pass, ~1/3 of a training step's
        seconds += work.reference_tokens * (rates.get("reference") or rate("train") * slower / REFERENCE_SHARE)
    if work.retention:
        if work.baseline_cached:
            seconds += rate("baseline_cached")
        else:
            first_time_s += rate("baseline")
        seconds += rate("retention")
    if work.eval_samples:
        seconds += work.eval_samples * (rate("eval_after") + (0 if work.eval_before_cached else rate("eval_before")))
    if work.chooses_scale:
        seconds += rate("interpolate")
        if work.check_answers:
            first_time_s += work.check_answers * rate("replay")
        else:
            seconds += rate("check")
    return TimeEstimate(seconds + first_time_s, train_s, 1.0 / (rate("train") * slower), first_time_s, source)


def replay_tokens_each(records: Sequence[dict[str, Any]], base_name: str) -> float:
    """Tokens of one replay conversation of ``base_name`` (its own answers, rendered with its template), as its last
    runs here measured them; else as the reference run did."""
    measured = [r["replay_tokens_each"] for r in records if r.get("base_model") == base_name
                and r.get("replay_tokens_each")][-HISTORY:]
    return statistics.median(measured) if measured else REFERENCE["replay_tokens_each"]


def _runs(n: int) -> str:
    return "run" if n == 1 else f"{n} runs"
