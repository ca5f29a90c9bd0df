"""The decode loop behind ``HFEngine``: prefill, then one forward pass per new token, with the KV cache kept between
the turns of a conversation.

A reply is a *prefill* (one forward pass over the prompt tokens the cache does not hold yet) and then *decode steps*
(one forward pass per token, feeding the token just chosen). The cache and the ids it holds outlive the reply: the next
turn's prompt starts with this turn's prompt and reply, so only the new tokens are encoded (prompt caching). Anything
else (an edited message, a regenerated reply, old turns dropped to fit the context, another conversation) shows up as
a difference in the ids: the cache keeps the longest common prefix and the prompt is encoded from there.

Three cache layouts:
- buffer (``KVBuffer``, kv_buffer.py): every layer's keys and values in one preallocated tensor, written in place and
  read up to the current length by the attention function. Used on CPU wherever that attention applies (full
  attention in every layer), eager or with the decode step compiled for dynamic shapes (one compile serves every
  length and capacity); the capacity grows in powers of two, the history copied along.
- dynamic (transformers' ``DynamicCache``): grows token by token by concatenation. Used on CPU for the other models.
- static (``StaticCache``): ``capacity`` positions allocated up front, so every decode step has the same shapes and
  CUDA graphs can replay one compiled step (on a GPU). Attention reads all ``capacity`` positions (masked), so the
  capacity grows in powers of two with the conversation, and each new capacity is compiled in a background thread
  while replies use the eager step. On CPU that attention made the compiled step slower than the eager one at the
  1,024 positions a default reply needs (measured ~20 against ~24 tokens per CPU-second).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StaticCache,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer, StaticLayer

from tui_chat.inference import compile_cache, decode_package
from tui_chat.inference.contract import GenerationParams
from tui_chat.inference.decode_attention import NAME as ONE_QUERY_ATTENTION
from tui_chat.inference.kv_buffer import KVBuffer, buffer_shape

MIN_STATIC_CAPACITY = 1024  # tokens: a short prompt plus the default 512-token reply fits the first capacity
# Prompt tokens from which a prefill uses ``Decoder.prompt_threads``: a new turn's short message encodes in a few ms
# on the decode thread's count; a reopened or edited long chat is hundreds to thousands of tokens.
PARALLEL_PROMPT = 64
WARM_UP_PROMPT = 8  # tokens in the compile warm-up's scratch cache: dynamo specialises sizes 0 and 1, not 8
# Conversations whose encoded history is kept (the server answers several windows and clients in turn). The bundled
# model's cache is ~23 KB a token in bfloat16 (30 layers x keys and values x 3 heads x 64), so four 2,000-token
# histories are ~180 MB beside its ~270 MB of weights.
PROMPT_CACHES = 4


def common_prefix(first: list[int], second: list[int]) -> int:
    """How many leading ids the two lists share."""
    count = 0
    for a, b in zip(first, second):
        if a != b:
            break
        count += 1
    return count


def static_capacity(needed: int, limit: int) -> int:
    """The power-of-two capacity (at least MIN_STATIC_CAPACITY, at most ``limit``) that holds ``needed`` tokens."""
    capacity = MIN_STATIC_CAPACITY
    while capacity < needed:
        capacity *= 2
    return min(capacity, limit)


@dataclass(frozen=True)
class CacheLayout:
    """How a Decoder keeps its KV caches (the module docstring says why each): ``kind`` is dynamic, static or buffer."""

    kind: str
    context_limit: int
    cache_keyword: str  # the model's name for its cache argument (transformers 5.2x renamed it)
    buffer_shape: tuple[int, int, int] | None = None  # (layers, kv heads, head dim) for kind "buffer"
    positions: torch.Tensor | None = None  # 0...context_limit - 1, whose prefixes are a buffer pass's window


class PromptCache:
    """A model's KV cache and the token ids whose keys and values it holds, in order."""

    def __init__(self, model: Any, layout: CacheLayout) -> None:
        self.model = model
        self.layout = layout
        self.cache: DynamicCache | StaticCache | KVBuffer | None = None
        self.capacity = 0  # positions a static cache or buffer holds (0: none allocated yet, or dynamic)
        self.ids: list[int] = []

    @property
    def static(self) -> bool:
        return self.layout.kind == "static"

    def prepare(self, ids: list[int], new_tokens: int) -> int:
        """Get ready to encode ``ids`` and then ``new_tokens`` more; returns how many leading ``ids`` need no encoding.

        The last prompt token is always encoded again: its logits choose the first new token.
        """
        keep = common_prefix(self.ids, ids[:-1])
        needed = len(ids) + new_tokens
        if self.layout.kind == "buffer":
            if self.cache is None or needed > self.capacity:
                self.capacity = static_capacity(needed, self.layout.context_limit)
                if isinstance(self.cache, KVBuffer):
                    self.cache = self.cache.grown(self.capacity, keep)  # the history moves along
                else:
                    assert self.layout.buffer_shape is not None
                    self.cache = KVBuffer(self.layout.buffer_shape, self.capacity, self.model.dtype,
                                          self.model.device)
                    self.ids = []
            # Positions past the kept ones are never read (attention reads the window) and are written over.
            self.ids = self.ids[:keep]
            return len(self.ids)
        if self.static and (self.cache is None or needed > self.capacity):
            self.capacity = static_capacity(needed, self.layout.context_limit)
            self.cache = StaticCache(config=self.model.config, max_cache_len=self.capacity)
            self.ids = []
        elif self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        if keep < len(self.ids):
            self._rewind(keep)
        return len(self.ids)

    def model_inputs(self, length: int) -> dict[str, Any]:
        """The model-call arguments (besides ids and positions) for a pass after which the cache holds ``length``
        positions."""
        if isinstance(self.cache, KVBuffer):
            assert self.layout.positions is not None
            return self.cache.model_inputs(self.layout.positions[:length])
        return {"use_cache": True, self.layout.cache_keyword: self.cache}

    def _rewind(self, length: int) -> None:
        """Forget every position from ``length`` on (an edit, a regenerated reply, a different conversation)."""
        assert self.cache is not None and not isinstance(self.cache, KVBuffer)
        if any(type(layer) not in (DynamicLayer, StaticLayer) for layer in self.cache.layers):
            # Sliding-window and other special layers cannot be cut at an arbitrary position: start over.
            self.cache = StaticCache(config=self.model.config, max_cache_len=self.capacity) if self.static else None
            self.cache = self.cache or DynamicCache(config=self.model.config)
            self.ids = []
            return
        if self.static:
            # StaticCache has no crop: moving each layer's write position back is enough, because positions past it
            # are masked by position and overwritten as encoding goes on.
            for layer in self.cache.layers:
                if layer.is_initialized:
                    layer.cumulative_length.fill_(length)
        else:
            self.cache.crop(length - len(self.ids))
        self.ids = self.ids[:length]

    def clear(self) -> None:
        """Drop everything (after a failed forward pass, whose cache state is unknown)."""
        self.cache, self.capacity, self.ids = None, 0, []


class PromptCaches:
    """One ``PromptCache`` per recent conversation, at most ``size``; the least recently used goes first.

    A prompt takes the cache it extends. One that shares at least half of a cache's ids is the same conversation
    edited or regenerated, and rewinds that cache; any other prompt (another conversation, which may share only the
    template's system turn) gets a cache of its own, so two clients taking turns never encode each other's history.
    """

    def __init__(self, model: Any, layout: CacheLayout, size: int = PROMPT_CACHES) -> None:
        self.model = model
        self.layout = layout
        self.size = size
        self._caches: list[PromptCache] = []  # least recently used first

    def __len__(self) -> int:
        return len(self._caches)

    def for_prompt(self, ids: list[int]) -> PromptCache:
        """The cache to encode ``ids`` in, now the most recently used."""
        shared = [(common_prefix(c.ids, ids[:-1]), recency, c) for recency, c in enumerate(self._caches)]
        ours = [entry for entry in shared if entry[0] > 0 and 2 * entry[0] >= len(entry[2].ids)]
        if ours:  # the most shared; of equals, the most recently used
            best = max(ours, key=lambda entry: entry[:2])[2]
            self._caches.remove(best)
        elif len(self._caches) < self.size:
            best = PromptCache(self.model, self.layout)
        else:
            best = self._caches.pop(0)  # the least recently used conversation's history goes
            best.clear()
        self._caches.append(best)
        return best

    def clear(self) -> None:
        """Forget every conversation's history (a benchmark row that must encode its whole prompt)."""
        self._caches = []


class Sampler:
    """Chooses each next token as ``generate`` would with the same settings: transformers' repetition penalty, then
    the argmax at temperature 0, else a draw after temperature, top-k and top-p."""

    def __init__(self, params: GenerationParams, prompt_ids: list[int], max_new_tokens: int, device: torch.device):
        self.processors = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        self.sampling = params.temperature > 0
        if self.sampling:
            self.processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                self.processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(params.top_p))
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(params.seed)
        # Every id so far (the penalty looks at the prompt too, like generate's), in a buffer filled as tokens come.
        self.history = torch.zeros((1, len(prompt_ids) + max_new_tokens), dtype=torch.long, device=device)
        self.history[0, : len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long)
        self.length = len(prompt_ids)

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token for ``logits`` (shape ``[1, vocab]``)."""
        scores = self.processors(self.history[:, : self.length], logits.to(torch.float32, copy=True))
        if self.sampling:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator)[0, 0]
        else:
            token = scores[0].argmax()
        self.history[0, self.length] = token
        self.length += 1
        return int(token)


class Decoder:
    """Runs a causal LM's forward passes for generation: prefill, decode steps, the prompt cache, the compiled step.

    ``compile=True`` compiles the decode step: on a GPU with ``torch.compile`` over a static cache with CUDA graphs
    (``mode="reduce-overhead"``); on CPU over a KV buffer ahead of time into ``package_file`` (decode_package.py;
    ``package_builder`` builds it in another process), which later processes load even with ``compile=False``; on
    CPU otherwise with ``torch.compile`` and dynamic shapes (measured ~33 against ~24 tokens per CPU-second eager,
    int4, after a 90 s compile). Compiling takes from seconds to minutes, so it happens in a background thread
    (``warm_up``); until the compiled step is ready (for a static cache: for its capacity), replies use the eager step,
    and a process that ends meanwhile waits for the compile to finish. One reply at a time: the engine serialises calls
    to ``tokens``.
    """

    def __init__(
        self,
        model: Any,
        device: torch.device,
        context_limit: int,
        *,
        compile: bool,
        threads: int | None = None,
        prompt_threads: int | None = None,
        compile_cache_file: Path | None = None,
        package_file: Path | None = None,
        package_builder: Callable[[Path], None] | None = None,
    ) -> None:
        self.model = model
        self.compile_cache_file = compile_cache_file  # where the compiled step's artifacts are kept (compile_cache.py)
        self.compile = compile
        self.device = device
        # Intra-op threads replies decode with: the compiled step is specialised on it (a reply on another count
        # would recompile on the spot), so the compile uses it too and other counts take the eager step.
        self.threads = threads
        # Intra-op threads a prompt of PARALLEL_PROMPT tokens or more encodes with (None: the decode thread's count).
        # A decode step is a chain of small calls that extra threads only slow down, but a long prompt is hundreds
        # of rows a matmul: there every core helps, and a reopened long chat waits for nothing else.
        self.prompt_threads = prompt_threads
        # transformers 5.2x renamed the models' cache argument (`past_key_values` -> `cache`) and warns on the old
        # name in every process that decodes; earlier 5.x releases know only the old one.
        cache_keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        static = compile and device.type == "cuda"  # CUDA graphs need fixed shapes
        self.layout = CacheLayout("static" if static else "dynamic", context_limit, cache_keyword)
        shape = buffer_shape(model.config)
        if not static and shape is not None and getattr(model.config, "_attn_implementation", None) == ONE_QUERY_ATTENTION:
            # A KV buffer wherever attention can read one (kv_buffer.py): the model's attention goes through
            # decode_attention.py and every layer attends to all positions.
            positions = torch.arange(context_limit, device=device)
            self.layout = CacheLayout("buffer", context_limit, cache_keyword, shape, positions)
        self.prompt_cache = PromptCaches(model, self.layout)
        # The step over a KV buffer compiled ahead of time (decode_package.py), kept at ``package_file``: built there
        # when compiling or given a ``package_builder`` (which builds it in another process), else used if an earlier
        # process built it (loading is not compiling: it takes a second).
        self.package_file = package_file if self.layout.kind == "buffer" else None
        self.package_builder = package_builder
        self.packaged = self.package_file is not None and (
            compile or package_builder is not None or self.package_file.is_file()
        )
        self.compiled_step: Callable[..., torch.Tensor] | None = None
        if compile and static:
            self.compiled_step = torch.compile(self.eager_step, fullgraph=True, dynamic=False, mode="reduce-overhead")
        elif compile and not self.packaged:  # (a package's step is set by warm_up, once loaded)
            # Dynamic shapes: one compile serves every history length and buffer capacity. (Over a DynamicCache,
            # its bookkeeping breaks the graph in a few places: fullgraph would refuse it.) Before every call the
            # compiled step checks guards, among them that the model's modules and parameters are the ones it was
            # compiled for: they never change after loading (another model is another Decoder), and checking them
            # was a sizeable share of a token on CPU (profiled as "TorchDynamo Cache Lookup"). The guards on the
            # inputs (token, position, the cache's tensors and length) stay.
            skip_module_guards = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
            self.compiled_step = torch.compile(self.eager_step, dynamic=True, options=skip_module_guards)
        self.compile_state = "on" if compile or self.packaged else "off"  # off | on | warming | ready | failed: why
        self.compile_cached = False  # whether the last compile started from artifacts kept by an earlier process
        self.reused = 0  # prompt tokens the last reply took from the cache instead of encoding them
        self._compiled: set[int] = set()  # cache capacities whose compiled step is ready (0: the dynamic cache)
        self._compiling: dict[int, threading.Thread] = {}  # capacity -> the thread compiling for it
        self._warm_lock = threading.Lock()

    def eager_step(self, token: torch.Tensor, position: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """One decode step: the logits after ``token`` (shape ``[1, 1]``) at ``position``; ``inputs``: the cache's
        model-call arguments (PromptCache.model_inputs)."""
        return self.model(input_ids=token, position_ids=position, **inputs).logits[:, -1]

    def _prefill(self, cache: PromptCache, ids: list[int], start: int) -> torch.Tensor:
        """Encode ``ids`` at positions ``start...`` into ``cache``; the logits after the last one."""
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device)[None]
        threads = torch.get_num_threads()
        if self.prompt_threads is not None and len(ids) >= PARALLEL_PROMPT:
            torch.set_num_threads(self.prompt_threads)
        try:
            output = self.model(
                input_ids=input_ids,
                position_ids=positions,
                logits_to_keep=1,  # the prompt's other logits are never used: skip the vocabulary projection for them
                **cache.model_inputs(start + len(ids)),
            )
        finally:
            torch.set_num_threads(threads)  # the decode steps' count (the compiled step is specialised on it)
        return output.logits[:, -1]

    def tokens(self, ids: list[int], max_new_tokens: int, choose: Callable[[torch.Tensor], int]) -> Iterator[int]:
        """Yield up to ``max_new_tokens`` tokens after the prompt ``ids``, each picked by ``choose(logits)``.

        Stop early by closing the iterator (or simply no longer asking): the cache then holds exactly the ids fed so
        far, ready for the next turn. ``len(ids) + max_new_tokens`` must fit the model's context.
        """
        cache = self.prompt_cache.for_prompt(ids)
        try:
            with torch.inference_mode():
                start = self.reused = cache.prepare(ids, max_new_tokens)
                # One compiled step serves every capacity but a static cache's (compiled for its own shapes).
                step = self._step_for(cache.capacity if cache.static else 0)
                logits = self._prefill(cache, ids[start:], start)
                cache.ids = list(ids)
                for _ in range(max_new_tokens - 1):
                    token = choose(logits)
                    yield token
                    if self.device.type == "cuda" and step is self.compiled_step:
                        torch.compiler.cudagraph_mark_step_begin()  # the previous step's logits are consumed
                    position = torch.tensor([[len(cache.ids)]], device=self.device)
                    inputs = cache.model_inputs(len(cache.ids) + 1)
                    logits = step(torch.tensor([[token]], device=self.device), position, inputs)
                    cache.ids.append(token)
                yield choose(logits)  # the last token is never fed: no forward pass it would need
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                cache.clear()  # a forward pass that failed half-way leaves the cache in an unknown state
            raise

    def _step_for(self, capacity: int) -> Callable[..., torch.Tensor]:
        """The compiled step if it is ready for ``capacity``; else the eager one (and compile it in the background)."""
        if self.compiled_step is None and not self.packaged:
            return self.eager_step
        with self._warm_lock:
            if capacity in self._compiled:
                same_threads = self.threads is None or torch.get_num_threads() == self.threads
                return self.compiled_step if same_threads else self.eager_step
        self.warm_up(capacity)
        return self.eager_step

    def warm_up(self, capacity: int | None = None, *, wait: bool = False) -> None:
        """Compile the decode step in a background thread, for a static cache of ``capacity`` positions (default: the
        first capacity) or for the dynamic cache; a no-op when compiling is off or failed, or is done or under way
        for that capacity. ``wait`` blocks until that compile has finished."""
        if (self.compiled_step is None and not self.packaged) or self.compile_state.startswith(("failed", "off")):
            return
        if capacity is None:
            capacity = static_capacity(1, self.layout.context_limit) if self.layout.kind == "static" else 0
        with self._warm_lock:
            thread = self._compiling.get(capacity)
            if thread is None and capacity not in self._compiled:
                # Not a daemon: interpreter exit waits for it, since a process leaving in the middle of a compile
                # aborts (std::terminate, exit status 134).
                thread = threading.Thread(target=self._compile, args=(capacity,), name="compile-decode")
                self._compiling[capacity] = thread
                self.compile_state = "warming"
                thread.start()
        if wait and thread is not None:
            thread.join()

    def _compile(self, capacity: int) -> None:
        try:
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            ready = self._prepare_package() if self.packaged else self._trace(capacity)
            state = "ready" if ready else "off"
        except Exception as exc:  # no C++ compiler, a model the compiler cannot trace: replies stay eager
            ready, state = False, f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        with self._warm_lock:
            del self._compiling[capacity]
            if ready:
                self._compiled.add(capacity)
            self.compile_state = "warming" if ready and self._compiling else state

    def _trace(self, capacity: int) -> bool:
        """Compile ``compiled_step`` (torch.compile) by calling it, for ``capacity`` (see warm_up)."""
        assert self.compiled_step is not None
        self.compile_cached = compile_cache.load(self.compile_cache_file)
        with torch.inference_mode():
            # Scratch caches (the live one belongs to the replies that run meanwhile). The first call compiles
            # for its cache length, the next recompiles for any length: both here, not in a reply.
            for length in (WARM_UP_PROMPT, 3 * WARM_UP_PROMPT):
                scratch = PromptCache(self.model, self.layout)
                # A static cache of exactly ``capacity`` positions; the other layouts as a short reply needs.
                scratch.prepare([0] * length, capacity - length if capacity else 2)
                self._prefill(scratch, [0] * length, 0)
                for position in range(length, length + 2):  # CUDA graphs record on a later call than the first
                    if self.device.type == "cuda":
                        torch.compiler.cudagraph_mark_step_begin()
                    # Fresh tensors, made as tokens() makes them: the compiled step is specialised on strides.
                    token = torch.tensor([[0]], device=self.device)
                    position_ids = torch.tensor([[position]], device=self.device)
                    self.compiled_step(token, position_ids, scratch.model_inputs(position + 1))
        try:
            compile_cache.save(self.compile_cache_file)
        except OSError:  # a full or read-only disk: the next start compiles from scratch, this one is ready
            pass
        return True

    def _prepare_package(self) -> bool:
        """Load the decode package (building it first when there is none and this decoder may build); returns whether
        the compiled step is ready. A package that does not load (cut short, from another torch) is removed: a
        process that compiles builds it again, one that does not decodes eagerly (and its server's successor builds
        it)."""
        assert self.package_file is not None and self.layout.buffer_shape is not None
        if self.package_file.is_file():
            try:
                self.compiled_step = decode_package.load(self.package_file, self.model)
                self.compile_cached = True
                return True
            except Exception:
                self.package_file.unlink(missing_ok=True)
        if not self.compile and self.package_builder is None:
            return False
        self.compile_cached = False
        if self.package_builder is not None:
            # Another process (the engine's): after an export and compile in this one, its prompts encoded ~20%
            # slower for good (1,734 tokens: 2.8-3.0 s before, 3.3-3.9 s after; not freed by malloc_trim or
            # resetting dynamo), and a server keeps this process for every later reply.
            self.package_builder(self.package_file)
        else:
            decode_package.build_checked(self.model, self.layout.buffer_shape, self.package_file, self.eager_step)
        self.compiled_step = decode_package.load(self.package_file, self.model)
        return True
