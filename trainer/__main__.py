"""``python -m trainer sft ...`` (fine-tune), ``python -m trainer dpo ...`` (preference-train on chosen / rejected
pairs) and ``python -m trainer eval ...`` (score a model on conversations).

Exit status: 0 done, 1 an error the user can fix (one line, also an ``error`` event), 130 stopped by a signal with
a checkpoint saved (``--resume`` continues). Multi-GPU: ``accelerate launch -m trainer sft ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
from typing import Sequence

from .config import SFTConfig, add_config_options
from .dpo_config import NOT_FOR_DPO, DPOConfig
from .data import DataError
from .home import DataHome
from .models import ModelError
from .progress import MODES, ProgressReporter
from .rundir import RunDirError
from .loop import TrainingStopped
from .sft import SettingsError, run_sft

USER_ERRORS = (DataError, ModelError, SettingsError, RunDirError)


def build_parser(sft_prog: str | None = None) -> argparse.ArgumentParser:
    """The `python -m trainer` parser; ``sft_prog`` renames the sft command in its usage line (`tui-chat train`)."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Fine-tune and evaluate chat models.")
    commands = parser.add_subparsers(dest="command", required=True)
    sft = commands.add_parser(
        "sft", help="fine-tune a model on `messages` JSONL", description="Fine-tune a model on `messages` JSONL.",
        **({"prog": sft_prog} if sft_prog else {}),
    )
    add_config_options(sft)
    dpo = commands.add_parser(
        "dpo", help="preference-train a model on chosen / rejected pairs (DPO)",
        description="Preference-train a model on {prompt, chosen, rejected} JSONL with DPO's sigmoid loss; the "
        "reference is the base model (with LoRA: the model with its adapter off).",
    )
    add_config_options(dpo, skip=NOT_FOR_DPO, config_class=DPOConfig)
    ev = commands.add_parser(
        "eval",
        help="score a model on conversations and/or recall probes",
        description="Validation loss, perplexity, BLEU and ROUGE-L on conversations (--data); what the model "
        "learned, asked in new words (--probes: JSONL of {\"question\": ..., \"expect\": [...]}).",
    )
    ev.add_argument("--data", help="conversations to score: `messages` JSONL")
    ev.add_argument(
        "--probes", help='recall probes: JSONL, {"question": ..., "expect": [answers]} or {"question", "reference"}'
    )
    ev.add_argument("--model", default="default", help="model spec: default, a run name, a path, a Hub id")
    ev.add_argument("--home", help="data home (default: TUI_CHAT_HOME or the user dir)")
    ev.add_argument("--max-length", type=int, default=1024, help="tokens per conversation")
    ev.add_argument("--micro-batch", type=int, default=4, help="conversations per forward pass")
    ev.add_argument("--samples", type=int, default=8, help="conversations answered for BLEU / ROUGE-L")
    ev.add_argument("--max-new-tokens", type=int, default=64, help="tokens per reply")
    ev.add_argument("--skip-invalid", action="store_true", help="drop invalid lines instead of stopping")
    ev.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="autocast precision")
    ev.add_argument("--trust-remote-code", action="store_true", help="allow a Hub model's own code to run")
    ev.add_argument("--progress", default="bar", choices=MODES, help="bar (for people), json or none")
    return parser


def _eval_command(args: argparse.Namespace, progress: ProgressReporter) -> None:
    from .evaluate import evaluate_dataset
    from .recall import evaluate_probe_file

    if not args.data and not args.probes:
        raise SettingsError("nothing to evaluate: pass --data (conversations), --probes (recall probes) or both")
    if args.probes:
        progress.info(f"asking {args.model} the probes in {args.probes}")
        recall = evaluate_probe_file(
            args.model, args.probes, models_dir=DataHome.locate(args.home).models, precision=args.precision,
            max_new_tokens=args.max_new_tokens, trust_remote_code=args.trust_remote_code,
        )
        progress.emit("recall", **recall.metrics())
        for result in recall.results:
            progress.info(f"{'recalled' if result.passed else 'missed  '} {result.question} -> {result.reply}")
        progress.info(f"recall: {recall.recalled} of {len(recall.results)} probes ({recall.recall:.0%})")
    if not args.data:
        return
    progress.info(f"evaluating {args.model} on {args.data}")
    result = evaluate_dataset(
        args.model, args.data, models_dir=DataHome.locate(args.home).models, max_length=args.max_length,
        micro_batch=args.micro_batch, max_samples=args.samples, max_new_tokens=args.max_new_tokens,
        skip_invalid=args.skip_invalid, precision=args.precision, trust_remote_code=args.trust_remote_code,
    )
    progress.emit("eval", stage="eval", samples=len(result.samples), **result.metrics())
    for sample in result.samples:
        progress.info(f"> {sample.prompt}\n  reference: {sample.reference}\n  reply:     {sample.reply}")


def _user_error(progress: ProgressReporter, message: str) -> int:
    """Report a problem the user can fix in one line (the JSON stream's error event, else stderr); the exit status."""
    progress.emit("error", message=message)
    if progress.mode != "json":
        print(f"error: {message}", file=sys.stderr)
    return 1


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the disk running out of space: an OSError with ENOSPC, or a library's
    own error that only carries the system's message (safetensors' SafetensorError does)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if os.strerror(errno.ENOSPC) in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run a command; returns the exit status. ``prog`` names the sft command in help (`tui-chat train`)."""
    args = build_parser(prog).parse_args(argv)
    progress = ProgressReporter(args.progress)
    try:
        if args.command == "sft":
            config = SFTConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SFTConfig)})
            run_sft(config, progress)
        elif args.command == "dpo":
            from .dpo import run_dpo

            names = [f.name for f in dataclasses.fields(DPOConfig) if f.name not in NOT_FOR_DPO]
            run_dpo(DPOConfig(**{name: getattr(args, name) for name in names}), progress)
        else:
            _eval_command(args, progress)
    except USER_ERRORS as exc:
        return _user_error(progress, str(exc))
    except TrainingStopped as exc:
        if progress.mode != "json":
            print(str(exc), file=sys.stderr)
        return 130
    except Exception as exc:
        if _disk_full(exc):  # a user's problem, not ours: one line, no traceback
            return _user_error(progress, "no space left on the disk: free some space and run the training again (a "
                               "run cut short has no COMPLETE marker and is never loaded as a model)")
        # Internal errors are not swallowed: the app still gets its error line, then the traceback follows.
        progress.emit("error", message=f"internal error: {type(exc).__name__}: {exc}")
        raise
    finally:
        progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
