"""Start a previewed run as its own process, and stop one.

The trainer runs as ``python -m trainer sft ... --progress json`` (``dpo ... --sft-data`` when the snapshot has
preference pairs: the combined objective, see plan.py; ``dpo`` alone when the pairs are all it has) in a new session
(process group): the chat never imports the training loop, a crash of either leaves the other alone, and the run
keeps going when the app exits. Its stdout and stderr go to ``runs/<name>.log`` in the data home, which
``RunMonitor`` reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from typing import Sequence

from sessions import Store, TrainingRun
from trainer.dpo_config import NOT_FOR_DPO
from trainer.home import DataHome

from tui_chat.training.monitor import RunMonitor, is_active, trainer_alive
from tui_chat.training.errors import TrainingError
from tui_chat.training.options import without_options
from tui_chat.training.plan import TrainingPlan, run_name


def trainer_command(plan: TrainingPlan, home: DataHome, dataset: str, out_dir: str, python: str) -> list[str]:
    """The trainer's command line for ``plan``: SFT on the conversations (``dataset``), or with preference pairs the
    combined objective (the pairs by DPO, the conversations by cross-entropy, one run; the pairs alone when there
    are no conversations)."""
    pairs = plan.pairs_path
    if pairs is None:
        data = ["sft", "--data", dataset]
    else:
        data = ["dpo", "--data", str(pairs), *(["--sft-data", dataset] if plan.data.conversations else [])]
    command = [python, "-m", "trainer", *data, "--model", plan.base_spec, "--out", out_dir,
               "--home", str(home.root), "--progress", "json"]
    if plan.options.config.method is None:
        command += ["--method", plan.method]  # the method the preview promised, whatever the trainer would pick
    if not pairs:
        return command + list(plan.options.trainer_args)
    beta = ["--beta", str(plan.options.beta)] if plan.options.beta is not None else []
    return command + _dpo_arguments(plan.options.trainer_args) + beta


def _dpo_arguments(args: Sequence[str]) -> list[str]:
    """The trainer options without the SFT-only ones (early stopping, the adapter's scale)."""
    return without_options(args, {"--" + name.replace("_", "-") for name in NOT_FOR_DPO})


def start_training(store: Store, home: DataHome, plan: TrainingPlan, *, python: str = sys.executable) -> RunMonitor:
    """Move the plan's snapshot into ``datasets/<name>/``, record the run and launch the trainer; returns the monitor
    that follows it. TrainingError (one line) when the trainer cannot be started (the run is recorded as failed)."""
    name = plan.name
    if any(run.name == name for run in store.list_training_runs()) or (home.models / name).exists():
        name = run_name(store, home, plan.base_name)  # taken meanwhile (another window started a run this second)
    dataset_dir = home.datasets / name
    os.replace(plan.snapshot_dir, dataset_dir)  # one folder: the manifest names its data file relatively
    plan.snapshot_dir = dataset_dir
    dataset = plan.conversations_path or plan.pairs_path
    out_dir = home.models / name
    log_path = home.runs / f"{name}.log"
    command = trainer_command(plan, home, str(dataset), str(out_dir), python)
    run = store.create_training_run(
        name,
        base_model=plan.base_name,
        dataset_path=str(dataset),
        dataset_sha256=plan.export.sha256["all"],
        conversation_ids=plan.export.conversation_ids,
        params={**plan.settings(), "base_spec": plan.base_spec, "command": command[1:]},
        output_dir=str(out_dir),
        log_path=str(log_path),
    )
    env = {**os.environ, **plan.device.env, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # the log quotes private chats
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group: Ctrl+C in the chat or closing it leaves it running
            )
        finally:
            os.close(log)
    except OSError as exc:
        store.update_training_run(run.id, status="failed", error=f"cannot start the trainer: {exc}",
                                  finished_at=time.time())
        raise TrainingError(f"cannot start the trainer ({exc}); check that {python} runs") from exc
    if plan.device.nice and hasattr(os, "setpriority"):
        # Set right after the exec, before the trainer starts its threads (they inherit the main thread's niceness).
        try:
            os.setpriority(os.PRIO_PROCESS, process.pid, os.getpriority(os.PRIO_PROCESS, 0) + plan.device.nice)
        except OSError:
            pass  # the process already ended: its monitor reports why
    run = store.update_training_run(run.id, status="running", pid=process.pid)
    return RunMonitor(store, run, process)


def cancel_run(store: Store, run: TrainingRun) -> TrainingRun:
    """Stop a run: SIGINT to its process group makes the trainer finish its step, save a checkpoint and exit; the
    run's monitor then records it as cancelled. Asked again while it is still stopping, the trainer is killed at once
    (no checkpoint). TrainingError when the run is not running."""
    run = store.get_training_run(run.id)
    if not is_active(run):
        raise TrainingError(f"run {run.name} is not running (it {run.status}); /runs lists the runs")
    again = run.status == "cancelled"
    run = store.update_training_run(run.id, status="cancelled")
    if run.pid is not None and trainer_alive(run.pid):
        try:
            os.killpg(run.pid, signal.SIGKILL if again else signal.SIGINT)
        except ProcessLookupError:
            pass  # it ended just now: its monitor records how
    return run
