"""Self-distillation on replay (loss.py): the KL term, the base model's pass with the adapter off, and training with
it on (LoRA's default), off (--replay-loss ce) and with a full fine-tune (cross-entropy replay)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trainer import loss as loss_module
from trainer import replay as replay_module
from trainer.base_answers import Answer
from trainer.batching import IGNORE_INDEX, Collator
from trainer.chat_template import ensure_chat_template
from trainer.config import SFTConfig
from trainer.data import Conversation
from trainer.loss import base_model_logits, summed_token_loss
from trainer.progress import ProgressReporter
from trainer.render import render_conversations
from trainer.sft import SettingsError, run_sft

from .tiny_models import save_tiny_model, tiny_tokenizer
from .trainer_helpers import chat_lines, write_jsonl


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def lora_model(tiny_dir: Path, *, moved: bool) -> torch.nn.Module:
    """The tiny model with a LoRA adapter: fresh (B = 0, the base model exactly) or moved (B random)."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=not moved)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), lora)


def replay_batch(*, distill: bool = True) -> dict[str, torch.Tensor]:
    """Three conversations rendered as replay, their assistant tokens marked for distillation."""
    tokenizer = ensure_chat_template(tiny_tokenizer())
    conversations = [Conversation(tuple(r["messages"]), "replay") for r in chat_lines(3, seed=7)]
    examples = render_conversations(tokenizer, conversations, None).examples
    return Collator(tokenizer.pad_token_id)([dataclasses.replace(e, distill=distill) for e in examples])


def test_kl_is_zero_for_a_fresh_adapter_and_positive_once_it_moves(tiny_dir: Path) -> None:
    batch = replay_batch()
    scored = batch["labels"][:, 1:] != IGNORE_INDEX
    fresh = lora_model(tiny_dir, moved=False)
    loss, count = summed_token_loss(fresh, batch)
    assert count == int(scored.sum()) > 0
    assert abs(loss.item()) < 1e-5  # the adapted model is the base model: nothing to pull back
    loss.backward()
    grads = [p.grad for n, p in fresh.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) < 1e-5

    moved = lora_model(tiny_dir, moved=True)
    loss, _ = summed_token_loss(moved, batch)
    assert loss.item() > 1e-3
    # It is KL(base || adapted) summed over the assistant positions, computed from the two models' full logits.
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)(input_ids=batch["input_ids"],
                                                              attention_mask=batch["attention_mask"]).logits
        adapted = moved(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    p_base = F.log_softmax(base[:, :-1][scored], dim=-1)
    expected = (p_base.exp() * (p_base - F.log_softmax(adapted[:, :-1][scored], dim=-1))).sum()
    torch.testing.assert_close(loss.detach(), expected, atol=1e-4, rtol=1e-4)


def test_teacher_pass_runs_the_base_model_with_the_adapter_off(tiny_dir: Path) -> None:
    batch = replay_batch()
    where = batch["distill"][:, 1:]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    moved = lora_model(tiny_dir, moved=True)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)(**inputs).logits[:, :-1][where]
        adapted = moved(**inputs).logits[:, :-1][where]
    teacher = base_model_logits(moved, batch["input_ids"], batch["attention_mask"], where)
    assert not teacher.requires_grad
    assert not torch.allclose(adapted, base, atol=1e-3)
    torch.testing.assert_close(teacher, base, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(moved(**inputs).logits[:, :-1][where], adapted)  # the adapter is back on
    with pytest.raises(ValueError, match="LoRA"):
        base_model_logits(AutoModelForCausalLM.from_pretrained(tiny_dir), batch["input_ids"],
                          batch["attention_mask"], where)


def test_rows_not_marked_keep_cross_entropy(tiny_dir: Path) -> None:
    """Without the mark (the user's conversations, or --replay-loss ce) a token is learned by cross-entropy."""
    batch = replay_batch(distill=False)
    moved = lora_model(tiny_dir, moved=True)
    loss, count = summed_token_loss(moved, batch)
    logits = moved(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum")
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-5)
    assert count == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_training_distills_replay_by_default_and_can_turn_it_off(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A random tiny model never finishes a sentence, so its replay answers are canned (as in test_retention.py).
    def canned(model, tokenizer, set_name, prompts, settings, cache_dir, *, select, progress):
        return [Answer(p.prompt, "hello world.", True) for p in select]

    teacher_rows: list[int] = []

    def counted(model, input_ids, attention_mask, where):
        teacher_rows.append(int(where.any(dim=1).sum()))
        return base_model_logits(model, input_ids, attention_mask, where)

    monkeypatch.setattr(replay_module, "base_answers", canned)
    monkeypatch.setattr(loss_module, "base_model_logits", counted)
    data = write_jsonl(tmp_path / "chats.jsonl", chat_lines(12))
    config = SFTConfig(
        data=str(data), model=str(tiny_dir), out=str(tmp_path / "kl"), home=str(tmp_path / "home"), threads=1,
        progress="none", max_steps=2, no_eval=True, replay=4,
    )
    reporter = ProgressReporter("none")

    def trained(**changes) -> tuple[dict, str]:
        run_dir = run_sft(dataclasses.replace(config, **changes), reporter)
        return json.loads((run_dir / "metrics.json").read_text()), (run_dir / "report.md").read_text()

    metrics, report = trained()
    assert metrics["method"] == "lora" and metrics["replay"]["loss"] == "kl"
    assert "self-distillation" in report
    assert 0 < sum(teacher_rows) <= 4 * 2  # only replay rows take the base model's pass (4 replayed, <= 2 epochs)

    teacher_rows.clear()
    metrics, report = trained(out=str(tmp_path / "ce"), replay_loss="ce")
    assert metrics["replay"] == {**metrics["replay"], "loss": "ce", "conversations": 4}
    assert "cross-entropy" in report and not teacher_rows

    metrics, _ = trained(out=str(tmp_path / "full"), method="full", lr=1e-3)
    assert metrics["method"] == "full" and metrics["replay"]["loss"] == "ce" and not teacher_rows

    with pytest.raises(SettingsError, match="--replay-loss kl needs --method lora"):
        trained(out=str(tmp_path / "refused"), method="full", replay_loss="kl")
    with pytest.raises(SettingsError, match="use kl or ce"):
        trained(out=str(tmp_path / "typo"), replay_loss="mse")
