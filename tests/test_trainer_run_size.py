"""The disk a run takes: what `estimated_run_bytes` says against what real runs write, and the bf16 save."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trainer import rundir
from trainer.config import SFTConfig
from trainer.devices import bf16_is_fast
from trainer.progress import ProgressReporter
from trainer.rundir import SMALL_FILES_BYTES, estimated_run_bytes
from trainer.loop import TrainingStopped
from trainer.sft import run_sft

from .train_fixtures import SignalAtStep
from .tiny_models import save_tiny_model
from .tiny_datasets import chat_lines, write_jsonl


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())


def near(estimate: int, actual: int) -> bool:
    """Within file headers and pickling overhead of the actual bytes."""
    return abs(estimate - actual) <= 0.02 * actual + 64 * 1024


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ~1.3M parameters: the weights outweigh headers, yet a step takes well under a second on CPU.
    return save_tiny_model(tmp_path_factory.mktemp("wide") / "model", hidden=256)


def parameters(model_dir: Path) -> tuple[int, int]:
    """All parameters (tied ones once) and LoRA's trainable ones at the trainer's defaults."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    total = sum(p.numel() for p in model.parameters())
    config = SFTConfig(data="")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    trainable, _ = get_peft_model(model, lora).get_nb_trainable_parameters()
    return total, trainable


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_takes_the_disk_estimated(wide_model: Path, tmp_path: Path, method: str) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", chat_lines(16))
    out = tmp_path / "run"
    config = SFTConfig(
        data=str(data), model=str(wide_model), out=str(out), home=str(tmp_path / "home"), method=method, threads=1,
        progress="none", micro_batch=4, grad_accum=1, max_steps=3, no_eval=True, no_replay=True,
    )
    total, trainable = parameters(wide_model)
    base_dtype = "bfloat16" if method == "lora" and bf16_is_fast(torch.device("cpu")) else "float32"
    estimate = estimated_run_bytes(total, method=method, base_dtype=base_dtype, trainable_parameters=trainable)

    with pytest.raises(TrainingStopped):
        run_sft(config, SignalAtStep(1))
    checkpoint = rundir.latest_checkpoint(out)
    assert near(estimate.checkpoint, size(checkpoint)), (estimate.checkpoint, size(checkpoint))

    run_sft(dataclasses.replace(config, resume=True), ProgressReporter("none"))
    assert near(estimate.model, (out / "model.safetensors").stat().st_size)
    assert (out / "model.safetensors").stat().st_size < total * 2.1  # bf16, tied weights written once
    assert size(out) <= estimate.final
    assert estimate.peak == estimate.final + estimate.checkpoint


def test_a_kept_adapter_is_estimated_as_the_adapter(wide_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", chat_lines(16))
    out = tmp_path / "adapter"
    run_sft(
        SFTConfig(data=str(data), model=str(wide_model), out=str(out), home=str(tmp_path / "home"), method="lora",
                  threads=1, progress="none", max_steps=1, no_eval=True, no_replay=True, keep_adapter=True),
        ProgressReporter("none"),
    )
    total, trainable = parameters(wide_model)
    estimate = estimated_run_bytes(total, method="lora", trainable_parameters=trainable, keep_adapter=True)
    assert near(estimate.model, (out / "adapter_model.safetensors").stat().st_size)


def test_estimates_by_method_and_dtype() -> None:
    bundled = 134_515_008
    lora, full = estimated_run_bytes(bundled, method="lora"), estimated_run_bytes(bundled, method="full")
    assert lora.model == full.model == bundled * 2  # both saved merged in bf16
    assert full.checkpoint == bundled * 12  # fp32 weights and two AdamW moments
    assert lora.checkpoint < full.checkpoint / 4  # frozen bf16 base, moments for the adapter only
    assert estimated_run_bytes(bundled, method="full", saved_dtype="float32").model == bundled * 4
    assert estimated_run_bytes(bundled, method="lora", keep_adapter=True).final < SMALL_FILES_BYTES + bundled // 10
    with pytest.raises(ValueError, match="unknown dtype 'int8'; use one of"):
        estimated_run_bytes(bundled, method="lora", saved_dtype="int8")
    with pytest.raises(ValueError, match="unknown method 'qlora'"):
        estimated_run_bytes(bundled, method="qlora")
