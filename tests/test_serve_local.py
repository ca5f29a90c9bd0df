"""The data home's own server, as the front ends use it (``serve.local``), with real `tui-chat serve --socket`
processes and a tiny model: started once and found loaded by the next engine, private to the user, replaced when
its settings differ, gone after its idle time and back on the next reply, and a server killed mid-reply failing
that reply with one line while the next message starts a new one. Each server start imports torch (~5 s)."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import psutil
import pytest

from sessions import Store, memory_database
from trainer.home import DataHome
from tui_chat.chat.session import ChatSession
from tui_chat.inference.contract import EngineError, GenerationParams, GenerationStats, TextDelta
from tui_chat.serve.local import LocalServer, LocalServerEngine, server_dir, socket_path

from .tiny_models import save_tiny_model

SETTINGS = {"device": "cpu", "dtype": "float32", "compile": False}
GREEDY = GenerationParams(temperature=0, max_new_tokens=8, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", context=256))


@pytest.fixture(scope="module")
def tiny_sliding(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model that keeps transformers' caches: compiled by a successor, not through a decode package."""
    return str(save_tiny_model(tmp_path_factory.mktemp("sliding") / "model", arch="mistral", context=256))


@pytest.fixture
def home(tmp_path: Path) -> DataHome:
    home = DataHome(tmp_path / "home").ensure()
    yield home
    for engine_pid in _servers(home):  # no server outlives its test
        _kill(engine_pid)


def _servers(home: DataHome) -> list[int]:
    socket = str(socket_path(home))
    return [process.pid for process in psutil.process_iter(["cmdline"]) if socket in (process.info["cmdline"] or [])]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def gone(pid: int, within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def reply(engine: LocalServerEngine, text: str = "hello world") -> str:
    return "".join(c.text for c in engine.stream([{"role": "user", "content": text}], GREEDY)
                   if isinstance(c, TextDelta))


def test_the_server_starts_once_is_private_and_is_replaced_for_other_settings(home: DataHome, tiny: str) -> None:
    first = LocalServerEngine(tiny, LocalServer(home, SETTINGS))
    steps: list[str] = []
    info = first.load(lambda what, fraction: steps.append(what))
    assert steps[0] == "starting the model server" and info.context_limit == 256 and first.ready
    pid = first.server.pid
    text = reply(first)
    assert os.getsid(pid) != os.getsid(0)  # a session of its own: Ctrl+C in this terminal never reaches it
    assert stat.S_IMODE(socket_path(home).stat().st_mode) == 0o600
    assert stat.S_IMODE(server_dir(home).stat().st_mode) == 0o700
    assert stat.S_IMODE((server_dir(home) / "server.log").stat().st_mode) == 0o600

    again = LocalServerEngine(tiny, LocalServer(home, dict(SETTINGS)))  # a second window, same settings
    steps.clear()
    again.load(lambda what, fraction: steps.append(what))
    assert again.server.pid == pid and "starting the model server" not in steps
    assert reply(again) == text and again.count_tokens([{"role": "user", "content": "hi"}]) > 0

    other = LocalServerEngine(tiny, LocalServer(home, {**SETTINGS, "dtype": "bfloat16"}))
    steps.clear()
    other.load(lambda what, fraction: steps.append(what))
    assert steps[:2] == ["replacing the model server (another app version or other settings)",
                         "starting the model server"]
    assert other.server.pid != pid and gone(pid) and other.info().dtype == "bfloat16"


def test_an_idle_server_exits_and_a_killed_one_fails_the_reply_in_one_line(
    home: DataHome, tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUI_CHAT_KEEP_ALIVE", "1")
    store = Store(memory_database())
    session = ChatSession(store, lambda spec: LocalServerEngine(spec, LocalServer(home, SETTINGS)), model=tiny,
                          params=GenerationParams(temperature=1.0, max_new_tokens=200, seed=3))
    session.send("hello", lambda chunk: None)
    idle = session.engine.server.pid
    assert gone(idle) and not socket_path(home).exists()  # a second without requests: it left
    monkeypatch.setenv("TUI_CHAT_KEEP_ALIVE", "900")
    session.send("hello again", lambda chunk: None)  # the next message starts it again (no error)

    server = psutil.Process(session.engine.server.pid)
    assert server.pid != idle

    def kill_mid_reply(chunk: object) -> None:
        if isinstance(chunk, TextDelta) and server.is_running():
            server.kill()  # the model decodes in the server: the reply ends where the server did

    with pytest.raises(EngineError) as error:
        session.send("tell me a story", kill_mid_reply)
    line = f"the model server (pid {server.pid}) ended during the reply; send again to restart it"
    assert str(error.value) == line
    failed = store.active_branch(session.conversation_id)[-1]
    assert (failed.role, failed.status, failed.error) == ("assistant", "failed", line) and failed.content
    chunks: list[object] = []
    session.send("hello", chunks.append)  # a new server
    assert isinstance(chunks[-1], GenerationStats) and session.engine.server.pid != server.pid


def test_the_identity_names_the_version_down_to_the_source_and_the_settings() -> None:
    from importlib.metadata import version

    from tui_chat.serve.local import server_identity

    identity = server_identity({"dtype": "float32", "compile": False})
    assert identity == server_identity({"compile": False, "dtype": "float32"})  # the order of settings is no change
    assert identity["version"].startswith(version("tui-chat") + "+") and len(identity["version"].split("+")[1]) == 12
    assert identity != server_identity({"dtype": "bfloat16", "compile": False})


@pytest.mark.slow
def test_the_server_loads_its_decode_package_when_built_and_later_servers_start_with_it(home: DataHome,
                                                                                        tiny: str) -> None:
    engine = LocalServerEngine(tiny, LocalServer(home, {"device": "cpu", "dtype": "float32"}))  # compiling: the default
    assert engine.load().extra["compile"] == "warming"  # replies start at once, on the eager step
    serving = engine.server.pid
    expected = reply(engine)
    deadline = time.monotonic() + 300
    while engine.info().extra["compile"] == "warming" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine.info().extra["compile"] == "ready" and engine.server.pid == serving  # no successor took over
    assert reply(engine) == expected  # the package decodes what the eager step did (greedy, float32)
    assert [file.suffix for file in (home.root / "compile-cache").iterdir()] == [".pt2"]
    log_file = server_dir(home) / "server.log"
    deadline = time.monotonic() + 10  # the log's watcher looks once a second
    while "decode package loaded" not in log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = log_file.read_text()
    assert "building the decode package" in log and "decode package loaded" in log and "second process" not in log
    _kill(serving)
    assert gone(serving)
    again = LocalServerEngine(tiny, LocalServer(home, {"device": "cpu", "dtype": "float32"}))
    assert again.load().extra["compile"] == "ready"  # a new server loads the package before its first reply
    assert reply(again) == expected


@pytest.mark.slow
def test_a_compiled_successor_takes_over_the_socket_between_replies(home: DataHome, tiny_sliding: str) -> None:
    tiny = tiny_sliding
    engine = LocalServerEngine(tiny, LocalServer(home, {"device": "cpu", "dtype": "float32"}))  # compiling: the default
    assert engine.load().extra["compile"] == "warming"  # replies start at once, on the eager step
    serving = engine.server.pid
    assert serving is not None
    inode = socket_path(home).stat().st_ino
    expected = reply(engine)
    deadline = time.monotonic() + 300
    while engine.server.health()["pid"] == serving and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(serving)  # the first server left once it had handed over
    successor = engine.server.pid
    assert successor != serving and engine.info().extra["compile"] == "ready"
    assert socket_path(home).stat().st_ino == inode  # the same socket, accepted on by the successor
    assert reply(engine) == expected  # the compiled step decodes what the eager one did (greedy, float32)
    log = (server_dir(home) / "server.log").read_text()
    assert f"pid {successor} serves now" in log
    # The successor is the home's server now: another engine finds it loaded, nothing new starts.
    again = LocalServerEngine(tiny, LocalServer(home, {"device": "cpu", "dtype": "float32"}))
    again.load()
    assert again.server.pid == successor and _servers(home) == [successor]
