"""DPO on a tiny model: the loss against a hand computation, the reference being the base model, pair-file
validation, a run end to end, and resume after a signal."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from trainer import rundir
from trainer.__main__ import main as trainer_main
from trainer.chat_template import ensure_chat_template
from trainer.data import DataError
from trainer.dpo import run_dpo
from trainer.dpo_config import (
    COMBINED_BETA,
    COMBINED_LEARNING_RATES,
    DEFAULT_BETA,
    DPO_LEARNING_RATES,
    DPOConfig,
)
from trainer.loop import TrainingStopped
from trainer.mixed_batches import KindGroupedBatches, MixedCollator, Replayed
from trainer.models import load_model
from trainer.pairs import Pair, read_pairs, render_pairs, split_pairs
from trainer.preference_loss import PairCollator, PreferenceLossModel, reference_logps
from trainer.progress import ProgressReporter
from trainer.sft import SettingsError

from .tiny_datasets import can_replay_answers, chat_lines, write_jsonl
from .tiny_models import save_tiny_model
from .train_fixtures import SignalAtStep

WORDS = "the quick brown fox jumps over the lazy dog hello world".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def pair_lines(n: int, seed: int = 0) -> list[dict]:
    """``n`` pairs: the chosen reply ends with "hello world", the rejected one does not (a trait to learn)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        reply = " ".join(rng.choices(WORDS[:9], k=rng.randint(2, 6)))
        prompt = [{"role": "user", "content": f"hello {i} world"}]
        if i % 3 == 0:  # some prompts carry an earlier exchange: context, not loss
            prompt = [{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "jumps"}] + prompt
        records.append({"prompt": prompt, "chosen": f"{reply} hello world", "rejected": reply})
    return records


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", pair_lines(24))


def make_config(tiny_dir: Path, data: Path, out: Path, **changes) -> DPOConfig:
    base = DPOConfig(
        data=str(data), model=str(tiny_dir), out=str(out), home=str(out.parent / "home"), threads=1,
        progress="none", eval_samples=2, max_new_tokens=8, micro_batch=4, grad_accum=1, epochs=2, no_eval=True,
        no_replay=True,  # a random tiny model's own replay answers are never usable: generating them is wasted time
    )
    return dataclasses.replace(base, **changes)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / rundir.PROGRESS_LOG).read_text().splitlines()]


def rendered(tiny_dir: Path, n: int = 6):
    loaded = load_model(str(tiny_dir), models_dir=tiny_dir.parent, device="cpu", dtype="float32")
    ensure_chat_template(loaded.tokenizer)
    pairs = [Pair(tuple(r["prompt"]), r["chosen"], r["rejected"], f"t:{i}") for i, r in enumerate(pair_lines(n))]
    return loaded, render_pairs(loaded.tokenizer, pairs, max_length=256).pairs


def hand_logp(model, ids: list[int], mask: list[bool]) -> float:
    """log p of the masked tokens, one token at a time from the full logits: the definition, written out."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].detach().float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(1, len(ids)) if mask[t])


def test_only_the_judged_reply_carries_loss(tiny_dir: Path) -> None:
    loaded, pairs = rendered(tiny_dir)
    tokenizer = loaded.tokenizer
    with_context = pairs[0]  # its prompt has an earlier assistant turn
    for side, text in ((with_context.chosen, with_context.pair.chosen),
                       (with_context.rejected, with_context.pair.rejected)):
        taught = tokenizer.decode([i for i, m in zip(side.input_ids, side.assistant_mask) if m])
        assert taught == text + "<|im_end|>"  # the reply and its end-of-turn token, not "jumps"


def test_dpo_loss_matches_a_hand_computation(tiny_dir: Path) -> None:
    loaded, pairs = rendered(tiny_dir)
    torch.manual_seed(0)
    policy = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    collate = PairCollator(loaded.tokenizer.pad_token_id)
    pairs = reference_logps(policy, pairs, collate, 4, _no_autocast)
    for name, p in policy.named_parameters():  # move the policy away from the reference
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    beta = 0.3
    loss = PreferenceLossModel(policy, beta)(**collate(pairs)).item()
    expected = 0.0
    with torch.no_grad():
        for p in pairs:
            now = [hand_logp(policy, s.input_ids, s.assistant_mask) for s in (p.chosen, p.rejected)]
            with policy.disable_adapter():
                ref = [hand_logp(policy, s.input_ids, s.assistant_mask) for s in (p.chosen, p.rejected)]
            margin = beta * ((now[0] - ref[0]) - (now[1] - ref[1]))
            expected += -math.log(1 / (1 + math.exp(-margin)))
    assert loss == pytest.approx(expected / len(pairs), rel=1e-4)  # the batch's mean
    assert loss != pytest.approx(math.log(2), rel=1e-3)  # the policy did move


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def test_reference_logps_are_the_base_models(tiny_dir: Path) -> None:
    loaded, pairs = rendered(tiny_dir)
    base = [(hand_logp(loaded.model, p.chosen.input_ids, p.chosen.assistant_mask),
             hand_logp(loaded.model, p.rejected.input_ids, p.rejected.assistant_mask)) for p in pairs]
    policy = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in policy.named_parameters():  # a trained adapter: the reference must not see it
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    with_reference = reference_logps(policy, pairs, PairCollator(loaded.tokenizer.pad_token_id), 4, _no_autocast)
    for p, expected in zip(with_reference, base):
        assert p.reference == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("line, reason", [
    ('{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a"}', "missing 'rejected'"),
    ('{"prompt": [{"role": "user", "content": "hi"}], "chosen": " ", "rejected": "b"}', '"chosen" is empty'),
    ('{"prompt": [{"role": "user", "content": "hi"}], "chosen": "same", "rejected": "same "}', "the same reply"),
    ('{"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "chosen": "a", '
     '"rejected": "b"}', "ends with a assistant turn"),
    ('{"prompt": [], "chosen": "a", "rejected": "b"}', "non-empty list"),
    ('{"prompt": [{"role": "robot", "content": "hi"}], "chosen": "a", "rejected": "b"}', "unknown role 'robot'"),
    ('{"prompt": "hi", "chosen": "a", "rejected": "b", "split": "dev"}', "unknown split 'dev'"),
    ('{"prompt": "hi", "chosen": 3, "rejected": "b"}', '"chosen" is empty'),
    ("[1, 2]", "expected an object"),
    ("{not json", "bad JSON"),
])
def test_bad_pair_lines_are_refused_with_file_line_and_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "fine", "chosen": "a", "rejected": "b"}\n\n' + line + "\n")
    with pytest.raises(DataError) as raised:
        read_pairs(path)
    assert f"{path}:3: " in str(raised.value) and reason in str(raised.value)
    kept = read_pairs(path, skip_invalid=True)
    assert len(kept.pairs) == 1 and len(kept.skipped) == 1


def test_the_split_is_deterministic_and_follows_split_fields(tmp_path: Path) -> None:
    records = pair_lines(40)
    forward = read_pairs(write_jsonl(tmp_path / "a.jsonl", records)).pairs
    backward = read_pairs(write_jsonl(tmp_path / "b.jsonl", records[::-1])).pairs
    train, val = split_pairs(forward, 0.1)
    assert len(val) == 4 and len(train) == 36
    assert {p.chosen for p in val} == {p.chosen for p in split_pairs(backward, 0.1)[1]}
    labelled = read_pairs(write_jsonl(tmp_path / "c.jsonl", [{**r, "split": "val" if i < 2 else "train"}
                                                             for i, r in enumerate(records)])).pairs
    assert [p.source for p in split_pairs(labelled, 0.1)[1]] == ["c.jsonl:1", "c.jsonl:2"]


def test_the_default_rate_and_beta_depend_on_whether_the_run_also_learns_conversations() -> None:
    cpu = torch.device("cpu")
    alone = DPOConfig(data="pairs.jsonl", method="lora").resolved(cpu, 20)
    combined = DPOConfig(data="pairs.jsonl", method="lora", sft_data=["chats.jsonl"]).resolved(cpu, 20)
    assert (alone.lr, alone.beta) == (DPO_LEARNING_RATES["lora"], DEFAULT_BETA) == (7e-4, 0.05)
    assert (combined.lr, combined.beta) == (COMBINED_LEARNING_RATES["lora"], COMBINED_BETA) == (1e-3, 0.1)
    given = DPOConfig(data="pairs.jsonl", method="lora", sft_data=["chats.jsonl"], beta=0.3, lr=2e-4).resolved(cpu, 20)
    assert (given.lr, given.beta) == (2e-4, 0.3)


def test_a_dpo_run_learns_the_preference_and_writes_a_complete_run_dir(
    tiny_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    config = make_config(tiny_dir, pairs_file, tmp_path / "run", epochs=8, lr=1e-2, no_eval=False, beta=0.1)
    run_dir = run_dpo(config, ProgressReporter("none"))
    log = events(run_dir)
    before, after = [next(e for e in log if e["event"] == "eval" and e["stage"] == s) for s in ("before", "after")]
    assert before["reward_accuracy"] == 0 and before["reward_margin"] == 0  # the model is its reference
    assert after["reward_accuracy"] == 1 and after["reward_margin"] > 0.2
    steps = [e for e in log if e["event"] == "step"]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3) and steps[-1]["loss"] < 0.6
    start = next(e for e in log if e["event"] == "start")
    assert start["objective"] == "dpo" and start["train_pairs"] == 22 and start["val_pairs"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["after"]["reward_accuracy"] == 1 and metrics["retention"] is not None
    report = (run_dir / "report.md").read_text()
    assert "| preference accuracy (implicit reward margin > 0) | 0% | 100% |" in report
    assert "## Retention" in report and "## Sample replies" in report
    for name in ("COMPLETE", "train_config.json", "model.safetensors", "loss.png"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / rundir.TRAIN_CONFIG).read_text())["config"]["beta"] == 0.1
    assert (run_dir / "report.md").stat().st_mode & 0o077 == 0  # private, as every run file
    # Its speed is what `/train`'s estimate learns from, as an SFT run's is (both sides of a pair and the reference).
    timings = [json.loads(line) for line in (tmp_path / "home" / "runs" / "timings.jsonl").read_text().splitlines()]
    assert timings[-1]["phases"]["reference"]["tokens"] > 0 and timings[-1]["phases"]["train"]["tokens"] > 0


def test_a_replay_batch_weighs_replay_weight_and_never_shares_a_batch(tiny_dir: Path) -> None:
    loaded, pairs = rendered(tiny_dir)
    examples = [p.chosen for p in pairs]
    model = PreferenceLossModel(loaded.model, 0.1)
    plain = model(**MixedCollator(loaded.tokenizer.pad_token_id)(examples)).item()
    replayed = MixedCollator(loaded.tokenizer.pad_token_id, replay_weight=0.25)([Replayed(e) for e in examples])
    assert model(**replayed).item() == pytest.approx(plain * 0.25, rel=1e-5)
    sampler = KindGroupedBatches([[5] * 3, [6] * 2, [7] * 5], micro_batch=2, seed=0)
    kinds = [{"pair" if i < 3 else "chat" if i < 5 else "replay" for i in b} for b in sampler.batches()]
    assert all(len(k) == 1 for k in kinds) and len(kinds) == len(sampler) == 2 + 1 + 3


def test_replay_is_mixed_in_and_distilled_from_the_base_model_as_sfts_is(
    tiny_dir: Path, pairs_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    can_replay_answers(monkeypatch)
    run_dir = run_dpo(make_config(tiny_dir, pairs_file, tmp_path / "run", replay=5, no_replay=False),
                      ProgressReporter("none"))
    replayed = [json.loads(line) for line in (run_dir / "replay.jsonl").read_text().splitlines()]
    assert len(replayed) == 5 and replayed[0]["messages"][1]["content"] == "hello world."
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["replay"]["conversations"] == 5 and metrics["replay"]["loss"] == "kl"
    assert metrics["phases"]["distill"]["tokens"] > 0
    start = next(e for e in events(run_dir) if e["event"] == "start")
    assert start["replay_conversations"] == 5 and start["train_pairs"] == 22
    assert "- replay: 5 general conversations answered by the base model" in (run_dir / "report.md").read_text()
    # By default as SFT's for the conversations learned by cross-entropy (3: 16 replayed), none on pairs alone.
    chats = write_jsonl(tmp_path / "chats.jsonl", chat_lines(3))
    default = run_dpo(make_config(tiny_dir, pairs_file, tmp_path / "default", max_steps=1, no_replay=False,
                                  sft_data=[str(chats)]), ProgressReporter("none"))
    assert json.loads((default / "metrics.json").read_text())["replay"]["conversations"] == 16
    alone = run_dpo(make_config(tiny_dir, pairs_file, tmp_path / "alone", max_steps=1, no_replay=False),
                    ProgressReporter("none"))
    assert json.loads((alone / "metrics.json").read_text())["replay"]["conversations"] == 0
    off = run_dpo(make_config(tiny_dir, pairs_file, tmp_path / "off", max_steps=1), ProgressReporter("none"))
    assert json.loads((off / "metrics.json").read_text())["replay"]["conversations"] == 0
    assert not (off / "replay.jsonl").exists()


def test_resume_after_a_signal_ends_where_an_uninterrupted_run_ends(
    tiny_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    whole = run_dpo(make_config(tiny_dir, pairs_file, tmp_path / "whole"), ProgressReporter("none"))
    config = make_config(tiny_dir, pairs_file, tmp_path / "cut")
    with pytest.raises(TrainingStopped):
        run_dpo(config, SignalAtStep(3))
    assert not (tmp_path / "cut" / rundir.COMPLETE).exists()
    with pytest.raises(SettingsError, match="settings changed .*--beta"):
        run_dpo(dataclasses.replace(config, resume=True, beta=0.5), ProgressReporter("none"))
    resumed = run_dpo(dataclasses.replace(config, resume=True), ProgressReporter("none"))
    ends = [[e for e in events(d) if e["event"] == "step"][-1] for d in (whole, resumed)]
    assert ends[0]["step"] == ends[1]["step"] == 12
    assert ends[1]["loss"] == pytest.approx(ends[0]["loss"], rel=1e-4)


def test_the_command_line_runs_dpo_and_refuses_bad_files_in_one_line(
    tiny_dir: Path, pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a", "rejected": "a"}\n')
    assert trainer_main(["dpo", "--data", str(bad), "--model", str(tiny_dir), "--progress", "none"]) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: {bad}:1: \"chosen\" and \"rejected\" are the same")
    assert trainer_main(["dpo", "--data", str(pairs_file), "--beta", "0", "--progress", "none"]) == 1
    assert "--beta must be positive" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert trainer_main(["dpo", "--data", str(pairs_file), "--model", str(tiny_dir), "--out", str(out),
                         "--home", str(tmp_path / "home"), "--max-steps", "2", "--no-eval", "--threads", "1",
                         "--progress", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "done" and lines[-1]["metrics"]["objective"] == "dpo"


def test_tui_chat_train_dpo_runs_the_dpo_command(tiny_dir: Path, pairs_file: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tui_chat.cli import main as cli_main

    out = tmp_path / "via-cli"
    result = CliRunner().invoke(cli_main, [
        "--home", str(tmp_path / "home"), "train", "dpo", "--data", str(pairs_file), "--model", str(tiny_dir),
        "--out", str(out), "--max-steps", "1", "--no-eval", "--threads", "1", "--progress", "none",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["objective"] == "dpo"
