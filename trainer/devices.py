"""Where a model runs and how: cuda > mps > cpu, the dtype, weight quantization and compiling, each the measured best
for the device.

``--device`` / ``--dtype`` / ``--quantize`` / ``--compile`` override them; bad values are a ValueError with one line
naming the choices.
"""

from __future__ import annotations

import importlib.util
import os

import torch

DEVICE_CHOICES = ("cuda", "mps", "cpu")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# CPU defaults, measured on this project's dev machine (AMD EPYC, 2 cores with AVX-512, shared with other jobs), the
# bundled SmolLM2-135M-Instruct, one decoding thread. The machine was never quiet (load 4-9 on 2 cores), so the
# comparisons use tokens per CPU-second of the decoding process (about what an idle core gives), side by side
# (`python -m bench decode`, load 1.9-4: HF generate float32 13.1, bfloat16 13.7; engine default 24.4; llama.cpp 45.3):
#   engine loop, bfloat16:            ~11 eager, ~12 with torch.compile (static cache)
#   engine loop, bfloat16 + int4:     ~22-27 eager (dynamic cache); compiled for dynamic shapes over the
#                                     dynamic cache ~31-36 (over a 1,024-position static cache ~20: attention reads
#                                     every position)
# Per token, the int4 matmuls (the 210 layer projections) take ~8 ms of CPU against ~45 ms in bfloat16; what is left
# is the bfloat16 output projection (~8 ms), attention and per-op overhead, which compiling trims. Quiet machine, side
# by side (load 0.4): HF float32 12.0 tok/s, engine eager 25.9, engine compiled 34.9. Compiling takes 30-100 s of a
# core (30 s once inductor's disk cache is warm), and while it runs the process's own decoding is ~2x slower (torch
# wraps module calls process-wide while tracing), so the chat compiles in a second model process and switches to it
# when it is ready (tui_chat/inference/process_engine.py). In a process that decodes itself (tests, benchmarks, `ask`) it is
# opt-in: the process would also have to wait for an unfinished compile at exit. The fused kernels round differently,
# so a greedy reply can change once the compiled step takes over (tests/test_engine.py states the tolerance).
# bfloat16 activations are what the int4 kernel needs (float32 ones were 10x slower).
# Greedy answers stay sane: bfloat16 alone kept 6 of 8 test answers identical to float32's, the other two diverging
# late; bfloat16 + int4 kept 4 of 6 identical and the first 5-6 tokens of the others (the test in
# tests/test_engine.py states that tolerance), but on open-ended prompts (a story) it takes other words early.
CPU_DEFAULT_DTYPE = torch.bfloat16
CPU_DEFAULT_QUANTIZATION = "int4"
CPU_COMPILES = False  # in the engine's own process; the chat compiles in a second one (see above)
QUANTIZE_CHOICES = ("none", "int4")


# Threads: OpenMP workers spin at every barrier, so when all cores are busy with decoding and anything else wants
# a core (the chat UI, another program) a worker gets descheduled and the others wait: 2 threads on 2 cores fell
# to 1-3 tok/s in the first float32 runs here while 1 thread kept 15-21. With int4 (load 5.3), 2 threads gave 20.3
# tok/cpu-s against 22.3 for 1: more wall speed only while they win cores from other jobs, less work per core.
# Decoding keeps one core free for everything else.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # physical cores, before anything changes it


def inference_threads() -> int:
    """Intra-op threads for decoding on CPU: torch's default (physical cores) but one core left free, at least 1."""
    try:
        available = len(os.sched_getaffinity(0))  # honours taskset and container CPU limits
    except AttributeError:  # macOS and Windows have no affinity call
        available = os.cpu_count() or 1
    return max(1, min(_TORCH_DEFAULT_THREADS, available - 1))


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device (``cuda``, ``cuda:1``, ``mps``, ``cpu``), else the best one available."""
    if requested:
        kind = requested.split(":", 1)[0]
        if kind not in DEVICE_CHOICES:
            raise ValueError(f"unknown device {requested!r}; choose one of {', '.join(DEVICE_CHOICES)}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available; use --device cpu")
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """The requested dtype (``float32``/``bfloat16``/``float16`` or fp32/bf16/fp16), else the best for ``device``."""
    if requested and requested != "auto":
        try:
            return DTYPES[requested.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {requested!r}; choose one of {', '.join(DTYPES)}") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return CPU_DEFAULT_DTYPE


def pick_quantization(
    device: torch.device, dtype: torch.dtype, requested: str | None = None, *, four_bit_weights: bool = False
) -> str:
    """``none`` or ``int4`` (weight-only, see ``tui_chat.quantize``): the requested one, else int4 on CPU in bfloat16
    for a model whose weights are 4-bit already (the bundled model, de-quantized from Q4_1), else none. A fine-tuned
    run or another model keeps its weights by default: int4 steps are coarser than what fine-tuning changes."""
    if requested and requested != "auto":
        if requested not in QUANTIZE_CHOICES:
            raise ValueError(f"unknown quantization {requested!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
        if requested == "int4":
            if device.type != "cpu":
                raise ValueError(f"--quantize int4 runs on CPU only; use --quantize none on {device.type}")
            if dtype != torch.bfloat16:
                raise ValueError("--quantize int4 needs bfloat16 activations; add --dtype bfloat16 or --quantize none")
            if importlib.util.find_spec("torchao") is None:
                raise ValueError("--quantize int4 needs torchao: `pip install torchao`, or use --quantize none")
        return requested
    if four_bit_weights and device.type == "cpu" and dtype == torch.bfloat16 and importlib.util.find_spec("torchao"):
        return CPU_DEFAULT_QUANTIZATION
    return "none"


def pick_compile(device: torch.device, requested: bool | None = None) -> bool:
    """Whether to ``torch.compile`` the decode step in the engine's process: as requested, else on CUDA only (see
    CPU_COMPILES)."""
    if requested is not None:
        return requested
    return device.type == "cuda" or (device.type == "cpu" and CPU_COMPILES)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
