"""No screen, widget or app of ours assigns an attribute that Textual itself uses.

The `/train` form once kept its own `self._closed` flag. Textual's message pump has a `_closed` too: setting it when
the form was cancelled left the form's message loop waiting forever, the app waited for the form to close, and the
whole window stopped taking keys (Ctrl+Q included). A Pilot test did not see it; a person did, in tmux. This test
catches the whole kind of mistake: every `self.NAME = ...` in a class that derives from a Textual class is checked
against the names Textual's own classes and instances already have.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil

import textual.app
import textual.widget
from textual.reactive import Reactive
import tui_chat

# Names a subclass is meant to set (Textual reads them as configuration).
MEANT_TO_BE_SET = {"display", "visible", "disabled", "tooltip", "border_title", "border_subtitle", "can_focus",
                   "loading", "styles", "title", "sub_title", "theme", "id", "classes", "name"}


def textual_classes() -> list[type]:
    """Every class in tui_chat that derives from a Textual DOM node or app."""
    found = {}
    for info in pkgutil.walk_packages(tui_chat.__path__, "tui_chat."):
        if info.name.endswith("__main__"):  # runs the CLI when imported
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, (textual.widget.Widget, textual.app.App)):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return list(found.values())


def textual_names(cls: type) -> set[str]:
    """The attribute names Textual's own part of ``cls`` defines: its classes' members and an instance's fields."""
    names: set[str] = set()
    textual_bases = [base for base in cls.__mro__ if base.__module__.startswith("textual")]
    for base in textual_bases:
        names |= set(vars(base))
    nearest = textual_bases[0]
    try:
        names |= set(vars(nearest()))
    except TypeError:  # a base that needs arguments: its class members still count
        pass
    return names


def assigned_self_attributes(cls: type) -> set[str]:
    """Names assigned as `self.NAME = ...` (or augmented / tuple targets) anywhere in the class's own source."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(cls)))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for inner in ast.walk(node):
                targets = []
                if isinstance(inner, ast.Assign):
                    targets = inner.targets
                elif isinstance(inner, (ast.AugAssign, ast.AnnAssign)):
                    targets = [inner.target]
                while targets:
                    target = targets.pop()
                    if isinstance(target, (ast.Tuple, ast.List)):
                        targets.extend(target.elts)
                    elif isinstance(target, ast.Starred):
                        targets.append(target.value)
                    elif (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                          and target.value.id == "self"):
                        names.add(target.attr)
    return names


def test_the_walk_finds_our_screens_and_widgets() -> None:
    names = {cls.__name__ for cls in textual_classes()}
    assert {"ChatApp", "ChatScreen", "TrainDialogScreen", "TrainingPanel", "MessageView"} <= names


def test_no_class_of_ours_overwrites_textuals_attributes() -> None:
    clashes = []
    for cls in textual_classes():
        ours = assigned_self_attributes(cls)
        for name in sorted((ours & textual_names(cls)) - MEANT_TO_BE_SET):
            # Reactives and properties are Textual's public setters, not clashes.
            if not isinstance(inspect.getattr_static(cls, name, None), (property, Reactive)):
                clashes.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    assert clashes == [], f"these overwrite Textual's own attributes: {clashes}"


def test_the_check_sees_the_clash_that_wedged_the_window() -> None:
    """The check itself: a form that sets `_closed`, as the `/train` form once did, is caught."""
    from textual.screen import ModalScreen

    class Form(ModalScreen):
        def cancel(self) -> None:
            self._closed = True

    assert "_closed" in assigned_self_attributes(Form) & textual_names(Form)
