"""Interpolation between the base model and the tuned one (interpolate.py): alpha 0 is the base model, 1 the tuned
one, the rule picks the lowest validation loss within the drift bound, and a run saves the model it chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from trainer.config import SFTConfig
from trainer.interpolate import ALPHAS, AdapterScale, ScalePoint, choose
from trainer.progress import ProgressReporter
from trainer.sft import SettingsError, run_sft

from .tiny_datasets import can_replay_answers, chat_lines, write_jsonl
from .tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.arange(3, 19).unsqueeze(0)).logits


def test_alpha_0_is_the_base_model_and_1_the_tuned_one(tiny_dir: Path) -> None:
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # B random: moved
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), lora)
    tuned = logits(model)
    with model.disable_adapter():
        base = logits(model)
    assert not torch.allclose(tuned, base, atol=1e-4)  # the adapter does move it
    scale = AdapterScale(model)
    scale.set(0.0)
    assert torch.allclose(logits(model), base, atol=1e-6)
    scale.set(0.5)
    halfway = logits(model)
    assert not torch.allclose(halfway, base, atol=1e-4) and not torch.allclose(halfway, tuned, atol=1e-4)
    scale.set(1.0)
    assert torch.allclose(logits(model), tuned, atol=1e-6)  # scaling keeps the trained update, not a rounded one


def test_interpolation_needs_a_lora_model(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="needs a LoRA model"):
        AdapterScale(AutoModelForCausalLM.from_pretrained(tiny_dir))


def test_the_rule_takes_the_least_drift_that_keeps_most_of_the_validation_gain() -> None:
    points = [ScalePoint(1.0, 2.0, 0.30), ScalePoint(0.7, 2.05, 0.20), ScalePoint(0.4, 2.5, 0.10)]
    # Base 3.0: the whole update gains 1.0; 0.7 keeps 0.95 of it with less drift, 0.4 only 0.5.
    assert choose(points, 3.0, keep=0.9).alpha == 0.7
    assert choose(points, 3.0, keep=0.99).alpha == 1.0
    assert choose(points, 3.0, keep=0.5).alpha == 0.4
    # Interpolating can also lower the validation loss (WiSE-FT): it keeps more than the whole gain.
    assert choose([ScalePoint(1.0, 2.0, 0.3), ScalePoint(0.7, 1.9, 0.2)], 3.0).alpha == 0.7
    # Nothing gained on validation (or no validation split: every loss 0): the update stays whole.
    assert choose(points, 1.5).alpha == 1.0
    assert choose([ScalePoint(1.0, 0.0, 0.3), ScalePoint(0.4, 0.0, 0.1)], 0.0).alpha == 1.0
    with pytest.raises(ValueError, match="alpha 1"):
        choose(points[1:], 3.0)


def run(tiny_dir: Path, tmp_path: Path, name: str, **changes) -> tuple[Path, dict]:
    data = write_jsonl(tmp_path / "chats.jsonl", chat_lines(20))
    config = SFTConfig(
        data=str(data), model=str(tiny_dir), out=str(tmp_path / name), home=str(tmp_path / "home"), threads=1,
        progress="none", max_steps=3, lr=5e-2, no_replay=True, eval_samples=1, max_new_tokens=4, **changes,
    )
    run_dir = run_sft(config, ProgressReporter("none"))
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_a_run_measures_every_candidate_and_saves_the_chosen_model(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    can_replay_answers(monkeypatch)  # the drift set: a random tiny model never finishes a sentence of its own
    _, metrics = run(tiny_dir, tmp_path, "chosen", choose_adapter_scale=True)
    points = [ScalePoint(**p) for p in metrics["adapter_scale"]["points"]]
    assert [p.alpha for p in points] == list(ALPHAS)
    assert metrics["adapter_scale"]["alpha"] == choose(points, metrics["adapter_scale"]["base_val_loss"]).alpha
    assert metrics["adapter_scale"]["base_val_loss"] == pytest.approx(metrics["before"]["val_loss"], rel=0.05)
    assert points[0].drift > points[-1].drift >= 0  # less of the update: closer to the base model

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    run_dir, metrics = run(tiny_dir, tmp_path, "none-kept", adapter_scale=0.0)
    assert metrics["adapter_scale"] == {"alpha": 0.0, "base_val_loss": None, "points": []}
    saved = load_file(run_dir / "model.safetensors")
    for name, weight in base.state_dict().items():
        if name in saved:
            assert torch.allclose(saved[name].float(), weight.to(saved[name].dtype).float()), name


def test_a_run_without_held_out_conversations_keeps_the_whole_update_unmeasured(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to weigh the gain on: no drift set is generated (a base model's first small run would pay for it)."""
    can_replay_answers(monkeypatch)
    run_dir, metrics = run(tiny_dir, tmp_path, "no-val", val_fraction=0.0, choose_adapter_scale=True)
    assert metrics["adapter_scale"] == {"alpha": 1.0, "base_val_loss": None, "points": []}
    timings = json.loads((tmp_path / "home" / "runs" / "timings.jsonl").read_text().splitlines()[-1])
    assert "drift" not in timings["phases"] and "interpolate" not in timings["phases"]


def test_adapter_scale_is_checked(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="between 0 and 1"):
        run(tiny_dir, tmp_path, "bad", adapter_scale=1.5)
    with pytest.raises(SettingsError, match="need --method lora"):
        run(tiny_dir, tmp_path, "full", adapter_scale=0.5, method="full")
    with pytest.raises(SettingsError, match="need --method lora"):
        run(tiny_dir, tmp_path, "full", choose_adapter_scale=True, method="full")
    with pytest.raises(SettingsError, match="give one of them"):
        run(tiny_dir, tmp_path, "both", adapter_scale=0.5, choose_adapter_scale=True)
