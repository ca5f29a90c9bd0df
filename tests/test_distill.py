"""Self-distillation on replay (loss.py): the KL term, the base model's pass with the adapter off, and training with
it on (LoRA's default), off (--replay-loss ce) and with a full fine-tune (cross-entropy replay)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trainer import distill as distill_module
from trainer import loss as loss_module
from trainer.batching import IGNORE_INDEX, Collator
from trainer.chat_template import ensure_chat_template
from trainer.config import SFTConfig
from trainer.data import Conversation
from trainer.distill import TOP_K, targets_from_logits, teacher_targets
from trainer.loss import base_model_logits, distillation_loss, summed_token_loss
from trainer.progress import ProgressReporter
from trainer.render import render_conversations
from trainer.sft import SettingsError, run_sft

from .tiny_models import save_tiny_model, tiny_tokenizer
from .tiny_datasets import can_replay_answers, chat_lines, write_jsonl


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def lora_model(tiny_dir: Path, *, moved: bool) -> torch.nn.Module:
    """The tiny model with a LoRA adapter: fresh (B = 0, the base model exactly) or moved (B random)."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=not moved)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), lora)


def rendered(n: int = 3) -> tuple[list, Collator]:
    tokenizer = ensure_chat_template(tiny_tokenizer())
    conversations = [Conversation(tuple(r["messages"]), "replay") for r in chat_lines(n, seed=7)]
    return render_conversations(tokenizer, conversations, None).examples, Collator(tokenizer.pad_token_id)


def with_targets(model: torch.nn.Module, examples: list, collate: Collator, k: int = TOP_K) -> list:
    targets = teacher_targets(model, examples, collate, 2, contextlib.nullcontext, k=k)
    return [dataclasses.replace(e, teacher=t) for e, t in zip(examples, targets)]


def test_kl_is_zero_for_a_fresh_adapter_and_positive_once_it_moves(tiny_dir: Path) -> None:
    examples, collate = rendered()
    fresh = lora_model(tiny_dir, moved=False)
    batch = collate(with_targets(fresh, examples, collate))
    loss, count = summed_token_loss(fresh, batch)
    assert count == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) > 0
    assert abs(loss.item()) < 1e-5  # the adapted model is the base model: nothing to pull back
    loss.backward()
    grads = [p.grad for n, p in fresh.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) < 1e-5

    moved = lora_model(tiny_dir, moved=True)
    assert summed_token_loss(moved, collate(with_targets(moved, examples, collate)))[0].item() > 1e-3


def test_loss_is_cross_entropy_on_the_users_rows_and_kl_from_the_base_on_replay(tiny_dir: Path) -> None:
    """A batch mixing a user row and replay rows: the targets land on the right tokens of the right rows. With every
    token kept (k = vocabulary) the truncated KL is the full KL(base || adapted)."""
    examples, collate = rendered()
    moved = lora_model(tiny_dir, moved=True)
    vocab = moved.get_base_model().config.vocab_size
    batch = collate(examples[:1] + with_targets(moved, examples[1:], collate, k=vocab))
    loss, _ = summed_token_loss(moved, batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    scored = batch["labels"][:, 1:] != IGNORE_INDEX
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)(**inputs).logits[:, :-1]
        adapted = moved(**inputs).logits[:, :-1]
    user = F.cross_entropy(adapted[0][scored[0]], batch["labels"][0, 1:][scored[0]], reduction="sum")
    p_base = F.log_softmax(base[1:][scored[1:]], dim=-1)
    kl = (p_base.exp() * (p_base - F.log_softmax(adapted[1:][scored[1:]], dim=-1))).sum()
    torch.testing.assert_close(loss.detach(), user + kl, atol=1e-4, rtol=1e-4)
    # --replay-weight scales the replay's KL and nothing else.
    weighed, _ = summed_token_loss(moved, batch, distill_weight=3.0)
    torch.testing.assert_close(weighed.detach(), user + 3 * kl, atol=1e-4, rtol=1e-4)


def test_top_k_targets_keep_the_rest_of_the_mass_as_one_outcome() -> None:
    logits = torch.randn(5, 40)
    targets = targets_from_logits(logits, k=4)
    full = F.log_softmax(logits, dim=-1)
    assert targets.ids.shape == (5, 4) and targets.logprobs.shape == (5, 5)
    torch.testing.assert_close(targets.logprobs.exp().sum(dim=-1), torch.ones(5))
    assert torch.equal(targets.ids.sort(dim=-1).values, full.topk(4).indices.sort(dim=-1).values)
    torch.testing.assert_close(targets.logprobs[:, :4], full.gather(-1, targets.ids))
    assert distillation_loss(logits, targets.ids, targets.logprobs).abs() < 1e-5
    assert distillation_loss(logits.flip(-1), targets.ids, targets.logprobs) > 0.1


def test_teacher_pass_runs_the_base_model_with_the_adapter_off(tiny_dir: Path) -> None:
    examples, collate = rendered()
    batch = collate(examples)
    where = batch["labels"][:, 1:] != IGNORE_INDEX
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
    # The stored targets are the base model's distribution, example by example, whatever the batching.
    targets = [e.teacher for e in with_targets(moved, examples, collate)]
    for target, part in zip(targets, base.split(where.sum(dim=1).tolist())):
        expected = targets_from_logits(part)
        torch.testing.assert_close(target.logprobs, expected.logprobs, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="LoRA"):
        base_model_logits(AutoModelForCausalLM.from_pretrained(tiny_dir), batch["input_ids"],
                          batch["attention_mask"], where)


def test_rows_without_targets_keep_cross_entropy(tiny_dir: Path) -> None:
    """Without targets (the user's conversations, or --replay-loss ce) a token is learned by cross-entropy."""
    examples, collate = rendered()
    batch = collate(examples)
    assert "distill" not in batch
    moved = lora_model(tiny_dir, moved=True)
    loss, count = summed_token_loss(moved, batch)
    logits = moved(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum")
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-5)
    assert count == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_training_distills_replay_by_default_and_can_turn_it_off(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher_rows: list[int] = []

    def counted(model, input_ids, attention_mask, where):
        teacher_rows.append(int(where.any(dim=1).sum()))
        return base_model_logits(model, input_ids, attention_mask, where)

    can_replay_answers(monkeypatch)
    monkeypatch.setattr(distill_module, "base_model_logits", counted)
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
    assert "self-distillation" in report and 0 <= metrics["replay"]["outside_top_k"] < 1
    assert sum(teacher_rows) == 4  # the base model's pass: once, on the replay rows only
    # A few conversations (many passes) weigh the replay twice the user's tokens; from ~50, where one pass's step is
    # spread over two, four times (schedule.py).
    assert metrics["replay"]["weight"] == 2 and "weight 2, --replay-weight" in report
    assert config.resolved(torch.device("cpu"), 54).replay_weight == 4
    assert config.resolved(torch.device("cpu"), 30).replay_weight == 2
    resolved = dataclasses.replace(config, replay_weight=2.5).resolved(torch.device("cpu"), 54)
    # the printed "settings:" line; distilled replay keeps first sentences, text replay whole answers
    assert "108 replayed (kl, weight 2.5, first sentences)" in resolved.describe(108)
    assert dataclasses.replace(config, replay_sentences=0).resolved(torch.device("cpu"), 54).describe(9).endswith(
        "9 replayed (kl, weight 4, whole answers), 1 of the update kept")
    assert dataclasses.replace(config, method="full").resolved(torch.device("cpu"), 54).replay_sentences == 0

    weights: list[float] = []

    def weighed(model, batch, distill_weight=1.0):
        weights.append(distill_weight)
        return summed_token_loss(model, batch, distill_weight)

    monkeypatch.setattr(loss_module, "summed_token_loss", weighed)
    metrics, _ = trained(out=str(tmp_path / "weighed"), replay_weight=2.5)
    assert metrics["replay"]["weight"] == 2.5 and set(weights) == {2.5}  # what training's loss used
    monkeypatch.setattr(loss_module, "summed_token_loss", summed_token_loss)
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
    with pytest.raises(SettingsError, match="--replay-weight must be positive"):
        trained(out=str(tmp_path / "weightless"), replay_weight=0.0)
    with pytest.raises(SettingsError, match="--replay-sentences must be 0"):
        trained(out=str(tmp_path / "sentenceless"), replay_sentences=-1)
