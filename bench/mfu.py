"""Model FLOPs utilisation: 6 x parameters x tokens/s over a GPU's peak dense bf16 FLOP/s (bench/gpu.py, train.py).

The 6 x parameters convention counts the output layer at every token, though the trainer's loss computes it only at
the positions that carry loss, and leaves attention out: it is the usual yardstick, not the FLOPs actually run.
"""

from __future__ import annotations

import torch

# Peak dense bf16 tensor FLOP/s by a substring of torch.cuda.get_device_name(), most specific first (vendor sheets,
# without sparsity).
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM; the NVL is within a few percent
    ("H200", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def peak_bf16_flops(device_name: str) -> float | None:
    """The peak dense bf16 FLOP/s of a GPU named ``device_name`` (as CUDA names it), or None if unknown."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def mfu_line(device: torch.device, parameters: int, tokens_per_s: float) -> str:
    """The MFU of training at ``tokens_per_s`` on ``device``, or why it cannot be given."""
    if device.type != "cuda":
        return f"MFU: not given on {device.type} (peak bf16 FLOP/s are known for CUDA devices only)"
    name = torch.cuda.get_device_name(device)
    peak = peak_bf16_flops(name)
    if peak is None:
        return f"MFU: not given: the peak bf16 FLOP/s of {name!r} is not in bench/mfu.py's PEAK_BF16_FLOPS"
    mfu = 6 * parameters * tokens_per_s / peak
    return f"MFU: {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s bf16 on {name} (6 x {parameters / 1e6:.0f}M parameters)"
