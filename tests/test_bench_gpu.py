"""bench/gpu.py's dry run on CPU, so the GPU script runs when a GPU turns up; and its peak-FLOP/s table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.gpu import main
from bench.mfu import mfu_line, peak_bf16_flops

from .tiny_models import save_tiny_model


def test_dry_run_prints_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save_tiny_model(tmp_path / "tiny", context=512)
    main(["--device", "cpu", "--quick", "--model", str(model), "--home", str(tmp_path / "home")])
    out = capsys.readouterr().out
    assert "HF generate, eager bf16" in out
    assert "engine, eager (--quick)" in out
    assert "tok/s" in out and "TTFT" in out
    assert "SFT (lora, bf16 autocast" in out or "SFT (lora, fp32" in out
    assert "tokens/s" in out
    assert "MFU: not given on cpu" in out


def test_peak_flops_by_device_name() -> None:
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12  # the more specific name wins
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA L4") == 121e12
    assert peak_bf16_flops("Some Future GPU") is None


def test_mfu_is_not_given_without_a_known_peak() -> None:
    assert "not given on cpu" in mfu_line(torch.device("cpu"), 135_000_000, 1000.0)
