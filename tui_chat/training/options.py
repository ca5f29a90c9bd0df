"""`/train` options: the chat's own (``--base``, ``--yes``) plus the trainer's, checked by the trainer's own parser.

The trainer's options come from ``trainer.config.add_config_options``, so `/train --lora-r 8` is validated (name,
type, settings that cannot work) before anything is exported or launched, and a new trainer option works in the chat
without a change here. The chat sets the data, output, home and progress options itself.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from trainer.config import SFTConfig, add_config_options, validate
from trainer.dpo_config import DPOConfig, validate_dpo

from tui_chat.training.errors import TrainingError

# Trainer options the chat fills in itself: the snapshot it exports, the run dir it names, the data home, JSON progress.
SET_BY_CHAT = frozenset({"data", "model", "out", "home", "progress", "resume", "val", "skip_invalid"})
HELP_FLAGS = ("-h", "--help")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit the whole app
        raise TrainingError(f"/train: {message}; /train --help lists the options")


@dataclass(frozen=True)
class TrainOptions:
    """What `/train` was asked for. ``config`` holds every trainer setting (its ``data`` is not known yet);
    ``trainer_args`` are the trainer options that differ from the defaults, as they go on the command line."""

    base: str | None  # None: the chat's current model
    yes: bool  # start without asking
    config: SFTConfig
    trainer_args: tuple[str, ...]
    beta: float | None = None  # DPO's, used when the store has preference pairs; None: the measured default


def _parser() -> _Parser:
    parser = _Parser(
        prog="/train",
        description="Fine-tune a model on your conversations, in the background; the chat keeps working.",
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("--base", metavar="SPEC", help="model to fine-tune (default: the chat's current model)")
    parser.add_argument("--yes", "-y", action="store_true", help="start without asking (scripts and tests)")
    add_config_options(parser, skip=SET_BY_CHAT)
    parser.add_argument("--beta", type=float, default=None,
                        help="DPO beta for the preference pairs, when there are any (the default is measured: trainer/dpo_config.py)")
    return parser


def wants_help(argv: Sequence[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def train_help() -> str:
    """The `/train --help` text: every option with its help."""
    return _parser().format_help()


def _as_arguments(config: SFTConfig) -> tuple[str, ...]:
    """The trainer options whose value differs from the default, in command-line form."""
    args: list[str] = []
    defaults = SFTConfig(data="")
    for field in dataclasses.fields(SFTConfig):
        value = getattr(config, field.name)
        if field.name in SET_BY_CHAT or value == getattr(defaults, field.name):
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag)
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return tuple(args)


def parse_train_options(argv: Sequence[str]) -> TrainOptions:
    """Parse `/train` arguments; TrainingError (one line) for an unknown option, a bad value or settings that cannot
    work together."""
    namespace = _parser().parse_args(list(argv))
    values = vars(namespace)
    config = SFTConfig(
        data="", **{f.name: values[f.name] for f in dataclasses.fields(SFTConfig) if f.name not in SET_BY_CHAT}
    )
    try:
        validate(config)
        validate_dpo(DPOConfig(data="", beta=values["beta"]))
    except ValueError as exc:
        raise TrainingError(f"/train: {exc}") from None
    base = values["base"].strip() if values["base"] else None
    return TrainOptions(base=base or None, yes=values["yes"], config=config, trainer_args=_as_arguments(config),
                        beta=values["beta"])


def without_options(args: Sequence[str], names: frozenset[str] | set[str]) -> list[str]:
    """``args`` (trainer options as given) without the options in ``names`` (``--flag`` form) and their values."""
    kept: list[str] = []
    skipping = False
    for arg in args:
        if arg.startswith("--"):
            skipping = arg in names
        if not skipping:
            kept.append(arg)
    return kept
