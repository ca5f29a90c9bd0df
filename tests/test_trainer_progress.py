"""The progress stream: JSON lines, the progress.jsonl copy, and a reader that goes away."""

from __future__ import annotations

import io
import json
from pathlib import Path

from trainer.progress import ProgressReporter


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_json_lines_and_log(tmp_path: Path) -> None:
    stream = io.StringIO()
    progress = ProgressReporter("json", stream=stream)
    progress.emit("info", message="before the run dir")
    progress.log_to(tmp_path / "progress.jsonl")
    progress.emit("step", step=1, total=2, loss=1.5)
    printed = [json.loads(line) for line in stream.getvalue().splitlines()]
    logged = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [e["event"] for e in printed] == ["info", "step"]
    assert logged == printed[1:]
    assert printed[1]["step"] == 1 and isinstance(printed[1]["time"], float)


def test_a_closed_pipe_does_not_stop_training(tmp_path: Path) -> None:
    progress = ProgressReporter("json", stream=ClosedPipe())
    progress.log_to(tmp_path / "progress.jsonl")
    progress.emit("step", step=1)
    progress.emit("step", step=2)
    assert [json.loads(x)["step"] for x in (tmp_path / "progress.jsonl").read_text().splitlines()] == [1, 2]


def test_bar_mode_prints_for_people(tmp_path: Path) -> None:
    stream = io.StringIO()
    progress = ProgressReporter("bar", stream=stream)
    progress.emit(
        "start", run_dir=str(tmp_path), model="tiny", method="lora", device="cpu", dtype="fp32", total_steps=2,
        train_conversations=3, train_tokens=100, real_token_fraction=0.9,
    )
    progress.emit("step", step=1, total=2, loss=1.25, lr=1e-4, tokens_per_s=50.0)
    progress.emit("done", run_dir=str(tmp_path), elapsed_s=3.0)
    text = stream.getvalue().replace("\n", "")  # rich wraps long lines at the console width
    assert "training tiny (lora, cpu, fp32)" in text and "90% of computed tokens are real" in text
    assert f"done in 3 s: {tmp_path}" in text
