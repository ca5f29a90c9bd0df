"""Where a model runs and how: cuda > mps > cpu, the dtype, weight quantization and compiling, each the best for the
device as `python -m bench decode` measures it.

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

# CPU defaults. Decoding a small model on CPU is bound by reading the weights: int4 weight-only quantization reads
# a quarter of bfloat16's bytes and its matmuls cost a fraction of bfloat16's, so it is the default where the weights
# were 4-bit to begin with (pick_quantization); the int4 kernel needs bfloat16 activations (float32 ones are far
# slower). What is left per token (the bfloat16 output projection, attention, per-op overhead) is what compiling
# trims. `python -m bench decode` measures each choice side by side; the README states the numbers.
# Compiling keeps a core busy for tens of seconds, and while it traces, the process's own decoding slows down (torch
# wraps module calls process-wide), so the home's server compiles in a second server process, which takes over the
# socket when it is ready (tui_chat/serve/handover.py). In a process that decodes itself (tests, benchmarks) it is opt-in: the
# process would also have to wait for an unfinished compile at exit. The fused kernels round differently, so a greedy
# reply can change once the compiled step takes over.
# Greedy answers stay sane: bfloat16, with or without int4, keeps short factual answers the same as float32 or diverges
# only late (tests/test_engine.py states the tolerance); on open-ended prompts (a story) int4 takes other words early.
CPU_DEFAULT_DTYPE = torch.bfloat16
CPU_DEFAULT_QUANTIZATION = "int4"
CPU_COMPILES = False  # in the engine's own process; the chat compiles in a second one (see above)
QUANTIZE_CHOICES = ("none", "int4")


# Threads: OpenMP workers spin at every barrier, so when all cores are busy with decoding and anything else wants
# a core (the chat UI, another program) a worker gets descheduled and the others wait: on a busy machine every
# thread past the first can cost more than it gives (`python -m bench decode` compares thread counts). Decoding keeps
# one core free for everything else.
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


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up on ``device``: on every CUDA GPU with bf16 units, and on a CPU where
    oneDNN has native bf16 kernels (AVX512-BF16 / AMX; `python -m bench train` compares it with fp32). Without native
    bf16 the emulation is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
