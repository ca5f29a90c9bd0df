"""The real engine: a transformers causal LM behind the ``Engine`` contract of ``generation.py``.

Replies are decoded by ``decoding.Decoder`` (prefill, then one forward pass per token, the KV cache kept across turns
so a conversation's history is not encoded again) on one long-lived thread per engine, so compiled CUDA graphs,
which belong to the thread that recorded them, are recorded once. Token ids become text deltas that never split a
UTF-8 character and never contain special tokens; the caller's stop event is read after every token, so Stop returns
within one forward pass. The conversation is fitted into the context window first: the system prompt stays, the
oldest turns go, and the stats say how many.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from trainer.devices import dtype_name, inference_threads, pick_compile, pick_device, pick_dtype, pick_quantization
from trainer.home import DataHome
from trainer.model_names import BUNDLED_NAME, engine_name
from trainer.models import LoadedModel, ModelError, error_line, load_model

from tui_chat.inference.compile_cache import cache_file
from tui_chat.inference.decode_attention import use_one_query_attention
from tui_chat.inference.build_package import build_command, build_elsewhere
from tui_chat.inference.decode_package import package_file
from tui_chat.inference.decoding import Decoder, Sampler
from tui_chat.inference.contract import Chunk, EngineError, EngineInfo, GenerationParams, GenerationStats, ProgressCallback, TextDelta
from tui_chat.inference import native_kernels
from tui_chat.inference.quantize import quantize_int4
from tui_chat.inference.screened_head import screen_output_projection

# Tokens that end an assistant turn in the common chat formats, added to the model's own eos ids when the
# vocabulary has them as single tokens (a base model's default template ends turns with its eos token).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


class TextDeltas:
    """Turns token ids, one at a time, into text deltas.

    Incremental detokenization: decode a short window of already-emitted tokens plus the new ones and emit only the
    text past the window. A delta ending in U+FFFD is an incomplete UTF-8 sequence (a character split across
    tokens): it is held back until the next token completes it. Special tokens decode to nothing.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # tokens before this have been emitted as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        """The text ``token`` completes ("" while a character is still incomplete)."""
        self.ids.append(token)
        return self._emit(final=False)

    def finish(self) -> str:
        """Text still held back at the end; a character left incomplete (cut by the token limit or Stop) is dropped."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if final:
            text = text.rstrip("\ufffd")
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return text[len(before) :]
        return ""


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class HFEngine:
    """A transformers model loaded through ``trainer.models.load_model``; see ``generation.Engine``."""

    def __init__(
        self,
        spec: str,
        models_dir: Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        threads: int | None = None,
        compile: bool | None = None,
        quantize: str | None = None,
        build_package: bool = False,
    ) -> None:
        self.spec = spec
        self.name = engine_name(spec)
        self.models_dir = Path(models_dir)
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.threads = threads  # CPU decoding threads; None = trainer.devices.inference_threads()
        self.compile = compile  # compile the decode step (on CPU: build its package); None = devices.pick_compile
        self.quantize = quantize  # "none" | "int4"; None = trainer.devices.pick_quantization
        # Without compiling in this process, build the CPU decode package in a process of its own when the data home
        # has none, and load it when ready (a server: see serve/handover.py); compile=True builds it too.
        self.build_package = build_package
        self.quantization = "none"  # what load() applied
        self.int4_kernel = ""  # with int4: which kernel decodes (native_kernels.py), and why not the native one
        self._loaded: LoadedModel | None = None
        self._decoder: Decoder | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()  # one reply at a time: the model's KV cache is shared
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._stop_ids: list[int] = []

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def load(self, progress: ProgressCallback | None = None) -> EngineInfo:
        """Load (converting the bundled model on first use); idempotent and safe to call from a worker thread.

        With compiling on, the decode step compiles in a background thread afterwards; replies don't wait for it.
        """
        with self._load_lock:
            if self._loaded is None:
                try:
                    # Settings first, so a bad --quantize fails before seconds of loading.
                    device = pick_device(self.device)
                    bundled = self.name == BUNDLED_NAME  # its weights are a de-quantized 4-bit GGUF
                    quantization = pick_quantization(
                        device, pick_dtype(device, self.dtype), self.quantize, four_bit_weights=bundled
                    )
                    loaded = load_model(
                        self.spec,
                        models_dir=self.models_dir,
                        device=self.device,
                        dtype=self.dtype,
                        trust_remote_code=self.trust_remote_code,
                        progress=progress,
                    )
                except (ModelError, ValueError) as exc:
                    raise EngineError(str(exc)) from exc
                threads = prompt_threads = None
                if loaded.device.type == "cpu":
                    threads = self.threads or inference_threads()
                native = False
                if quantization == "int4":
                    if progress is not None:
                        progress(f"quantizing {self.name} to int4", None)
                    # The int4 x int8 kernel decodes on one thread (native_kernels.py); torch's spreads over several.
                    native = threads == 1 and native_kernels.load(self.models_dir)
                    if quantize_int4(loaded.model, native=native) == 0:
                        quantization = "none"  # no layer fits (e.g. GPT-2's Conv1D projections)
                    else:
                        # The output projection is then the largest read of a token: int8 screens it, exactly.
                        screen_output_projection(loaded.model, native=native)
                self.quantization = quantization
                if quantization == "int4":
                    why_not = f"{threads} decode threads" if threads != 1 else native_kernels.why_not()
                    self.int4_kernel = "int4 x int8 (native)" if native else f"torch's int4 ({why_not})"
                # What compiled code depends on: the weights' layout, and with the native kernel its build.
                layout = f"int4 {native_kernels.loaded_name()}" if native and quantization == "int4" else quantization
                if loaded.device.type == "cpu":
                    use_one_query_attention(loaded.model)  # see decode_attention.py: long chats decoded 3-4x slower
                self._stop_ids = _end_of_turn_ids(loaded)
                if loaded.device.type == "cpu":
                    # A long prompt on every core torch would use (a decode step on one; see Decoder.prompt_threads).
                    prompt_threads = max(threads, torch.get_num_threads())
                compile = pick_compile(loaded.device, self.compile)
                package = None
                if loaded.device.type == "cpu" and self.compile is not False:  # built when asked, else used if kept
                    package = package_file(self.models_dir, loaded.model, self.name, loaded.source, layout, threads)
                # How the package's own process loads the same model (build_package.py); no reference to self, so a
                # dropped engine is freed at once.
                spec, models_dir = self.spec, self.models_dir
                settings = {"device": self.device, "dtype": self.dtype, "quantize": self.quantize, "threads": threads,
                            "trust_remote_code": self.trust_remote_code}
                self._decoder = Decoder(
                    loaded.model,
                    loaded.device,
                    loaded.context_limit,
                    compile=compile,
                    threads=threads,
                    prompt_threads=prompt_threads,
                    compile_cache_file=cache_file(self.models_dir, loaded.model, self.name, layout, threads)
                    if compile
                    else None,
                    package_file=package,
                    package_builder=(lambda out: build_elsewhere(build_command(spec, models_dir, out, settings)))
                    if compile or self.build_package
                    else None,
                )
                threading.Thread(target=_run_jobs, args=(self._jobs,), name=f"decode-{self.name}", daemon=True).start()
                weakref.finalize(self, self._jobs.put, None)  # a dropped engine (a model switch) ends its thread
                # Loading a kept package takes about a second: done before the first reply, which then decodes
                # compiled. Building or compiling takes a minute: in the background.
                self._decoder.warm_up(wait=package is not None and package.is_file())
                self._loaded = loaded
        return self.info()

    @property
    def decoder(self) -> Decoder:
        """The decode loop (its prompt cache and compile state), for benchmarks and tests."""
        if self._decoder is None:
            raise EngineError(f"model {self.name} is not loaded yet; call load() first")
        return self._decoder

    @property
    def loaded(self) -> LoadedModel:
        """The model and tokenizer (for benchmarks and tools that need the raw objects)."""
        if self._loaded is None:
            raise EngineError(f"model {self.name} is not loaded yet; call load() first")
        return self._loaded

    def info(self) -> EngineInfo:
        loaded = self.loaded
        decoder = self.decoder
        return EngineInfo(
            name=self.name,
            device=str(loaded.device),
            dtype=dtype_name(loaded.dtype),
            context_limit=loaded.context_limit,
            extra={
                "source": loaded.source,
                "threads": self.decode_threads(),
                "quantize": self.quantization,
                "compile": decoder.compile_state,
                **({"int4_kernel": self.int4_kernel} if self.int4_kernel else {}),
            },
        )

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids of ``messages`` rendered with the chat template, ready for the assistant's reply."""
        tokenizer = self.loaded.tokenizer
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # jinja raises its own errors for messages a template rejects
            raise EngineError(f"the chat template of {self.name} rejects these messages: {exc}") from exc
        # The template writes bos/eos itself; letting the tokenizer add them again would double them.
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))

    def fit_context(self, messages: list[dict[str, str]], max_new_tokens: int) -> tuple[list[int], int]:
        """Prompt ids that leave room for the reply, and how many of the oldest messages were left out.

        Leading system messages and the last message always stay; whole messages go from the oldest, and the
        kept part starts at a user turn so every template sees a well-formed conversation.
        """
        limit = self.loaded.context_limit
        budget = limit - min(max_new_tokens, limit // 2)  # tokens left for the prompt
        system_count = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
        system, turns = messages[:system_count], messages[system_count:]
        # Where the kept turns may start: a user message, or the last message whatever it is.
        starts = [i for i, m in enumerate(turns) if m["role"] == "user" or i == len(turns) - 1] or [0]
        ids = self.prompt_ids(messages)
        if len(ids) <= budget:
            return ids, 0
        # Fewer messages, fewer tokens: binary search for the earliest start that fits.
        low, high, best = 0, len(starts) - 1, None
        while low <= high:
            middle = (low + high) // 2
            candidate = self.prompt_ids(system + turns[starts[middle] :])
            if len(candidate) <= budget:
                best, high = (candidate, starts[middle]), middle - 1
            else:
                low = middle + 1
        if best is None:
            raise EngineError(
                f"the last message is too long for {self.name} ({len(self.prompt_ids(system + turns[-1:]))} "
                f"tokens, the limit for a prompt is {budget}); shorten it or lower max_new_tokens"
            )
        return best[0], best[1]

    def generation_config(self, params: GenerationParams, max_new_tokens: int) -> GenerationConfig:
        """transformers ``generate`` settings that decode what ``stream`` decodes for ``params`` (greedy at temperature
        0, the model's end-of-turn tokens): the reference the tests and benchmarks compare the engine with."""
        loaded = self.loaded
        sampling = params.temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_k=(params.top_k or None) if sampling else None,
            top_p=params.top_p if sampling else None,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=self._stop_ids,
            pad_token_id=loaded.tokenizer.pad_token_id,
            bos_token_id=loaded.model.generation_config.bos_token_id,
        )

    def decode_threads(self) -> int:
        """Intra-op threads a reply decodes with (``threads``, else trainer.devices.inference_threads on CPU)."""
        if self.loaded.device.type == "cpu":
            return self.threads or inference_threads()
        return torch.get_num_threads()

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Stream the reply to ``messages``; see ``generation.Engine``. Raises EngineError on failure."""
        loaded = self.loaded
        params = params.validated()
        if not self._generate_lock.acquire(blocking=False):
            raise EngineError("a reply is already being generated; stop it before starting another")
        try:
            started = time.perf_counter()
            ids, dropped = self.fit_context(messages, params.max_new_tokens)
            max_new = min(params.max_new_tokens, loaded.context_limit - len(ids))
            reply = _Reply(stop)
            self._jobs.put(lambda: self._decode(reply, ids, max_new, params))
            try:
                while True:
                    item = reply.deltas.get()
                    if item is _DONE:
                        break
                    if isinstance(item, _Failure):
                        raise EngineError(f"generation failed: {error_line(item.error)}") from item.error
                    yield TextDelta(item)
            finally:
                reply.abandoned.set()  # no-op after a normal end; ends decoding if the caller stopped iterating
                reply.finished.wait()
            finished = time.perf_counter()
            yield GenerationStats(
                prompt_tokens=len(ids),
                new_tokens=reply.new_tokens,
                ttft_s=(reply.first_token_at or finished) - started,
                duration_s=finished - started,
                finish_reason=reply.finish_reason,
                dropped_messages=dropped,
                context_limit=loaded.context_limit,
                cached_tokens=self.decoder.reused,
            )
        finally:
            self._generate_lock.release()

    def _decode(self, reply: _Reply, ids: list[int], max_new: int, params: GenerationParams) -> None:
        """One reply, on the decode thread: tokens -> text deltas into ``reply.deltas``, then _DONE."""
        loaded = self.loaded
        try:
            if loaded.device.type == "cpu":
                # Set on this thread: an OpenMP thread keeps the count it started with. See inference_threads for
                # why decoding leaves a core free.
                torch.set_num_threads(self.decode_threads())
            text = TextDeltas(loaded.tokenizer)
            choose = Sampler(params, ids, max_new, loaded.device)
            tokens = self.decoder.tokens(ids, max_new, choose)
            try:
                for token in tokens:
                    if reply.first_token_at is None:
                        reply.first_token_at = time.perf_counter()
                    reply.new_tokens += 1
                    if token in self._stop_ids:
                        reply.finish_reason = "eos"
                        break
                    delta = text.add(token)
                    if delta:
                        reply.deltas.put(delta)
                    if reply.should_stop():
                        reply.finish_reason = "stopped"
                        break
            finally:
                tokens.close()
            delta = text.finish()
            if delta:
                reply.deltas.put(delta)
        except BaseException as exc:  # handed to the caller's thread, raised there as EngineError
            reply.deltas.put(_Failure(exc))
        finally:
            reply.deltas.put(_DONE)
            reply.finished.set()


def _run_jobs(jobs: queue.Queue[Callable[[], None] | None]) -> None:
    """The decode thread: runs one reply job after another until it gets None. It holds no reference to the engine
    between jobs, so the engine can be garbage collected (which sends the None)."""
    while True:
        job = jobs.get()
        if job is None:
            return
        job()
        del job


class _Reply:
    """What the decode thread and the streaming caller share for one reply."""

    def __init__(self, stop: threading.Event | None) -> None:
        self.stop = stop
        self.abandoned = threading.Event()  # the caller stopped iterating before the end
        self.finished = threading.Event()
        self.deltas: queue.Queue = queue.Queue()
        self.first_token_at: float | None = None
        self.new_tokens = 0
        self.finish_reason = "length"

    def should_stop(self) -> bool:
        return self.abandoned.is_set() or (self.stop is not None and self.stop.is_set())


def _end_of_turn_ids(loaded: LoadedModel) -> list[int]:
    """The model's eos ids plus every end-of-turn marker its vocabulary has as a single token."""
    ids: list[int] = []
    configured = loaded.model.generation_config.eos_token_id
    ids.extend(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    tokenizer = loaded.tokenizer
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    unknown = tokenizer.unk_token_id
    for token in END_OF_TURN_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != unknown:
            ids.append(token_id)
    return sorted(set(ids))


def open_engine(spec: str, home: DataHome, **options: Any) -> HFEngine:
    """An unloaded engine for ``spec`` using ``home``'s models dir (``options``: device, dtype, trust_remote_code,
    threads, compile, quantize)."""
    return HFEngine(spec, home.models, **options)
