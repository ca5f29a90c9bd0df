"""Where a model runs and in which precision: cuda > mps > cpu, bf16 on CUDA, the measured best on CPU.

``--device`` / ``--dtype`` override both; bad values are a ValueError with one line naming the choices.
"""

from __future__ import annotations

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

# On CPU, SmolLM2-135M-Instruct, 2 cores shared with other jobs, greedy, 64 new tokens after a short chat prompt
# (bench/decode.py prints the comparison on every run):
#   float32  ~11-13 tokens/s
#   bfloat16 ~15-17 tokens/s (about 1.3x), same greedy text on the bench prompts.
# Decoding a batch of one is memory-bound: bf16 halves the bytes read per token, which outweighs its slower
# arithmetic on CPUs without native bf16 units.
CPU_DEFAULT_DTYPE = torch.bfloat16


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
