"""OpenAIEngine against `tui-chat serve` on loopback (real uvicorn, a tiny real model): the engine contract tests of
test_engine.py run through HTTP, Stop closes the stream and the server stops, errors are one line; and the official
openai client streams, stops by closing, lists models, gets clean errors, and two clients keep their replies apart."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import test_engine as contract
from tui_chat.inference.contract import EngineError, GenerationParams, GenerationStats, TextDelta
from tui_chat.inference.hf_engine import HFEngine
from tui_chat.inference.openai_engine import OpenAIEngine, ServerUnreachable
from tui_chat.serve.catalog import ModelCatalog
from tui_chat.serve.scheduler import ModelScheduler
from tui_chat.serve.server import ModelServer

from .tiny_models import save_tiny_model

LONG = GenerationParams(temperature=1.0, max_new_tokens=200, seed=3, repetition_penalty=1.0)


class LiveModel:
    """`tui-chat serve`'s app on a real uvicorn in a thread, in front of a tiny HFEngine (context: 64 tokens, as
    test_engine's tiny_engine), and the engine itself to watch."""

    def __init__(self, path: Path) -> None:
        self.engine = HFEngine(str(path), Path("/nonexistent-models-dir"), device="cpu", dtype="float32")
        self.spec = str(path)
        self.scheduler = ModelScheduler(lambda spec: self.engine, self.spec)
        self.scheduler.load()
        listener = socket.create_server(("127.0.0.1", 0))
        self.server = ModelServer(self.scheduler, ModelCatalog(self.spec, lambda: []))
        self.thread = threading.Thread(target=self.server.serve_on, args=(listener,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def client_engine(self) -> OpenAIEngine:
        engine = OpenAIEngine(self.spec, self.spec, self.base, extensions=True)
        engine.load()
        return engine

    def idle(self, timeout_s: float = 10.0) -> bool:
        """The server has nothing queued or running (a stopped reply has ended there too)."""
        deadline = time.monotonic() + timeout_s
        while self.scheduler.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.scheduler.pending == 0

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveModel]:
    live = LiveModel(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", context=64))
    yield live
    live.close()


@pytest.fixture
def http_engine(live: LiveModel) -> Iterator[OpenAIEngine]:
    engine = live.client_engine()
    yield engine
    engine.close()


# The contract tests of the in-process engine that use only the engine contract, run over HTTP.
CONTRACT = [
    contract.test_greedy_stream_is_deterministic_and_ends_with_stats,
    contract.test_seed_makes_sampling_reproducible,
    contract.test_stop_ends_generation_promptly,
    contract.test_a_last_message_too_long_for_the_context_is_a_clear_error,
    contract.test_reply_never_runs_past_the_context,
]


@pytest.mark.parametrize("test", CONTRACT, ids=[test.__name__ for test in CONTRACT])
def test_the_engine_contract_holds_over_http(test, http_engine: OpenAIEngine, live: LiveModel) -> None:
    test(http_engine)
    assert live.idle()


def test_replies_match_the_in_process_engine(http_engine: OpenAIEngine, live: LiveModel) -> None:
    messages = contract.ask("hello world")
    over_http, stats = contract.run(http_engine, messages, contract.GREEDY)
    in_process, local = contract.run(live.engine, messages, contract.GREEDY)
    assert "".join(over_http) == "".join(in_process)
    assert (stats.prompt_tokens, stats.new_tokens, stats.finish_reason) == (
        local.prompt_tokens, local.new_tokens, local.finish_reason)
    assert http_engine.info().context_limit == 64 and http_engine.info().dtype == "remote"


def test_stop_closes_the_stream_and_the_server_stops_within_a_token() -> None:
    # A fake model at 50 tokens/s: the tiny one decodes its whole reply before a disconnect could be seen.
    from tests.test_serve import LONG_REPLY, Served, WatchedEngine, live_server

    model = WatchedEngine([LONG_REPLY], delay_s=0.02)
    served = Served(model)
    with live_server(served) as (base, _, _):
        engine = OpenAIEngine("fake-model", "fake-model", base + "/v1")
        engine.load()
        stop = threading.Event()
        chunks = []
        for chunk in engine.stream(contract.ask("tell me a story"), LONG, stop):
            chunks.append(chunk)
            if len(chunks) == 3:
                stop.set()
        assert isinstance(chunks[-1], GenerationStats) and chunks[-1].finish_reason == "stopped"
        assert len(chunks) <= 5  # at most a delta that was already on its way
        assert wait_for(lambda: len(model.finished) == 1, 5.0)
        assert model.finished[0].finish_reason == "stopped" and model.finished[0].new_tokens < 20
    served.scheduler.close()


def wait_for(condition, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_usage_and_the_prompt_cache_come_back_in_the_stats(http_engine: OpenAIEngine) -> None:
    messages = contract.ask("the quick brown fox")
    first = contract.run(http_engine, messages, contract.GREEDY)[1]
    again = contract.run(http_engine, messages, contract.GREEDY)[1]
    assert again.cached_tokens == first.prompt_tokens - 1  # all of the prompt but the token re-encoded for logits
    assert http_engine.count_tokens(messages) == first.prompt_tokens
    assert first.tokens_per_s > 0 and first.ttft_s > 0


def test_errors_are_one_line(live: LiveModel) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]
    with pytest.raises(ServerUnreachable, match=rf"^cannot reach http://127.0.0.1:{nobody}/v1 \(.*\); check"):
        OpenAIEngine("x", "x", f"http://127.0.0.1:{nobody}/v1").load()
    with pytest.raises(EngineError, match=r"does not serve 'gpt-9'; it serves: "):
        OpenAIEngine("openai:gpt-9", "gpt-9", live.base).load()
    wrong = OpenAIEngine("x", live.spec, live.base)
    wrong.load()
    with pytest.raises(EngineError, match=r"answered 400: `temperature` must be >= 0 \(0 = greedy\)$"):
        list(wrong.stream(contract.ask("hi"), GenerationParams(temperature=-1)))


# ---- the official openai client ---------------------------------------------------------------------------------


@pytest.fixture
def openai_client(live: LiveModel):  # type: ignore[no-untyped-def]
    import openai

    with openai.OpenAI(base_url=live.base, api_key="unused", max_retries=0, timeout=30) as client:
        yield client


def test_the_openai_client_streams_lists_models_and_gets_clean_errors(openai_client, live: LiveModel) -> None:
    import openai

    assert [model.id for model in openai_client.models.list()] == [live.spec]
    stream = openai_client.chat.completions.create(
        model=live.spec, messages=contract.ask("hello world"), temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"repetition_penalty": 1.0})
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "".join(contract.run(live.engine, contract.ask("hello world"), contract.GREEDY)[0])
    assert chunks[-1].usage.completion_tokens == 12
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        openai_client.chat.completions.create(model="gpt-9", messages=contract.ask("hi"))
    with pytest.raises(openai.BadRequestError, match="`messages` must be a non-empty list"):
        openai_client.chat.completions.create(model=live.spec, messages=[])


def test_the_openai_client_stops_by_closing_the_stream(openai_client, live: LiveModel) -> None:
    stream = openai_client.chat.completions.create(model=live.spec, messages=contract.ask("tell me a story"),
                                                   max_tokens=200, seed=3, stream=True)
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 3:
            break
    stream.close()
    assert live.idle()  # the server saw the client go and ended the reply
    assert contract.run(live.engine, contract.ask("hi"), contract.GREEDY)[1].new_tokens == 12


def test_two_clients_at_once_keep_their_replies_apart(live: LiveModel) -> None:
    questions = ["hello world", "the quick brown fox"]
    expected = ["".join(contract.run(live.engine, contract.ask(q), contract.GREEDY)[0]) for q in questions]
    got: dict[str, str] = {}

    def chat(question: str) -> None:
        engine = live.client_engine()
        got[question] = "".join(c.text for c in engine.stream(contract.ask(question), contract.GREEDY)
                                if isinstance(c, TextDelta))
        engine.close()

    threads = [threading.Thread(target=chat, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [got[q] for q in questions] == expected


# ---- remote models from the command line: --api-base and saved endpoints -----------------------------------------


def test_a_remote_model_is_chatted_with_and_stored_like_a_local_one(live: LiveModel, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from trainer.home import DataHome
    from tui_chat.cli import CliContext, main

    home = DataHome(tmp_path / "home")
    monkeypatch.setenv("LOOPBACK_KEY", "not-a-real-key")

    def cli(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args), obj=CliContext(home))

    asked = cli("ask", "hello world", "--model", f"openai:{live.spec}", "--api-base", live.base, "--temperature", "0")
    assert asked.exit_code == 0, asked.output
    assert cli("endpoints", "add", "loopback", live.base, "--key-env", "LOOPBACK_KEY").exit_code == 0
    assert cli("ask", "-c", "again", "--model", f"loopback:{live.spec}").exit_code == 0
    listed = cli("endpoints", "list").output
    assert listed == f"loopback\t{live.base}\tkey from $LOOPBACK_KEY\n" and "not-a-real-key" not in listed
    store = CliContext(home).store
    (conversation,) = store.list_conversations()
    replies = [m for m in store.active_branch(conversation.id) if m.role == "assistant"]
    assert [(m.model, m.status) for m in replies] == [(f"openai:{live.spec}", "complete"),
                                                      (f"loopback:{live.spec}", "complete")]
    assert all(m.content for m in replies)
    assert "not-a-real-key" not in (home.root / "endpoints.json").read_text()
    assert not any("not-a-real-key" in path.read_bytes().decode(errors="ignore")
                   for path in home.root.rglob("*") if path.is_file())
    assert cli("endpoints", "remove", "loopback").exit_code == 0
    assert cli("endpoints", "list").output.startswith("no endpoints saved")


def test_endpoint_keys_come_from_the_environment_or_a_private_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from trainer.home import DataHome
    from tui_chat.cli import CliContext, main
    from tui_chat.inference.endpoints import load_endpoints

    home = DataHome(tmp_path / "home")
    key_file = tmp_path / "key"
    key_file.write_text("sk-file\n")
    key_file.chmod(0o644)

    def cli(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args), obj=CliContext(home))

    assert cli("endpoints", "add", "openai", "http://x/v1").exit_code == 2  # the built-in name
    assert cli("endpoints", "add", "ok", "ftp://x").exit_code == 2
    assert cli("endpoints", "add", "filed", "http://127.0.0.1:1/v1", "--key-file", str(key_file)).exit_code == 0
    assert cli("endpoints", "add", "env", "http://127.0.0.1:1/v1", "--key-env", "UNSET_KEY_VAR").exit_code == 0
    assert (home.root / "endpoints.json").stat().st_mode & 0o777 == 0o600
    endpoints = load_endpoints(home.root)
    with pytest.raises(EngineError, match=rf"readable by others; chmod 600 {key_file}$"):
        endpoints["filed"].api_key()
    key_file.chmod(0o600)
    assert endpoints["filed"].api_key() == "sk-file"
    monkeypatch.delenv("UNSET_KEY_VAR", raising=False)
    refused = cli("ask", "hi", "--model", "env:some-model", "--no-save")
    assert refused.exit_code == 1
    assert refused.output.strip() == ("Error: endpoint env takes its key from $UNSET_KEY_VAR, which is not set; "
                                      "export UNSET_KEY_VAR=... first")
