"""The decode step compiled ahead of time (tui_chat/inference/decode_package.py): built by a compiling decoder, loaded
by later ones that do not compile, the same logits as the eager step, keyed by the weights, and a broken file
replaced rather than trusted."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tui_chat.inference import decoding
from tui_chat.inference.build_package import build_command, build_elsewhere
from tui_chat.inference.decode_package import matches_eager, package_file
from tui_chat.inference.decoding import Decoder

from .test_kv_buffer import grouped_model, logits_with_decoder
from .tiny_models import save_tiny_model

CPU = torch.device("cpu")


def test_the_package_is_built_once_then_loaded_by_a_decoder_that_does_not_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decoding, "MIN_STATIC_CAPACITY", 16)  # the conversation below outgrows its first buffer
    model = grouped_model()
    threads = torch.get_num_threads()
    path = tmp_path / "compile-cache" / "tiny-0123456789abcdef.pt2"
    path.parent.mkdir()
    path.write_bytes(b"a package cut short")
    older, other_model = path.with_name("tiny-fedcba9876543210.pt2"), path.with_name("tiny-chat-0000000000000000.pt2")
    older.write_bytes(b"the same model's weights before training again")
    other_model.write_bytes(b"another model's")

    # A process that does not compile never trusts a broken file: it removes it and decodes eagerly.
    reader = Decoder(model, CPU, 256, compile=False, threads=threads, package_file=path)
    reader.warm_up(wait=True)
    assert reader.compile_state == "off" and not path.exists()
    assert reader._step_for(0) == reader.eager_step

    builder = Decoder(model, CPU, 256, compile=True, threads=threads, package_file=path)
    builder.warm_up(wait=True)
    assert builder.compile_state == "ready" and not builder.compile_cached
    assert path.is_file() and path.stat().st_mode & 0o077 == 0  # private, like the rest of the data home
    assert not older.exists() and other_model.exists()  # only the same name's stale package goes

    ids, steps = [5, 17, 42, 99, 7, 3], list(range(50, 70))  # 26 positions: past the first capacity of 16
    expected = logits_with_decoder(Decoder(model, CPU, 256, compile=False), ids, steps)
    user = Decoder(model, CPU, 256, compile=False, threads=threads, package_file=path)
    user.warm_up(wait=True)
    assert user.compile_state == "ready" and user.compile_cached
    calls = []
    runner = user.compiled_step.runner
    user.compiled_step.runner = lambda *args: calls.append(1) or runner(*args)
    got = logits_with_decoder(user, ids, steps)
    assert len(calls) == len(steps)  # every decode step ran the package (the prompt is the eager prefill)
    torch.testing.assert_close(torch.stack(got), torch.stack(expected), atol=1e-4, rtol=1e-4)  # float32


def test_the_check_against_the_eager_step_refuses_a_step_that_differs() -> None:
    model = grouped_model()
    decoder = Decoder(model, CPU, 256, compile=False)
    shape = decoder.layout.buffer_shape
    assert matches_eager(decoder.eager_step, decoder.eager_step, model, shape)
    assert not matches_eager(lambda *args: 2 * decoder.eager_step(*args), decoder.eager_step, model, shape)


def test_the_package_file_is_keyed_by_the_weights_and_settings(tmp_path: Path) -> None:
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    source = save_tiny_model(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(source)
    path = package_file(models, model, "runs/my run", str(source), "none", 1)
    assert path is not None and path.parent == tmp_path / "home" / "compile-cache" and " " not in path.name
    assert path == package_file(models, model, "runs/my run", str(source), "none", 1)
    others = {
        package_file(models, model, "other", str(source), "none", 1),
        package_file(models, model, "runs/my run", str(source), "int4", 1),
        package_file(models, model, "runs/my run", str(source), "none", 2),
    }
    weights = next(source.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))  # trained again, same name
    others.add(package_file(models, model, "runs/my run", str(source), "none", 1))
    assert len(others | {path}) == 5
    assert package_file(tmp_path / "missing", model, "x", str(source), "none", 1) is None  # no data home


def test_a_decoder_without_a_kv_buffer_has_no_package(tmp_path: Path) -> None:
    model = grouped_model()
    model.set_attn_implementation("sdpa")  # attention that cannot read the buffer: transformers' caches instead
    decoder = Decoder(model, CPU, 256, compile=False, package_file=tmp_path / "x.pt2")
    assert decoder.layout.kind == "dynamic" and decoder.package_file is None and decoder.compile_state == "off"


def test_a_build_in_its_own_process_that_fails_says_why_in_one_line(tmp_path: Path) -> None:
    command = build_command(str(tmp_path / "no-such-model"), tmp_path, tmp_path / "x.pt2", {"threads": 1})
    assert command[-2:] == ["--threads", "1"] and command[command.index("--parent") + 1] == str(os.getpid())
    with pytest.raises(RuntimeError, match=r"^building the decode package failed: .*no-such-model") as failure:
        build_elsewhere(command)
    assert "\n" not in str(failure.value) and not (tmp_path / "x.pt2").exists()


def test_a_build_whose_waiting_process_is_gone_leaves_at_once(tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "model")
    command = build_command(str(source), tmp_path, tmp_path / "x.pt2", {"threads": 1})
    command[command.index("--parent") + 1] = "1"  # not its parent: as if the engine's process had been killed
    result = subprocess.run(command, capture_output=True, timeout=120, start_new_session=True)  # as build_elsewhere
    assert result.returncode == -signal.SIGKILL and not (tmp_path / "x.pt2").exists()  # its whole group, killed
