"""`tui-chat serve`: the OpenAI-compatible server, through Starlette's TestClient and a real uvicorn with a fake engine,
a tiny real model for the prompt cache, and the real command with the bundled model and the official openai client."""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the maintained httpx (openai and huggingface_hub use it; so does TestClient)
import pytest
from starlette.testclient import TestClient

from tests.fakes import FakeEngine
from tui_chat.inference.contract import GenerationParams, GenerationStats
from tui_chat.serve.app import make_app
from tui_chat.serve.catalog import ModelCatalog, ServedModel
from tui_chat.serve.scheduler import ModelScheduler
from tui_chat.serve.server import ModelServer
from tui_chat.serve.stop_strings import StopStrings

URL = "/v1/chat/completions"
LONG_REPLY = " ".join(f"word{i}" for i in range(200))


class WatchedEngine(FakeEngine):
    """A FakeEngine that keeps each reply's stop event and final stats, and how many replies ran at once."""

    def __init__(self, replies: list[str] | None = None, **options: Any) -> None:
        super().__init__(replies, **options)
        self.stops: list[threading.Event | None] = []
        self.finished: list[GenerationStats] = []
        self.running = 0
        self.most_at_once = 0

    def will_reply(self, *replies: str) -> None:
        """The next replies, in place of those queued."""
        self.replies.clear()
        self.replies.extend(replies)

    def stream(self, messages, params, stop=None):  # type: ignore[no-untyped-def]
        self.stops.append(stop)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            for chunk in super().stream(messages, params, stop):
                if isinstance(chunk, GenerationStats):
                    self.finished.append(chunk)
                yield chunk
        finally:
            self.running -= 1


class Served:
    """A scheduler over fake engines (one per model name, made on first use) and the catalog around it."""

    def __init__(self, engine: FakeEngine, local: list[str] = ("smollm2", "my-run")) -> None:
        self.engines: dict[str, FakeEngine] = {engine.name: engine}
        self.opened: list[str] = []
        self.scheduler = ModelScheduler(self.open, engine.name)
        self.catalog = ModelCatalog(engine.name, lambda: [ServedModel(name, 1_700_000_000) for name in local])
        self.scheduler.load()

    def open(self, spec: str) -> FakeEngine:
        self.opened.append(spec)
        return self.engines.setdefault(spec, WatchedEngine(name=spec))

    def app(self):  # type: ignore[no-untyped-def]
        return make_app(self.scheduler, self.catalog)


@pytest.fixture
def engine() -> WatchedEngine:
    return WatchedEngine(["The capital of France is Paris."])


@pytest.fixture
def served(engine: WatchedEngine) -> Iterator[Served]:
    served = Served(engine)
    yield served
    served.scheduler.close()


@pytest.fixture
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(served.app()) as client:
        yield client


def ask(content: str = "What is the capital of France?", **fields: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **fields}


def events(response: httpx.Response) -> list[Any]:
    """The SSE data lines of a streamed response, JSON decoded ("[DONE]" as is); asserts the framing."""
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def streamed(client: TestClient, body: dict[str, Any]) -> list[Any]:
    with client.stream("POST", URL, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return events(response)


def text_of(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if isinstance(c, dict) and c["choices"])


# ---- the protocol's shapes ------------------------------------------------------------------------------------


def test_a_completion_has_the_openai_shape_and_usage(client: TestClient, engine: WatchedEngine) -> None:
    response = client.post(URL, json=ask())
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "fake-model" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "The capital of France is Paris."}
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    prompt_tokens = engine.count_tokens(ask()["messages"])
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 6,
                             "total_tokens": prompt_tokens + 6, "prompt_tokens_details": {"cached_tokens": 0}}
    assert engine.calls[-1][0] == ask()["messages"]  # the messages as sent: nothing added that would defeat the cache


def test_a_stream_sends_the_role_the_text_the_finish_reason_and_done(client: TestClient) -> None:
    chunks = streamed(client, ask(stream=True))
    assert chunks[-1] == "[DONE]"
    body = chunks[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake-model" for c in body)
    assert len({c["id"] for c in body}) == 1
    assert body[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in body[1:])
    assert text_of(body) == "The capital of France is Paris."
    assert [c["choices"][0]["finish_reason"] for c in body] == [None] * (len(body) - 1) + ["stop"]
    assert all("usage" not in c for c in body)


def test_a_stream_ends_with_the_usage_when_asked(client: TestClient, engine: WatchedEngine) -> None:
    chunks = streamed(client, ask(stream=True, stream_options={"include_usage": True}))
    *_, finish, usage, done = chunks
    assert finish["choices"][0]["finish_reason"] == "stop" and done == "[DONE]"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 6


def test_sampling_fields_reach_the_engine(client: TestClient, engine: WatchedEngine) -> None:
    client.post(URL, json=ask(temperature=0, top_p=0.5, max_tokens=7, seed=3, top_k=5, repetition_penalty=1.3))
    assert engine.calls[-1][1] == GenerationParams(temperature=0.0, top_p=0.5, max_new_tokens=7, seed=3, top_k=5,
                                                   repetition_penalty=1.3)
    client.post(URL, json=ask(max_completion_tokens=9))  # the newer OpenAI name for max_tokens
    assert engine.calls[-1][1] == GenerationParams(max_new_tokens=9)
    client.post(URL, json=ask())  # nothing given: the chat's defaults
    assert engine.calls[-1][1] == GenerationParams()


def test_max_tokens_cuts_the_reply_with_finish_reason_length(client: TestClient, engine: WatchedEngine) -> None:
    body = client.post(URL, json=ask(max_tokens=3)).json()
    assert body["choices"][0]["message"]["content"] == "The capital of"
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
    engine.will_reply("one two three four")
    chunks = streamed(client, ask(stream=True, max_tokens=2))
    assert text_of(chunks[:-1]) == "one two" and chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_text_parts_and_the_developer_role_are_understood(client: TestClient, engine: WatchedEngine) -> None:
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    assert client.post(URL, json={"messages": messages}).status_code == 200
    assert engine.calls[-1][0] == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Hello there"}]


# ---- stop strings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["Paris", ["nothing", "Paris"], ["is Par"]])
def test_a_stop_string_cuts_the_reply_there(client: TestClient, stop: Any) -> None:
    body = client.post(URL, json=ask(stop=stop)).json()
    expected = "The capital of France is " if stop != ["is Par"] else "The capital of France "
    assert body["choices"][0]["message"]["content"] == expected
    assert body["choices"][0]["finish_reason"] == "stop"


def test_a_stop_string_split_over_deltas_is_never_streamed(client: TestClient, engine: WatchedEngine) -> None:
    engine.will_reply("one two three four five")
    chunks = streamed(client, ask(stream=True, stop="two thr"))  # the deltas are "one", " two", " three", ...
    contents = [c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
    assert "".join(contents) == "one " and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert not any("two" in text for text in contents)


def test_a_stop_string_stops_the_model(served: Served, engine: WatchedEngine) -> None:
    engine.delay_s = 0.01
    engine.will_reply(LONG_REPLY)
    with TestClient(served.app()) as client:
        body = client.post(URL, json=ask(stop="word3 ")).json()
    assert body["choices"][0]["message"]["content"] == "word0 word1 word2 "
    assert engine.finished[-1].finish_reason == "stopped"  # decoding ended at the stop string, not at the 200th word
    assert body["usage"]["completion_tokens"] < 50


def test_stop_strings_hold_back_only_what_could_start_one() -> None:
    stops = StopStrings(["END", "##"])
    assert stops.feed("abc E") == "abc "  # "E" may begin END
    assert stops.feed("Nx #") == "ENx "  # it did not; "#" may begin ##
    assert stops.feed("#tail") == "" and stops.hit
    assert stops.feed("more") == "" and stops.flush() == ""
    unmatched = StopStrings(["END"])
    assert unmatched.feed("the EN") == "the " and unmatched.flush() == "EN"


# ---- malformed requests and unknown models ----------------------------------------------------------------------


BAD_REQUESTS = [
    ("not json", None, "not valid JSON"),
    ([1, 2], None, "JSON object"),
    ({"model": "fake-model"}, "messages", "`messages` is missing"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": "hello"}, "messages", "non-empty list"),
    ({"messages": ["hello"]}, "messages[0]", "must be an object"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "'robot'; use one of"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role", "None; use one of"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "must be a string"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content", "only text"),
    (ask(temperature=-0.5), "temperature", "`temperature` must be >= 0"),
    (ask(temperature="hot"), "temperature", "must be a number"),
    (ask(temperature=True), "temperature", "must be a number"),
    (ask(top_p=0), "top_p", "`top_p` must be in (0, 1]"),
    (ask(top_p=1.5), "top_p", "`top_p` must be in (0, 1]"),
    (ask(top_k=-1), "top_k", "`top_k` must be >= 0"),
    (ask(repetition_penalty=0), "repetition_penalty", "must be > 0"),
    (ask(max_tokens=0), "max_tokens", "`max_tokens` must be >= 1"),
    (ask(max_tokens=1.5), "max_tokens", "must be an integer"),
    (ask(max_completion_tokens=0), "max_completion_tokens", "`max_completion_tokens` must be >= 1"),
    (ask(seed="x"), "seed", "must be an integer"),
    (ask(stream="yes"), "stream", "true or false"),
    (ask(stream=True, stream_options="usage"), "stream_options", "must be an object"),
    (ask(stop=5), "stop", "string or a list of strings"),
    (ask(stop=["a", 1]), "stop", "string or a list of strings"),
    (ask(model=5), "model", "must be a string"),
    (ask(n=2), "n", "`n` must be 1"),
]


@pytest.mark.parametrize("body, param, says", BAD_REQUESTS, ids=[says for _, _, says in BAD_REQUESTS])
def test_a_malformed_request_gets_400_and_one_line_naming_the_problem(
    client: TestClient, engine: WatchedEngine, body: Any, param: str | None, says: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post(URL, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert says in error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]
    assert engine.calls == []  # refused before it queued


def test_an_unknown_model_gets_404(client: TestClient, served: Served) -> None:
    response = client.post(URL, json=ask(model="gpt-4o"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "'gpt-4o' is not served here; GET /v1/models lists" in error["message"]
    assert client.post(URL, json=ask(model="/etc", stream=True)).status_code == 404  # never a path or a Hub id
    assert served.opened == ["fake-model"]


def test_another_served_model_replaces_the_loaded_one(client: TestClient, served: Served) -> None:
    body = client.post(URL, json=ask(model="my-run")).json()
    assert body["model"] == "my-run"
    assert body["choices"][0]["message"]["content"] == "echo: What is the capital of France?"
    assert client.get("/health").json()["model"] == "my-run"
    client.post(URL, json=ask(model="my-run"))
    assert client.post(URL, json=ask(model="default")).json()["model"] == "smollm2"  # the bundled model's alias
    assert served.opened == ["fake-model", "my-run", "smollm2"]  # one load per switch, none for the same model
    no_model = {"messages": ask()["messages"]}
    assert client.post(URL, json=no_model).json()["model"] == "smollm2"  # no `model`: the one loaded now


def test_other_paths_and_methods_get_openai_errors(client: TestClient) -> None:
    missing = client.get("/v1/completions")
    assert missing.status_code == 404 and "no such endpoint: /v1/completions" in missing.json()["error"]["message"]
    wrong = client.get(URL)
    assert wrong.status_code == 405 and wrong.json()["error"]["message"] == f"GET is not allowed on {URL}"


def test_an_engine_failure_is_one_line_plain_or_in_the_stream(client: TestClient, engine: WatchedEngine) -> None:
    line = "the model process ended unexpectedly (killed by SIGKILL); send again to restart it"
    engine.fail_with = line
    response = client.post(URL, json=ask())
    assert response.status_code == 500
    assert response.json() == {"error": {"message": line, "type": "server_error", "param": None, "code": None}}
    engine.fail_with = line
    (failure,) = streamed(client, ask(stream=True))  # the status went out first: the error is the stream's event
    assert failure == response.json()
    assert client.post(URL, json=ask()).status_code == 200  # the next request is served


# ---- /v1/models and /health -------------------------------------------------------------------------------------


def test_models_lists_the_loaded_model_then_the_local_ones(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["fake-model", "smollm2", "my-run"]
    assert all(model["object"] == "model" and model["owned_by"] == "tui-chat" for model in body["data"])
    assert body["data"][1]["created"] == 1_700_000_000


def test_health_says_which_model_is_loaded(client: TestClient) -> None:
    health = client.get("/health").json()
    assert {key: health[key] for key in ("status", "model", "loaded", "pending", "loading", "load_error")} == {
        "status": "ok", "model": "fake-model", "loaded": True, "pending": 0, "loading": None, "load_error": None}
    assert health["info"]["context_limit"] == 2048 and health["pid"] == os.getpid()
    assert client.get("/v1/models").json()["data"][0]["max_model_len"] == 2048  # the loaded one's context


def test_load_switches_the_model_and_health_shows_how_it_went(served: Served) -> None:
    with TestClient(served.app()) as client:
        assert client.post("/load", json={"model": "my-run"}).status_code == 202
        assert wait_until(lambda: client.get("/health").json()["model"] == "my-run"
                          and client.get("/health").json()["loaded"], 5.0)
        assert client.post("/load", json={"model": "elsewhere"}).status_code == 404
        served.engines["smollm2"] = WatchedEngine(name="smollm2", load_error="no weights; run `tui-chat models`")
        client.post("/load", json={"model": "smollm2"})
        assert wait_until(lambda: client.get("/health").json()["load_error"] is not None, 5.0)
        assert client.get("/health").json()["load_error"] == {"model": "smollm2",
                                                              "message": "no weights; run `tui-chat models`"}


def test_tokenize_counts_a_conversation_with_the_loaded_model(client: TestClient, engine: WatchedEngine) -> None:
    messages = [{"role": "user", "content": "three words here"}]
    assert client.post("/tokenize", json={"messages": messages}).json() == {
        "count": engine.count_tokens(messages), "max_model_len": 2048}
    assert client.post("/tokenize", json={"messages": []}).status_code == 400


def test_an_api_key_is_required_when_set(served: Served) -> None:
    with TestClient(make_app(served.scheduler, served.catalog, api_key="sesame")) as client:
        refused = client.post(URL, json=ask())
        assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post(URL, json=ask(), headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_bodies_and_max_tokens_are_bounded(client: TestClient) -> None:
    huge = client.post(URL, content=b"x" * (5 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "MiB" in huge.json()["error"]["message"]
    too_many = client.post(URL, json=ask(max_tokens=10**9))
    assert too_many.status_code == 400 and too_many.json()["error"]["message"] == "`max_tokens` must be at most 32768"


# ---- several clients, one model ---------------------------------------------------------------------------------


def test_concurrent_requests_queue_and_each_gets_its_own_reply(served: Served, engine: WatchedEngine) -> None:
    engine.delay_s = 0.01
    engine.will_reply()  # each reply echoes its question
    questions = [f"question {i} {'x ' * 5}" for i in range(4)]
    replies: dict[str, Any] = {}
    with TestClient(served.app()) as client:

        def post(question: str, stream: bool) -> None:
            body = ask(question, stream=stream)
            replies[question] = text_of(streamed(client, body)) if stream else \
                client.post(URL, json=body).json()["choices"][0]["message"]["content"]

        threads = [threading.Thread(target=post, args=(q, i % 2 == 0)) for i, q in enumerate(questions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert replies == {question: f"echo: {question}" for question in questions}
    assert engine.most_at_once == 1  # one reply at a time on the one engine


@contextmanager
def live_server(served: Served) -> Iterator[tuple[str, ModelServer, threading.Thread]]:
    """The app on a real uvicorn (as `tui-chat serve` runs it) in a thread, on a free port: its base URL, the server
    and the thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = ModelServer(served.scheduler, served.catalog)
    server.config.log_level = "warning"
    thread = threading.Thread(target=server.serve_on, args=(listener,), daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 10.0)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", server, thread
    finally:
        server.should_exit = True
        thread.join(10)


def wait_until(condition: Any, timeout_s: float = 5.0) -> bool:
    """Whether ``condition()`` comes true within ``timeout_s``. Asked once more after it did, it could be false again:
    in the hand-over's first ~0.1 s both processes still accept on the shared socket, so a health check may reach
    the retiring one (it answers, then closes its copy of the socket at its next tick)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def test_a_client_that_disconnects_mid_stream_stops_its_generation(served: Served, engine: WatchedEngine) -> None:
    engine.delay_s = 0.02  # 200 words: 4 s if nobody stopped it
    engine.will_reply(LONG_REPLY)
    with live_server(served) as (base, _, _), httpx.Client(base_url=base) as http:
        with http.stream("POST", URL, json=ask(stream=True)) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line).startswith("data: ")
            left_at = time.monotonic()
        # Leaving the block closed the connection.
        assert wait_until(lambda: engine.finished, 2.0)
        stopped_after = time.monotonic() - left_at
        assert engine.stops[-1].is_set() and engine.finished[-1].finish_reason == "stopped"
        assert engine.finished[-1].new_tokens < 40 and stopped_after < 1.0
        assert http.post(URL, json=ask("next")).json()["choices"][0]["message"]["content"] == "echo: next"


def test_a_client_that_leaves_a_plain_request_stops_it_and_a_queued_one_never_runs(
    served: Served, engine: WatchedEngine
) -> None:
    engine.delay_s = 0.02  # 200 words: 4 s if nobody stopped it
    engine.will_reply(LONG_REPLY, "never sent")
    with live_server(served) as (base, _, _):
        def leave_after(question: str, seconds: float) -> None:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(base + URL, json=ask(question), timeout=seconds)

        first = threading.Thread(target=leave_after, args=("long", 1.5))
        first.start()
        assert wait_until(lambda: engine.calls)
        leave_after("queued", 0.3)  # waits behind the first, and leaves while it still runs
        first.join(5)
        assert wait_until(lambda: engine.finished and served.scheduler.pending == 0, 2.0)
        assert engine.finished[0].finish_reason == "stopped" and engine.finished[0].new_tokens < 150
        assert [messages[-1]["content"] for messages, _ in engine.calls] == ["long"]  # the queued one was skipped
        assert httpx.get(base + "/health").json()["pending"] == 0


def test_shutting_down_cuts_the_reply_in_progress_short(served: Served, engine: WatchedEngine) -> None:
    engine.delay_s = 0.02  # 200 words: 4 s, longer than uvicorn's graceful shutdown would wait
    engine.will_reply(LONG_REPLY)
    with live_server(served) as (base, server, thread):
        with httpx.stream("POST", base + URL, json=ask(stream=True)) as response:
            lines = (line for line in response.iter_lines() if line)
            assert next(lines).startswith("data: ")
            asked_at = time.monotonic()
            server.handle_exit(signal.SIGINT, None)  # what Ctrl+C calls
            *_, last = lines
        assert json.loads(last[6:])["error"] == {"message": "the server is shutting down; this reply was cut short",
                                                 "type": "server_error", "param": None, "code": None}
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - asked_at < 2.0
    assert engine.finished[-1].finish_reason == "stopped"


# ---- the prompt cache, with a tiny real model -------------------------------------------------------------------


def test_the_next_turn_of_a_conversation_reuses_the_prompt_cache(tmp_path: Path) -> None:
    from tests.tiny_models import save_tiny_model
    from tui_chat.inference.hf_engine import HFEngine

    path = str(save_tiny_model(tmp_path / "model", context=512))
    scheduler = ModelScheduler(lambda spec: HFEngine(spec, tmp_path, device="cpu", dtype="float32"), path)
    scheduler.load()
    with TestClient(make_app(scheduler, ModelCatalog(path, lambda: []))) as client:
        messages = [{"role": "user", "content": "hello world"}]
        first = client.post(URL, json={"messages": messages, "temperature": 0, "max_tokens": 8}).json()
        messages += [first["choices"][0]["message"], {"role": "user", "content": "the quick brown fox"}]
        second = client.post(URL, json={"messages": messages, "temperature": 0, "max_tokens": 8, "stream": True,
                                        "stream_options": {"include_usage": True}})
        usage = next(c for c in events(second) if isinstance(c, dict) and c.get("usage"))["usage"]
    scheduler.close()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # The whole first turn (its prompt, and the reply as far as it tokenizes the same) came from the cache.
    assert usage["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert usage["prompt_tokens"] > usage["prompt_tokens_details"]["cached_tokens"]


# ---- the command -------------------------------------------------------------------------------------------------


def serve_cli(tmp_path: Path, *args: str, engine: FakeEngine | None = None) -> Any:
    from click.testing import CliRunner

    from trainer.home import DataHome
    from tui_chat.cli import CliContext, main

    opened: list[tuple[str, dict[str, Any]]] = []

    def open_engine(spec: str, home: DataHome, **options: Any) -> FakeEngine:
        opened.append((spec, options))
        return engine or FakeEngine(name=spec)

    context = CliContext(DataHome(tmp_path / "home"), open_engine=open_engine)
    result = CliRunner().invoke(main, ["serve", *args], obj=context)
    result.opened = opened
    return result


def test_serve_help_names_the_endpoints_and_that_nothing_is_stored(tmp_path: Path) -> None:
    result = serve_cli(tmp_path, "--help")
    assert result.exit_code == 0
    words = " ".join(result.output.split())
    for endpoint in ("POST /v1/chat/completions", "GET /v1/models", "GET /health"):
        assert endpoint in words
    assert "not stored in the chat database" in words
    from tui_chat.cli.serve import serve_command

    assert all(option.help for option in serve_command.params if option.param_type_name == "option")


def test_a_busy_port_is_one_line_before_any_loading(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = serve_cli(tmp_path, "--port", str(port))
    assert result.exit_code == 1 and result.opened == []
    assert result.output.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
    assert "pick another --port (0 picks a free one)" in result.output and len(result.output.splitlines()) == 1


def test_a_model_that_fails_to_load_is_one_line(tmp_path: Path) -> None:
    failing = FakeEngine(load_error="no model directory at ./nowhere; check the path, or run `tui-chat models`")
    result = serve_cli(tmp_path, "--port", "0", "--model", "./nowhere", "--no-compile", engine=failing)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == f"Error: {failing.load_error}"
    assert result.opened == [("./nowhere", {"compile": False})]


# ---- the real command, the bundled model, the official openai client -------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_process(home: Any, port: int) -> Iterator[subprocess.Popen]:
    """`tui-chat serve` as a user starts it, until it says where it serves."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tui_chat", "--home", str(home.root), "serve", "--port", str(port), "--no-compile"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("serving "):
                break
        else:
            pytest.fail(f"tui-chat serve exited ({process.wait()}) without serving")
        threading.Thread(target=process.stderr.read, daemon=True).start()  # keep its log from filling the pipe
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@pytest.mark.slow
def test_the_real_server_answers_the_openai_client_and_a_kill_is_a_clear_error(bundled_home: Any) -> None:
    import openai

    port = _free_port()
    with serve_process(bundled_home, port) as process:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        assert [model.id for model in client.models.list()] == ["smollm2"]
        question = [{"role": "user", "content": "What is the capital of France?"}]
        reply = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=40)
        assert "Paris" in reply.choices[0].message.content and reply.usage.completion_tokens > 0
        started = time.perf_counter()
        stream = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=40,
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert time.perf_counter() - started < 60
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Paris" in text and chunks[-1].usage.completion_tokens > 0
        # The same question again: its prompt is in the cache (all of it but the last token, re-encoded for logits).
        assert chunks[-1].usage.prompt_tokens_details.cached_tokens == chunks[-1].usage.prompt_tokens - 1

        story = client.chat.completions.create(model="smollm2", stream=True, max_tokens=2000,
                                               messages=[{"role": "user", "content": "Write a long story."}])
        next(iter(story))
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(openai.APIConnectionError):  # the stream broke off: an error at once, not a hang
            for _ in story:
                pass


def _successor_pid(lines: Iterator[str], seen: list[str], marker: str) -> int:
    """Read the server's log lines up to the one containing ``marker``; the pid that line names."""
    for line in lines:
        seen.append(line)
        if marker in line:
            return int(re.search(r"pid (\d+)", line).group(1))
    pytest.fail("the server ended without: " + marker + "\n" + "".join(seen))


@pytest.mark.slow
def test_in_a_terminal_the_compiled_successor_takes_over_and_ctrl_c_ends_both(tmp_path: Path) -> None:
    from tests.tiny_models import save_tiny_model

    model = save_tiny_model(tmp_path / "model", context=256)
    port = _free_port()
    command = [sys.executable, "-m", "tui_chat", "--home", str(tmp_path / "home"), "serve", "--port", str(port),
               "--model", str(model), "--device", "cpu", "--dtype", "float32"]  # compiling: the default
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    seen: list[str] = []
    # Its own process group, as a shell gives a command: Ctrl+C is SIGINT to the group.
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               text=True, env=environment, start_new_session=True)
    try:
        assert process.stderr is not None
        compiling = _successor_pid(process.stderr, seen, "compiling the decode step in a second process")
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
        assert health["pid"] == process.pid and health["info"]["extra"]["compile"] == "warming"
        assert _successor_pid(process.stderr, seen, "serves now") == compiling
        threading.Thread(target=process.stderr.read, daemon=True).start()
        assert wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/health").json()["pid"] == compiling, 10.0)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0
        assert process.poll() is None  # the command the shell waits for stays until its successor ends
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(30) == 0
        assert wait_until(lambda: not psutil_alive(compiling), 10.0)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_successor_leaves_when_its_server_is_killed_before_the_hand_over(tmp_path: Path) -> None:
    from tests.tiny_models import save_tiny_model

    model = save_tiny_model(tmp_path / "model", context=256)
    command = [sys.executable, "-m", "tui_chat", "--home", str(tmp_path / "home"), "serve", "--port", "0",
               "--model", str(model), "--device", "cpu", "--dtype", "float32"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stderr is not None
        compiling = _successor_pid(process.stderr, [], "compiling the decode step in a second process")
        process.kill()  # before the successor is ready: it must not serve a socket nobody asked it to
        assert wait_until(lambda: not psutil_alive(compiling), 10.0)
    finally:
        process.kill()
        process.wait(10)


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_non_loopback_address_without_a_key_is_refused_before_any_loading(tmp_path: Path) -> None:
    result = serve_cli(tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert result.exit_code == 1 and result.opened == []
    assert result.output == ("Error: --host 0.0.0.0 lets anyone who reaches this machine use the model; give "
                             "--api-key KEY (or TUI_CHAT_API_KEY), or listen on 127.0.0.1\n")


def test_log_keeps_each_answered_request_as_a_conversation(served: Served) -> None:
    from sessions import Store, memory_database
    from tui_chat.serve.request_log import RequestLog

    store = Store(memory_database())
    with TestClient(make_app(served.scheduler, served.catalog, log=RequestLog(store))) as client:
        system = {"role": "system", "content": "Be brief."}
        client.post(URL, json={**ask(), "messages": [system, *ask()["messages"]], "temperature": 0})
        streamed(client, ask("And of Spain?", stream=True))
    first, second = sorted(store.list_conversations(), key=lambda c: c.id)
    assert (first.title, first.system_prompt, first.model) == ("What is the capital of France?", "Be brief.",
                                                                "fake-model")
    user, reply = store.active_branch(first.id)
    assert (user.role, reply.role, reply.content, reply.status) == ("user", "assistant",
                                                                    "The capital of France is Paris.", "complete")
    assert reply.tokens_out == 6 and reply.params["temperature"] == 0
    assert [m.content for m in store.active_branch(second.id)] == ["And of Spain?", "echo: And of Spain?"]
