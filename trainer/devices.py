"""Where a model runs and in which precision: cuda > mps > cpu, bf16 on CUDA, the measured best on CPU.

``--device`` / ``--dtype`` override both; bad values are a ValueError with one line naming the choices.
"""

from __future__ import annotations

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

# Measured on this project's dev machine (AMD EPYC, 2 cores with avx512_bf16, shared with other jobs), the bundled
# SmolLM2-135M-Instruct, greedy, 24 new tokens, generate() in a worker thread like the engine's, runs interleaved and
# each tagged with the CPU the other jobs used meanwhile; the quietest runs:
#   1 thread:  float32 16.6 tok/s (others 0.1 core)  bfloat16 21.0 tok/s (others 0.35 core)  -> bf16 ~1.3x
#   2 threads: float32 10.5 tok/s (others 0.4 core); bfloat16 0.8-8.7 tok/s whenever others used > 0.4 core
# bf16 halves the bytes read per token (decoding one sequence is memory-bound) and this CPU has bf16 dot products.
# Greedy answers stay correct in bf16 (Paris, Shakespeare, the same haiku) but longer replies can take other words
# after a sentence or two: the weights are a de-quantized Q4_1 GGUF, and bf16 is a small change next to that.
# `python -m bench decode` prints this comparison on every run.
CPU_DEFAULT_DTYPE = torch.bfloat16


# Threads: OpenMP workers spin at every barrier, so when all cores are busy with decoding and anything else wants
# a core (the chat UI, another program) a worker gets descheduled and the others wait: 2 threads on 2 cores fell
# to 1-3 tok/s in the runs above while 1 thread kept 15-21. Decoding keeps one core free for everything else.
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


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
