"""ProcessEngine: the same replies as the in-process HFEngine, Stop and abandoning reaching the child, a killed
child failing with one line and coming back, the child ending with the engine and with the parent, errors crossing
the process boundary, and a parent that never imports torch. Each child start imports torch (~5 s)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from trainer.home import DataHome
from tui_chat.inference.hf_engine import HFEngine
from tui_chat.inference.process_engine import ProcessEngine
from tui_chat.inference.contract import EngineError, GenerationParams, GenerationStats, TextDelta

from .tiny_models import save_tiny_model

GREEDY = GenerationParams(temperature=0, max_new_tokens=12, repetition_penalty=1.0)
SAMPLED = GenerationParams(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=24, seed=7)
LONG = GenerationParams(temperature=1.0, max_new_tokens=200, seed=3)  # a reply long enough to stop in the middle
ROOT = Path(__file__).resolve().parent.parent
NO_MODELS = Path("/nonexistent-models-dir")


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", context=256)


@pytest.fixture(scope="module")
def local_engine(tiny_path: Path) -> HFEngine:
    engine = HFEngine(str(tiny_path), NO_MODELS, device="cpu", dtype="float32")
    engine.load()
    return engine


@pytest.fixture(scope="module")
def child_engine(tiny_path: Path) -> ProcessEngine:
    # compile=False: a second process compiling in the background would only burn a core here (tested below).
    engine = ProcessEngine(str(tiny_path), NO_MODELS, device="cpu", dtype="float32", compile=False)
    steps: list[tuple[str, float | None]] = []
    engine.load(lambda what, fraction: steps.append((what, fraction)))
    assert steps and steps[-1][1] == 1.0  # the child's progress reached the parent's callback
    yield engine
    engine.close()


def run(engine, messages: list[dict], params: GenerationParams, stop=None) -> tuple[str, GenerationStats]:
    chunks = list(engine.stream(messages, params, stop))
    assert all(isinstance(c, TextDelta) for c in chunks[:-1])
    assert isinstance(chunks[-1], GenerationStats)
    return "".join(c.text for c in chunks[:-1]), chunks[-1]


def gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether process ``pid`` has ended and been reaped (or is a zombie of another parent) within the time."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_replies_match_the_in_process_engine(child_engine: ProcessEngine, local_engine: HFEngine) -> None:
    for params in (GREEDY, SAMPLED):
        text, stats = run(child_engine, ask("hello world"), params)
        expected, expected_stats = run(local_engine, ask("hello world"), params)
        assert text == expected and text
        assert (stats.new_tokens, stats.finish_reason) == (expected_stats.new_tokens, expected_stats.finish_reason)
    assert child_engine.count_tokens(ask("hello world")) == local_engine.count_tokens(ask("hello world"))


def test_info_keeps_the_engine_extras(child_engine: ProcessEngine) -> None:
    info = child_engine.info()
    assert child_engine.ready and child_engine.name == str(info.name)
    assert (info.device, info.dtype, info.context_limit) == ("cpu", "float32", 256)
    assert {"threads", "quantize", "compile"} <= set(info.extra)
    assert info.extra["compile"] == "off"
    assert ProcessEngine("default", NO_MODELS).name == "smollm2"


def stop_mid_reply(engine: ProcessEngine) -> tuple[GenerationStats | None, float]:
    """Press Stop at a long reply's first word: the reply's stats, and seconds from Stop to the stream's end."""
    stop = threading.Event()
    stats = None
    for chunk in engine.stream(ask("tell me a story"), LONG, stop):
        if isinstance(chunk, TextDelta) and not stop.is_set():
            stopped_at = time.perf_counter()
            stop.set()
        elif isinstance(chunk, GenerationStats):
            stats = chunk
    return stats, time.perf_counter() - stopped_at


def close_mid_reply(engine: ProcessEngine) -> float:
    """Close a long reply's stream after its first word; seconds ``close()`` took (it returns once the child has
    ended the reply)."""
    stream = engine.stream(ask("tell me a story"), LONG)
    assert isinstance(next(stream), TextDelta)
    started = time.perf_counter()
    stream.close()
    return time.perf_counter() - started


def test_stop_reaches_the_child_mid_reply(child_engine: ProcessEngine, local_engine: HFEngine) -> None:
    stats, _ = stop_mid_reply(child_engine)
    assert stats is not None and stats.finish_reason == "stopped" and stats.new_tokens < LONG.max_new_tokens
    # The child's prompt cache kept only what was decoded: the next reply is the one a fresh engine gives.
    assert run(child_engine, ask("hello world"), GREEDY)[0] == run(local_engine, ask("hello world"), GREEDY)[0]


def test_closing_the_stream_stops_the_child(child_engine: ProcessEngine, local_engine: HFEngine) -> None:
    close_mid_reply(child_engine)
    assert run(child_engine, ask("hello world"), SAMPLED)[0] == run(local_engine, ask("hello world"), SAMPLED)[0]


@pytest.mark.slow  # wall-clock bounds: other jobs sharing the CPU can stretch them
def test_stop_and_close_reach_the_child_within_one_poll_and_one_token(child_engine: ProcessEngine) -> None:
    assert stop_mid_reply(child_engine)[1] < 0.5  # one poll (50 ms) and one token
    assert close_mid_reply(child_engine) < 0.5


def test_errors_cross_the_process_boundary(child_engine: ProcessEngine) -> None:
    with pytest.raises(EngineError, match="too long") as error:
        list(child_engine.stream(ask("fox " * 400), GREEDY))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        list(child_engine.stream(ask("hi"), GenerationParams(temperature=-1)))
    assert run(child_engine, ask("hi"), GREEDY)[1].new_tokens == 12


def test_ctrl_c_in_the_terminal_leaves_the_child_alone(child_engine: ProcessEngine) -> None:
    os.kill(child_engine.pid, signal.SIGINT)  # a terminal's Ctrl+C reaches the whole process group
    assert run(child_engine, ask("hi"), GREEDY)[1].new_tokens == 12


def test_a_killed_child_is_one_line_and_the_next_reply_restarts_it(
    child_engine: ProcessEngine, local_engine: HFEngine
) -> None:
    pid = child_engine.pid
    stream = child_engine.stream(ask("tell me a story"), LONG)
    assert isinstance(next(stream), TextDelta)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineError) as error:
        list(stream)
    assert str(error.value) == "the model process ended unexpectedly (killed by SIGKILL); send again to restart it"
    assert not child_engine.ready and gone(pid)
    text, _ = run(child_engine, ask("hello world"), GREEDY)  # a fresh child, loaded again
    assert text == run(local_engine, ask("hello world"), GREEDY)[0]
    assert child_engine.ready and child_engine.pid not in (None, pid)


def test_close_ends_the_child_and_load_starts_another(child_engine: ProcessEngine) -> None:
    pid = child_engine.pid
    child_engine.close()
    assert gone(pid, within_s=0) and not child_engine.ready and child_engine.pid is None
    with pytest.raises(EngineError, match="not loaded"):
        child_engine.info()
    child_engine.load()
    assert run(child_engine, ask("hi"), GREEDY)[1].new_tokens == 12


def test_a_bad_spec_fails_as_in_process_and_a_dropped_engine_ends_its_child(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as expected:
        HFEngine("./no-such-model", tmp_path).load()
    engine = ProcessEngine("./no-such-model", tmp_path)
    try:
        engine.load()
    except EngineError as error:  # kept out of a pytest.raises: its traceback would keep the engine alive
        message = str(error)
    else:
        pytest.fail("a model spec naming no model loaded")
    assert message == str(expected.value) and not engine.ready
    pid = engine.pid
    assert pid is not None and not gone(pid, within_s=0)
    del engine
    gc.collect()
    assert gone(pid, within_s=0)  # ended and reaped when the engine went


def test_the_child_starts_inside_textual_and_ends_when_the_parent_is_killed(tiny_path: Path) -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from tui_chat.inference.process_engine import ProcessEngine

                class Captured:  # what Textual puts in sys.stderr while an app runs
                    def write(self, text): return len(text)
                    def flush(self): pass
                    def fileno(self): return -1

                if __name__ == "__main__":
                    sys.stderr = Captured()
                    engine = ProcessEngine({str(tiny_path)!r}, Path("/nonexistent"), device="cpu", compile=False)
                    engine.load()
                    print(engine.pid, flush=True)
                    time.sleep(60)
                """
            ),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(parent.stdout.readline())
        parent.kill()  # no atexit, no finalizers: the child sees EOF on its pipe
        parent.wait()
        assert gone(child)
    finally:
        parent.kill()
        parent.stdout.close()


def test_the_parent_never_imports_torch() -> None:
    code = "import sys, tui_chat.cli, tui_chat.inference.process_engine; print({'torch', 'transformers'} & set(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "set()"


@pytest.mark.slow
def test_bundled_model_answers_through_the_child(bundled_home: DataHome) -> None:
    engine = ProcessEngine("default", bundled_home.models, compile=False)  # a background compile would only burn a core
    try:
        info = engine.load()
        assert info.name == "smollm2" and info.extra["threads"] >= 1
        text, stats = run(engine, ask("What is the capital of France?"), GenerationParams(temperature=0))
        assert "Paris" in text and stats.finish_reason == "eos"
    finally:
        engine.close()


@pytest.mark.slow
def test_a_second_process_compiles_and_takes_over_between_replies(tiny_path: Path, local_engine: HFEngine) -> None:
    engine = ProcessEngine(str(tiny_path), NO_MODELS, device="cpu", dtype="float32")  # compiling by default
    expected, _ = run(local_engine, ask("hello world"), GREEDY)
    try:
        assert engine.load().extra["compile"] == "warming"
        serving = engine.pid
        assert serving is not None
        reply = engine.stream(ask("hello world"), GREEDY)
        pieces = [next(reply).text]  # a reply under way while the other process compiles
        deadline = time.monotonic() + 300
        while engine.info().extra["compile"] == "warming" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert engine.info().extra["compile"] == "ready"
        assert engine.pid == serving  # never in the middle of a reply
        chunks = list(reply)
        assert "".join(pieces + [c.text for c in chunks[:-1]]) == expected
        info = engine.info()  # between replies: the compiled process takes over
        assert engine.pid != serving and gone(serving)
        assert info.extra["compile"] == "ready"
        assert run(engine, ask("hello world"), GREEDY)[0] == expected
    finally:
        engine.close()
