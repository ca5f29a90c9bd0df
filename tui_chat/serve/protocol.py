"""The OpenAI chat completions protocol: a request body checked into a ``CompletionRequest``, and the JSON shapes of
replies, stream chunks, usage and errors (https://platform.openai.com/docs/api-reference/chat).

Every problem with a request is a ``RequestError`` whose message is one line naming the field and what it must be:
the client gets it as an OpenAI error body, never a traceback.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from tui_chat.inference.contract import GenerationParams, GenerationStats

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role

# OpenAI field -> GenerationParams field, for numbers a client may send. Absent ones keep the chat's defaults
# (GenerationParams()): OpenAI's own defaults (temperature 1, top_p 1, no repetition penalty) make a small model ramble.
FLOAT_FIELDS = {"temperature": "temperature", "top_p": "top_p", "repetition_penalty": "repetition_penalty"}
INT_FIELDS = {"top_k": "top_k", "max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens"}
MAX_TOKENS = 32768  # the most a request may ask for: no model served here has a longer context


class RequestError(Exception):
    """A request the server cannot answer as sent: an HTTP status and an OpenAI error body."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind = kind
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


@dataclass
class CompletionRequest:
    messages: list[dict[str, str]]
    params: GenerationParams
    model: str | None = None  # None: the model loaded now
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    stop: list[str] = field(default_factory=list)


def parse_completion_request(raw: bytes) -> CompletionRequest:
    """The request in ``raw`` (a JSON body), checked; raises RequestError naming the first problem."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object with `messages`")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("`model` must be a string (GET /v1/models lists them)", param="model")
    if body.get("n", 1) != 1:
        raise RequestError("`n` must be 1: one choice per request", param="n")
    return CompletionRequest(
        messages=_messages(body.get("messages")),
        params=_params(body),
        model=model,
        stream=_flag(body, "stream"),
        include_usage=_stream_options(body.get("stream_options")),
        stop=_stop(body.get("stop")),
    )


def _messages(value: Any) -> list[dict[str, str]]:
    if value is None:
        raise RequestError("`messages` is missing; send a list of {\"role\", \"content\"} objects", param="messages")
    if not isinstance(value, list) or not value:
        raise RequestError("`messages` must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"`{where}` must be an object with `role` and `content`", param=where)
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise RequestError(f"`{where}.role` is {message.get('role')!r}; use one of: system, user, assistant",
                               param=f"{where}.role")
        messages.append({"role": role, "content": _content(message.get("content"), f"{where}.content")})
    return messages


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (joined); other parts (images, audio) are refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"`{where}[{index}]` must be a text part {{\"type\": \"text\", \"text\": \"...\"}}; "
                                   "only text is supported", param=where)
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"`{where}` must be a string", param=where)


def _params(body: dict[str, Any]) -> GenerationParams:
    values: dict[str, Any] = {}
    given: dict[str, str] = {}  # GenerationParams field -> the OpenAI name it came from, for error messages
    for name, target in FLOAT_FIELDS.items():
        if body.get(name) is not None:
            values[target] = _number(body, name, float)
            given[target] = name
    for name, target in INT_FIELDS.items():
        if body.get(name) is not None:
            values[target] = _number(body, name, int)
            given[target] = name
    if body.get("seed") is not None:
        values["seed"] = _number(body, "seed", int)
    if values.get("max_new_tokens", 0) > MAX_TOKENS:
        name = given["max_new_tokens"]
        raise RequestError(f"`{name}` must be at most {MAX_TOKENS}", param=name)
    try:
        return GenerationParams(**{**GenerationParams().to_dict(), **values}).validated()
    except ValueError as exc:  # "temperature must be >= 0 (0 = greedy)": the message starts with the field's name
        target = str(exc).split()[0]
        name = given.get(target, target)
        raise RequestError(str(exc).replace(target, f"`{name}`", 1), param=name) from None


def _number(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body[name]
    # bool is an int in Python, not a number in JSON; an integer is a fine float, a float is not an integer.
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        what = "a number" if kind is float else "an integer"
        raise RequestError(f"`{name}` must be {what}, not {json.dumps(value)}", param=name)
    return kind(value)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"`{name}` must be true or false", param=name)
    return value


def _stream_options(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict):
        raise RequestError("`stream_options` must be an object like {\"include_usage\": true}", param="stream_options")
    return _flag(value, "include_usage")


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise RequestError("`stop` must be a string or a list of strings", param="stop")


# ---- what the server sends ---------------------------------------------------------------------------------------


def error_body(message: str, *, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def finish_reason(stats: GenerationStats, stop_hit: bool) -> str:
    """OpenAI's finish reason: "length" when the token limit cut the reply, else "stop" (the model ended its turn,
    a stop string was found)."""
    return "length" if stats.finish_reason == "length" and not stop_hit else "stop"


def usage_body(stats: GenerationStats) -> dict[str, Any]:
    """Token counts as OpenAI reports them; ``cached_tokens``: prompt tokens the model's cache already held."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.new_tokens,
        "total_tokens": stats.prompt_tokens + stats.new_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    }


def completion_body(request_id: str, created: int, model: str, text: str, finish: str,
                    stats: GenerationStats) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish}],
        "usage": usage_body(stats),
    }


def chunk_body(request_id: str, created: int, model: str, delta: dict[str, str], finish: str | None = None,
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed chunk; the usage chunk (``usage`` given) has no choices, as OpenAI sends it."""
    chunk: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage is not None:
        chunk["choices"], chunk["usage"] = [], usage
    else:
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return chunk


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"
