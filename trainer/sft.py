"""Supervised fine-tuning on chat conversations: data -> model -> loop -> evaluate -> save. Reads top to bottom.

One process on a CPU or a GPU, or many under ``accelerate launch`` / ``torchrun`` (data-parallel through
``accelerate.Accelerator``; FSDP or DeepSpeed when its config file says so). Only the main process writes the run
dir and reports progress.

Units: a *step* is one optimizer update = ``grad_accum`` micro-batches of ``micro_batch`` conversations on every
process. The loss is the summed per-token loss of the step's assistant tokens (all processes, all micro-batches)
divided by their count, so every assistant token weighs the same however batches and processes split them: the
cross-entropy of the user's replies, and on replayed answers (LoRA) the KL from the base model's distribution.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from . import rundir
from .base_answers import CACHE_DIR
from .batching import IGNORE_INDEX, Collator, LengthGroupedBatches, padding_efficiency
from .config import SFTConfig, validate
from .data import Conversation, DataError, read_jsonl, split_conversations
from .devices import bf16_is_fast, pick_dtype
from .distill import mass_outside_top_k, teacher_targets
from .cpu_threads import ThreadGovernor
from .evaluate import EvalResult, evaluate
from .home import DataHome
from .loss import TokenLossModel
from .progress import ProgressReporter
from .render import RenderedSet, render_conversations
from .replay import REPLAY_FILE, default_replay_count, replay_for_run, write_conversations
from .report import plot_loss, read_progress, write_metrics, write_report
from .retention import evaluate_retention, measure_baseline, report_section

MAX_GRAD_NORM = 1.0  # gradient clipping: keeps a bad batch from wrecking a small model in one step
# On CPU, eager attention trained short chats ~25% faster than sdpa's flash kernel (bundled model, bf16 autocast,
# 8 x 80 tokens) and as fast at 512 tokens; past that its (tokens x tokens) scores cost memory, so sdpa stays.
EAGER_MAX_TOKENS = 512
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class TrainingStopped(Exception):
    """A signal asked the run to stop; a checkpoint was saved and ``--resume`` continues it."""


class SettingsError(ValueError):
    """Settings or a run dir the user chose cannot work; one line naming the fix."""


@dataclass
class TrainingFiles:
    """The validated conversations of every input file, before rendering."""

    train: list[Conversation]
    val: list[Conversation]
    skipped_invalid: int
    sha256: str  # of every input file, in order: --resume refuses a run whose data changed


@dataclass
class TrainingData:
    train: RenderedSet  # the user's conversations, then the replay
    val: RenderedSet
    val_conversations: list[Conversation]
    files: TrainingFiles
    replay_from: int  # index of the first replay example in ``train``


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name or text).strip("-.") or "model"


def default_run_dir(home: DataHome, model_spec: str) -> Path:
    """``models/<model>-sft-<YYYYmmdd-HHMMSS>`` in the data home: the chat finds it by that name."""
    return home.models / f"{_slug(model_spec)}-sft-{time.strftime('%Y%m%d-%H%M%S')}"


def read_training_files(config: SFTConfig) -> TrainingFiles:
    """Read and validate every input file and split train / validation (before any model is loaded)."""
    main = read_jsonl(config.data, skip_invalid=config.skip_invalid)
    skipped = len(main.skipped)
    digest = hashlib.sha256(main.sha256.encode())
    if config.val:
        val_file = read_jsonl(config.val, skip_invalid=config.skip_invalid)
        skipped += len(val_file.skipped)
        digest.update(val_file.sha256.encode())
        train, val = main.conversations, val_file.conversations
    else:
        train, val = split_conversations(main.conversations, config.val_fraction)
    for path in config.extra_data:
        extra = read_jsonl(path, skip_invalid=config.skip_invalid)
        skipped += len(extra.skipped)
        digest.update(extra.sha256.encode())
        train = train + extra.conversations
    return TrainingFiles(train, val, skipped, digest.hexdigest())


def render_training_data(
    config: SFTConfig, files: TrainingFiles, tokenizer: Any, replay: list[Conversation] | None = None
) -> TrainingData:
    """Render both splits with the model's chat template; ``replay`` joins the training split, after the user's."""
    train = render_conversations(tokenizer, files.train, config.max_length)
    replay_from = len(train.examples)
    if replay:
        train.extend(render_conversations(tokenizer, replay, config.max_length))
    if not train.examples:
        raise DataError(
            f"{config.data}: no conversation fits in --max-length {config.max_length} tokens; raise --max-length"
        )
    val = render_conversations(tokenizer, files.val, config.max_length)
    return TrainingData(train, val, files.val, files, replay_from)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, str]]:
    """While inside, SIGINT / SIGTERM set ``flag["reason"]`` (checked between steps) instead of killing the run; a
    second signal interrupts at once. Outside the main thread signals cannot be caught and nothing is installed."""
    flag: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request_stop(signum: int, frame: Any) -> None:
        if flag:
            raise KeyboardInterrupt
        flag["reason"] = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_resume(run_dir: Path, config: SFTConfig, data_sha: str) -> None:
    saved = json.loads((run_dir / rundir.TRAIN_CONFIG).read_text())
    if saved["dataset_sha256"] != data_sha:
        raise SettingsError(
            f"the dataset changed since {run_dir} started (sha256 differs); resume with the same files or start a "
            "new run"
        )
    changed = sorted(
        k for k, v in config.learning_fields().items() if saved["config"].get(k) != v and k != "resume"
    )
    if changed:
        raise SettingsError(
            f"settings changed since {run_dir} started ({', '.join('--' + k.replace('_', '-') for k in changed)}); "
            "resume with the same settings or start a new run"
        )


def _save_checkpoint(
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


def backward_step(
    accelerator: Accelerator, model: torch.nn.Module, group: list[dict[str, torch.Tensor]], autocast: Any
) -> tuple[float, int]:
    """Accumulate the gradients of one optimizer step's micro-batches; returns (summed loss, assistant tokens),
    both over every process. The gradient is that of the mean loss per assistant token of the whole step.
    ``model`` is a (prepared) ``TokenLossModel``."""
    device = accelerator.device
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in group)
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


def _eval_batches(examples: RenderedSet, micro_batch: int, collate: Collator):
    """A function giving the validation micro-batches in a fixed, length-grouped order."""
    sampler = LengthGroupedBatches([len(e) for e in examples.examples], micro_batch, seed=0)

    def batches():
        for indices in sampler:
            yield collate([examples.examples[i] for i in indices])

    return batches


def _merge_lora(unwrapped: Any, config: SFTConfig, models_dir: Path) -> Any:
    """The adapter merged into the base model. A base trained in bf16 is reloaded in fp32 first, so the saved model
    is the original weights plus the update (merging into bf16 weights would round both)."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from .models import load_model

    if next(unwrapped.base_model.parameters()).dtype == torch.float32:
        return unwrapped.merge_and_unload()
    base = load_model(config.model, models_dir=models_dir, device="cpu", dtype="float32",
                      trust_remote_code=config.trust_remote_code).model
    fp32 = get_peft_model(base, unwrapped.peft_config["default"])
    set_peft_model_state_dict(fp32, get_peft_model_state_dict(unwrapped))
    return fp32.merge_and_unload()


def _cast_floats(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors in ``dtype``. Tensors that shared storage (tied input embeddings and output layer) still do,
    so save_pretrained writes them once."""
    cast: dict[tuple[int, torch.Size], torch.Tensor] = {}
    result = {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point():
            key = (tensor.data_ptr(), tensor.shape)
            if key not in cast:
                cast[key] = tensor.to(dtype)
            tensor = cast[key]
        result[name] = tensor
    return result


def _save_model(
    accelerator: Accelerator, model: Any, tokenizer: Any, run_dir: Path, config: SFTConfig, base_source: str,
    models_dir: Path,
) -> None:
    """The merged model (or, with --keep-adapter, the adapter naming its base), and the tokenizer with its template.

    The model is saved in the dtype the chat loads it in on this device (bf16 on CPU and most GPUs): half of fp32's
    disk, and loading needs no cast. Training kept fp32 weights (or merged in fp32) up to here, so this is the one
    rounding. An adapter stays fp32: it is small, and the loader merges it into the base it loads.
    """
    unwrapped = accelerator.unwrap_model(model).model
    saved_dtype = pick_dtype(accelerator.device)
    state_dict = None
    if config.method == "lora" and config.keep_adapter:
        # The loader resolves base_model_name_or_path as a spec: the same one this run started from.
        base = config.model if not Path(config.model).expanduser().exists() else base_source
        unwrapped.peft_config["default"].base_model_name_or_path = base
        final = unwrapped
    elif config.method == "lora":
        final = _merge_lora(unwrapped, config, models_dir).to(saved_dtype)
    else:
        # Gathers FSDP / DeepSpeed shards; the keys lose TokenLossModel's "model." prefix.
        gathered = accelerator.get_state_dict(model)
        state_dict = _cast_floats({k.removeprefix("model."): v for k, v in gathered.items()}, saved_dtype)
        final = unwrapped.to(saved_dtype)  # training is over; config.json then names the dtype the weights have
    if hasattr(final, "config"):
        final.config.use_cache = True  # gradient checkpointing turns the KV cache off; the chat needs it
    if accelerator.is_main_process:
        from .models import quiet_transformers  # no tqdm "Writing model shards" bar under our progress

        with quiet_transformers():
            final.save_pretrained(run_dir, state_dict=state_dict)
            tokenizer.save_pretrained(run_dir)


def run_sft(config: SFTConfig, progress: ProgressReporter) -> Path:
    """Train as ``config`` says and return the finished run dir. Raises DataError, ModelError, SettingsError,
    RunDirError for problems the user can fix, and TrainingStopped after a signal (with a checkpoint saved)."""
    try:
        validate(config)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    threads = torch.get_num_threads()
    # --threads fixes the count; by default it follows the machine's load between steps (see cpu_threads.py).
    governor = None if config.threads else ThreadGovernor()
    if governor is None:
        torch.set_num_threads(config.threads)
    else:
        governor.start()
    try:
        with stop_on_signals() as stop, rundir.private_files():
            return _run(config, progress, stop, governor)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (tests, `tui-chat train`) gets its own back


def _run(
    config: SFTConfig, progress: ProgressReporter, stop: dict[str, str], governor: ThreadGovernor | None
) -> Path:
    from .models import load_model

    home = DataHome.locate(config.home)
    started = time.time()
    files = read_training_files(config)  # bad data fails here, before a model is loaded

    # -- where: one Accelerator per process; autocast is ours (below) so the logits stay bf16 until the loss
    # cpu=True where there is no accelerator: it is what lets `torchrun` / `accelerate launch` run several CPU
    # processes (gloo); without it each process would train alone.
    accelerator = Accelerator(
        mixed_precision="no", cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available())
    )
    progress.enabled = progress.enabled and accelerator.is_main_process
    device = accelerator.device
    automatic = [name for name in ("epochs", "lr") if getattr(config, name) is None]
    n_user = len(files.train)  # the user's conversations: replay is added later and not counted here
    config = config.resolved(device, n_user)
    try:
        validate(config)  # again: the automatic method may not fit a setting the user chose (--replay-loss kl)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if automatic:
        # Printed, so a surprising choice is visible; schedule.py says how it was measured.
        progress.info(f"schedule: {n_user} conversations: {config.epochs:g} epochs at lr {config.lr:g} "
                      f"(chosen by dataset size and method: {', '.join(automatic)}; set --epochs / --lr to override)")
    bf16 = config.precision == "bf16" or (config.precision == "auto" and bf16_is_fast(device))
    run_dir = Path(config.out).expanduser() if config.out else default_run_dir(home, config.model)
    if accelerator.is_main_process:
        rundir.check(run_dir, resume=config.resume)
        if config.resume:
            _check_resume(run_dir, config, files.sha256)

    # -- model and data
    set_seed(config.seed)
    # Trained weights stay fp32 (bf16 is autocast only). LoRA's frozen base may be bf16 when autocasting anyway:
    # no per-step casts of the weights, ~12% faster on CPU (measured); its fp32 adapters are merged in fp32.
    base_dtype = "bfloat16" if bf16 and config.method == "lora" else "float32"
    progress.info(f"loading {config.model}")
    loaded = load_model(
        config.model,
        models_dir=home.models,
        device=str(device),
        dtype=base_dtype,
        trust_remote_code=config.trust_remote_code,
    )
    model, tokenizer = loaded.model, loaded.tokenizer

    # -- what the base model knew: replay mixed into training (replay.py), and the reference retention is measured
    # against (retention.py); both are the base model's own greedy answers, cached in the data home.
    answers_dir = home.root / CACHE_DIR
    replay_count = 0 if config.no_replay else config.replay if config.replay is not None else default_replay_count(n_user)
    replay_started = time.time()
    if replay_count:
        progress.info(f"replay: the base model answers {replay_count} general prompts (cached after the first run)")
    replay = replay_for_run(
        model, tokenizer, replay_count, answers_dir, bf16=bf16, near=files.train,
        resume_dir=run_dir if config.resume else None,
    )
    replay_s = time.time() - replay_started
    baseline = None
    if not config.no_eval:
        progress.info("retention: the base model answers the held-out general prompts (cached after the first run)")
        baseline = measure_baseline(model, tokenizer, answers_dir, bf16=bf16)
    data = render_training_data(config, files, tokenizer, replay)
    if accelerator.is_main_process:
        # The run dir appears only once model and data are known good: a typo in --model leaves nothing behind.
        if not config.resume:
            home.ensure()
            rundir.create(run_dir)
            rundir.write_json_atomic(
                run_dir / rundir.TRAIN_CONFIG,
                {"config": dataclasses.asdict(config), "model": config.model, "dataset_sha256": files.sha256},
            )
            if replay:
                write_conversations(run_dir / REPLAY_FILE, [{"messages": c.as_messages()} for c in replay])
        progress.log_to(run_dir / rundir.PROGRESS_LOG)
    accelerator.wait_for_everyone()
    for count, what in (
        (files.skipped_invalid, "invalid lines skipped"),
        (data.train.truncated + data.val.truncated, f"conversations cut to --max-length {config.max_length}"),
        (data.train.dropped_too_long + data.val.dropped_too_long, "conversations dropped: too long"),
        (data.train.dropped_unrenderable + data.val.dropped_unrenderable, "conversations dropped: template"),
    ):
        if count:
            progress.info(f"{count} {what}")

    if device.type == "cpu" and max(len(e) for e in data.train.examples) <= EAGER_MAX_TOKENS:
        model.set_attn_implementation("eager")
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = "all-linear" if config.lora_targets == "all-linear" else config.lora_targets.split(",")
        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=targets, task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()

    collate = Collator(tokenizer.pad_token_id)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    outside_top_k = None
    if config.replay_loss == "kl" and len(data.train.examples) > data.replay_from:
        # The base model's distribution on the replay, once: every epoch distils from it (distill.py).
        progress.info("replay: the base model's next-token distribution on the replayed answers (distillation)")
        distill_started = time.time()
        replayed = data.train.examples[data.replay_from :]
        targets = teacher_targets(model, replayed, collate, config.micro_batch, autocast)
        data.train.examples[data.replay_from :] = [
            dataclasses.replace(e, teacher=t) for e, t in zip(replayed, targets)
        ]
        outside_top_k = mass_outside_top_k(targets)
        replay_s += time.time() - distill_started  # part of preparing the replay
    lengths = [len(e) for e in data.train.examples]
    sampler = LengthGroupedBatches(lengths, config.micro_batch, config.seed)
    # The loader's own generator: starting an iteration draws a seed from it, and drawing from the global RNG
    # instead would shift LoRA dropout on a resumed run (which starts iterating mid-epoch).
    loader = torch.utils.data.DataLoader(
        data.train.examples, batch_sampler=sampler, collate_fn=collate,
        generator=torch.Generator().manual_seed(config.seed),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    trained, optimizer, loader = accelerator.prepare(TokenLossModel(model), optimizer, loader)

    # -- schedule: steps per epoch counts this process's share of the micro-batches
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = int(config.warmup) if config.warmup >= 1 else round(config.warmup * total_steps)
    scheduler = get_scheduler(SCHEDULES[config.schedule], optimizer, warmup, total_steps)
    # The scheduler is ours, not accelerate-prepared: a prepared one steps once per process per call.
    accelerator.register_for_checkpointing(scheduler)

    step = 0
    checkpoint = rundir.latest_checkpoint(run_dir) if config.resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = json.loads((checkpoint / rundir.CHECKPOINT_STATE).read_text())["step"]
        progress.info(f"resuming from step {step} ({checkpoint.name})")

    val_batches = _eval_batches(data.val, config.micro_batch, collate)
    eval_enabled = not config.no_eval and bool(data.val.examples)
    real_fraction = padding_efficiency(lengths, sampler.batches())
    progress.emit(
        "start", run_dir=str(run_dir), model=loaded.name, method=config.method, device=str(device),
        dtype="bf16 autocast" if bf16 else "fp32", total_steps=total_steps, start_step=step,
        epochs=total_steps / steps_per_epoch, train_conversations=len(data.train.examples),
        val_conversations=len(data.val.examples), train_tokens=data.train.n_tokens,
        assistant_tokens=data.train.n_assistant_tokens, real_token_fraction=round(real_fraction, 4),
    )

    def run_eval(stage: str) -> EvalResult:
        progress.info(f"evaluating {stage} training")
        result = evaluate(
            model, tokenizer, val_batches, data.val_conversations, device=device,
            bf16=bf16, max_samples=config.eval_samples, max_new_tokens=config.max_new_tokens,
        )
        progress.emit("eval", stage=stage, step=step, samples=len(result.samples), **result.metrics())
        return result

    # The "before" numbers are kept in the run dir so a resumed run still reports them.
    before_path = run_dir / "eval_before.json"
    before = None
    if eval_enabled:
        if before_path.exists():
            before = EvalResult.from_dict(json.loads(before_path.read_text()))
        else:
            before = run_eval("before")
            if accelerator.is_main_process:
                rundir.write_json_atomic(before_path, dataclasses.asdict(before))

    # -- the loop
    train_time, train_cpu, train_tokens, first_step, last_loss = 0.0, 0.0, 0, step, float("nan")
    while step < total_steps and not stop:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, done_in_epoch * config.grad_accum) if done_in_epoch else loader
        iterator = iter(batches)
        while step < total_steps and not stop:
            group = [b for _, b in zip(range(config.grad_accum), iterator)]
            if not group:
                break
            tick, cpu_tick = time.perf_counter(), time.process_time()
            loss_sum, n_tokens = backward_step(accelerator, trained, group, autocast)
            accelerator.clip_grad_norm_(trainable, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            real_tokens = sum(int(b["attention_mask"].sum()) for b in group) * accelerator.num_processes
            train_time += time.perf_counter() - tick
            train_cpu += time.process_time() - cpu_tick  # CPU s of this process, all threads: shows contention
            train_tokens += real_tokens
            threads = governor.update() if governor is not None else torch.get_num_threads()
            last_loss = loss_sum / max(n_tokens, 1)
            per_step = train_time / (step - first_step)
            progress.emit(
                "step", step=step, total=total_steps, epoch=round(step / steps_per_epoch, 3),
                loss=round(last_loss, 5), lr=scheduler.get_last_lr()[0],
                tokens_per_s=round(train_tokens / train_time, 1), eta_s=round(per_step * (total_steps - step), 1),
                elapsed_s=round(time.time() - started, 1), threads=threads if device.type == "cpu" else None,
            )
            if config.save_every and step % config.save_every == 0 and step < total_steps:
                _save_checkpoint(accelerator, run_dir, step, epoch, progress)
    if stop and step < total_steps:
        path = _save_checkpoint(accelerator, run_dir, step, step // steps_per_epoch, progress)
        progress.emit("stopped", step=step, reason=stop["reason"], checkpoint=str(path))
        raise TrainingStopped(f"stopped by {stop['reason']} at step {step}; --resume continues from {path}")

    # -- evaluate, save, report; COMPLETE is written last
    after = run_eval("after") if eval_enabled else None
    retention, retention_warning = None, None
    if baseline is not None:
        progress.info("retention: the trained model answers the held-out general prompts")
        retention = evaluate_retention(accelerator.unwrap_model(model), tokenizer, baseline, bf16=bf16)
        retention_warning = retention.warning()
        progress.emit("retention", stage="after", warning=retention_warning, **retention.metrics())
        if retention_warning:
            progress.info(f"warning: {retention_warning}")
    _save_model(accelerator, trained, tokenizer, run_dir, config, loaded.source, home.models)
    if accelerator.is_main_process:
        metrics = {
            "base_model": loaded.name,
            "method": config.method,
            "steps": step,
            "epochs": step / steps_per_epoch,
            "precision": "bf16 autocast" if bf16 else "fp32",
            "device": str(device),
            "processes": accelerator.num_processes,
            # The count most steps ran with (it follows the machine's load unless --threads fixed it).
            "threads": (governor.most_used() if governor else config.threads) if device.type == "cpu" else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_time_s": train_time,
            "tokens_per_s": train_tokens / train_time if train_time else 0.0,
            "train_cpu_s": train_cpu,
            "final_train_loss": last_loss,
            "data": {
                "train_conversations": len(data.train.examples),
                "val_conversations": len(data.val.examples),
                "train_tokens": data.train.n_tokens,
                "assistant_tokens": data.train.n_assistant_tokens,
                "skipped_invalid": files.skipped_invalid,
                "truncated": data.train.truncated + data.val.truncated,
                "dropped_too_long": data.train.dropped_too_long + data.val.dropped_too_long,
                "real_token_fraction": real_fraction,
                "dataset_sha256": files.sha256,
            },
            "before": before.metrics() if before else None,
            "after": after.metrics() if after else None,
            "schedule": {"epochs": config.epochs, "lr": config.lr, "automatic": automatic, "user_conversations": n_user},
            "replay": {"conversations": len(replay), "prepare_s": round(replay_s, 1), "loss": config.replay_loss,
                       # The base model's mean probability outside the TOP_K tokens distillation keeps.
                       "outside_top_k": outside_top_k},
            "retention": {**retention.metrics(), "warning": retention_warning} if retention else None,
        }
        write_metrics(run_dir / "metrics.json", metrics)
        has_plot = plot_loss(read_progress(run_dir / rundir.PROGRESS_LOG), run_dir / "loss.png") is not None
        learned = (
            "the model learned the base model's next-token distribution on them (self-distillation, --replay-loss kl)"
            if config.replay_loss == "kl" else "the model learned their text (cross-entropy, --replay-loss ce)"
        )
        replay_line = (
            f"- replay: {len(replay)} general conversations answered by the base model were mixed into training "
            f"({replay_s:.0f} s to prepare); {learned}" if replay else "- replay: off"
        )
        sections = [f"## Schedule and replay\n\n- schedule: {config.epochs:g} epochs at lr {config.lr:g} for "
                    f"{n_user} conversations\n{replay_line}\n"]
        if retention is not None:
            sections.append(report_section(retention, retention_warning))
            rundir.write_json_atomic(run_dir / "retention.json", retention.as_dict())
        write_report(run_dir / "report.md", metrics, before, after, has_plot, sections)
        rundir.prune_checkpoints(run_dir, keep=None)
        before_path.unlink(missing_ok=True)
        rundir.mark_complete(run_dir, {"steps": step, "base_model": loaded.name})
        progress.emit("done", run_dir=str(run_dir), elapsed_s=round(time.time() - started, 1), metrics=metrics)
    accelerator.wait_for_everyone()
    return run_dir
