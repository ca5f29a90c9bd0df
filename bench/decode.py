"""Decode speed of the bundled model, side by side in one run on the same prompt, settings and thread count:

- transformers ``generate``, eager, float32 and bfloat16 (what a plain HF script gets);
- the engine as the chat runs it (``HFEngine.stream``: its own decode loop, int4 weights on CPU, the decode step
  compiled ahead of time into a package kept in the data home, see decode_package.py); the engine of a server that
  starts later and loads that package instead of compiling (what ``tui-chat ask`` and every later chat get); and the
  eager engine (``--no-compile``, and the first replies of a data home whose package is still being built);
- llama.cpp on the package's own GGUF, when ``llama_cpp`` is importable (``pip install -e '.[llamacpp]'``);
- the ceiling: measured memory copy bandwidth / bytes of weights read per token;
- time to first token on the 1st and the 10th turn of one conversation (prompt cache), and the 10th without it;
- decode speed and TTFT as the history grows to ~2,000 tokens;
- the int4 engine's levers one by one (bfloat16 weights for prompts, fused projections), in CPU time on one thread.

Each row gives the time to first token (TTFT, prefill included) and decode tokens/s after it, best of ``REPEATS``
interleaved runs, with the CPU that other processes used meanwhile ("others", in cores): on a shared machine only rows
measured alike compare well. "tok/cpu-s" is new tokens per CPU-second this process spent on the whole call: with one
thread it is about what an idle core would give, whatever else runs, so it is the column to compare on a busy machine.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache
from transformers.generation.streamers import BaseStreamer

from trainer.home import DataHome
from trainer.models import BUNDLED_DIR, bundled_gguf, ensure_bundled, load_model
from tui_chat.inference.hf_engine import HFEngine
from tui_chat.inference.contract import GenerationParams, GenerationStats, TextDelta
from tui_chat.inference import quantize
from tui_chat.inference.quantize import Int4Linear
from tui_chat.inference.screened_head import ScreenedHead

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
MESSAGES = [{"role": "user", "content": PROMPT}]
NEW_TOKENS = 48
REPEATS = 2
# Greedy with the app's default repetition penalty, as `tui-chat ask --temperature 0` decodes.
PARAMS = GenerationParams(temperature=0, max_new_tokens=NEW_TOKENS)
TURNS = [
    "Hi! Who are you?",
    "What is the capital of France?",
    "Name a famous museum there.",
    "What is a lighthouse?",
    "Give me a tip for learning Python.",
    "What is 12 times 12?",
    "Name three primary colors.",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about the sea.",
    "Thanks! Summarise our chat in one sentence.",
]
TURN_TOKENS = 16  # reply length in the conversation (TTFT is what is measured there)


@dataclass(frozen=True)
class Run:
    label: str
    new_tokens: int
    ttft_s: float
    seconds: float  # the whole call
    cpu_s: float  # CPU seconds this process spent on the whole call
    text: str
    others_cores: float | None  # CPU cores other processes kept busy during the run

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.new_tokens / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Decode speed after the first token (prefill excluded), as GenerationStats.tokens_per_s."""
        decode = self.seconds - self.ttft_s
        return (self.new_tokens - 1) / decode if self.new_tokens > 1 and decode > 0 else 0.0


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
    times = os.times()
    return times.user + times.system


def timed(label: str, work: Callable[[float], tuple[int, float, str]]) -> Run:
    """Run ``work(started)`` (returns new tokens, the first token's perf_counter time, text) and record its timings
    and the other processes' CPU use meanwhile."""
    busy, own, started = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
    tokens, first_at, text = work(started)
    seconds = time.perf_counter() - started
    busy_after, own_after = _busy_cpu_s(), _own_cpu_s()
    others = None
    if busy is not None and busy_after is not None:
        others = max(0.0, (busy_after - busy) - (own_after - own)) / seconds
    return Run(label, tokens, first_at - started, seconds, own_after - own, text, others)


class _FirstToken(BaseStreamer):
    """Notes when ``generate`` hands over its first new token (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_at = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


def hf_generate(model, engine: HFEngine, label: str) -> Callable[[], Run]:
    """transformers ``generate`` on the ids and settings the engine uses, on a separately loaded ``model``."""
    ids = engine.prompt_ids(MESSAGES)
    input_ids = torch.tensor([ids])
    config = engine.generation_config(PARAMS, NEW_TOKENS)
    tokenizer = engine.loaded.tokenizer

    def work(started: float) -> tuple[int, float, str]:
        first = _FirstToken()
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config, streamer=first
            )
        new = output[0, len(ids) :]
        return len(new), first.first_at, tokenizer.decode(new, skip_special_tokens=True)

    return lambda: timed(label, work)


def engine_stream(engine: HFEngine, label: str, messages: list[dict] = MESSAGES) -> Callable[[], Run]:
    def work(started: float) -> tuple[int, float, str]:
        pieces: list[str] = []
        stats: GenerationStats | None = None
        for chunk in engine.stream(messages, PARAMS):
            if isinstance(chunk, TextDelta):
                pieces.append(chunk.text)
            else:
                stats = chunk
        assert stats is not None
        return stats.new_tokens, started + stats.ttft_s, "".join(pieces)

    def run() -> Run:
        engine.decoder.prompt_cache.clear()  # every row encodes the whole prompt
        return timed(label, work)

    return run


def with_threads(engine: HFEngine, threads: int, row: Callable[[], Run]) -> Callable[[], Run]:
    """``row`` run with the engine decoding on ``threads`` threads (then back to its default)."""

    def run() -> Run:
        before = engine.threads
        engine.threads = threads
        try:
            return row()
        finally:
            engine.threads = before

    return run


def llama_cpp_row(engine: HFEngine, threads: int) -> Callable[[], Run]:
    """llama.cpp (llama-cpp-python) on the bundled GGUF on ``threads`` threads, same prompt text and greedy settings."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(bundled_gguf()), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    text = engine.loaded.tokenizer.decode(engine.prompt_ids(MESSAGES))
    prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
    stop = set(engine.generation_config(PARAMS, NEW_TOKENS).eos_token_id)

    def work(started: float) -> tuple[int, float, str]:
        llm.reset()  # no prompt reuse between runs: every row encodes the whole prompt
        new: list[int] = []
        first_at = 0.0
        for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=PARAMS.repetition_penalty):
            if not new:
                first_at = time.perf_counter()
            new.append(token)
            if token in stop or len(new) == NEW_TOKENS:
                break
        return len(new), first_at, llm.detokenize([t for t in new if t not in stop]).decode(errors="replace")

    return lambda: timed(f"llama.cpp (GGUF Q4_1), {threads} thread(s)", work)


def copy_bandwidth() -> float:
    """Memory copy bandwidth in GB/s (bytes read + written), 256 MB buffers: far past the caches."""
    source = torch.ones(64 * 2**20, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * source.element_size() / best / 1e9


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decoded token reads: every parameter once (tied embeddings are read once, as the output
    projection); for quantized tensors, their packed data. A screened output projection reads its int8 copy, and of
    the exact weights only a few rows (not counted); int4 layers' bfloat16 weights serve prompts only (not counted)."""
    seen: set[int] = set()
    head = model.get_output_embeddings()
    if isinstance(head, ScreenedHead):
        seen.add(head.weight.data_ptr())
    seen.update(m.prompt_weight.data_ptr() for m in model.modules() if isinstance(m, Int4Linear))  # prompts only
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        parts = [tensor]
        if hasattr(tensor, "__tensor_flatten__"):  # torchao's int4 tensors: packed weights plus scales and zeros
            names, _ = tensor.__tensor_flatten__()
            parts = [getattr(tensor, name) for name in names]
        for part in parts:
            if part.data_ptr() not in seen:
                seen.add(part.data_ptr())
                total += part.untyped_storage().nbytes()
    return total


def print_row(run: Run, baseline: Run) -> None:
    others = "n/a" if run.others_cores is None else f"{run.others_cores:.2f}"
    print(
        f"  {run.label:<36} TTFT {run.ttft_s:6.3f} s  {run.tokens_per_s:6.1f} tok/s"
        f" {run.tokens_per_s / baseline.tokens_per_s:5.2f}x  {run.tokens_per_cpu_s:6.1f} tok/cpu-s"
        f" {run.tokens_per_cpu_s / baseline.tokens_per_cpu_s:5.2f}x  others {others} cores"
    )


def _same_words(first: str, second: str) -> int:
    count = 0
    for a, b in zip(first.split(), second.split()):
        if a != b:
            break
        count += 1
    return count


def compiled_engine(models_dir: Path) -> HFEngine:
    """The engine as the chat runs it on CPU once its compile is done (waited for here, and not timed in any row;
    the first server of a data home replies with the eager step while a second process builds the package)."""
    engine = HFEngine("default", models_dir, compile=True)
    started = time.perf_counter()
    engine.load()  # loads a kept package before it returns, or starts building one
    engine.decoder.warm_up(wait=True)
    kept = "loaded the package kept in the data home" if engine.decoder.compile_cached else "built the package"
    kept += " (with the model)"
    print(f"compiled decode step: {kept} in {time.perf_counter() - started:.1f} s: {engine.info().extra['compile']}")
    return engine


def server_engine(models_dir: Path) -> HFEngine:
    """The engine of a server started after the package was built (``tui-chat ask`` starts one): it does not compile,
    it loads the package with the model."""
    engine = HFEngine("default", models_dir)
    started = time.perf_counter()
    info = engine.load()
    print(f"a new server's engine: loaded with the package in {time.perf_counter() - started:.1f} s, compile "
          f"{info.extra['compile']}")
    return engine


def weights(engine: HFEngine) -> str:
    """The engine's weights and, with int4, the kernel that decodes them (tui_chat/inference/native_kernels.py)."""
    return engine.int4_kernel or engine.quantization


def speed_rows(eager: HFEngine, engine: HFEngine, server: HFEngine, models_dir: Path, threads: int) -> None:
    fp32 = load_model("default", models_dir=models_dir, dtype="float32").model
    bf16 = load_model("default", models_dir=models_dir, dtype="bfloat16").model
    compiled = engine.info().extra["compile"] == "ready"
    rows = {
        "fp32": hf_generate(fp32, engine, "HF generate, eager, float32"),
        "bf16": hf_generate(bf16, engine, "HF generate, eager, bfloat16"),
        "engine": engine_stream(engine, f"engine ({weights(engine)}{', compiled' if compiled else ''})"),
    }
    if server.info().extra["compile"] == "ready":
        rows["engine-ask"] = engine_stream(server, f"engine of a new server, from the package ({weights(server)})")
    if compiled:
        rows["engine-eager"] = engine_stream(eager, f"engine, eager ({weights(eager)})")
    all_cores = os.cpu_count() or 1
    if all_cores != threads:  # the evidence for the thread default (trainer.devices.inference_threads)
        rows["engine-all-cores"] = with_threads(
            eager, all_cores, engine_stream(eager, f"engine, eager, {all_cores} threads")
        )
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama.cpp: skipped (`pip install -e '.[llamacpp]'` adds llama-cpp-python for these rows)")
    else:
        for count in sorted({threads, all_cores}):  # llama.cpp at the engine's thread count, and on every core
            rows["llama.cpp" if count == threads else f"llama.cpp-{count}"] = llama_cpp_row(engine, count)
    runs: dict[str, list[Run]] = {name: [] for name in rows}
    for _ in range(REPEATS):  # interleaved, so a burst of load from other jobs hits every row alike
        for name, row in rows.items():
            runs[name].append(row())
    best = {name: max(each, key=lambda run: run.tokens_per_s) for name, each in runs.items()}
    print(
        f"\ndecode speed (engine on {threads} thread(s), HF generate on torch's default {torch.get_num_threads()} as a "
        f"plain script runs; {NEW_TOKENS} new tokens, greedy, best of {REPEATS}):"
    )
    for run in best.values():
        print_row(run, best["fp32"])
    pairs = (("engine", "fp32", 3.0), ("engine-ask", "fp32", 3.0), ("engine-eager", "fp32", None),
             ("engine", "llama.cpp", 1.0))
    for mine, other, target in pairs:
        if mine in best and other in best:
            wall = best[mine].tokens_per_s / best[other].tokens_per_s
            cpu = best[mine].tokens_per_cpu_s / best[other].tokens_per_cpu_s
            goal = "" if target is None else f" (target >= {target:g}: {'met' if wall >= target else 'NOT met'})"
            print(f"  {best[mine].label} / {best[other].label}: {wall:.2f}x tok/s, {cpu:.2f}x tok/cpu-s{goal}")
    reference = best["fp32"].text
    for name in ("bf16", "engine", "engine-ask", "engine-eager"):
        if name not in best:
            continue
        text = best[name].text
        print(
            f"  {name} greedy text identical to float32's: {text == reference} (first {_same_words(text, reference)}"
            f" of {len(reference.split())} words agree)"
        )

    bandwidth = copy_bandwidth()
    print(f"\nceiling: copy bandwidth {bandwidth:.1f} GB/s (read + write, {threads} thread(s)) / weights a token:")
    for label, model in (
        ("float32", fp32),
        ("bfloat16", bf16),
        (f"engine ({engine.quantization})", engine.loaded.model),
    ):
        size = weight_bytes(model)
        print(f"  {label:<16} {size / 1e6:6.0f} MB a token -> {bandwidth * 1e9 / size:6.1f} tok/s")
    if "llama.cpp" in best:
        size = bundled_gguf().stat().st_size
        print(f"  {'GGUF Q4_1':<16} {size / 1e6:6.0f} MB a token -> {bandwidth * 1e9 / size:6.1f} tok/s")


def conversation_ttft(engine: HFEngine) -> None:
    """TTFT on turn 1 and turn 10 of one conversation (the prompt cache re-uses the history), and turn 10 again with
    the cache emptied first (the whole history encoded); each the best of ``REPEATS`` + 1 runs of the conversation,
    since one turn's TTFT is a few hundredths of a second and a single run is noise."""
    params = GenerationParams(temperature=0, max_new_tokens=TURN_TOKENS)
    best: list[GenerationStats] = []
    uncached: GenerationStats | None = None
    for _ in range(REPEATS + 1):
        messages: list[dict] = []
        engine.decoder.prompt_cache.clear()
        for turn, question in enumerate(TURNS):
            messages.append({"role": "user", "content": question})
            chunks = list(engine.stream(messages, params))
            if turn == len(best):
                best.append(chunks[-1])
            elif chunks[-1].ttft_s < best[turn].ttft_s:
                best[turn] = chunks[-1]
            messages.append({"role": "assistant", "content": "".join(c.text for c in chunks[:-1])})
        engine.decoder.prompt_cache.clear()
        again = list(engine.stream(messages[:-1], params))[-1]
        uncached = again if uncached is None or again.ttft_s < uncached.ttft_s else uncached
    assert uncached is not None
    first, tenth = best[0], best[-1]
    print(f"\ntime to first token across one conversation (the chat's engine, {TURN_TOKENS}-token replies, best of "
          f"{REPEATS + 1}):")
    print(f"  turn 1:  {first.ttft_s:6.3f} s  ({first.prompt_tokens} prompt tokens, none cached)")
    print(f"  turn 10: {tenth.ttft_s:6.3f} s  ({tenth.prompt_tokens} prompt tokens, the history cached)")
    print(f"  turn 10 without the prompt cache: {uncached.ttft_s:6.3f} s")
    verdict = "met" if tenth.ttft_s <= first.ttft_s else "NOT met"
    print(f"  turn 10 / turn 1 = {tenth.ttft_s / first.ttft_s:.2f} (target <= 1: {verdict})")


def history_rows(engine: HFEngine) -> None:
    """Decode speed as the history grows: every cached position is read by attention, and a long chat once decoded
    at a third of a short one's speed (see tui_chat/decode_attention.py)."""
    filler = "The lighthouse stood on the rock for many years, and the keeper watched the sea every night. "
    print(f"\ndecode speed by history length (the chat's engine, {NEW_TOKENS} new tokens, greedy, best of {REPEATS}):")
    decoder = engine.decoder
    every_core = decoder.prompt_threads
    for copies, prompt_threads in ((0, every_core), (25, every_core), (50, every_core), (100, every_core), (100, None)):
        messages = [{"role": "user", "content": filler * copies + PROMPT}]
        best: GenerationStats | None = None
        decoder.prompt_threads = prompt_threads
        for _ in range(REPEATS):
            decoder.prompt_cache.clear()
            stats = list(engine.stream(messages, PARAMS))[-1]
            best = stats if best is None or stats.tokens_per_s > best.tokens_per_s else best
        decoder.prompt_threads = every_core
        assert best is not None
        threads = prompt_threads or engine.decode_threads()
        print(
            f"  {best.prompt_tokens:5d} prompt tokens: {best.tokens_per_s:5.1f} tok/s, TTFT {best.ttft_s:5.2f} s"
            f" (prompt on {threads} thread(s))"
        )


def lever_rows(models_dir: Path) -> None:
    """The int4 engine's levers one by one, in CPU time on one thread (what an idle core would take, whatever else
    runs): encoding a ~2,000-token prompt, and an eager decode step after a short history, for the model built
    without and with each lever."""
    groups, rows = quantize.FUSED_GROUPS, quantize.PROMPT_ROWS
    variants = {  # label: (fused groups, rows from which a matmul reads the bfloat16 weights)
        "int4 kernel for prompts, 7 matmuls a layer": ((), sys.maxsize),
        "bfloat16 weights for prompts, 7 matmuls a layer": ((), rows),
        "bfloat16 weights for prompts, fused: 4 matmuls": (groups, rows),
    }
    models = {}
    for label, (fused, _) in variants.items():
        quantize.FUSED_GROUPS = fused
        try:
            models[label] = HFEngine("default", models_dir, compile=False)
            models[label].load()
        finally:
            quantize.FUSED_GROUPS = groups
    prompt = torch.randint(100, 40_000, (1, 1946))
    history = 46  # tokens kept before the decode steps: as many as the speed rows' prompt
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    print("\nlevers, CPU time on one thread (best of 2):")
    best: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(REPEATS):
            for label, engine in models.items():
                model = engine.loaded.model
                quantize.PROMPT_ROWS = variants[label][1]
                with torch.inference_mode():
                    cache = DynamicCache(config=model.config)
                    started = time.thread_time()
                    model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    encode = time.thread_time() - started
                    cache.crop(history - cache.get_seq_length())
                    token, started = torch.tensor([[42]]), time.thread_time()
                    for position in range(history, history + NEW_TOKENS):
                        model(input_ids=token, position_ids=torch.tensor([[position]]), past_key_values=cache)
                    step = (time.thread_time() - started) / NEW_TOKENS
                quantize.PROMPT_ROWS = rows
                old = best.get(label, (float("inf"), float("inf")))
                best[label] = (min(old[0], encode), min(old[1], step))
    finally:
        quantize.PROMPT_ROWS = rows
        torch.set_num_threads(before)
    for label, (encode, step) in best.items():
        print(f"  {label:<50} encode 1,946 tokens {encode:5.2f} CPU-s   eager step {step * 1000:5.1f} CPU-ms")


def main() -> None:
    """Print the comparison (with a ~45 s build of the decode package first when the data home has none, not timed)."""
    home = DataHome.locate()
    models_dir = home.models
    started = time.perf_counter()
    ensure_bundled(models_dir, progress=lambda what, _: print(f"  {what}", flush=True))
    print(f"bundled model in {models_dir / BUNDLED_DIR} (ready in {time.perf_counter() - started:.1f} s)")
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    eager = HFEngine("default", models_dir, compile=False)  # not the compile the row below keeps in the data home
    started = time.perf_counter()
    info = eager.load()
    threads = eager.decode_threads()
    print(
        f"engine: smollm2 on {info.device}, {info.dtype}, quantize {info.extra['quantize']}, {threads} thread(s), "
        f"loaded in {time.perf_counter() - started:.1f} s; prompt {eager.count_tokens(MESSAGES)} tokens; load average "
        f"{load_average:.1f} on {os.cpu_count()} cores"
    )
    engine = compiled_engine(models_dir)
    speed_rows(eager, engine, server_engine(models_dir), models_dir, threads)
    conversation_ttft(engine)
    history_rows(engine)
    lever_rows(models_dir)
    after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load_average:.1f} at the start, {after:.1f} at the end ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
