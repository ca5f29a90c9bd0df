"""Supervised fine-tuning on chat conversations, one run end to end: data -> base model and its side of every
before/after measure -> model to train -> loop (loop.py) -> evaluate -> save (save.py) -> report. Reads top to bottom.

One process on a CPU or a GPU, or many under ``accelerate launch`` / ``torchrun`` (data-parallel through
``accelerate.Accelerator``; FSDP or DeepSpeed when its config file says so). Only the main process writes the run
dir and reports progress. Each phase is timed (timings.py); what the base model contributes (replay answers, its
retention answers and perplexity, its evaluation) is cached in the data home, so a small run after the first one
pays mostly for training.

The loss: the cross-entropy of the user's replies, and on replayed answers (LoRA) the KL from the base model's
distribution, per assistant token (loop.py says how steps and processes split it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from . import rundir
from .base_answers import CACHE_DIR, AnswerCache, model_identity
from .batching import Collator, LengthGroupedBatches, padding_efficiency
from .config import SFTConfig, validate
from .cpu_threads import ThreadGovernor
from .data import Conversation, DataError, DatasetFile, read_jsonl, split_conversations
from .distill import mass_outside_top_k, teacher_targets
from .early_stop import PATIENCE, BestEpoch
from .evaluate import EvalResult, eval_key, evaluate, validation_loss
from .home import DataHome
from .interpolate import Interpolation, interpolate
from .knowledge_check import KnowledgeCheck, build_check
from .loop import Loop, train
from .loss import TokenLossModel
from .progress import ProgressReporter
from .render import RenderedSet, render_conversations
from .replay import REPLAY_FILE, default_replay_count, replay_phase, write_conversations
from .report import write_run_report
from .run_steps import BEFORE_FILE, SettingsError, check_resume, finish, resumed_step, retention_after, schedule
from .retention import baseline_cached, measure_baseline
from .save import generating, save_model
from .timings import PhaseClock, process_age_s

# On CPU, eager attention trained short chats ~25% faster than sdpa's flash kernel (bundled model, bf16 autocast,
# 8 x 80 tokens) and as fast at 512 tokens; past that its (tokens x tokens) scores cost memory, so sdpa stays.
EAGER_MAX_TOKENS = 512


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


def default_run_dir(home: DataHome, model_spec: str, objective: str = "sft") -> Path:
    """``models/<model>-<objective>-<YYYYmmdd-HHMMSS>`` in the data home: the chat finds it by that name."""
    return home.models / f"{_slug(model_spec)}-{objective}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class InputFiles:
    """What ``read_inputs`` read: the records split train / validation, and what every file adds up to."""

    train: list[Any]
    val: list[Any]
    skipped_invalid: int
    digest: Any  # a hashlib sha256 over every file's own, in order (a caller may add files of another kind)

    def add(self, read: tuple[list[Any], Any]) -> list[Any]:
        """Count one more file's skipped lines and hash (``read``: its records and the file); returns the records."""
        records, file = read
        self.skipped_invalid += len(file.skipped)
        self.digest.update(file.sha256.encode())
        return records


def read_inputs(
    config: SFTConfig,
    read: Callable[[str], tuple[list[Any], Any]],
    split: Callable[[list[Any], float], tuple[list[Any], list[Any]]],
) -> InputFiles:
    """Read ``--data``, ``--val`` (else ``split`` by ``--val-fraction``) and every ``--extra-data`` file with
    ``read`` (a path -> its records and the file read, which has ``skipped`` and ``sha256``), before any model is
    loaded."""
    files = InputFiles([], [], 0, hashlib.sha256())
    main = read(config.data)
    records = files.add(main)
    if config.val:
        files.train, files.val = records, files.add(read(config.val))
    else:
        files.train, files.val = split(records, config.val_fraction)
    for path in config.extra_data:
        files.train = files.train + files.add(read(path))
    return files


def read_training_files(config: SFTConfig) -> TrainingFiles:
    """Read and validate every input file and split train / validation (before any model is loaded)."""
    def read(path: str) -> tuple[list[Conversation], DatasetFile]:
        file = read_jsonl(path, skip_invalid=config.skip_invalid)
        return file.conversations, file

    files = read_inputs(config, read, split_conversations)
    return TrainingFiles(files.train, files.val, files.skipped_invalid, files.digest.hexdigest())


def run_guarded(config: SFTConfig, run: Callable[[dict[str, str], ThreadGovernor | None], Path]) -> Path:
    """``run(stop, governor)`` with the threads ``config`` asks for, signals turned into a checkpointed stop and the
    files it writes private; the caller's thread count comes back afterwards."""
    threads = torch.get_num_threads()
    # --threads fixes the count; by default it follows the machine's load between steps (see cpu_threads.py).
    governor = None if config.threads else ThreadGovernor()
    if governor is None:
        torch.set_num_threads(config.threads)
    else:
        governor.start()
    try:
        with stop_on_signals() as stop, rundir.private_files():
            return run(stop, governor)
    finally:
        torch.set_num_threads(threads)  # a caller in the same process (tests, `tui-chat train`) gets its own back


def make_accelerator() -> Accelerator:
    """One Accelerator per process; autocast is the trainer's own, so the logits stay bf16 until the loss.
    cpu=True where there is no accelerator: it is what lets `torchrun` / `accelerate launch` run several CPU
    processes (gloo); without it each process would train alone."""
    return Accelerator(mixed_precision="no", cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()))


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


def _eval_batches(examples: RenderedSet, micro_batch: int, collate: Collator):
    """A function giving the validation micro-batches in a fixed, length-grouped order."""
    sampler = LengthGroupedBatches([len(e) for e in examples.examples], micro_batch, seed=0)

    def batches():
        for indices in sampler:
            yield collate([examples.examples[i] for i in indices])

    return batches


def run_sft(config: SFTConfig, progress: ProgressReporter) -> Path:
    """Train as ``config`` says and return the finished run dir. Raises DataError, ModelError, SettingsError,
    RunDirError for problems the user can fix, and TrainingStopped after a signal (with a checkpoint saved)."""
    try:
        validate(config)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return run_guarded(config, lambda stop, governor: _run(config, progress, stop, governor))


def _run(
    config: SFTConfig, progress: ProgressReporter, stop: dict[str, str], governor: ThreadGovernor | None
) -> Path:
    from .models import load_model

    home = DataHome.locate(config.home)
    started, startup_s = time.time(), process_age_s()
    clock = PhaseClock(progress)
    files = read_training_files(config)  # bad data fails here, before a model is loaded

    accelerator = make_accelerator()
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
    bf16 = config.bf16(device)
    run_dir = Path(config.out).expanduser() if config.out else default_run_dir(home, config.model)
    if accelerator.is_main_process:
        rundir.check(run_dir, resume=config.resume)
        if config.resume:
            check_resume(run_dir, config, files.sha256)

    # -- the base model, and its side of every before/after measure: replay mixed into training (replay.py), the
    # reference retention is measured against (retention.py), its evaluation; all cached in the data home
    # (base_answers.py), so only a base model's first run pays for them.
    set_seed(config.seed)
    dtype = config.base_dtype(bf16)
    replay_count = 0 if config.no_replay else config.replay if config.replay is not None else default_replay_count(n_user)
    progress.info(f"settings: {config.describe(replay_count)}")
    progress.info(f"loading {config.model}")
    with clock.phase("load"):
        loaded = load_model(config.model, models_dir=home.models, device=str(device), dtype=dtype,
                            trust_remote_code=config.trust_remote_code)
        model, tokenizer = loaded.model, loaded.tokenizer
        base_parameters = sum(p.numel() for p in model.parameters())
        cache = None
        # --choose-adapter-scale: the kept share of the LoRA update is chosen after training by the knowledge check
        # (interpolate.py, knowledge_check.py).
        choosing_scale = config.method == "lora" and config.choose_adapter_scale
        if replay_count or not config.no_eval or choosing_scale:
            cache = AnswerCache.of(model, tokenizer, home.root / CACHE_DIR, model_identity(loaded.source, dtype))

    def rethread(*_: Any) -> None:
        """Before a generating phase and after each of its batches: the thread count follows the machine's load."""
        if governor is not None:
            governor.recheck()

    replay: list[Conversation] = []
    if replay_count:
        replay = replay_phase(clock, progress, model, tokenizer, replay_count, cache, bf16=bf16, near=files.train,
                              sentences=config.replay_sentences, resume_dir=run_dir if config.resume else None,
                              rethread=rethread)
    check: KnowledgeCheck | None = None
    if choosing_scale:
        with clock.phase("check") as record:
            rethread()
            near = [" ".join(m["content"] for m in c.messages) for c in files.train]
            check = build_check(model, tokenizer, cache, bf16=bf16, near=near, progress=rethread)
            record.update(generated=cache.generated.get("check", 0), items=len(check.examples))
    baseline = None
    if not config.no_eval:
        with clock.phase("baseline") as record:
            rethread()
            progress.info("retention: the base model's answers to the held-out general prompts "
                          + ("come from the cache" if baseline_cached(cache, bf16=bf16) else
                             "(generated once, cached for its later runs)"))
            baseline = measure_baseline(model, tokenizer, cache, bf16=bf16, progress=rethread)
            record.update(generated=cache.generated.get("retention", 0), cached=baseline.cached)
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

    # -- the model to train
    attention = model.config._attn_implementation  # what the base model generated with, and the trained one will
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
        replayed = data.train.examples[data.replay_from :]
        with clock.phase("distill", tokens=sum(len(e) for e in replayed)):
            progress.info("replay: the base model's next-token distribution on the replayed answers (distillation)")
            targets = teacher_targets(model, replayed, collate, config.micro_batch, autocast)
        data.train.examples[data.replay_from :] = [
            dataclasses.replace(e, teacher=t) for e, t in zip(replayed, targets)
        ]
        outside_top_k = mass_outside_top_k(targets)
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
    loss_model = TokenLossModel(model, config.replay_weight)
    trained, optimizer, loader = accelerator.prepare(loss_model, optimizer, loader)

    # -- schedule: steps per epoch counts this process's share of the micro-batches
    steps_per_epoch, total_steps, scheduler = schedule(accelerator, optimizer, len(loader), config)
    step = resumed_step(accelerator, run_dir, config, progress)

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
        with clock.phase(f"eval_{stage}") as record:
            rethread()
            key = eval_key(data.val_conversations, config, bf16)
            known = cache.value("eval_before", **key) if stage == "before" else None
            progress.info(f"evaluating {stage} training" + (" (the base model's side: from the cache)" if known else ""))
            result = EvalResult.from_dict(known) if known else evaluate(
                model, tokenizer, val_batches, data.val_conversations, device=device,
                bf16=bf16, max_samples=config.eval_samples, max_new_tokens=config.max_new_tokens,
            )
            if stage == "before" and not known:
                cache.store("eval_before", dataclasses.asdict(result), **key)
            record.update(samples=len(result.samples), cached=bool(known))
        progress.emit("eval", stage=stage, step=step, samples=len(result.samples), **result.metrics())
        return result

    # The "before" numbers are kept in the run dir so a resumed run still reports them.
    before_path = run_dir / BEFORE_FILE
    before = None
    if eval_enabled:
        if before_path.exists():
            before = EvalResult.from_dict(json.loads(before_path.read_text()))
        else:
            before = run_eval("before")
            if accelerator.is_main_process:
                rundir.write_json_atomic(before_path, dataclasses.asdict(before))

    def val_loss() -> float:
        """Mean loss per assistant token on the validation split, as the model is now (0 without one)."""
        unwrapped = accelerator.unwrap_model(trained).model
        return validation_loss(unwrapped, val_batches(), device, bf16)[0] if data.val.examples else 0.0

    # -- the loop; with a validation split, early stopping keeps the best epoch (early_stop.py)
    # (--no-early-stop: the losses are still recorded, for the report)
    best = BestEpoch(trainable, val_loss, None if config.no_early_stop else PATIENCE) if data.val.examples else None
    loop = Loop(
        accelerator, trained, trainable, optimizer, scheduler, loader, sampler, autocast, config.grad_accum,
        steps_per_epoch, total_steps, config.save_every, run_dir, epoch_end=best.epoch_end if best else None,
    )
    # peft casts a LoRA layer's input to its fp32 weights and autocast casts it straight back to bf16: two copies of
    # the activations per layer. Without them a LoRA step took ~5% less CPU (bench/train.py's data, one thread).
    from peft.helpers import disable_input_dtype_casting

    round_trips = disable_input_dtype_casting(model, active=bf16 and config.method == "lora")
    with clock.phase("train", start_step=step) as record, round_trips:
        result = train(loop, step, progress=progress, stop=stop, governor=governor, started=started)
        record.update(steps=result.step - step, tokens=result.tokens)
    step = result.step
    if best is not None and best.losses:
        if not config.no_early_stop:
            best.restore()
        progress.info(f"early stopping: validation loss by epoch {', '.join(f'{v:.3f}' for v in best.losses)}; "
                      f"kept epoch {best.kept_epoch}")

    # -- how much of the LoRA update to keep (interpolate.py): chosen here, or as --adapter-scale says
    interpolation = None
    if config.method == "lora" and (config.adapter_scale != 1 or choosing_scale):
        unwrapped = accelerator.unwrap_model(trained).model

        def check_kept() -> int:
            rethread()  # a forward pass per candidate: the thread count follows the machine's load
            return check.passed(unwrapped)

        with clock.phase("interpolate"):
            interpolation = interpolate(unwrapped, None if choosing_scale else config.adapter_scale, val_loss,
                                        check_kept if check else None)
        if interpolation.points:
            progress.info(interpolation.describe())

    # -- evaluate, save (the model loads from then on: COMPLETE), then retention, then the report
    after = None
    with generating(accelerator.unwrap_model(trained).model, attention):
        if eval_enabled:
            after = run_eval("after")
    with clock.phase("save"):
        trained_model = save_model(accelerator, trained, tokenizer, run_dir, config, loaded.source, home.models)
    if accelerator.is_main_process:
        # Retention takes a while on a CPU; the model need not wait for it (the run ends at the done event).
        rundir.mark_complete(run_dir, {"steps": step, "base_model": loaded.name})
        progress.emit("ready", run_dir=str(run_dir))
    retention, retention_warning = retention_after(trained_model, tokenizer, baseline, attention=attention,
                                                   run_dir=run_dir, bf16=bf16, clock=clock, progress=progress,
                                                   rethread=rethread)
    if accelerator.is_main_process:
        metrics = {
            "base_model": loaded.name,
            "base_parameters": base_parameters,
            "method": config.method,
            "steps": step,
            "epochs": step / steps_per_epoch,
            "precision": "bf16 autocast" if bf16 else "fp32",
            "device": str(device),
            "processes": accelerator.num_processes,
            # The count most steps ran with (it follows the machine's load unless --threads fixed it).
            "threads": (governor.most_used() if governor else config.threads) if device.type == "cpu" else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_time_s": result.seconds,
            "tokens_per_s": result.tokens / result.seconds if result.seconds else 0.0,
            "train_cpu_s": result.cpu_s,
            "final_train_loss": result.last_loss,
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
            "replay": {"conversations": len(replay), "prepare_s": round(clock.seconds("replay") + clock.seconds("distill"), 1),
                       "loss": config.replay_loss, "weight": config.replay_weight,
                       # The base model's mean probability outside the TOP_K tokens distillation keeps.
                       "outside_top_k": outside_top_k},
            "early_stop": {"val_losses": best.losses, "best_epoch": best.best_epoch, "kept_epoch": best.kept_epoch}
            if best else None,
            "adapter_scale": (interpolation or Interpolation(1.0)).metrics(),
            "replay_tokens_each": sum(lengths[data.replay_from :]) / len(replay) if replay else None,
            "retention": {**retention.metrics(), "warning": retention_warning} if retention else None,
            "startup_s": startup_s,
            "phases": clock.phases,
        }
        write_run_report(run_dir, metrics, before, after, retention, retention_warning)
        finish(run_dir, home, metrics, progress, started)
    accelerator.wait_for_everyone()
    return run_dir
