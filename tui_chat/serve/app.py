"""The Starlette app: `POST /v1/chat/completions` (plain or streamed), `GET /v1/models`, `GET /health`, and two
extensions the app's own client uses: `POST /load` (load a model now, progress in /health) and `POST /tokenize`
(vLLM's shape: how many tokens ``messages`` take).

Built by ``make_app(scheduler, catalog)`` from objects the caller made, so tests hand in a fake engine's scheduler.
A request is checked in full before it queues: a bad one gets 400 and an unknown model 404 at once, with an OpenAI
error body. A stream's status goes out as it starts (a queued client knows it is connected); a failure after that
(a model that fails to load, a model that fails mid-reply) ends the stream with an error event, which OpenAI clients
raise.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import time
import threading
import traceback
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sessions import one_line
from trainer.model_names import engine_name

from tui_chat.inference.contract import EngineError, GenerationStats, TextDelta
from tui_chat.serve.catalog import ModelCatalog
from tui_chat.serve.protocol import (
    CompletionRequest,
    RequestError,
    chunk_body,
    completion_body,
    completion_id,
    error_body,
    finish_reason,
    now,
    parse_completion_request,
    sse,
    usage_body,
)
from tui_chat.serve.scheduler import ModelScheduler
from tui_chat.serve.stop_strings import StopStrings

CLIENT_CLOSED_REQUEST = 499  # the status access logs show for a client that left before its reply (nginx's code)
MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body's bound: a long conversation is well under 1 MiB of JSON


ReplyLog = Callable[[str, CompletionRequest, str, GenerationStats], None]  # (model, request, text, stats)


def make_app(scheduler: ModelScheduler, catalog: ModelCatalog, *, identity: dict | None = None,
             api_key: str | None = None, log: ReplyLog | None = None) -> Starlette:
    """The server's app around a started ``scheduler`` and the ``catalog`` of model names it answers to.

    ``identity`` (the app's version and the engine settings) is in /health, so a client can tell whether this
    server is the one it would start; with ``api_key``, every request must carry it as a bearer token; ``log`` is
    given each finished reply (`--log` stores them as conversations).
    """

    async def chat_completions(request: Request) -> Response:
        completion = parse_completion_request(await _bounded_body(request))
        # No `model`: whichever is loaded now. Resolving lists the data home's models: disk, off the event loop.
        spec = await run_in_threadpool(catalog.resolve, completion.model) if completion.model else scheduler.spec
        stop = threading.Event()
        if completion.stream:
            return StreamingResponse(_events(scheduler, spec, completion, stop, log), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        watcher = asyncio.create_task(_stop_on_disconnect(request, stop))
        try:
            body = await _complete(scheduler, spec, completion, stop, log)
        except Exception as exc:
            return JSONResponse(_failure_body(exc), status_code=500)
        finally:
            watcher.cancel()
        # None: the client left while its request waited (skipped) or ran; nobody reads this status.
        return JSONResponse(body) if body is not None else Response(status_code=CLIENT_CLOSED_REQUEST)

    async def models(request: Request) -> Response:
        served = await run_in_threadpool(catalog.models)
        info = scheduler.info()
        data = [{"id": model.id, "object": "model", "created": model.created, "owned_by": "tui-chat"}
                for model in served]
        for entry in data:
            if info is not None and entry["id"] == scheduler.model:
                entry["max_model_len"] = info.context_limit  # vLLM's field: the loaded model's context, in tokens
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        info = scheduler.info()
        loading = scheduler.loading
        failed = scheduler.load_error
        return JSONResponse({
            "status": "ok", "model": scheduler.model, "loaded": scheduler.ready, "pending": scheduler.pending,
            "pid": os.getpid(), **(identity or {}),
            "info": None if info is None else {"name": info.name, "device": info.device, "dtype": info.dtype,
                                               "context_limit": info.context_limit, "extra": info.extra},
            "loading": None if loading is None else {"what": loading[0], "fraction": loading[1]},
            "load_error": None if failed is None else {"model": failed[0], "message": failed[1]},
        })

    async def load(request: Request) -> Response:
        model = _json_object(await _bounded_body(request)).get("model")
        if not isinstance(model, str) or not model:
            raise RequestError("`model` must be a model name (GET /v1/models lists them)", param="model")
        scheduler.request_load(await run_in_threadpool(catalog.resolve, model))
        return JSONResponse({"status": "loading", "model": engine_name(model)}, status_code=202)

    async def tokenize(request: Request) -> Response:
        body = _json_object(await _bounded_body(request))
        messages = parse_completion_request(json.dumps({"messages": body.get("messages")}).encode()).messages
        try:
            count = await run_in_threadpool(scheduler.count_tokens, messages)
        except EngineError as exc:
            raise RequestError(one_line(str(exc), 500), status=409) from None
        info = scheduler.info()
        return JSONResponse({"count": count, "max_model_len": info.context_limit if info else None})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/load", load, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
        ],
        exception_handlers={RequestError: _request_error, HTTPException: _http_error, Exception: _server_error},
    )
    app.add_middleware(_Gate, scheduler=scheduler, api_key=api_key)
    return app


class _Gate:
    """Before any route: the API key (401 without it) and the idle clock (a request is activity)."""

    def __init__(self, app: ASGIApp, scheduler: ModelScheduler, api_key: str | None) -> None:
        self.app = app
        self.scheduler = scheduler
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.scheduler.last_active = time.monotonic()
            given = dict(scope["headers"]).get(b"authorization", b"")
            if self.expected is not None and not hmac.compare_digest(given, self.expected):
                message = ("missing or wrong API key; send it as `Authorization: Bearer KEY` (the openai client's "
                           "api_key)")
                await JSONResponse(error_body(message, kind="invalid_request_error", code="invalid_api_key"),
                                   status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _bounded_body(request: Request) -> bytes:
    """The request's body, refused (413) past MAX_BODY_BYTES before more of it is read."""
    declared = request.headers.get("content-length")
    too_big = RequestError(f"the body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB; send a shorter conversation",
                           status=413)
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_big
    return bytes(body)


def _json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


async def _complete(scheduler: ModelScheduler, spec: str, completion: CompletionRequest,
                    stop: threading.Event, log: ReplyLog | None) -> dict | None:
    """The whole reply as one chat.completion object; None when the client left before it was made."""
    request_id, created = completion_id(), now()
    stops = StopStrings(completion.stop)
    text, stats = [], None
    async for chunk in scheduler.stream(spec, completion.messages, completion.params, stop):
        if isinstance(chunk, TextDelta):
            text.append(stops.feed(chunk.text))
            if stops.hit:
                stop.set()  # the reply ends at the stop string: no need to decode past it
        else:
            stats = chunk
    if stats is None:
        return None
    text.append(stops.flush())
    finish = finish_reason(stats, stops.hit)
    if log is not None:
        log(engine_name(spec), completion, "".join(text), stats)
    return completion_body(request_id, created, engine_name(spec), "".join(text), finish, stats)


async def _events(scheduler: ModelScheduler, spec: str, completion: CompletionRequest,
                  stop: threading.Event, log: ReplyLog | None) -> AsyncIterator[str]:
    """The reply as server-sent chunks: the role with the first text, the text as it comes, the finish reason, the
    usage when asked for, then ``[DONE]``. If the client disconnects, Starlette cancels this generator (its
    ``listen_for_disconnect``), and leaving it sets ``stop``: the model stops within one token."""
    request_id, created, model = completion_id(), now(), engine_name(spec)
    stops = StopStrings(completion.stop)
    role = {"role": "assistant"}  # sent once, with the first chunk
    sent: list[str] = []
    try:
        async for chunk in scheduler.stream(spec, completion.messages, completion.params, stop):
            if isinstance(chunk, TextDelta):
                text = stops.feed(chunk.text)
                sent.append(text)
                if stops.hit:
                    stop.set()
                if text or role:
                    yield sse(chunk_body(request_id, created, model, {**role, "content": text}))
                    role = {}
                continue
            tail = stops.flush()
            if log is not None:
                log(model, completion, "".join(sent) + tail, chunk)
            if tail or role:
                yield sse(chunk_body(request_id, created, model, {**role, "content": tail}))
            yield sse(chunk_body(request_id, created, model, {}, finish_reason(chunk, stops.hit)))
            if completion.include_usage:
                yield sse(chunk_body(request_id, created, model, {}, usage=usage_body(chunk)))
        yield sse("[DONE]")
    except Exception as exc:  # the status (200) went out as the stream began: the error is its last event
        yield sse(_failure_body(exc))
    finally:
        stop.set()


async def _stop_on_disconnect(request: Request, stop: threading.Event) -> None:
    """Set ``stop`` when the client goes away while its (non-streamed) reply is made. The body has been read, so
    the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    stop.set()


def _failure_body(exc: Exception) -> dict:
    """The error body for a reply that failed: the engine's own line, or for a bug its type and message (the
    traceback goes to the server's log)."""
    if isinstance(exc, EngineError):
        return error_body(one_line(str(exc), 500), kind="server_error")
    traceback.print_exception(exc, file=sys.stderr)
    return _internal_error_body(exc)


def _internal_error_body(exc: Exception) -> dict:
    message = f"internal error: {one_line(f'{type(exc).__name__}: {exc}', 300)}; see the server's log"
    return error_body(message, kind="server_error")


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no such path) and 405 (wrong method), as OpenAI error bodies."""
    assert isinstance(exc, HTTPException)
    message = {404: f"no such endpoint: {request.url.path}; the endpoints are POST /v1/chat/completions, "
                    "GET /v1/models and GET /health",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse(error_body(message, kind="invalid_request_error"), status_code=exc.status_code)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug outside a reply: one line to the client; Starlette then raises it again for uvicorn to log."""
    return JSONResponse(_internal_error_body(exc), status_code=500)
