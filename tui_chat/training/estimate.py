"""How long a training run will take on this device, and where it runs beside the chat's own model.

Speed comes from measurements, newest first: a finished run of the same base model, method and device in the store;
else another model's run there, scaled by model size; else (CPU only) the reference measured on tui-chat's own test
machine. The preview says which one it used. A model's size is read from its safetensors headers (no weights load).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sessions import TrainingRun

GIB = 1024**3
TRAINER_NICE = 10  # niceness added to the trainer on CPU: the chat's replies win the cores when both want them

# Measured through `/train` on tui-chat's test machine (2 CPU cores, AVX512-BF16, load average 4-9 from other jobs
# at the time, so a quiet machine does better), the bundled SmolLM2-135M-Instruct (134.5M parameters), bf16
# autocast, 1 training thread, 4 x 2 short conversations a step: tokens/s over the training steps (LoRA 54, full 38),
# and the rest of a first run: start-up, loading and saving 22 s; the base model answering 16 replay prompts 44 s;
# with evaluation, the validation loss and samples before and after ~50 s, and retention (the base model's answers
# to the held-out prompts 58 s, the trained model's 83 s). Replay and retention answers of the base model are
# cached, so later runs are quicker; a measured run in the store replaces these figures.
REFERENCE_PARAMETERS = 134_515_008
REFERENCE_TOKENS_PER_S = {"lora": 54.0, "full": 38.0}
REFERENCE_OVERHEAD_S = {True: 22.0 + 44 + 50 + 58 + 83, False: 22.0 + 44}  # with / without evaluation
STARTUP_S = 15.0  # of the overhead, the part no model size changes: starting Python, importing torch and transformers
REFERENCE_WHERE = "a rough figure from tui-chat's 2-core test machine, scaled by model size"
MAX_SPEEDUP = 10.0  # a much smaller model is not that much faster: start-up, the tokenizer and the loop cost too

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
) -> DevicePlan:
    """Decide where the trainer runs. ``available``: the best device here ("cuda", "mps", "cpu"); ``method``: the
    one asked for (None: the trainer's default for the device); ``gpu_memory``: (free, total) bytes on the GPU now,
    the chat's own model included in what is used."""
    if available == "cuda" and gpu_memory is not None:
        free, _ = gpu_memory
        if parameters is None:
            return DevicePlan("cuda", (f"GPU: {free / GIB:.1f} GiB free; the base model's size is unknown, so "
                                       "whether training fits beside the chat's model is not checked",))
        need = training_memory(parameters, method or "full")
        if need <= free:
            return DevicePlan("cuda", (f"GPU: training needs ~{need / GIB:.1f} GiB and {free / GIB:.1f} GiB is free "
                                       "beside the chat's model: both fit",))
        cpu = plan_device("cpu", method, parameters, cpu_count=cpu_count, threads=threads)
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
        return DevicePlan("cpu", (f"CPU: {share}; replies come slower while it runs",), nice=TRAINER_NICE)
    return DevicePlan(available, (f"{available.upper()}: training shares the device with the chat's model",))


def _device_type(metrics: dict) -> str:
    return str(metrics.get("device", "")).split(":", 1)[0]


def estimate_speed(
    runs: Sequence[TrainingRun], *, base_name: str, method: str, device: str, parameters: int | None,
    evaluate: bool = True,
) -> SpeedEstimate | None:
    """Training speed on ``device`` from the newest comparable finished run, else the CPU reference; None when
    nothing comparable was ever measured (a GPU before its first run). ``evaluate``: the run evaluates before and
    after training (the overhead of a measured run that did otherwise is not used)."""
    comparable = [
        run for run in runs
        if run.status == "finished" and run.metrics.get("tokens_per_s") and run.metrics.get("method") == method
        and _device_type(run.metrics) == device
    ]
    reference_scale = min(MAX_SPEEDUP, REFERENCE_PARAMETERS / parameters) if parameters else 1.0

    def overhead(run: TrainingRun, scale: float) -> float:
        if _evaluated(run.metrics) == evaluate:
            return _scaled_overhead(_overhead(run.metrics), scale)
        return _scaled_overhead(REFERENCE_OVERHEAD_S[evaluate], reference_scale)

    for run in comparable:
        if run.base_model == base_name:
            return SpeedEstimate(run.metrics["tokens_per_s"], overhead(run, 1.0), f"measured in run {run.name}")
    for run in comparable:
        theirs = run.params.get("base_parameters")
        if theirs and parameters:
            scale = min(MAX_SPEEDUP, theirs / parameters)  # speed goes down as the model grows
            return SpeedEstimate(
                run.metrics["tokens_per_s"] * scale,
                overhead(run, scale),
                f"scaled by model size from run {run.name} ({run.base_model})",
            )
    if device == "cpu":
        return SpeedEstimate(
            REFERENCE_TOKENS_PER_S[method] * reference_scale,
            _scaled_overhead(REFERENCE_OVERHEAD_S[evaluate], reference_scale),
            REFERENCE_WHERE + ("" if parameters else " (this model's size is unknown)") +
            "; your first run measures this machine",
        )
    return None


def _evaluated(metrics: dict) -> bool:
    return bool(metrics.get("before") or metrics.get("after"))


def _overhead(metrics: dict) -> float:
    """Seconds of a finished run outside its training steps (``wall_s``: launch to done)."""
    wall, training = metrics.get("wall_s") or metrics.get("elapsed_s"), metrics.get("train_time_s")
    return max(0.0, wall - training) if wall and training else STARTUP_S


def _scaled_overhead(overhead: float, speed_scale: float) -> float:
    """Start-up costs the same for every model; loading, evaluating and saving grow with its size."""
    fixed = min(overhead, STARTUP_S)
    return fixed + (overhead - fixed) / speed_scale
