"""The real engine: a transformers causal LM behind the ``Engine`` contract of ``generation.py``.

``generate`` runs in a thread; a streamer of our own turns token ids into text deltas that never split a UTF-8
character and never contain special tokens, and a ``StoppingCriteria`` reads the caller's stop event after every
token, so Stop returns within one forward pass. The conversation is fitted into the context window first: the
system prompt stays, the oldest turns go, and the stats say how many.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from trainer.devices import dtype_name, inference_threads
from trainer.home import DataHome
from trainer.models import BUNDLED_ALIASES, BUNDLED_NAME, LoadedModel, ModelError, load_model, one_line

from .generation import Chunk, EngineError, EngineInfo, GenerationParams, GenerationStats, ProgressCallback, TextDelta

# Tokens that end an assistant turn in the common chat formats, added to the model's own eos ids when the
# vocabulary has them as single tokens (a base model's default template ends turns with its eos token).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


class TextDeltaStreamer(BaseStreamer):
    """Receives token ids from ``generate`` and queues text deltas.

    Incremental detokenization: decode a short window of already-emitted tokens plus the new ones and emit only the
    text past the window. A delta ending in U+FFFD is an incomplete UTF-8 sequence (a character split across
    tokens): it is held back until the next token completes it.
    """

    def __init__(self, tokenizer: Any, deltas: queue.Queue) -> None:
        self.tokenizer = tokenizer
        self.deltas = deltas
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # tokens before this have been emitted as text
        self.first_token_at: float | None = None
        self.last_id: int | None = None
        self._prompt_seen = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt ids
            self._prompt_seen = True
            return
        new = value.reshape(-1).tolist()
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids.extend(new)
        self.last_id = new[-1]
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if final:
            # A character still incomplete when generation ends (cut by max_new_tokens or Stop) is dropped.
            text = text.rstrip("\ufffd")
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.deltas.put(text[len(before) :])
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)

    @property
    def new_tokens(self) -> int:
        return len(self.ids)


class StopOnEvent(StoppingCriteria):
    """Ends generation after the current token once any of ``events`` is set."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [event for event in events if event is not None]
        self.triggered = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.triggered = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), self.triggered, dtype=torch.bool, device=input_ids.device)


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
    ) -> None:
        self.spec = spec
        self.name = BUNDLED_NAME if spec.strip().lower() in BUNDLED_ALIASES else spec
        self.models_dir = Path(models_dir)
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.threads = threads  # CPU decoding threads; None = trainer.devices.inference_threads()
        self._loaded: LoadedModel | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()  # one generation at a time: the model holds no per-call state
        self._stop_ids: list[int] = []

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def load(self, progress: ProgressCallback | None = None) -> EngineInfo:
        """Load (converting the bundled model on first use); idempotent and safe to call from a worker thread."""
        with self._load_lock:
            if self._loaded is None:
                try:
                    loaded = load_model(
                        self.spec,
                        models_dir=self.models_dir,
                        device=self.device,
                        dtype=self.dtype,
                        trust_remote_code=self.trust_remote_code,
                        progress=progress,
                    )
                except ModelError as exc:
                    raise EngineError(str(exc)) from exc
                if loaded.device.type == "cpu":
                    # torch's thread count is process-wide: see inference_threads for why decoding uses fewer.
                    torch.set_num_threads(self.threads or inference_threads())
                self._stop_ids = _end_of_turn_ids(loaded)
                self._loaded = loaded
        return self.info()

    @property
    def loaded(self) -> LoadedModel:
        """The model and tokenizer (for benchmarks and tools that need the raw objects)."""
        if self._loaded is None:
            raise EngineError(f"model {self.name} is not loaded yet; call load() first")
        return self._loaded

    def info(self) -> EngineInfo:
        loaded = self.loaded
        return EngineInfo(
            name=self.name,
            device=str(loaded.device),
            dtype=dtype_name(loaded.dtype),
            context_limit=loaded.context_limit,
            extra={"source": loaded.source, "threads": torch.get_num_threads()},
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
        """The ``generate`` settings for ``params``: greedy at temperature 0, the model's end-of-turn tokens."""
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

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Stream the reply to ``messages``; see ``generation.Engine``. Raises EngineError on failure."""
        loaded = self.loaded
        params = params.validated()
        if not self._generate_lock.acquire(blocking=False):
            raise EngineError("a reply is already being generated; stop it before starting another")
        abandoned = threading.Event()  # set when the caller stops iterating before the end
        try:
            started = time.perf_counter()
            ids, dropped = self.fit_context(messages, params.max_new_tokens)
            max_new = min(params.max_new_tokens, loaded.context_limit - len(ids))
            deltas: queue.Queue = queue.Queue()
            streamer = TextDeltaStreamer(loaded.tokenizer, deltas)
            stopper = StopOnEvent(stop, abandoned)
            config = self.generation_config(params, max_new)
            input_ids = torch.tensor([ids], device=loaded.device)

            def generate() -> None:
                try:
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    with torch.inference_mode():
                        loaded.model.generate(
                            input_ids=input_ids,
                            attention_mask=torch.ones_like(input_ids),
                            generation_config=config,
                            streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([stopper]),
                        )
                except BaseException as exc:  # handed to the caller's thread, raised there as EngineError
                    deltas.put(_Failure(exc))
                finally:
                    deltas.put(_DONE)

            worker = threading.Thread(target=generate, name=f"generate-{self.name}", daemon=True)
            worker.start()
            try:
                while True:
                    item = deltas.get()
                    if item is _DONE:
                        break
                    if isinstance(item, _Failure):
                        raise EngineError(f"generation failed: {one_line(item.error)}") from item.error
                    yield TextDelta(item)
            finally:
                abandoned.set()  # no-op after a normal end; ends generation if the caller stopped iterating
                worker.join()
            finished = time.perf_counter()
            if stopper.triggered and stop is not None and stop.is_set():
                reason = "stopped"
            elif streamer.last_id in self._stop_ids:
                reason = "eos"
            else:
                reason = "length"
            yield GenerationStats(
                prompt_tokens=len(ids),
                new_tokens=streamer.new_tokens,
                ttft_s=(streamer.first_token_at or finished) - started,
                duration_s=finished - started,
                finish_reason=reason,
                dropped_messages=dropped,
                context_limit=loaded.context_limit,
            )
        finally:
            self._generate_lock.release()


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
    threads)."""
    return HFEngine(spec, home.models, **options)
