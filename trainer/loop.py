"""The training loop: optimizer steps over length-grouped batches, a checkpoint every ``save_every`` steps and on a
signal. ``sft.py`` builds what it runs on (model, optimizer, loader, schedule) and calls ``train``.

Units: a *step* is one optimizer update = ``grad_accum`` micro-batches of ``micro_batch`` conversations on every
process. The loss is the summed per-token loss of the step's assistant tokens (all processes, all micro-batches)
divided by their count, so every assistant token weighs the same however batches and processes split them. A loss
summed over other units (DPO's: per pair) says so through ``Loop.units``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator

from . import rundir
from .batching import IGNORE_INDEX, LengthGroupedBatches
from .cpu_threads import ThreadGovernor
from .progress import ProgressReporter

MAX_GRAD_NORM = 1.0  # gradient clipping: keeps a bad batch from wrecking a small model in one step


def assistant_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens an SFT micro-batch's loss is summed over: the assistant tokens its positions predict."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class TrainingStopped(Exception):
    """A signal asked the run to stop; a checkpoint was saved and ``--resume`` continues it."""


@dataclass
class Loop:
    """What the loop steps through; everything prepared by ``accelerator`` (but the scheduler, see sft.py)."""

    accelerator: Accelerator
    model: torch.nn.Module  # a prepared ``TokenLossModel``
    trainable: list[torch.nn.Parameter]
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: LengthGroupedBatches
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum: int
    steps_per_epoch: int
    total_steps: int
    save_every: int
    run_dir: Path
    units: Callable[[dict[str, torch.Tensor]], int] = assistant_tokens  # what a micro-batch's loss is summed over
    # Called after each epoch (and after the last step); True stops training there (early_stop.py).
    epoch_end: Callable[[], bool] | None = None


@dataclass
class LoopResult:
    step: int  # the last step done (the run's total unless a signal stopped it)
    seconds: float  # wall time of the training steps
    cpu_s: float  # CPU seconds of this process during them, all threads: shows contention
    tokens: int  # real (non-padding) tokens they processed, every process
    last_loss: float


def backward_step(
    accelerator: Accelerator, model: torch.nn.Module, group: list[dict[str, torch.Tensor]], autocast: Any,
    units: Callable[[dict[str, torch.Tensor]], int] = assistant_tokens,
) -> tuple[float, int]:
    """Accumulate the gradients of one optimizer step's micro-batches; returns (summed loss, assistant tokens),
    both over every process. The gradient is that of the mean loss per assistant token of the whole step (per
    ``units``, when the model's loss is summed over something else). ``model`` is a (prepared) ``TokenLossModel``."""
    device = accelerator.device
    local = sum(units(b) for b in group)
    n_tokens = int(accelerator.reduce(torch.tensor(local, device=device), reduction="sum").item())
    loss_sum = 0.0
    for i, batch in enumerate(group):
        # Gradients sync across processes only on the step's last micro-batch.
        sync = contextlib.nullcontext() if i == len(group) - 1 else accelerator.no_sync(model)
        with sync:
            with autocast():
                summed = model(**batch)
            # DDP averages gradients over processes; times num_processes makes it the sum over all processes'
            # tokens divided by the step's total assistant tokens.
            accelerator.backward(summed * accelerator.num_processes / max(n_tokens, 1))
        loss_sum += summed.item()
    total = accelerator.reduce(torch.tensor(loss_sum, device=device), reduction="sum").item()
    return total, n_tokens


def save_checkpoint(
    accelerator: Accelerator, run_dir: Path, step: int, epoch: int, progress: ProgressReporter
) -> Path:
    """Weights, optimizer, scheduler and RNG states (accelerate's save_state) plus our step counter, written last
    so a checkpoint cut short by a crash is recognisably incomplete."""
    path = run_dir / rundir.CHECKPOINTS / f"step-{step:06d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        rundir.write_json_atomic(path / rundir.CHECKPOINT_STATE, {"step": step, "epoch": epoch})
        rundir.prune_checkpoints(run_dir, keep=path)
        progress.emit("checkpoint", step=step, path=str(path))
    accelerator.wait_for_everyone()
    return path


def train(
    loop: Loop,
    step: int,
    *,
    progress: ProgressReporter,
    stop: dict[str, str],
    governor: ThreadGovernor | None,
    started: float,
) -> LoopResult:
    """Step from ``step`` to ``loop.total_steps``; raises TrainingStopped (after a checkpoint) when ``stop`` gets a
    reason. ``started``: when the run began (time.time()), for the elapsed time in step events."""
    accelerator = loop.accelerator
    seconds, cpu_s, tokens, first_step, last_loss = 0.0, 0.0, 0, step, float("nan")
    ended = False
    while step < loop.total_steps and not stop and not ended:
        epoch, done_in_epoch = divmod(step, loop.steps_per_epoch)
        loop.sampler.set_epoch(epoch)
        skip = done_in_epoch * loop.grad_accum
        source = accelerator.skip_first_batches(loop.loader, skip) if skip else loop.loader
        if hasattr(source, "set_epoch"):
            # accelerate's loader sets its sampler's epoch to its own count of passes on each iter(); a resumed run
            # starts counting late, so the loader is told the epoch (else its batches are another epoch's order).
            source.set_epoch(epoch)
        iterator = iter(source)
        while step < loop.total_steps and not stop:
            group = [b for _, b in zip(range(loop.grad_accum), iterator)]
            if not group:
                break
            tick, cpu_tick = time.perf_counter(), time.process_time()
            loss_sum, n_tokens = backward_step(accelerator, loop.model, group, loop.autocast, loop.units)
            accelerator.clip_grad_norm_(loop.trainable, MAX_GRAD_NORM)
            loop.optimizer.step()
            loop.scheduler.step()
            loop.optimizer.zero_grad(set_to_none=True)
            step += 1
            seconds += time.perf_counter() - tick
            cpu_s += time.process_time() - cpu_tick
            tokens += sum(int(b["attention_mask"].sum()) for b in group) * accelerator.num_processes
            threads = governor.update() if governor is not None else torch.get_num_threads()
            last_loss = loss_sum / max(n_tokens, 1)
            per_step = seconds / (step - first_step)
            progress.emit(
                "step", step=step, total=loop.total_steps, epoch=round(step / loop.steps_per_epoch, 3),
                loss=round(last_loss, 5), lr=loop.scheduler.get_last_lr()[0],
                tokens_per_s=round(tokens / seconds, 1), eta_s=round(per_step * (loop.total_steps - step), 1),
                elapsed_s=round(time.time() - started, 1),
                threads=threads if accelerator.device.type == "cpu" else None,
            )
            if loop.save_every and step % loop.save_every == 0 and step < loop.total_steps:
                save_checkpoint(accelerator, loop.run_dir, step, epoch, progress)
            if loop.epoch_end and (step % loop.steps_per_epoch == 0 or step == loop.total_steps) and loop.epoch_end():
                ended = True
                break
    if stop and step < loop.total_steps and not ended:
        path = save_checkpoint(accelerator, loop.run_dir, step, step // loop.steps_per_epoch, progress)
        progress.emit("stopped", step=step, reason=stop["reason"], checkpoint=str(path))
        raise TrainingStopped(f"stopped by {stop['reason']} at step {step}; --resume continues from {path}")
    return LoopResult(step, seconds, cpu_s, tokens, last_loss)
