"""``OpenAIEngine``: the engine contract over HTTP, against any OpenAI-compatible server (`tui-chat serve`, llama.cpp's
`llama-server`, vLLM, Ollama, LM Studio, a hosted API).

A reply is one streamed ``POST /chat/completions``; its chunks become ``TextDelta`` and its usage the
``GenerationStats``. Stop shuts the connection's socket down: the blocked read returns at once, and the server sees
the client leave (`tui-chat serve` then stops decoding within one token). Timings are taken here, as the user sees
them: TTFT counts the trip to the server.

httpx (``httpx2``, the maintained line openai and huggingface_hub use) rather than the ``openai`` package: it is the
same transport, imports in a tenth of the time (the chat window's first frame waits for its imports), and gives the
socket that Stop shuts down.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx

from sessions import one_line

from tui_chat.inference.contract import (
    Chunk,
    EngineError,
    EngineInfo,
    GenerationParams,
    GenerationStats,
    ProgressCallback,
    TextDelta,
)

STOP_POLL_S = 0.05  # how often a streaming reply's watcher checks its stop event (Stop latency, seconds)
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # the longest wait for the next chunk: a busy server queues requests before answering
CHARS_PER_TOKEN = 4  # the estimate for servers that cannot count tokens (English text, BPE tokenizers)
# Fields servers use for a model's context length in GET /models: vLLM, OpenRouter / LM Studio.
CONTEXT_FIELDS = ("max_model_len", "context_length")


class ServerUnreachable(EngineError):
    """Nothing answered at the server's address: no request reached it (so sending again is safe)."""


class ConnectionLost(EngineError):
    """The connection broke during a request (the server went away, or the network)."""


class OpenAIEngine:
    """A model served over the OpenAI chat completions API.

    ``name`` is what replies record (``openai:gpt-4o-mini``, ``groq:llama-3.1-8b``); ``model`` is what the server
    calls it. ``transport`` replaces TCP (the local server's Unix socket). ``extensions``: the server understands
    ``top_k`` and ``repetition_penalty`` (`tui-chat serve`, vLLM, llama.cpp); hosted APIs refuse unknown fields.
    """

    def __init__(self, name: str, model: str, base_url: str, *, api_key: str | None = None,
                 transport: httpx.BaseTransport | None = None, extensions: bool = False) -> None:
        self.name = name
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.extensions = extensions
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )
        self._info: EngineInfo | None = None
        self._counts_tokens = True  # the server answers POST /tokenize (vLLM's shape); else counts are estimates

    @property
    def where(self) -> str:
        """The server as messages name it (never with a key: keys travel in a header only)."""
        return self.base_url

    @property
    def ready(self) -> bool:
        return self._info is not None

    def load(self, progress: ProgressCallback | None = None) -> EngineInfo:
        """Ask the server which models it serves; the model must be one of them."""
        if progress is not None:
            progress(f"asking {self.where} for {self.model}", None)
        served = self._get_json("/models").get("data") or []
        entry = next((model for model in served if isinstance(model, dict) and model.get("id") == self.model), None)
        if entry is None and served:
            names = ", ".join(str(model.get("id")) for model in served[:12] if isinstance(model, dict))
            raise EngineError(f"{self.where} does not serve {self.model!r}; it serves: {names}")
        context = next((entry[key] for key in CONTEXT_FIELDS if isinstance((entry or {}).get(key), int)), 0)
        self._info = EngineInfo(name=self.name, device=urlsplit(self.base_url).netloc or self.base_url,
                                dtype="remote", context_limit=context)
        return self._info

    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineError(f"model {self.name} is not loaded yet; call load() first")
        return self._info

    def close(self) -> None:
        self._client.close()

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """The server's count (``POST /tokenize``, as vLLM and `tui-chat serve` answer it), else an estimate."""
        if self._counts_tokens:
            try:
                response = self._client.post(self._root_url("/tokenize"), json={"model": self.model,
                                                                                 "messages": messages})
                if response.status_code == 200 and isinstance(response.json().get("count"), int):
                    return response.json()["count"]
                if response.status_code in (404, 405):
                    self._counts_tokens = False
                else:
                    raise EngineError(self._refusal(response))
            except httpx.TransportError as exc:
                raise self._transport_error(exc, started=False) from None
        return sum(len(message.get("content", "")) // CHARS_PER_TOKEN + 4 for message in messages)

    def stream(
        self, messages: list[dict[str, str]], params: GenerationParams, stop: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Stream the reply; see ``contract.Engine``. Stop, or closing this iterator, closes the connection."""
        stop = stop or threading.Event()
        started = time.perf_counter()
        request = self._client.build_request("POST", "/chat/completions", json=self._body(messages, params))
        try:
            response = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, started=False) from None
        done = threading.Event()
        watcher = threading.Thread(target=_shut_when_stopped, args=(response, stop, done), daemon=True,
                                   name="reply-stop")
        watcher.start()
        first_at: float | None = None
        deltas, usage, finish = 0, None, None
        try:
            if response.status_code != 200:
                response.read()
                raise EngineError(self._refusal(response))
            try:
                for event in _events(response):
                    if stop.is_set():  # what the server sent before it saw us go is not part of the reply
                        break
                    if "error" in event:
                        message = (event["error"] or {}).get("message") if isinstance(event["error"], dict) else None
                        raise EngineError(one_line(str(message or event["error"]), 500))
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            first_at = first_at or time.perf_counter()
                            deltas += 1
                            yield TextDelta(text)
                        finish = choice.get("finish_reason") or finish
            except (httpx.TransportError, httpx.DecodingError) as exc:
                if not stop.is_set():  # not our own Stop shutting the socket down
                    raise self._transport_error(exc, started=True) from None
        finally:
            done.set()
            response.close()
        ended = time.perf_counter()
        usage = usage or {}
        yield GenerationStats(
            prompt_tokens=usage.get("prompt_tokens") or 0,
            new_tokens=usage.get("completion_tokens") or deltas,
            ttft_s=(first_at or ended) - started,
            duration_s=ended - started,
            finish_reason="stopped" if stop.is_set() and finish is None else "length" if finish == "length" else "eos",
            dropped_messages=usage.get("dropped_messages") or 0,
            context_limit=(self._info.context_limit or None) if self._info else None,
            cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        )

    def _body(self, messages: list[dict[str, str]], params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self.extensions:
            body["top_k"], body["repetition_penalty"] = params.top_k, params.repetition_penalty
        return body

    def _get_json(self, path: str) -> dict[str, Any]:
        try:
            response = self._client.get(path)
        except httpx.TransportError as exc:
            raise self._transport_error(exc, started=False) from None
        if response.status_code != 200:
            raise EngineError(self._refusal(response))
        try:
            return response.json()
        except ValueError:
            raise EngineError(f"{self.where}{path} did not answer JSON; is --api-base an OpenAI-compatible API "
                              "(it usually ends in /v1)?") from None

    def _root_url(self, path: str) -> str:
        """``path`` at the server's root: extensions such as /tokenize live beside /v1, not under it."""
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        return root + path

    def _refusal(self, response: httpx.Response) -> str:
        """One line for a 4xx/5xx: the server's own error message, and the fix for a missing key."""
        try:
            error = response.json().get("error")
            message = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            message = None
        message = one_line(str(message or response.text or response.reason_phrase), 300)
        fix = "; check the endpoint's key (tui-chat endpoints list)" if response.status_code in (401, 403) else ""
        return f"{self.where} answered {response.status_code}: {message}{fix}"

    def _transport_error(self, exc: Exception, *, started: bool) -> EngineError:
        if not started and isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return ServerUnreachable(f"cannot reach {self.where} ({one_line(str(exc) or type(exc).__name__, 200)});"
                                     " check that the server runs and the address")
        return ConnectionLost(f"the connection to {self.where} broke off ({one_line(str(exc) or type(exc).__name__, 200)});"
                           " send again")


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, up to ``[DONE]``."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise EngineError(f"the server sent a chunk that is not JSON: {one_line(data, 120)}") from None
        if isinstance(event, dict):
            yield event


def _shut_when_stopped(response: httpx.Response, stop: threading.Event, done: threading.Event) -> None:
    """Watcher thread: when ``stop`` is set before the reply ends, shut the socket down so the blocked read returns
    now (closing the response from another thread is not safe; shutting its socket is) and the server sees us go."""
    while not done.wait(STOP_POLL_S):
        if stop.is_set():
            network = response.extensions.get("network_stream")
            sock = network.get_extra_info("socket") if network is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed: the reply ended meanwhile
            return
