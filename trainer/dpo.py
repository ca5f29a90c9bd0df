"""Preference training (DPO) on chosen / rejected pairs, one run end to end: pairs -> base model (and the reference
log-probabilities, once) -> model to train -> loop (loop.py) -> evaluate -> save (save.py) -> report. Reads top to
bottom, as sft.py does, and shares its pieces: the signal handling, the resume check, replay (replay.py, learned by
distillation from the base model with LoRA: distill.py), the loop, saving, the retention check and the run dir. The
loss is preference_loss.py's.

The before/after measure is on held-out pairs: the share whose implicit reward margin is positive (0 before
training, where the model is its reference), the mean margin, and the share the model itself ranks the right way
round (chosen reply more likely than the rejected one), plus greedy replies to a few held-out prompts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from . import rundir
from .base_answers import CACHE_DIR, AnswerCache, model_identity
from .batching import Collator, padding_efficiency
from .config import replay_sentences_for, validate
from .cpu_threads import ThreadGovernor
from .data import Conversation, DataError, read_jsonl
from .distill import mass_outside_top_k, teacher_targets
from .dpo_config import DPOConfig, default_dpo_replay, validate_dpo
from .evaluate import generate_replies
from .home import DataHome
from .loop import Loop, train
from .pairs import Pair, PairFile, RenderedPairs, read_pairs, render_pairs, split_pairs
from .preference_loss import (
    PairCollator, PreferenceLossModel, evaluate_pairs, one_batch, pair_batches, reference_logps,
)
from .mixed_batches import KindGroupedBatches, MixedCollator, Replayed
from .progress import ProgressReporter
from .render import RenderedSet, render_conversations
from .replay import REPLAY_FILE, replay_phase, write_conversations
from .retention import measure_baseline
from .save import generating, save_model
from .run_steps import BEFORE_FILE, SettingsError, check_resume, finish, resumed_step, retention_after, schedule
from .sft import (
    EAGER_MAX_TOKENS,
    default_run_dir,
    make_accelerator,
    read_inputs,
    run_guarded,
)
from .timings import PhaseClock, process_age_s
from .dpo_report import write_preference_report


@dataclass
class PairFiles:
    """The validated pairs of every input file, split, before rendering."""

    train: list[Pair]
    val: list[Pair]
    conversations: list[Conversation]  # --sft-data: learned by cross-entropy alongside (all of them train)
    skipped_invalid: int
    sha256: str  # of every input file, in order: --resume refuses a run whose data changed


def read_pair_files(config: DPOConfig) -> PairFiles:
    """Read and validate every pair file (split train / validation) and every ``--sft-data`` file, before any model
    is loaded."""
    def pairs(path: str) -> tuple[list[Pair], PairFile]:
        file = read_pairs(path, skip_invalid=config.skip_invalid)
        return file.pairs, file

    files = read_inputs(config, pairs, split_pairs)
    conversations: list[Conversation] = []
    for path in config.sft_data:
        sft = read_jsonl(path, skip_invalid=config.skip_invalid)
        conversations += files.add((sft.conversations, sft))
    return PairFiles(files.train, files.val, conversations, files.skipped_invalid, files.digest.hexdigest())


def near_conversations(files: PairFiles) -> list[Conversation]:
    """What the run teaches, as conversations: half the replay is chosen near their topics (replay.replay_order)."""
    return files.conversations + [p.taught() for p in files.train]


def run_dpo(config: DPOConfig, progress: ProgressReporter) -> Path:
    """Train as ``config`` says and return the finished run dir. Raises DataError, ModelError, SettingsError,
    RunDirError for problems the user can fix, and TrainingStopped after a signal (with a checkpoint saved)."""
    try:
        validate(config)
        validate_dpo(config)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return run_guarded(config, lambda stop, governor: _run(config, progress, stop, governor))


def _run(
    config: DPOConfig, progress: ProgressReporter, stop: dict[str, str], governor: ThreadGovernor | None
) -> Path:
    from .models import load_model

    home = DataHome.locate(config.home)
    started, startup_s = time.time(), process_age_s()
    clock = PhaseClock(progress)
    files = read_pair_files(config)  # bad data fails here, before a model is loaded

    accelerator = make_accelerator()
    progress.enabled = progress.enabled and accelerator.is_main_process
    device = accelerator.device
    automatic = [name for name in ("epochs", "lr") if getattr(config, name) is None]
    n_user = len(files.train) + len(files.conversations)  # examples of either kind: each is one step's share
    config = config.resolved(device, n_user)
    try:
        validate(config)  # again: the automatic method may not fit a setting the user chose (--replay-loss kl)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if automatic:
        progress.info(f"schedule: {len(files.train)} pairs, {len(files.conversations)} conversations: {config.epochs:g} epochs at lr {config.lr:g} "
                      f"(chosen by dataset size and method: {', '.join(automatic)}; set --epochs / --lr to override)")
    bf16 = config.bf16(device)
    run_dir = Path(config.out).expanduser() if config.out else default_run_dir(home, config.model, "dpo")
    if accelerator.is_main_process:
        rundir.check(run_dir, resume=config.resume)
        if config.resume:
            check_resume(run_dir, config, files.sha256)

    # -- the base model and its side of the before/after measures: the replay mixed into training and the answers
    # retention is measured against (both cached in the data home, as for SFT)
    set_seed(config.seed)
    replay_count = (0 if config.no_replay else config.replay if config.replay is not None
                    else default_dpo_replay(len(files.conversations)))
    progress.info(f"settings: {config.method}, lr {config.lr:g}, beta {config.beta:g}, {config.epochs:g} epochs, "
                  + (f"{replay_count} replayed ({config.replay_loss}, weight {config.replay_weight:g})"
                     if replay_count else "no replay"))
    progress.info(f"loading {config.model}")
    with clock.phase("load"):
        loaded = load_model(config.model, models_dir=home.models, device=str(device),
                            dtype=config.base_dtype(bf16), trust_remote_code=config.trust_remote_code)
        model, tokenizer = loaded.model, loaded.tokenizer
        base_parameters = sum(p.numel() for p in model.parameters())
        cache = None
        if replay_count or not config.no_eval:
            cache = AnswerCache.of(model, tokenizer, home.root / CACHE_DIR,
                                   model_identity(loaded.source, config.base_dtype(bf16)))

    def rethread(*_: Any) -> None:
        """Before a generating phase and after each of its batches: the thread count follows the machine's load."""
        if governor is not None:
            governor.recheck()

    replay: list[Conversation] = []
    if replay_count:
        replay = replay_phase(clock, progress, model, tokenizer, replay_count, cache, bf16=bf16,
                              near=near_conversations(files),
                              sentences=replay_sentences_for(config.replay_loss),
                              resume_dir=run_dir if config.resume else None,
                              rethread=rethread)
    baseline = None
    if not config.no_eval:
        with clock.phase("baseline") as record:
            rethread()
            progress.info("retention: the base model's answers to the held-out general prompts")
            baseline = measure_baseline(model, tokenizer, cache, bf16=bf16, progress=rethread)
            record.update(generated=cache.generated.get("retention", 0), cached=baseline.cached)
    train_set = render_pairs(tokenizer, files.train, config.max_length)
    val_set = render_pairs(tokenizer, files.val, config.max_length)
    conversations = render_conversations(tokenizer, files.conversations, config.max_length)
    replayed = render_conversations(tokenizer, replay, config.max_length)
    if not train_set.pairs:
        raise DataError(f"{config.data}: no pair fits in --max-length {config.max_length} tokens; raise --max-length")
    if accelerator.is_main_process:
        if not config.resume:
            home.ensure()
            rundir.create(run_dir)
            rundir.write_json_atomic(
                run_dir / rundir.TRAIN_CONFIG,
                {"config": dataclasses.asdict(config), "model": config.model, "dataset_sha256": files.sha256,
                 "objective": "dpo"},
            )
            if replay:
                write_conversations(run_dir / REPLAY_FILE, [{"messages": c.as_messages()} for c in replay])
        progress.log_to(run_dir / rundir.PROGRESS_LOG)
    accelerator.wait_for_everyone()
    for count, what in ((files.skipped_invalid, "invalid lines skipped"),
                        (train_set.dropped + val_set.dropped, f"pairs dropped: a side over --max-length "
                                                             f"{config.max_length} or hidden by the template"),
                        (conversations.truncated, f"conversations cut to --max-length {config.max_length}"),
                        (conversations.dropped_too_long + conversations.dropped_unrenderable,
                         "conversations dropped: too long or hidden by the template")):
        if count:
            progress.info(f"{count} {what}")

    # -- the model to train, and the reference's log-probabilities (the base model's: computed once)
    attention = model.config._attn_implementation
    longest = max(len(p) for p in [*train_set.pairs, *conversations.examples, *replayed.examples])
    if device.type == "cpu" and longest <= EAGER_MAX_TOKENS:
        model.set_attn_implementation("eager")  # why: sft.py
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = "all-linear" if config.lora_targets == "all-linear" else config.lora_targets.split(",")
        model = get_peft_model(model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=targets, task_type="CAUSAL_LM",
        ))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    collate = PairCollator(tokenizer.pad_token_id)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    with clock.phase("reference", pairs=len(train_set.pairs) + len(val_set.pairs),
                     tokens=train_set.n_tokens + val_set.n_tokens):
        progress.info("reference: the base model's log-probabilities of every reply (once; they never change)")
        train_pairs = reference_logps(model, train_set.pairs, collate, config.micro_batch, autocast)
        val_pairs = reference_logps(model, val_set.pairs, collate, config.micro_batch, autocast)
    outside_top_k = None
    if config.replay_loss == "kl" and replayed.examples:
        # The base model's distribution on the replay, once, as SFT does (distill.py): the same adapter-off pass
        # as the pairs' reference.
        with clock.phase("distill", tokens=replayed.n_tokens):
            progress.info("replay: the base model's next-token distribution on the replayed answers (distillation)")
            targets = teacher_targets(model, replayed.examples, Collator(tokenizer.pad_token_id), config.micro_batch,
                                      autocast)
        replayed.examples[:] = [dataclasses.replace(e, teacher=t) for e, t in zip(replayed.examples, targets)]
        outside_top_k = mass_outside_top_k(targets)

    # Pairs, the user's conversations and the replay, each kind batched apart: mixed_batches.py.
    kinds: list[list[Any]] = [train_pairs, conversations.examples, [Replayed(e) for e in replayed.examples]]
    items = [item for kind in kinds for item in kind]
    lengths = [len(item) for item in items]
    sampler = KindGroupedBatches([[len(item) for item in kind] for kind in kinds], config.micro_batch, config.seed)
    loader = torch.utils.data.DataLoader(
        items, batch_sampler=sampler, collate_fn=MixedCollator(tokenizer.pad_token_id, config.replay_weight),
        generator=torch.Generator().manual_seed(config.seed),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    trained, optimizer, loader = accelerator.prepare(PreferenceLossModel(model, config.beta), optimizer, loader)
    steps_per_epoch, total_steps, scheduler = schedule(accelerator, optimizer, len(loader), config)
    step = resumed_step(accelerator, run_dir, config, progress)

    real_fraction = padding_efficiency(lengths, sampler.batches())
    progress.emit(
        "start", run_dir=str(run_dir), model=loaded.name, method=config.method, objective="dpo",
        device=str(device), dtype="bf16 autocast" if bf16 else "fp32", total_steps=total_steps, start_step=step,
        epochs=total_steps / steps_per_epoch, train_conversations=len(train_pairs),
        val_conversations=len(val_pairs), train_pairs=len(train_pairs), val_pairs=len(val_pairs),
        sft_conversations=len(conversations.examples), replay_conversations=len(replayed.examples),
        train_tokens=train_set.n_tokens + conversations.n_tokens + replayed.n_tokens,
        assistant_tokens=train_set.n_reply_tokens + conversations.n_assistant_tokens + replayed.n_assistant_tokens,
        real_token_fraction=round(real_fraction, 4), beta=config.beta,
    )
    eval_enabled = not config.no_eval and bool(val_pairs)
    val_batches = pair_batches(val_pairs, config.micro_batch, collate)
    prompts = [[dict(m) for m in p.pair.prompt] for p in val_pairs[: config.eval_samples]]

    def run_eval(stage: str) -> dict[str, Any]:
        with clock.phase(f"eval_{stage}", samples=len(prompts)):
            progress.info(f"evaluating {stage} training: the held-out pairs")
            unwrapped = accelerator.unwrap_model(trained).model
            result = evaluate_pairs(unwrapped, val_batches(), config.beta, autocast)
            replies = generate_replies(unwrapped, tokenizer, prompts, device=device, bf16=bf16,
                                       max_new_tokens=config.max_new_tokens)
        # val_loss: the held-out DPO loss, under the name the loss plot and the chat's monitor read.
        progress.emit("eval", stage=stage, step=step, val_loss=result.dpo_loss, **result.metrics())
        return {**result.metrics(), "replies": replies}

    before_path = run_dir / BEFORE_FILE
    before = None
    if eval_enabled:
        if before_path.exists():
            before = json.loads(before_path.read_text())
        else:
            before = run_eval("before")
            if accelerator.is_main_process:
                rundir.write_json_atomic(before_path, before)

    # -- the loop (loop.py); each micro-batch's loss is its own mean (preference_loss.py says why)
    loop = Loop(
        accelerator, trained, trainable, optimizer, scheduler, loader, sampler, autocast, config.grad_accum,
        steps_per_epoch, total_steps, config.save_every, run_dir, units=one_batch,
    )
    with clock.phase("train", start_step=step) as record:
        result = train(loop, step, progress=progress, stop=stop, governor=governor, started=started)
        record.update(steps=result.step - step, tokens=result.tokens)
    step = result.step

    # -- evaluate, save (the model loads from then on: COMPLETE), then retention, then the report
    after = None
    if eval_enabled:
        with generating(accelerator.unwrap_model(trained).model, attention):
            after = run_eval("after")
    with clock.phase("save"):
        trained_model = save_model(accelerator, trained, tokenizer, run_dir, config, loaded.source, home.models)
    if accelerator.is_main_process:
        rundir.mark_complete(run_dir, {"steps": step, "base_model": loaded.name})
        progress.emit("ready", run_dir=str(run_dir))
    retention, retention_warning = retention_after(trained_model, tokenizer, baseline, attention=attention,
                                                   run_dir=run_dir, bf16=bf16, clock=clock, progress=progress,
                                                   rethread=rethread)
    if accelerator.is_main_process:
        metrics = {
            "base_model": loaded.name, "base_parameters": base_parameters, "objective": "dpo",
            "method": config.method, "beta": config.beta, "steps": step, "epochs": step / steps_per_epoch,
            "precision": "bf16 autocast" if bf16 else "fp32", "device": str(device),
            "processes": accelerator.num_processes,
            "threads": (governor.most_used() if governor else config.threads) if device.type == "cpu" else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_time_s": result.seconds,
            "tokens_per_s": result.tokens / result.seconds if result.seconds else 0.0,
            "train_cpu_s": result.cpu_s,
            "final_train_loss": result.last_loss,
            "data": _data_counts(train_set, val_set, conversations, files, real_fraction),
            "replay": {"conversations": len(replayed.examples),
                       "prepare_s": round(clock.seconds("replay") + clock.seconds("distill"), 1),
                       "loss": config.replay_loss, "weight": config.replay_weight, "outside_top_k": outside_top_k},
            "replay_tokens_each": replayed.n_tokens / len(replayed.examples) if replayed.examples else None,
            "before": _numbers(before), "after": _numbers(after),
            "schedule": {"epochs": config.epochs, "lr": config.lr, "automatic": automatic,
                         "user_pairs": len(files.train), "user_conversations": len(files.conversations)},
            "retention": {**retention.metrics(), "warning": retention_warning} if retention else None,
            "startup_s": startup_s,
            "phases": clock.phases,
        }
        write_preference_report(run_dir, metrics, before, after, prompts, retention, retention_warning)
        finish(run_dir, home, metrics, progress, started)
    accelerator.wait_for_everyone()
    return run_dir


def _numbers(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in evaluation.items() if k != "replies"} if evaluation else None


def _data_counts(
    train: RenderedPairs, val: RenderedPairs, conversations: RenderedSet, files: PairFiles, real_fraction: float
) -> dict[str, Any]:
    return {
        "train_pairs": len(train.pairs), "val_pairs": len(val.pairs), "sft_conversations": len(conversations.examples),
        "train_tokens": train.n_tokens + conversations.n_tokens,
        "reply_tokens": train.n_reply_tokens + conversations.n_assistant_tokens,
        "skipped_invalid": files.skipped_invalid,
        "dropped": train.dropped + val.dropped, "real_token_fraction": real_fraction, "dataset_sha256": files.sha256,
    }

