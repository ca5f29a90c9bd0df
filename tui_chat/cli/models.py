"""`tui-chat models`: the models the chat can load (the bundled one, trained runs, other local models),
`tui-chat models show NAME`: a model's lineage both ways (the conversations a run learned from, the replies it wrote),
and `tui-chat models delete NAME`: a run's model folder gone, its record kept.

Runs that went on while no app watched are brought up to date first (``reconcile_runs``), so the statuses are current.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

from sessions import NotFound, Store, TrainingRun, counted, minute_text, one_line
from trainer.model_names import list_local_models

from tui_chat.training.errors import TrainingError
from tui_chat.training.monitor import is_active, reconcile_runs
from tui_chat.training.run_folder import delete_run, run_to_delete
from tui_chat.training.summary import finish_summary, metrics_text, progress_text, win_rate_of, win_rate_text

if TYPE_CHECKING:
    from tui_chat.cli.context import CliContext


@click.group("models", invoke_without_command=True)
@click.pass_context
def models_group(ctx: click.Context) -> None:
    """List the models the chat can load, with each trained run's status and results (alone: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@models_group.command("list")
@click.pass_obj
def list_command(obj: CliContext) -> None:
    """The bundled model, every training run (with its status and validation results) and other local models."""

    store, home = obj.store, obj.home
    progress = {monitor.run.id: monitor for monitor in reconcile_runs(store) if not monitor.ended}
    runs = store.list_training_runs()
    local = {model.name: model for model in list_local_models(home.models)}
    console = Console(highlight=False)
    # One line a model (name first: what `--model` takes), its result indented below: readable at any width
    # and in a pipe, where a table would cut the names.
    bundled = next(model for model in local.values() if model.kind == "bundled")
    status = "ready" if bundled.ready else "converted on first use"
    console.print(Text.assemble((bundled.name, "bold"), f"  bundled  {status}  SmolLM2-135M-Instruct (`default`)"))
    for run in runs:
        if run.status == "deleted":
            continue  # no model to load; `tui-chat models show NAME` still has its lineage
        if run.id in progress:
            result = progress_text(progress[run.id].progress)
        elif run.status == "failed":
            result = run.error or ""
        else:
            result = metrics_text(run.metrics)
        status = "stopping" if run.status == "cancelled" and is_active(run) else run.status
        console.print(Text.assemble((run.name, "bold"), f"  run  {status}  from {run.base_model}  "
                                    f"{minute_text(run.created_at)}"))
        if result:
            console.print(Text(f"    {result}", style="dim"))
    recorded = {run.name for run in runs}
    for model in local.values():
        if model.kind != "bundled" and model.name not in recorded:
            console.print(Text.assemble((model.name, "bold"), f"  {model.kind}  ready  ", (str(model.path), "dim")))
    console.print(Text("`tui-chat models show NAME` shows a model's lineage; `tui-chat --model NAME` chats with it; "
                       "`tui-chat models delete NAME` frees its disk", style="dim"))


def _show_run(console: Console, store: Store, run: TrainingRun, limit: int) -> None:
    win = win_rate_of(store, run)
    console.print(Text(finish_summary(run, win) if not is_active(run) else f"{run.name} is {run.status}", style="bold"))
    params = run.params
    details = [
        ("base model", run.base_model or ""),
        ("created", minute_text(run.created_at)),
        ("finished", minute_text(run.finished_at)),
        ("method", f"{params.get('method', '')}, {params.get('total_steps', '?')} steps, lr {params.get('lr', '?')}"),
        ("dataset", f"{run.dataset_path} (sha256 {run.dataset_sha256})"),
        ("model folder", run.output_dir or ""),
        ("log", run.log_path or ""),
        ("vs its base", (win and win_rate_text(win)) or f"not compared yet: in the chat on {run.base_model}, "
                        f"/compare {run.name} --blind and pick the better answer"),
    ]
    for label, value in details:
        console.print(Text.assemble((f"{label:>13}: ", "dim"), value))
    ids = run.conversation_ids
    console.print(Text(f"\nTrained on {counted(len(ids), 'conversation')}:", style="bold"))
    for conversation_id in ids[:limit]:
        try:
            conversation = store.get_conversation(conversation_id)
        except NotFound:
            conversation = None
        # SQLite hands a deleted newest conversation's id to the next one: a conversation younger than the run is
        # not the one it learned from.
        gone = conversation is None or conversation.created_at > run.created_at
        title = "(deleted since)" if gone else conversation.title
        console.print(Text(f"  #{conversation_id}  {title}"))
    if len(ids) > limit:
        console.print(Text(f"  … {len(ids) - limit} more (--limit to see them)", style="dim"))


@models_group.command("show")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="Items per list.")
@click.pass_obj
def show_command(obj: CliContext, name: str, limit: int) -> None:
    """NAME's lineage: for a training run, its settings, results and the conversations it was trained on; for any
    model, the runs trained from it and the replies it wrote (conversation ids, for `tui-chat sessions show`)."""
    store = obj.store
    reconcile_runs(store)
    runs = store.list_training_runs()
    run = next((r for r in runs if r.name == name), None)
    replies = store.messages_by_model(name, limit=limit)
    children = [r for r in runs if r.base_model == name]
    if run is None and not replies and not children:
        raise click.ClickException(f"no run or model called {name!r} has trained or replied; `tui-chat models` "
                                   "lists them")
    console = Console(highlight=False)
    if run is not None:
        _show_run(console, store, run, limit)
    if children:
        console.print(Text(f"\nRuns trained from {name}:", style="bold"))
        for child in children:
            console.print(Text(f"  {child.name}  {child.status}  {minute_text(child.created_at)}"))
    console.print(Text(f"\nReplies written by {name}" + (f" (newest {limit})" if len(replies) == limit else "") + ":",
                       style="bold"))
    if not replies:
        console.print(Text(f"  none yet: chat with it with `tui-chat --model {name}` or /model {name}", style="dim"))
    for reply in replies:
        console.print(Text(f"  #{reply.conversation_id}  {minute_text(reply.created_at)}  {one_line(reply.content, 72)}"))


@models_group.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking first.")
@click.pass_obj
def delete_command(obj: CliContext, name: str, yes: bool) -> None:
    """Delete NAME's model folder to free its disk: a trained run (its record stays, so `tui-chat models show NAME`
    still gives its lineage) or another model in the models folder. Asks first; refuses a run that is training."""
    store, home = obj.store, obj.home
    reconcile_runs(store)  # a run whose trainer died still says running until someone looks
    try:
        target = run_to_delete(store, home, name)
        if target.path is not None and not yes:
            click.confirm(f"Delete {target.path} ({target.size_text})?", abort=True)
        delete_run(store, target)
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from exc
    freed = f"{target.size_text} freed" if target.path is not None else "its folder was already gone"
    lineage = "; its lineage stays in `tui-chat models show`" if target.run is not None else ""
    click.echo(f"deleted {name}: {freed}{lineage}")
