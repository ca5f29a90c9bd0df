"""The model resolver: every kind of spec, the one-time bundled conversion, and the errors users can cause."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trainer import devices
from trainer.chat_template import DEFAULT_CHAT_TEMPLATE
from trainer.devices import CPU_DEFAULT_DTYPE, inference_threads, pick_device, pick_dtype
from trainer.model_names import list_local_models
from trainer.models import (
    BUNDLED_DIR,
    ModelError,
    ensure_bundled,
    load_model,
    resolve_spec,
)

from .tiny_models import save_tiny_model


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_devices_and_dtypes() -> None:
    assert pick_device(None).type in ("cuda", "mps", "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype(torch.device("cpu"), "fp32") is torch.float32
    assert pick_dtype(torch.device("cpu"), "bfloat16") is torch.bfloat16
    assert pick_dtype(torch.device("cpu"), None) is pick_dtype(torch.device("cpu"), "auto") is CPU_DEFAULT_DTYPE
    with pytest.raises(ValueError, match="choose one of"):
        pick_dtype(torch.device("cpu"), "int3")
    with pytest.raises(ValueError, match="choose one of"):
        pick_device("tpu")


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (3, 2)])
def test_inference_threads_leave_a_core_free(cores: int, expected: int, monkeypatch) -> None:
    monkeypatch.setattr(devices, "_TORCH_DEFAULT_THREADS", 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert inference_threads() == expected


def test_local_directory_loads_with_default_chat_template(tmp_path: Path, models_dir: Path) -> None:
    path = save_tiny_model(tmp_path / "tiny", arch="gpt2", context=96)
    loaded = load_model(str(path), models_dir=models_dir, device="cpu", dtype="float32")
    assert loaded.name == str(path)
    assert loaded.source == str(path.resolve())
    assert loaded.context_limit == 96  # GPT-2's n_positions
    assert loaded.dtype is torch.float32 and loaded.model.dtype == torch.float32
    assert loaded.tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert not loaded.model.training


def test_dtype_override_applies_to_weights(tmp_path: Path, models_dir: Path) -> None:
    path = save_tiny_model(tmp_path / "tiny")
    loaded = load_model(str(path), models_dir=models_dir, device="cpu", dtype="bf16")
    assert loaded.model.dtype == torch.bfloat16


def test_run_name_resolves_under_models_dir(models_dir: Path) -> None:
    save_tiny_model(models_dir / "my-run", context=128)
    assert resolve_spec("my-run", models_dir).kind == "run"
    loaded = load_model("my-run", models_dir=models_dir, device="cpu")
    assert loaded.name == "my-run"
    assert loaded.context_limit == 128


def _save_adapter(base_dir: Path, adapter_dir: Path, base_spec: str) -> torch.Tensor:
    """A LoRA adapter with non-zero weights on ``base_dir``'s model; returns its logits on a fixed input."""
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    torch.manual_seed(1)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero (a no-op adapter): make it change the output
            parameter.data.normal_(0, 0.5)
    peft_model.save_pretrained(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_spec
    config_path.write_text(json.dumps(config))
    return _logits(peft_model, [5, 6, 7])


def test_adapter_dir_applies_adapter_to_base_named_by_run(tmp_path: Path, models_dir: Path) -> None:
    base_dir = save_tiny_model(models_dir / "base-run")
    expected = _save_adapter(base_dir, tmp_path / "adapter", "base-run")
    resolved = resolve_spec(str(tmp_path / "adapter"), models_dir)
    assert resolved.adapter
    loaded = load_model(str(tmp_path / "adapter"), models_dir=models_dir, device="cpu", dtype="float32")
    base_only = load_model("base-run", models_dir=models_dir, device="cpu", dtype="float32")
    assert torch.allclose(_logits(loaded.model, [5, 6, 7]), expected, atol=1e-4)
    assert not torch.allclose(_logits(base_only.model, [5, 6, 7]), expected, atol=1e-3)


def test_adapter_run_with_relative_base_path(models_dir: Path) -> None:
    base_dir = save_tiny_model(models_dir / "base")
    _save_adapter(base_dir, models_dir / "tuned", "../base")
    kinds = {m.name: m.kind for m in list_local_models(models_dir)}
    assert kinds == {"smollm2": "bundled", "base": "model", "tuned": "adapter"}
    assert load_model("tuned", models_dir=models_dir, device="cpu").name == "tuned"


def test_adapter_naming_itself_is_an_error(tmp_path: Path, models_dir: Path) -> None:
    adapter = tmp_path / "loop"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(adapter)}))
    with pytest.raises(ModelError, match="names itself"):
        load_model(str(adapter), models_dir=models_dir, device="cpu")


def _fake_hub_cache(cache: Path, repo_id: str, source: Path) -> None:
    """Lay out ``source``'s files the way huggingface_hub caches a downloaded repo."""
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())


def test_hub_id_loads_from_the_cache_offline(tmp_path: Path, models_dir: Path, monkeypatch) -> None:
    _fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-chat", save_tiny_model(tmp_path / "src"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_spec("tiny-org/tiny-chat", models_dir).kind == "hub"
    loaded = load_model("tiny-org/tiny-chat", models_dir=models_dir, device="cpu")
    assert loaded.name == "tiny-org/tiny-chat"
    assert loaded.source == "tiny-org/tiny-chat"


def test_hub_id_offline_and_not_cached_is_one_clear_line(tmp_path: Path, models_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        load_model("HuggingFaceTB/SmolLM2-360M-Instruct", models_dir=models_dir, device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert "not in the Hugging Face cache" in message and "local directory" in message


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("./no/such/dir", "no model directory"),
        ("", "empty model spec"),
        ("not a model!", "is not a model"),
    ],
)
def test_bad_specs_are_one_clear_line(spec: str, expected: str, models_dir: Path) -> None:
    with pytest.raises(ModelError, match=expected):
        resolve_spec(spec, models_dir)


def test_directory_without_a_model_is_an_error(tmp_path: Path, models_dir: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a model directory"):
        load_model(str(tmp_path / "notes"), models_dir=models_dir, device="cpu")


def test_garbage_config_is_an_error(tmp_path: Path, models_dir: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelError, match="cannot load the model in") as error:
        load_model(str(garbage), models_dir=models_dir, device="cpu")
    assert "\n" not in str(error.value)


def test_bad_dtype_is_a_model_error(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(str(tmp_path), models_dir=models_dir, dtype="int3")


def test_list_local_models_skips_conversions_in_progress(models_dir: Path) -> None:
    save_tiny_model(models_dir / "run-a")
    (models_dir / f".{BUNDLED_DIR}.tmp-123-abc").mkdir()
    (models_dir / "empty").mkdir()
    listed = list_local_models(models_dir)
    assert [(m.name, m.kind, m.ready) for m in listed] == [("smollm2", "bundled", False), ("run-a", "model", True)]


def test_interrupted_conversion_leaves_nothing_behind(models_dir: Path, monkeypatch) -> None:
    """A conversion killed half-way (here: Ctrl+C while reading) leaves no model dir and no temp dir; a temp
    dir abandoned by a dead process is cleaned up by the next conversion."""
    abandoned = models_dir / f".{BUNDLED_DIR}.tmp-999999999-x"
    abandoned.mkdir()
    (abandoned / "model.safetensors").write_bytes(b"half")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_bundled(models_dir)
    assert list(models_dir.iterdir()) == []


def test_incomplete_bundled_dir_names_the_fix(models_dir: Path) -> None:
    (models_dir / BUNDLED_DIR).mkdir()
    with pytest.raises(ModelError, match="delete that directory"):
        ensure_bundled(models_dir)


@pytest.mark.slow
def test_bundled_model_converts_once_then_loads_fast(bundled_models_dir: Path) -> None:
    target = bundled_models_dir / BUNDLED_DIR
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in target.iterdir()
    }
    assert [p.name for p in bundled_models_dir.iterdir()] == [BUNDLED_DIR]  # no temp dirs left
    written = (target / "model.safetensors").stat().st_mtime_ns
    steps: list[str] = []
    started = time.perf_counter()
    loaded = load_model("default", models_dir=bundled_models_dir, progress=lambda what, _: steps.append(what))
    elapsed = time.perf_counter() - started
    assert not any("convert" in step for step in steps)
    assert (target / "model.safetensors").stat().st_mtime_ns == written
    # ~0.4 s on an idle 2-core machine, plus ~0.5 s when torchao is installed (transformers imports it while
    # loading); the bound leaves room for other jobs sharing the CPU.
    assert elapsed < 4.0, f"loading the converted model took {elapsed:.2f} s"
    assert loaded.name == "smollm2"
    assert loaded.context_limit == 8192
    assert loaded.tokenizer.eos_token == "<|im_end|>"
    assert "SmolLM" in loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert os.stat(target).st_mode & 0o077 == 0  # private like the rest of the data home


def test_conversion_failing_to_write_is_one_clear_line(models_dir: Path, monkeypatch) -> None:
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", disk_full)
    with pytest.raises(ModelError, match="No space left on device.*free some disk space"):
        ensure_bundled(models_dir)
    assert list(models_dir.iterdir()) == []


def test_an_unfinished_run_dir_is_not_a_model(tmp_path: Path) -> None:
    """A run dir without the trainer's COMPLETE marker (still training, or crashed) never loads as a model."""
    from trainer import rundir
    from trainer.model_names import ModelError, list_local_models, resolve_spec

    run = tmp_path / "my-run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / rundir.TRAIN_CONFIG).write_text("{}")
    assert "my-run" not in [m.name for m in list_local_models(tmp_path)]
    with pytest.raises(ModelError, match=r"^run my-run is still training \(no model until it finishes\); wait for it"):
        resolve_spec("my-run", tmp_path)
    # How it stands comes from the last event of its progress log (a long log is read from its end).
    steps = "".join(json.dumps({"event": "step", "step": i, "message": "x" * 100}) + "\n" for i in range(1, 2000))
    (run / rundir.PROGRESS_LOG).write_text(steps + json.dumps({"event": "stopped", "step": 1999}) + "\n")
    with pytest.raises(ModelError, match=r"^run my-run was stopped at step 1999 before it finished.*--resume --out"):
        resolve_spec("my-run", tmp_path)
    with (run / rundir.PROGRESS_LOG).open("a") as log:
        log.write(json.dumps({"event": "error", "message": "out of memory"}) + "\n" + '{"event": "st')  # cut short
    with pytest.raises(ModelError, match=r"^run \S*my-run failed \(out of memory\), so it has no model"):
        resolve_spec(str(run), tmp_path)
    (run / rundir.COMPLETE).write_text("{}")
    assert resolve_spec("my-run", tmp_path).kind == "run"
    assert "my-run" in [m.name for m in list_local_models(tmp_path)]
