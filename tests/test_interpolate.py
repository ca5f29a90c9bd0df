"""Interpolation between the base model and the tuned one (interpolate.py): alpha 0 is the base model, 1 the tuned
one, the rule keeps the largest share the knowledge check finds no forgetting at, and a run saves the model it chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from trainer.config import SFTConfig
from trainer.interpolate import ALPHAS, LOSS_ALLOWED, AdapterScale, Interpolation, ScalePoint, choose
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


def test_the_rule_keeps_the_largest_share_that_loses_at_most_one_check_answer() -> None:
    points = [ScalePoint(1.0, 2.0, 18), ScalePoint(0.7, 2.1, 21), ScalePoint(0.4, 2.5, 22)]
    assert choose(points, 22).alpha == 0.7  # 1 loses 4 of the base model's 22, 0.7 one
    assert choose(points, 22, allowed=0).alpha == 0.4
    assert choose(points, 19).alpha == 1.0  # nothing lost beyond the allowance: the whole update
    # Every share loses more: the one that keeps the most, the larger of equals.
    assert choose(points, 25).alpha == 0.4
    assert choose([ScalePoint(1.0, 2.0, 18), ScalePoint(0.7, 2.1, 18)], 25).alpha == 1.0
    with pytest.raises(ValueError, match="at least one"):
        choose([], 3)


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
    # A random tiny model answers nothing right, so the check is a stand-in that gives fewer answers with more of
    # the update: the base model's 5, 4 down to share 0.7, 2 at the whole update.
    kept_at = {0.0: 5, 0.4: 5, 0.55: 4, 0.7: 4, 0.85: 3, 1.0: 2}
    now = {}
    real_set = AdapterScale.set

    def set_and_note(self: AdapterScale, alpha: float) -> None:
        now["alpha"] = alpha
        real_set(self, alpha)

    class Check:
        examples = ["an item"] * 5

        def passed(self, model: torch.nn.Module) -> int:
            return kept_at[now["alpha"]]

    monkeypatch.setattr(AdapterScale, "set", set_and_note)
    monkeypatch.setattr("trainer.sft.build_check", lambda *args, **kwargs: Check())
    _, metrics = run(tiny_dir, tmp_path, "chosen", choose_adapter_scale=True)
    scale = metrics["adapter_scale"]
    points = [ScalePoint(**p) for p in scale["points"]]
    assert [p.alpha for p in points] == list(ALPHAS)
    assert [p.kept for p in points] == [2, 3, 4, 4, 5] and scale["base"]["kept"] == 5
    assert scale["alpha"] == 0.7  # the largest share that loses at most one
    assert scale["base"]["val_loss"] == pytest.approx(metrics["before"]["val_loss"], rel=0.05)

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    run_dir, metrics = run(tiny_dir, tmp_path, "none-kept", adapter_scale=0.0)
    assert metrics["adapter_scale"] == {"alpha": 0.0, "allowed_loss": LOSS_ALLOWED, "base": None, "points": []}
    saved = load_file(run_dir / "model.safetensors")
    for name, weight in base.state_dict().items():
        if name in saved:
            assert torch.allclose(saved[name].float(), weight.to(saved[name].dtype).float()), name


def test_a_run_that_does_not_choose_builds_no_check_and_keeps_the_whole_update(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default: no check answers generated (a base model's first small run would pay for them), nothing scaled."""
    can_replay_answers(monkeypatch)
    run_dir, metrics = run(tiny_dir, tmp_path, "whole")
    assert metrics["adapter_scale"] == {"alpha": 1.0, "allowed_loss": LOSS_ALLOWED, "base": None, "points": []}
    timings = json.loads((tmp_path / "home" / "runs" / "timings.jsonl").read_text().splitlines()[-1])
    assert "check" not in timings["phases"] and "interpolate" not in timings["phases"]


def test_adapter_scale_is_checked(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="between 0 and 1"):
        run(tiny_dir, tmp_path, "bad", adapter_scale=1.5)
    with pytest.raises(SettingsError, match="need --method lora"):
        run(tiny_dir, tmp_path, "full", adapter_scale=0.5, method="full")
    with pytest.raises(SettingsError, match="need --method lora"):
        run(tiny_dir, tmp_path, "full", choose_adapter_scale=True, method="full")
    with pytest.raises(SettingsError, match="give one of them"):
        run(tiny_dir, tmp_path, "both", adapter_scale=0.5, choose_adapter_scale=True)


def test_the_printed_choice_says_when_no_share_kept_enough() -> None:
    base = ScalePoint(0.0, 3.0, 24)
    enough = Interpolation(0.55, base, [ScalePoint(1.0, 2.0, 20), ScalePoint(0.55, 2.5, 23)])
    assert "kept 0.55 (the largest share losing at most 1)" in enough.describe()
    short = Interpolation(0.4, base, [ScalePoint(1.0, 2.0, 19), ScalePoint(0.4, 2.5, 22)])
    assert "kept 0.4 (the most kept: every share lost more than 1)" in short.describe()
