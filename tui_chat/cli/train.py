"""`tui-chat train`: the bundled trainer (`python -m trainer sft`, or `dpo` with `tui-chat train dpo`) with the same
options, run in this process."""

from __future__ import annotations

import click

from tui_chat.cli.context import CliContext, pass_context


@click.command(
    "train",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,  # --help goes to the trainer, which lists every option
)
@click.argument("trainer_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
def train_command(ctx: CliContext, trainer_args: tuple[str, ...]) -> None:
    """Fine-tune a model on exported conversations (`tui-chat train --help` lists the options).

    Example: tui-chat export --out chats.jsonl && tui-chat train --data chats.jsonl --epochs 3.
    Preference pairs: tui-chat export --format preference --out pairs.jsonl && tui-chat train dpo --data pairs.jsonl
    """
    from trainer.__main__ import main as trainer_main  # torch and transformers load only when training

    args = list(trainer_args)
    if not any(a == "--home" or a.startswith("--home=") for a in args):
        args += ["--home", str(ctx.home.root)]
    command = args if args[:1] == ["dpo"] else ["sft", *args]
    status = trainer_main(command, prog="tui-chat train")
    if status:
        raise SystemExit(status)
