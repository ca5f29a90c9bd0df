"""The serving side of the compiled successor (serve/handover.py), with stand-in processes: when one is started,
what /health says while it compiles and after it failed, and that a successor which has not taken over is ended.
The real hand-over (a compiled tiny model taking over the socket) is in test_serve.py and test_serve_local.py."""

from __future__ import annotations

import dataclasses
import socket
import sys
import time

import pytest

from tui_chat.inference.contract import EngineInfo
from tui_chat.serve.handover import Successor, report_package_build, serving_overrides, wants_successor

EAGER_CPU = EngineInfo(name="tiny", device="cpu", dtype="float32", context_limit=256, extra={"compile": "off"})


def stand_in(code: str):
    """A successor command that runs ``code`` (the flags begin() adds land in sys.argv, unread)."""
    return lambda spec: [sys.executable, "-c", code]


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_only_an_eager_cpu_engine_in_a_compiling_server_gets_a_successor() -> None:
    assert wants_successor({}, EAGER_CPU) and wants_successor({"compile": True}, EAGER_CPU)
    assert not wants_successor({"compile": False}, EAGER_CPU)  # --no-compile
    cuda = EngineInfo(name="tiny", device="cuda:0", dtype="bfloat16", context_limit=256, extra={"compile": "warming"})
    assert not wants_successor({}, cuda)  # CUDA compiles in the engine itself
    building = EngineInfo(name="tiny", device="cpu", dtype="bfloat16", context_limit=256, extra={"compile": "warming"})
    assert not wants_successor({}, building)  # its decode package is being built in a process of its own
    # The serving engine never compiles on CPU itself: it has a package built elsewhere, or a successor compiles;
    # --no-compile stays off everywhere.
    assert serving_overrides({}) == serving_overrides({"compile": True}) == {"compile": None, "build_package": True}
    assert serving_overrides({"compile": False}) == {"compile": False}


def test_a_successor_that_fails_says_so_in_the_info_and_the_eager_one_serves_on(listener: socket.socket) -> None:
    successor = Successor(stand_in("raise SystemExit(3)"), listener.fileno(), {})
    successor.after_load("tiny", EAGER_CPU)
    assert successor.describe(EAGER_CPU).extra["compile"] in ("warming", successor.state)
    assert wait_for(lambda: successor.state != "warming")
    info = successor.describe(EAGER_CPU)
    assert info.extra["compile"] == ("failed: the compiling process ended (exit code 3); replies stay on the eager "
                                     "step")
    assert info.name == "tiny" and EAGER_CPU.extra["compile"] == "off"  # the engine's own info is not changed


def test_a_successor_that_has_not_taken_over_is_ended_and_one_that_has_is_waited_for(listener: socket.socket) -> None:
    successor = Successor(stand_in("import time; time.sleep(60)"), listener.fileno(), {})
    successor.begin("tiny")
    process = successor.process
    assert process is not None and process.poll() is None
    successor.end()  # the server leaves, or loads another model, before the compile is done
    assert process.poll() is not None and successor.state is None
    assert successor.describe(EAGER_CPU).extra["compile"] == "off"

    successor = Successor(stand_in("import time; time.sleep(0.5)"), listener.fileno(), {})
    successor.begin("tiny")
    successor.handed_over()  # its signal came: it serves now
    assert successor.describe(EAGER_CPU).extra["compile"] == "ready"
    successor.end()  # leaving after the hand-over does not end the successor...
    assert successor.process is not None and successor.process.poll() is None
    assert successor.wait() == 0  # ...and a server in a terminal waits for it


def test_the_successor_inherits_the_listening_socket(listener: socket.socket) -> None:
    code = ("import socket, sys; fd = int(sys.argv[sys.argv.index('--listen-fd') + 1]); "
            "s = socket.socket(fileno=fd); c, _ = s.accept(); c.sendall(b'from the successor'); c.close()")
    successor = Successor(stand_in(code), listener.fileno(), {})
    successor.begin("tiny")
    with socket.create_connection(listener.getsockname()[:2], timeout=10) as client:
        assert client.recv(100) == b"from the successor"
    assert successor.process is not None and successor.process.wait(10) == 0


def test_the_log_says_when_a_decode_package_is_built_and_when_it_is_loaded(capsys: pytest.CaptureFixture[str]) -> None:
    states = iter(["warming", "warming", "ready"])

    class Building:
        def info(self) -> EngineInfo:
            return dataclasses.replace(EAGER_CPU, extra={"compile": next(states, "ready")})

    report_package_build(Building(), poll_s=0.01)
    log: list[str] = []
    assert wait_for(lambda: log.append(capsys.readouterr().err) or "decode package loaded" in "".join(log))
    assert "".join(log).startswith("building the decode package in a process of its own")
