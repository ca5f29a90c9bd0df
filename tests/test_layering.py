"""The layout's rules, checked: which package may import which, and what the chat window's process may load.

The arrows point one way: ``tui_chat`` -> ``sessions`` and ``tui_chat`` -> ``trainer``. The store and the trainer
never import the app, Textual or prompt-toolkit; the trainer reads dataset files, never the DB; nothing imports the
CLI; widgets do not import screens; the chat core does not know its front ends. Every import counts, also those
inside functions (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts
    package = package[:-1] if package[-1] != "__init__" else package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def violations(folder: str, forbidden: tuple[str, ...], *, except_files: tuple[str, ...] = ()) -> list[str]:
    """``file: module`` for each import under ``folder`` of a module in (or under) ``forbidden``."""
    found = []
    for path in files(folder):
        name = str(path.relative_to(ROOT))
        if name in except_files:
            continue
        for module in sorted(imports_of(path)):
            if any(module == bad or module.startswith(bad + ".") for bad in forbidden):
                found.append(f"{name}: {module}")
    return found


def test_sessions_and_trainer_never_import_the_app_or_its_ui_libraries():
    for folder in ("sessions", "trainer"):
        assert violations(folder, ("tui_chat", "textual", "prompt_toolkit")) == []


def test_the_trainer_reads_files_never_the_store():
    assert violations("trainer", ("sessions", "sqlite_utils", "sqlite3")) == []


def test_nothing_imports_the_cli():
    # tui_chat/__main__.py is `python -m tui_chat`: the CLI's own entry point.
    found = violations("tui_chat", ("tui_chat.cli",), except_files=("tui_chat/__main__.py",))
    found += violations("bench", ("tui_chat.cli",))
    assert [line for line in found if not line.startswith("tui_chat/cli/")] == []


def test_widgets_do_not_import_screens():
    assert violations("tui_chat/tui/widgets", ("tui_chat.tui.screens",)) == []


def test_the_chat_core_knows_no_front_end_and_no_torch():
    forbidden = ("textual", "prompt_toolkit", "tui_chat.tui", "tui_chat.repl", "tui_chat.cli", "torch",
                 "transformers", "tui_chat.inference.hf_engine")
    assert violations("tui_chat/chat", forbidden) == []


def test_front_ends_do_not_import_each_other():
    assert violations("tui_chat/tui", ("tui_chat.repl", "prompt_toolkit")) == []
    assert violations("tui_chat/repl", ("tui_chat.tui", "textual")) == []
    assert violations("tui_chat/training", ("tui_chat.tui", "tui_chat.repl", "textual", "prompt_toolkit")) == []
    # The server speaks HTTP to programs: no chat window, no REPL, not the chat core's store-bound session.
    assert violations("tui_chat/serve", ("tui_chat.tui", "tui_chat.repl", "tui_chat.chat", "tui_chat.cli", "textual",
                                         "prompt_toolkit")) == []
    # It drives whatever engine it is given; the model (and torch) lives in that engine.
    assert violations("tui_chat/serve", ("torch", "transformers", "tui_chat.inference.hf_engine")) == []


def test_the_front_ends_name_and_list_models_without_loading_code():
    """The window, the REPL and the CLI list and name models through trainer.model_names: trainer.models imports
    torch, even when imported inside a function that only lists (the model picker once did)."""
    for package in ("tui_chat/tui", "tui_chat/repl", "tui_chat/chat", "tui_chat/cli"):
        assert violations(package, ("trainer.models",)) == []


def test_the_rules_see_a_wrong_arrow(tmp_path, monkeypatch):
    """The walk itself: a module that imports the CLI, relatively and inside a function, is caught."""
    package = tmp_path / "tui_chat" / "tui" / "widgets"
    package.mkdir(parents=True)
    (package / "bad.py").write_text("def f():\n    from ...cli import main\n    from ..screens import chat\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("tui_chat/tui/widgets", ("tui_chat.cli",)) == ["tui_chat/tui/widgets/bad.py: tui_chat.cli",
                                                                    "tui_chat/tui/widgets/bad.py: tui_chat.cli.main"]
    assert violations("tui_chat/tui/widgets", ("tui_chat.tui.screens",))


@pytest.mark.parametrize(
    "modules",
    [
        # The chat window, everything its screens open, and `/train`'s planning and launching, which run in it.
        ("tui_chat.tui.app", "tui_chat.tui.screens.chat", "tui_chat.tui.screens.train_dialog",
         "tui_chat.training.plan", "tui_chat.training.launch", "tui_chat.training.options"),
        # The REPL's process: the model lives in its own process there too.
        ("tui_chat.repl.app", "tui_chat.cli"),
    ],
)
def test_the_front_ends_processes_never_import_torch(modules):
    code = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in modules)
        + "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'accelerate', 'torchao') if m in sys.modules)\n"
        + "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {modules} loaded {result.stdout.strip()}"
