"""The bundled model on a GPU, in one run of a few minutes: decode speed and time to first token of transformers'
``generate`` (eager, bf16) against the chat's engine, and SFT tokens/s with its MFU.

    python -m bench gpu                       # on CUDA (the numbers the README asks for)
    python -m bench gpu --device cpu --quick  # the dry run the test suite does, so this script never rots

- HF generate: eager bf16, greedy with the app's default settings (the ids and GenerationConfig the engine uses).
- engine: ``HFEngine.stream`` as the chat and the server run it; on CUDA its decode step runs over a static KV cache,
  compiled with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: tui_chat/inference/decoding.py). The compile
  is waited for before the row is timed, as the server's second reply would find it. ``--quick`` leaves the compile
  out (on CPU it takes minutes); the code path is otherwise the same.
- SFT: ``trainer.sft.run_sft`` with the device's defaults (a full fine-tune in bf16 on CUDA) on bench/train.py's chat
  data, a larger micro-batch so a small model keeps a GPU busy; tokens/s counts real (non-padding) tokens over the
  training steps, the first (warm-up) included, and its MFU (bench/mfu.py: the peak FLOP/s of known cards).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from trainer.config import SFTConfig
from trainer.home import DataHome
from trainer.model_names import BUNDLED_ALIASES, BUNDLED_NAME
from trainer.models import ensure_bundled, load_model
from trainer.progress import ProgressReporter
from trainer.sft import run_sft
from tui_chat.inference.contract import GenerationParams, GenerationStats
from tui_chat.inference.hf_engine import HFEngine

from .mfu import mfu_line
from .train import chat_data

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]


@dataclass(frozen=True)
class Settings:
    """How big each part of the run is: the full run on a GPU, or the dry run's handful of tokens."""

    new_tokens: int  # decoded per reply
    repeats: int  # replies per row (the best one counts)
    compile: bool  # the engine's compiled decode step
    conversations: int  # SFT data
    micro_batch: int
    max_steps: int


FULL = Settings(new_tokens=256, repeats=3, compile=True, conversations=1024, micro_batch=32, max_steps=300)
QUICK = Settings(new_tokens=8, repeats=1, compile=False, conversations=8, micro_batch=2, max_steps=2)


@dataclass(frozen=True)
class DecodeRow:
    label: str
    new_tokens: int
    ttft_s: float
    tokens_per_s: float  # after the first token


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _FirstToken(BaseStreamer):
    """Notes when ``generate`` hands over its first new token (its first ``put`` is the prompt)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.puts = 0
        self.first_at = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            _synchronize(self.device)
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


def hf_generate_row(model: torch.nn.Module, engine: HFEngine, settings: Settings) -> DecodeRow:
    """transformers ``generate`` (eager) on the ids and generation settings the engine uses; best of the repeats."""
    device = next(model.parameters()).device
    ids = torch.tensor([engine.prompt_ids(PROMPT)], device=device)
    config = engine.generation_config(GenerationParams(temperature=0), settings.new_tokens)
    best: DecodeRow | None = None
    for _ in range(settings.repeats):
        first = _FirstToken(device)
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=first
            )
        _synchronize(device)
        seconds = time.perf_counter() - started
        new = output.shape[1] - ids.shape[1]
        ttft = first.first_at - started
        row = DecodeRow("HF generate, eager bf16", new, ttft, (new - 1) / (seconds - ttft) if new > 1 else 0.0)
        best = row if best is None or row.tokens_per_s > best.tokens_per_s else best
    assert best is not None
    return best


def engine_row(engine: HFEngine, settings: Settings) -> DecodeRow:
    """``engine.stream`` on the same prompt, the prompt cache emptied before each reply; best of the repeats."""
    params = GenerationParams(temperature=0, max_new_tokens=settings.new_tokens)
    # The compile's state: "ready", or why it failed (then the row is the eager step's).
    label = f"engine, compiled ({engine.decoder.compile_state})" if settings.compile else "engine, eager (--quick)"
    best: DecodeRow | None = None
    for _ in range(settings.repeats):
        engine.decoder.prompt_cache.clear()  # every reply encodes the whole prompt, as HF generate does
        stats = [c for c in engine.stream(PROMPT, params) if isinstance(c, GenerationStats)][0]
        row = DecodeRow(label, stats.new_tokens, stats.ttft_s, stats.tokens_per_s)
        best = row if best is None or row.tokens_per_s > best.tokens_per_s else best
    assert best is not None
    return best


def sft_metrics(model: str, home: DataHome, settings: Settings, tmp: Path) -> dict:
    """``run_sft`` with the defaults of the device it picks (CUDA where there is one) on chat data; returns its
    metrics.json."""
    data = tmp / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_data(settings.conversations)))
    config = SFTConfig(
        data=str(data), model=model, home=str(home.root), out=str(tmp / "sft"),
        val_fraction=0.0, no_eval=True, no_replay=True, max_length=320, micro_batch=settings.micro_batch,
        grad_accum=1, max_steps=settings.max_steps, save_every=0, progress="none",
    )
    run_dir = run_sft(config, ProgressReporter("none"))
    return json.loads((run_dir / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the dry run)")
    parser.add_argument("--quick", action="store_true", help="a handful of tokens and steps: checks the script runs")
    parser.add_argument("--model", default="default", help="model spec (default: the bundled model)")
    parser.add_argument("--home", default=None, help="data home (default: tui-chat's)")
    args = parser.parse_args(argv or [])  # `python -m bench gpu` hands over only what follows the name
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; `python -m bench gpu --device cpu --quick` is the dry run")
    settings = QUICK if args.quick else FULL
    home = DataHome.locate(args.home).ensure()
    if args.model == BUNDLED_NAME or args.model in BUNDLED_ALIASES:
        ensure_bundled(home.models, progress=lambda what, _: print(f"  {what}", flush=True))
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; model {args.model}", flush=True)

    # bf16 without int4: the GPU's own precision, and the same weights for both rows.
    engine = HFEngine(args.model, home.models, device=str(device), dtype="bfloat16", compile=settings.compile,
                      quantize="none")
    engine.load()
    compile_started = time.perf_counter()
    engine.decoder.warm_up(wait=True)
    compile_s = time.perf_counter() - compile_started
    hf_model = load_model(args.model, models_dir=home.models, device=str(device), dtype="bfloat16").model
    rows = [hf_generate_row(hf_model, engine, settings), engine_row(engine, settings)]
    del hf_model, engine
    print(f"decode ({settings.new_tokens} new tokens at most, greedy, best of {settings.repeats}; "
          f"the engine's compile took {compile_s:.1f} s):")
    for row in rows:
        ratio = row.tokens_per_s / rows[0].tokens_per_s if rows[0].tokens_per_s else 0.0
        print(f"  {row.label:<40} TTFT {row.ttft_s:7.4f} s  {row.tokens_per_s:8.1f} tok/s  {ratio:5.2f}x  "
              f"({row.new_tokens} tokens)")

    with tempfile.TemporaryDirectory() as tmp:
        metrics = sft_metrics(args.model, home, settings, Path(tmp))
    print(f"SFT ({metrics['method']}, {metrics['precision']}, {settings.conversations} conversations, micro-batch "
          f"{settings.micro_batch}, {metrics['steps']} steps, {metrics['device']}): "
          f"{metrics['tokens_per_s']:.0f} tokens/s")
    print(f"  {mfu_line(torch.device(metrics['device']), metrics['parameters'], metrics['tokens_per_s'])}")
    print(f"total: {time.perf_counter() - started:.0f} s")
