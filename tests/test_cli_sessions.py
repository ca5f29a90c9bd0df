"""`tui-chat sessions|export|import|backup` through click's CliRunner, and help text for every command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sessions import Store, memory_database
from trainer.home import DataHome
from tui_chat.cli import CliContext, main
from tui_chat.chat.commands import CommandError
from tui_chat.chat.export import run_export


@pytest.fixture
def home(tmp_path: Path) -> DataHome:
    return DataHome(tmp_path / "home")


@pytest.fixture
def store() -> Store:
    return Store(memory_database())


@pytest.fixture
def invoke(home: DataHome, store: Store):
    def run(*args: str, input: str | None = None):
        return CliRunner().invoke(main, list(args), obj=CliContext(home, _store=store), input=input)

    return run


def chat(store: Store, title: str, *turns: str) -> int:
    conversation = store.create_conversation(title)
    for n, text in enumerate(turns):
        store.add_message(conversation.id, "user" if n % 2 == 0 else "assistant", text)
    return conversation.id


def test_list_pages_newest_first(invoke, store: Store) -> None:
    assert "no conversations yet" in invoke("sessions", "list").output
    ids = [chat(store, f"Chat number {n}", "hi", "hello") for n in range(3)]
    first = invoke("sessions", "list", "--limit", "2")
    assert first.exit_code == 0
    assert "Chat number 2" in first.output and "Chat number 1" in first.output and "Chat number 0" not in first.output
    assert first.output.index("Chat number 2") < first.output.index("Chat number 1")
    assert "1-2 of 3; next page: --offset 2" in first.output
    second = invoke("sessions", "list", "--limit", "2", "--offset", "2")
    assert "Chat number 0" in second.output and "3-3 of 3" in second.output and "next page" not in second.output
    assert str(ids[0]) in second.output


def test_show_prints_the_branch_with_versions_ratings_and_corrections(invoke, store: Store) -> None:
    conversation = store.create_conversation("Colours [draft]", system_prompt="Be brief.")
    question = store.add_message(conversation.id, "user", "Name a [bold]colour[/bold]")
    store.add_message(conversation.id, "assistant", "Red")
    second = store.add_message(conversation.id, "assistant", "Blue", parent_id=question.id)
    store.set_rating(second.id, -1)
    store.set_correction(second.id, "Green")
    result = invoke("sessions", "show", str(conversation.id))
    assert result.exit_code == 0
    output = result.output
    assert "Colours [draft]" in output and "system: Be brief." in output
    assert "Name a [bold]colour[/bold]" in output  # user text is never read as markup
    assert "version 2/2" in output and "👎" in output and "correction: Green" in output
    assert "Red" not in output  # not on the active branch

    missing = invoke("sessions", "show", "999")
    assert missing.exit_code == 1 and "Error: no conversation 999" in missing.output


def test_search_shows_ranked_hits_or_says_none(invoke, store: Store) -> None:
    chat(store, "Travel [plans]", "Where is Paris?", "Paris is in France.")
    result = invoke("sessions", "search", "paris", "france")
    assert result.exit_code == 0
    assert "Travel [plans]" in result.output and "France" in result.output
    assert "no messages match 'nothing here'" in invoke("sessions", "search", "nothing", "here").output
    assert invoke("sessions", "search").exit_code == 2


def test_rename(invoke, store: Store) -> None:
    conversation_id = chat(store, "old", "hi")
    result = invoke("sessions", "rename", str(conversation_id), "A", "new", "title")
    assert result.exit_code == 0 and "'A new title'" in result.output
    assert store.get_conversation(conversation_id).title == "A new title"
    assert invoke("sessions", "rename", str(conversation_id), "  ").exit_code == 2
    assert "no conversation 42" in invoke("sessions", "rename", "42", "x").output


def test_delete_asks_first(invoke, store: Store) -> None:
    conversation_id = chat(store, "doomed", "hi", "hello")
    refused = invoke("sessions", "delete", str(conversation_id), input="n\n")
    assert refused.exit_code == 1 and "Delete conversation" in refused.output and "2 messages" in refused.output
    assert store.get_conversation(conversation_id)
    confirmed = invoke("sessions", "delete", str(conversation_id), input="y\n")
    assert confirmed.exit_code == 0 and store.count_conversations() == 0
    other = chat(store, "also doomed", "hi")
    assert invoke("sessions", "delete", str(other), "--yes").exit_code == 0
    assert store.count_conversations() == 0


def test_export_defaults_to_a_private_timestamped_file_in_datasets(invoke, store: Store, home: DataHome) -> None:
    chat(store, "q", "question", "answer")
    result = invoke("export")
    assert result.exit_code == 0, result.output
    (data,) = home.datasets.glob("messages-*.jsonl")
    assert str(data) in result.output and "exported 1 conversation" in result.output
    assert os.stat(data).st_mode & 0o777 == 0o600
    assert json.loads(data.read_text())["messages"][-1] == {"role": "assistant", "content": "answer"}
    assert list(home.datasets.glob("messages-*.manifest.json"))


def test_export_options(invoke, store: Store, tmp_path: Path) -> None:
    keep = chat(store, "keep", "q1", "a1")
    chat(store, "other", "q2", "a2")
    out = tmp_path / "d.jsonl"
    result = invoke("export", "--out", str(out), "--conversation", str(keep), "--val-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert "(1 train, 0 val)" in result.output or "(0 train, 1 val)" in result.output
    assert (tmp_path / "d.train.jsonl").exists() and (tmp_path / "d.val.jsonl").exists()

    markdown = invoke("export", "--format", "markdown", "--out", str(tmp_path / "t.md"))
    assert markdown.exit_code == 0 and "# keep" in (tmp_path / "t.md").read_text()
    future = invoke("export", "--since", "2999-01-01", "--out", str(out))
    assert future.exit_code == 1 and "nothing to export" in future.output
    bad = invoke("export", "--val-fraction", "1.5")
    assert bad.exit_code == 2 and "--val-fraction" in bad.output
    assert invoke("export", "--since", "yesterday").exit_code == 2
    pairs = invoke("export", "--format", "preference", "--out", str(tmp_path / "p.jsonl"))
    assert pairs.exit_code == 1 and "nothing to export" in pairs.output


def test_chat_export_shares_the_cli_options_and_prints_nothing(store, home, tmp_path, capsys) -> None:
    chat(store, "q", "question", "answer")
    summary = run_export(store, home, ["--out", str(tmp_path / "x.jsonl"), "--min-rating", "0"])
    assert summary.startswith("exported 1 conversation to") and "\n" not in summary
    assert (tmp_path / "x.jsonl").exists()
    with pytest.raises(CommandError) as bad:
        run_export(store, home, ["--format", "yaml"])
    assert "\n" not in str(bad.value) and "'yaml' is not one of" in str(bad.value)
    with pytest.raises(CommandError, match="no conversation 7"):
        run_export(store, home, ["--conversation", "7"])
    assert "--val-fraction" in run_export(store, home, ["--help"])
    assert capsys.readouterr().out == ""


def test_import_reports_counts_and_refuses_a_bad_file_in_one_line(invoke, store: Store, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    )
    result = invoke("import", str(good))
    assert result.exit_code == 0 and "imported 1 conversation (2 messages)" in result.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "\n{oops\n")
    refused = invoke("import", str(bad))
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        f"Error: {bad} line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    ]
    assert store.count_conversations() == 1
    assert invoke("import", str(tmp_path / "missing.jsonl")).exit_code == 2


def test_backup_writes_a_private_copy(invoke, store: Store, tmp_path: Path) -> None:
    chat(store, "saved", "hi")
    target = tmp_path / "backup.db"
    result = invoke("backup", str(target))
    assert result.exit_code == 0 and "backed up 1 conversation" in result.output
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert Store.open(target).list_conversations()[0].title == "saved"
    again = invoke("backup", str(target))
    assert again.exit_code == 1 and "already exists" in again.output


def test_import_then_export_round_trip_through_a_real_home(tmp_path: Path) -> None:
    records = [
        {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]},
    ]  # fmt: skip
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    home = str(tmp_path / "home")
    runner = CliRunner()
    assert runner.invoke(main, ["--home", home, "import", str(source)]).exit_code == 0
    out = tmp_path / "out.jsonl"
    exported = runner.invoke(main, ["--home", home, "export", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    assert os.stat(Path(home) / "chat.db").st_mode & 0o777 == 0o600


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_command_has_help(tmp_path: Path) -> None:
    """Walks the whole `tui-chat` tree, so commands added anywhere are held to it too."""
    runner = CliRunner()
    found = list(_commands(main))
    assert {("sessions", "list"), ("export",), ("import",), ("backup",)} <= {path for path, _ in found}
    for path, command in [((), main), *found]:
        assert (command.help or "").strip(), f"`tui-chat {' '.join(path)}` has no help text"
        result = runner.invoke(main, ["--home", str(tmp_path), *path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "usage:" in result.output.lower()  # click writes "Usage:", the argparse-based `train` "usage:"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert (param.help or "").strip(), f"`tui-chat {' '.join(path)} {param.opts[0]}` has no help"
