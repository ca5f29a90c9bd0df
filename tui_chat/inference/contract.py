"""The inference contract shared by the TUI, the REPL, `ask`, the benchmarks and the tests' fake engine.

``engine.stream(messages, params, stop)`` yields ``TextDelta`` chunks as the reply grows and ends with exactly one
``GenerationStats``. ``stop`` is a ``threading.Event``: setting it ends generation promptly with
``finish_reason == "stopped"``.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterator, Protocol, Union

FINISH_REASONS = ("eos", "length", "stopped")


class EngineError(Exception):
    """Loading or generation failed in a way the user can fix; the message is one line naming the fix."""


@dataclass
class GenerationParams:
    """Sampling settings; ``temperature == 0`` means greedy decoding."""

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 512
    seed: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "GenerationParams":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_value(self, name: str, raw: str) -> "GenerationParams":
        """A copy with one field set from text (``/set temperature 0.2``); raises ValueError on bad input."""
        kinds = {f.name: f.type for f in fields(self)}
        if name not in kinds:
            raise ValueError(f"unknown setting {name!r}; settings: {', '.join(kinds)}")
        whole = name in ("seed", "top_k", "max_new_tokens")
        try:
            if name == "seed" and raw.lower() in ("none", "off", ""):
                value: Any = None
            else:
                value = int(raw) if whole else float(raw)
        except ValueError:
            raise ValueError(f"{name} takes {'a whole number' if whole else 'a number'}, not {raw!r}") from None
        values = self.to_dict()
        values[name] = value
        return GenerationParams(**values).validated()

    def validated(self) -> "GenerationParams":
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0 (1 = off)")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        return self


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    ttft_s: float  # time to first token, seconds
    duration_s: float  # whole generation, seconds
    finish_reason: str  # one of FINISH_REASONS
    dropped_messages: int = 0  # oldest turns left out to fit the context window
    context_limit: int | None = None
    cached_tokens: int = 0  # prompt tokens taken from the engine's prompt cache instead of being encoded again

    @property
    def tokens_per_s(self) -> float:
        decode_time = self.duration_s - self.ttft_s
        if self.new_tokens <= 1 or decode_time <= 0:
            return 0.0
        return (self.new_tokens - 1) / decode_time


Chunk = Union[TextDelta, GenerationStats]
ProgressCallback = Callable[[str, "float | None"], None]  # (what is happening, fraction done or None)


@dataclass(frozen=True)
class EngineInfo:
    name: str  # the model spec or run name recorded on every reply
    device: str
    dtype: str
    context_limit: int
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    name: str

    @property
    def ready(self) -> bool: ...

    def load(self, progress: ProgressCallback | None = None) -> EngineInfo:
        """Load the model (slow: call it in a worker). Idempotent."""

    def info(self) -> EngineInfo: ...

    def count_tokens(self, messages: list[dict[str, str]]) -> int: ...

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]: ...


EngineFactory = Callable[[str], Engine]  # model spec -> an unloaded engine (model switching)
