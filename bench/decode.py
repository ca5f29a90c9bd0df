"""Decode speed of the bundled model, side by side in one run on the same prompt, seed, device and settings:

- raw ``model.generate`` (no streamer) vs ``HFEngine.stream`` (thread, streamer, stop criteria) on the same model
  object: the engine's overhead, target >= 0.97x raw;
- ``tui-chat ask`` end to end (a fresh process: imports, model load, store, terminal output);
- on CPU, the defaults' evidence: float32 vs bfloat16, and the decoding thread count vs torch's default.

tokens/s is new tokens over the whole call's wall time (prefill included), the same for every row. In-process rows
are the best of ``REPEATS`` interleaved runs, and each row says how much CPU other processes used meanwhile
("others"): on a shared machine a row measured while others were busy is not comparable with a quiet one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.devices import inference_threads
from trainer.home import DataHome
from trainer.models import BUNDLED_DIR, ensure_bundled
from tui_chat.engine import HFEngine
from tui_chat.generation import GenerationParams, GenerationStats, TextDelta

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
MESSAGES = [{"role": "user", "content": PROMPT}]
NEW_TOKENS = 64
REPEATS = 2
SEED = 0
# Greedy with the app's default repetition penalty, so `tui-chat ask --temperature 0` decodes the same tokens.
PARAMS = GenerationParams(temperature=0, max_new_tokens=NEW_TOKENS, seed=SEED)


@dataclass(frozen=True)
class Run:
    label: str
    new_tokens: int
    seconds: float
    text: str
    others_cores: float | None  # CPU cores other processes kept busy during the run

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy (Linux /proc/stat), or None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and its finished children (the `tui-chat ask` subprocess)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed(label: str, work: Callable[[], tuple[int, str]]) -> Run:
    """Run ``work`` (returns new tokens and text) and record its wall time and the other processes' CPU use."""
    busy, own, started = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
    tokens, text = work()
    seconds = time.perf_counter() - started
    busy_after = _busy_cpu_s()
    others = None
    if busy is not None and busy_after is not None:
        others = max(0.0, (busy_after - busy) - (_own_cpu_s() - own)) / seconds
    return Run(label, tokens, seconds, text, others)


def raw_generate(engine: HFEngine, label: str) -> Run:
    """``model.generate`` on exactly the ids and settings the engine would use, with nothing around it."""
    loaded = engine.loaded
    ids = engine.prompt_ids(MESSAGES)
    input_ids = torch.tensor([ids], device=loaded.device)
    config = engine.generation_config(PARAMS, NEW_TOKENS)

    def work() -> tuple[int, str]:
        torch.manual_seed(SEED)
        with torch.inference_mode():
            output = loaded.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
            )
        new = output[0, len(ids) :]
        return len(new), loaded.tokenizer.decode(new, skip_special_tokens=True)

    return timed(label, work)


def engine_stream(engine: HFEngine, label: str = "HFEngine.stream") -> Run:
    def work() -> tuple[int, str]:
        pieces: list[str] = []
        stats: GenerationStats | None = None
        for chunk in engine.stream(MESSAGES, PARAMS):
            if isinstance(chunk, TextDelta):
                pieces.append(chunk.text)
            else:
                stats = chunk
        assert stats is not None
        return stats.new_tokens, "".join(pieces)

    return timed(label, work)


def best(runs: list[Run]) -> Run:
    return max(runs, key=lambda run: run.tokens_per_s)


def ask_end_to_end(models_dir: Path, reference: Run) -> Run | None:
    """`tui-chat ask` in a fresh process with a temp data home linking the converted model; None if it fails."""
    executable = shutil.which("tui-chat", path=str(Path(sys.executable).parent)) or shutil.which("tui-chat")
    if executable is None:
        print("  tui-chat ask: skipped (the `tui-chat` command is not installed)")
        return None
    command = [executable, "ask", PROMPT, "--no-save", "--temperature", "0", "--max-tokens", str(NEW_TOKENS)]
    command += ["--seed", str(SEED)]
    with tempfile.TemporaryDirectory() as home_dir:
        home = DataHome(Path(home_dir)).ensure()
        (home.models / BUNDLED_DIR).symlink_to(models_dir / BUNDLED_DIR, target_is_directory=True)
        outcome: list[subprocess.CompletedProcess] = []

        def work() -> tuple[int, str]:
            env = {**os.environ, "TUI_CHAT_HOME": home_dir}
            outcome.append(subprocess.run(command, capture_output=True, text=True, env=env, timeout=600))
            text = outcome[0].stdout.strip()
            # The same greedy decode as the engine's: its token count holds when the texts agree.
            return (reference.new_tokens if text == reference.text.strip() else NEW_TOKENS), text

        run = timed("tui-chat ask (end to end)", work)
    if outcome[0].returncode != 0:
        last = (outcome[0].stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  tui-chat ask: skipped (exit {outcome[0].returncode}: {last})")
        return None
    return run


def print_row(run: Run, baseline: Run) -> None:
    others = "n/a" if run.others_cores is None else f"{run.others_cores:.2f}"
    print(
        f"  {run.label:<30} {run.new_tokens:>4} tok {run.seconds:7.2f} s {run.tokens_per_s:7.1f} tok/s"
        f"  {run.tokens_per_s / baseline.tokens_per_s:5.2f}x   others {others} cores"
    )


def _common_prefix_words(first: str, second: str) -> int:
    count = 0
    for a, b in zip(first.split(), second.split()):
        if a != b:
            break
        count += 1
    return count


def engine_overhead(engine: HFEngine, models_dir: Path) -> None:
    list(engine.stream([{"role": "user", "content": "Hi"}], GenerationParams(temperature=0, max_new_tokens=4)))
    raw_runs, engine_runs = [], []
    for _ in range(REPEATS):  # interleaved, so a burst of load from other jobs hits both rows alike
        raw_runs.append(raw_generate(engine, "raw model.generate"))
        engine_runs.append(engine_stream(engine))
    raw, streamed = best(raw_runs), best(engine_runs)
    asked = ask_end_to_end(models_dir, streamed)
    print("\nengine overhead (same model object, same ids and settings):")
    for run in (raw, streamed, asked):
        if run is not None:
            print_row(run, raw)
    ratio = streamed.tokens_per_s / raw.tokens_per_s
    print(f"  engine / raw = {ratio:.3f} (target >= 0.97: {'met' if ratio >= 0.97 else 'NOT met'})")
    same_ask = f", ask {asked.text == streamed.text.strip()}" if asked is not None else ""
    print(f"  same greedy text as raw: engine {streamed.text == raw.text}{same_ask}")
    if asked is not None:
        print(f"  ask / raw = {asked.tokens_per_s / raw.tokens_per_s:.3f} (includes process start and model load)")


def cpu_defaults(engine: HFEngine, models_dir: Path) -> None:
    """float32 vs bfloat16 at the decoding thread count, then that thread count vs torch's default."""
    default_threads = torch.get_num_threads()
    engines = {engine.info().dtype: engine}
    for dtype in ("float32", "bfloat16"):
        if dtype not in engines:
            engines[dtype] = HFEngine("default", models_dir, dtype=dtype)
            engines[dtype].load()
    runs: dict[str, list[Run]] = {}
    for _ in range(REPEATS):
        for dtype, each in engines.items():
            runs.setdefault(dtype, []).append(engine_stream(each, f"{dtype}, threads={default_threads}"))
    fp32, bf16 = best(runs["float32"]), best(runs["bfloat16"])
    print(f"\nCPU dtype (HFEngine.stream, threads={default_threads}):")
    print_row(fp32, fp32)
    print_row(bf16, fp32)
    agree = _common_prefix_words(fp32.text, bf16.text)
    print(f"  greedy texts identical: {fp32.text == bf16.text} (first {agree} words agree)")
    print(f"  default: {engine.info().dtype}")

    all_cores = os.cpu_count() or 1
    if all_cores == default_threads:
        return
    # One run each: with every core decoding, a busy machine can make a run take minutes.
    fewer = engine_stream(engine, f"{engine.info().dtype}, threads={default_threads}")
    torch.set_num_threads(all_cores)
    try:
        more = engine_stream(engine, f"{engine.info().dtype}, threads={all_cores}")
    finally:
        torch.set_num_threads(default_threads)
    print(f"\nCPU threads ({engine.info().dtype}; the default {inference_threads()} leaves a core to everything else):")
    print_row(fewer, fewer)
    print_row(more, fewer)


def main() -> None:
    home = DataHome.locate()
    models_dir = home.models
    started = time.perf_counter()
    ensure_bundled(models_dir, progress=lambda what, _: print(f"  {what}", flush=True))
    print(f"bundled model in {models_dir / BUNDLED_DIR} (ready in {time.perf_counter() - started:.1f} s)")
    engine = HFEngine("default", models_dir)
    started = time.perf_counter()
    info = engine.load()
    print(
        f"smollm2 on {info.device} / {info.dtype} (the defaults), threads={torch.get_num_threads()}, loaded in "
        f"{time.perf_counter() - started:.2f} s; prompt {engine.count_tokens(MESSAGES)} tokens, {NEW_TOKENS} new "
        f"tokens greedy, best of {REPEATS}"
    )
    engine_overhead(engine, models_dir)
    if info.device == "cpu":
        cpu_defaults(engine, models_dir)
    print("\nnote: other processes' CPU use is shown per row; only rows measured alike compare well")


if __name__ == "__main__":
    main()
