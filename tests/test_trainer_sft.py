"""The SFT loop on a tiny model: learning, LoRA merge, checkpoints and resume, run dirs, progress, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from click.testing import CliRunner
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from trainer import rundir
from trainer.__main__ import main as trainer_main
from trainer.batching import Collator
from trainer.chat_template import ensure_chat_template
from trainer.config import SFTConfig
from trainer.data import Conversation
from trainer.loss import TokenLossModel, summed_token_loss
from trainer.models import load_model
from trainer.progress import ProgressReporter
from trainer.render import render_conversations
from trainer.rundir import RunDirError
from trainer.loop import TrainingStopped, backward_step
from trainer.sft import SettingsError, run_sft
from tui_chat.cli import main as cli_main
from tui_chat.inference.hf_engine import HFEngine
from tui_chat.inference.contract import GenerationParams, GenerationStats, TextDelta

from .train_fixtures import SignalAtStep
from .tiny_models import save_tiny_model, tiny_tokenizer
from .tiny_datasets import chat_lines, write_jsonl


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "chats.jsonl", chat_lines(24))


def make_config(tiny_dir: Path, data: Path, out: Path, **changes) -> SFTConfig:
    base = SFTConfig(
        data=str(data), model=str(tiny_dir), out=str(out), home=str(out.parent / "home"), threads=1,
        progress="none", eval_samples=2, max_new_tokens=8, micro_batch=4, grad_accum=2, epochs=2,
    )
    return dataclasses.replace(base, **changes)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / rundir.PROGRESS_LOG).read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_full_fine_tune_learns_and_writes_a_complete_run_dir(tiny_dir: Path, data: Path, tmp_path: Path) -> None:
    config = make_config(tiny_dir, data, tmp_path / "run", method="full", lr=3e-3, epochs=6)
    run_dir = run_sft(config, ProgressReporter("none"))
    steps = [e for e in events(run_dir) if e["event"] == "step"]
    assert len(steps) == 18  # 22 train conversations / (4 x 2) = 3 steps per epoch, 6 epochs
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["after"]["val_loss"] < metrics["before"]["val_loss"]
    before, after = weights(tiny_dir), weights(run_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for name in ("COMPLETE", "train_config.json", "metrics.json", "loss.png", "report.md", "config.json",
                 "tokenizer.json", "chat_template.jinja"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / rundir.CHECKPOINTS).exists()
    assert "| perplexity |" in (run_dir / "report.md").read_text()
    loaded = load_model(str(run_dir), models_dir=tmp_path / "home" / "models", device="cpu")
    assert loaded.tokenizer.chat_template == ensure_chat_template(tiny_tokenizer()).chat_template
    # The chat's engine loads the run and replies.
    engine = HFEngine(str(run_dir), tmp_path / "home" / "models", device="cpu")
    engine.load()
    chunks = list(engine.stream([{"role": "user", "content": "hello"}], GenerationParams(max_new_tokens=4)))
    assert chunks and all(isinstance(c, (TextDelta, GenerationStats)) for c in chunks)


def test_loss_is_normalised_over_the_whole_accumulation_step(tiny_dir: Path) -> None:
    """Two micro-batches of different sizes give the gradient of one batch holding both: every assistant token
    weighs the same (a per-micro-batch mean would weigh the short conversation's tokens more)."""
    tokenizer = ensure_chat_template(tiny_tokenizer())
    records = chat_lines(3, seed=3)
    conversations = [Conversation(tuple(r["messages"]), "x") for r in records]
    examples = render_conversations(tokenizer, conversations, None).examples
    assert len({e.n_assistant for e in examples}) > 1
    collate = Collator(tokenizer.pad_token_id)
    accelerator = Accelerator(cpu=True)
    grads = []
    for group in ([collate(examples)], [collate(examples[:1]), collate(examples[1:])]):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        backward_step(accelerator, TokenLossModel(model), group, torch.enable_grad)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_output_layer_shortcut_gives_the_full_forward_loss(tmp_path: Path, arch: str) -> None:
    """Only assistant positions go through the output layer; the loss and gradients equal those of the plain
    forward (all logits, then the mask)."""
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path / arch, arch=arch))
    tokenizer = ensure_chat_template(tiny_tokenizer())
    conversations = [Conversation(tuple(r["messages"]), "x") for r in chat_lines(3, seed=5)]
    batch = Collator(tokenizer.pad_token_id)(render_conversations(tokenizer, conversations, None).examples)
    fast, count = summed_token_loss(model, batch)
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plain = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )
    plain.backward()
    assert count == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-5)
    for a, p in zip(fast_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_lora_without_input_round_trips_gives_the_same_bf16_step(tiny_dir: Path) -> None:
    """Training skips peft's cast of a LoRA layer's input to fp32 (autocast casts it back to bf16 at once): the loss
    and the LoRA gradients are those of the step with the casts."""
    from peft.helpers import disable_input_dtype_casting

    tokenizer = ensure_chat_template(tiny_tokenizer())
    conversations = [Conversation(tuple(r["messages"]), "x") for r in chat_lines(3, seed=5)]
    batch = Collator(tokenizer.pad_token_id)(render_conversations(tokenizer, conversations, None).examples)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16), lora)
    results = []
    for skip in (False, True):
        model.zero_grad()
        with disable_input_dtype_casting(model, active=skip), torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = summed_token_loss(model, batch)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (loss, grads), (skipped_loss, skipped_grads) = results
    torch.testing.assert_close(skipped_loss, loss)
    for a, b in zip(grads, skipped_grads):
        torch.testing.assert_close(a, b)


def test_lora_merge_reproduces_the_adapter_model(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    # init_lora_weights=False: B is random too, so the adapter really changes the output.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, lora).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_dir)(input_ids=ids).logits
        adapter_logits = peft_model(input_ids=ids).logits
        merged_logits = peft_model.merge_and_unload()(input_ids=ids).logits
    assert not torch.allclose(base_logits, adapter_logits, atol=1e-3)
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-4)


def test_lora_run_saves_merged_model_or_adapter(tiny_dir: Path, data: Path, tmp_path: Path) -> None:
    config = make_config(tiny_dir, data, tmp_path / "merged", max_steps=2, no_eval=True)
    merged = run_sft(config, ProgressReporter("none"))
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    adapter = run_sft(
        make_config(tiny_dir, data, tmp_path / "adapter", max_steps=2, no_eval=True, keep_adapter=True),
        ProgressReporter("none"),
    )
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)
    # The merged model is saved in the dtype the chat loads on CPU (half of fp32's disk); the adapter, merged into
    # its fp32 base by the loader, is the same model before that one rounding (same seed, same training).
    saved = weights(merged)
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    models_dir = tmp_path / "home" / "models"
    from_adapter = load_model(str(adapter), models_dir=models_dir, device="cpu", dtype="float32").model.state_dict()
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, from_adapter[name].to(torch.bfloat16), atol=1e-6, rtol=2**-8)
    # and the chat's loader takes it as it is
    loaded = load_model(str(merged), models_dir=models_dir, device="cpu")
    assert loaded.dtype == torch.bfloat16 and next(loaded.model.parameters()).dtype == torch.bfloat16


def test_signal_checkpoints_and_resume_continues_exactly(tiny_dir: Path, data: Path, tmp_path: Path) -> None:
    straight = run_sft(make_config(tiny_dir, data, tmp_path / "straight", no_eval=True), ProgressReporter("none"))
    config = make_config(tiny_dir, data, tmp_path / "stopped", no_eval=True)
    with pytest.raises(TrainingStopped, match="SIGTERM at step 4"):
        run_sft(config, SignalAtStep(4))
    run_dir = tmp_path / "stopped"
    assert rundir.is_run_dir(run_dir) and not rundir.is_complete(run_dir)
    assert events(run_dir)[-1]["event"] == "stopped"
    assert rundir.latest_checkpoint(run_dir).name == "step-000004"
    with pytest.raises(RunDirError, match="--resume"):
        run_sft(config, ProgressReporter("none"))

    run_sft(dataclasses.replace(config, resume=True), ProgressReporter("none"))
    log = events(run_dir)
    start = [e for e in log if e["event"] == "start"]
    assert [e["start_step"] for e in start] == [0, 4]
    assert [e["step"] for e in log if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert rundir.is_complete(run_dir)
    # Weights, optimizer, scheduler, RNG (LoRA dropout) and data position all restored: the same model results.
    for name, tensor in weights(straight).items():
        torch.testing.assert_close(weights(run_dir)[name], tensor, atol=1e-6, rtol=1e-5)


def test_resume_refuses_changed_data_or_settings(tiny_dir: Path, data: Path, tmp_path: Path) -> None:
    config = make_config(tiny_dir, data, tmp_path / "run", no_eval=True)
    with pytest.raises(TrainingStopped):
        run_sft(config, SignalAtStep(1))
    resume = dataclasses.replace(config, resume=True)
    with pytest.raises(SettingsError, match="--lr"):
        run_sft(dataclasses.replace(resume, lr=1e-2), ProgressReporter("none"))
    write_jsonl(data, chat_lines(25))
    with pytest.raises(SettingsError, match="dataset changed"):
        run_sft(resume, ProgressReporter("none"))


def test_a_run_started_before_a_setting_existed_resumes_with_what_it_did(
    tiny_dir: Path, data: Path, tmp_path: Path
) -> None:
    config = make_config(tiny_dir, data, tmp_path / "run", no_eval=True)
    with pytest.raises(TrainingStopped):
        run_sft(config, SignalAtStep(1))
    saved_path = tmp_path / "run" / "train_config.json"
    saved = json.loads(saved_path.read_text())
    del saved["config"]["replay_sentences"]  # as a run started before --replay-sentences existed wrote it
    saved_path.write_text(json.dumps(saved))
    resume = dataclasses.replace(config, resume=True)
    # it replayed whole answers; the default now cuts them, and the error says what the run did
    with pytest.raises(SettingsError, match="before that option existed: --replay-sentences 0"):
        run_sft(resume, ProgressReporter("none"))
    run_dir = run_sft(dataclasses.replace(resume, replay_sentences=0), ProgressReporter("none"))
    assert (run_dir / "COMPLETE").exists()


def test_finished_run_dirs_are_not_overwritten(tiny_dir: Path, data: Path, tmp_path: Path) -> None:
    config = make_config(tiny_dir, data, tmp_path / "run", max_steps=1, no_eval=True)
    run_sft(config, ProgressReporter("none"))
    with pytest.raises(RunDirError, match="finished run"):
        run_sft(config, ProgressReporter("none"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        run_sft(make_config(tiny_dir, data, tmp_path / "other"), ProgressReporter("none"))


def test_json_progress_stream(tiny_dir: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    home = tmp_path / "home"
    status = trainer_main(
        ["sft", "--data", str(data), "--model", str(tiny_dir), "--home", str(home), "--threads", "1",
         "--max-steps", "3", "--eval-samples", "1", "--max-new-tokens", "4", "--progress", "json"]
    )
    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in lines]
    assert kinds.index("start") < kinds.index("step") < kinds.index("done")
    assert kinds.count("eval") == 2 and kinds[-1] == "done"
    for step in (e for e in lines if e["event"] == "step"):
        assert set(step) >= {"step", "total", "loss", "lr", "tokens_per_s", "eta_s", "time"}
        assert step["total"] == 3 and step["tokens_per_s"] > 0
    run_dir = Path(lines[-1]["run_dir"])
    assert run_dir.parent == home / "models" and run_dir.name.startswith("model-sft-")
    # progress.jsonl holds the same stream from the start event on (plots and the app read it).
    assert events(run_dir) == lines[kinds.index("start"):]


def test_json_error_line_for_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert trainer_main(["sft", "--data", str(bad), "--home", str(tmp_path), "--progress", "json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in lines] == ["error"]
    assert lines[0]["message"].startswith(f"{bad}:1: no assistant turn")


def test_eval_command(tiny_dir: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = trainer_main(
        ["eval", "--data", str(data), "--model", str(tiny_dir), "--home", str(tmp_path), "--samples", "2",
         "--max-new-tokens", "4", "--progress", "json"]
    )
    assert status == 0
    result = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"eval"' in line][0]
    assert result["samples"] == 2 and result["val_tokens"] > 0 and result["val_ppl"] > 1


def test_tui_chat_train_forwards_to_the_trainer(tiny_dir: Path, data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    help_result = runner.invoke(cli_main, ["train", "--help"])
    assert help_result.exit_code == 0 and "--grad-accum" in help_result.output
    home = tmp_path / "home"
    result = runner.invoke(
        cli_main,
        ["--home", str(home), "train", "--data", str(data), "--model", str(tiny_dir), "--out", str(tmp_path / "mine"),
         "--max-steps", "1", "--no-eval", "--threads", "1", "--progress", "none"],
    )
    assert result.exit_code == 0, result.output
    assert rundir.is_complete(tmp_path / "mine")
    assert (home / "models").is_dir()  # --home from the group reached the trainer


def test_a_bad_model_spec_leaves_no_run_dir(data: Path, tmp_path: Path) -> None:
    from trainer.models import ModelError

    config = make_config(tmp_path / "no-such-model", data, tmp_path / "run")
    with pytest.raises(ModelError):
        run_sft(config, ProgressReporter("none"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_processes_under_torchrun(tiny_dir: Path, data: Path, tmp_path: Path) -> None:
    """`torchrun` / `accelerate launch` run data-parallel: each process takes half the batches, one writes."""
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "trainer", "sft",
        "--data", str(data), "--model", str(tiny_dir), "--out", str(tmp_path / "run"), "--home", str(tmp_path),
        "--threads", "1", "--epochs", "2", "--save-every", "2", "--eval-samples", "1", "--max-new-tokens", "4",
        "--progress", "json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in lines].count("start") == 1  # only the main process reports
    done = lines[-1]
    assert done["event"] == "done" and done["metrics"]["processes"] == 2
    # 22 conversations = 6 micro-batches of 4: 3 per process, 2 optimizer steps per epoch each.
    assert done["metrics"]["steps"] == 4
    assert rundir.is_complete(tmp_path / "run")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_trains(tiny_dir: Path, data: Path, tmp_path: Path, method: str) -> None:
    config = make_config(
        tiny_dir, data, tmp_path / "run", method=method, max_steps=2, no_eval=True, gradient_checkpointing=True
    )
    run_dir = run_sft(config, ProgressReporter("none"))
    assert json.loads((run_dir / "config.json").read_text())["use_cache"] is True  # the chat needs its KV cache
    assert any(not torch.equal(weights(tiny_dir)[k], v) for k, v in weights(run_dir).items())


@pytest.mark.parametrize("raised", ["oserror", "library"])
def test_a_full_disk_while_saving_is_one_error_line_and_no_model(
    tiny_dir: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    raised: str,
) -> None:
    import errno
    import os

    from transformers import PreTrainedModel

    def full(self, *args, **kwargs) -> None:
        if raised == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        # safetensors' own error type, which carries only the system's message (as seen when /tmp filled up)
        raise RuntimeError(f"Error while serializing: I/O error: {os.strerror(errno.ENOSPC)} (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    home = tmp_path / "home"
    status = trainer_main(
        ["sft", "--data", str(data), "--model", str(tiny_dir), "--home", str(home), "--threads", "1",
         "--max-steps", "1", "--no-eval", "--no-replay", "--progress", "json"]
    )
    assert status == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = [e["message"] for e in lines if e["event"] == "error"]
    assert len(errors) == 1 and errors[0].startswith("no space left on the disk: free some space")
    assert not list(home.glob("models/*/COMPLETE"))  # nothing that loads as a model
