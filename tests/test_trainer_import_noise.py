"""torchao's import-time noise is dropped wherever the trainer starts, and nothing else from the same loggers is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.import_noise import NOISE

pytest.importorskip("torchao")
ROOT = Path(__file__).resolve().parent.parent


def stderr_of(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def noise_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(p.search(line) for p in NOISE.values())]


def test_torchao_is_noisy_without_the_filters() -> None:
    """The premise: if this fails, torchao no longer prints these and trainer/import_noise.py can go."""
    assert noise_lines(stderr_of("-c", "import torchao"))


def test_the_trainer_starts_without_torchao_noise() -> None:
    # `--help` imports the training loop, whose transformers import pulls in peft and with it torchao.
    stderr = stderr_of("-m", "trainer", "--help")
    assert not noise_lines(stderr), stderr


def test_loading_a_lora_stack_is_quiet_too() -> None:
    # peft imported first thing after the package: the import order of a library user, not of our entry points
    stderr = stderr_of("-c", "import trainer, peft, torchao.quantization")
    assert not noise_lines(stderr), stderr


LORA_WRAP = (
    "from transformers import LlamaConfig, LlamaForCausalLM\n"
    "from peft import LoraConfig, get_peft_model\n"
    "config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,\n"
    "                     num_attention_heads=2, num_key_value_heads=2)\n"
    "get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=['q_proj']))\n"
)


def test_wrapping_a_model_in_lora_is_quiet() -> None:
    """peft reads a deprecated transformers alias on every LoRA run; without the trainer's filter it warns."""
    assert "is_gradient_checkpointing" in stderr_of("-W", "default", "-c", LORA_WRAP)  # the premise
    assert "is_gradient_checkpointing" not in stderr_of("-W", "default", "-c", "import trainer\n" + LORA_WRAP)


def test_other_warnings_from_those_loggers_still_show() -> None:
    code = (
        "import logging, trainer, torchao\n"
        "logging.getLogger('torchao').warning('Failed to quantize layer 3')\n"
        "logging.getLogger('torch.utils._pytree').warning('%s is a real problem', 'this')\n"
    )
    stderr = stderr_of("-c", code)
    assert "Failed to quantize layer 3" in stderr
    assert "this is a real problem" in stderr
