"""A run's model folder as the chat sees it: whether the run has a model to chat with yet, and deleting it.

Both go by the store (the run's status) and the folder (the trainer's COMPLETE marker); neither imports torch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sessions import NotFound, Store, StoreError, TrainingRun
from trainer import rundir
from trainer.home import DataHome
from trainer.model_names import BUNDLED_ALIASES, BUNDLED_DIR, BUNDLED_NAME

from tui_chat.training.errors import TrainingError
from tui_chat.training.monitor import RunMonitor, is_active


def _recorded(store: Store, name: str) -> TrainingRun | None:
    try:
        return store.get_training_run(name)
    except NotFound:
        return None


def _folder(run: TrainingRun, home: DataHome) -> Path:
    return Path(run.output_dir) if run.output_dir else home.models / run.name


def _resume_hint(folder: Path, name: str) -> str:
    return (f"continue it with `tui-chat train --resume --out {folder}` and the settings `tui-chat models show {name}` "
            "lists, or train again")


def unfinished_run_message(store: Store, home: DataHome, spec: str) -> str | None:
    """One line when ``spec`` names a recorded run that has no model to load (still training, cancelled, failed,
    deleted, or its folder gone), saying how it stands and what to do; None when it has one or is not a run."""
    name = spec.strip()
    run = _recorded(store, name)
    if run is None:
        return None
    folder = _folder(run, home)
    if rundir.is_complete(folder):
        return None
    if is_active(run):
        monitor = RunMonitor(store, run)
        monitor.poll()  # the store may still say running for a trainer that died: this records how it ended
        run, progress = monitor.run, monitor.progress
        if is_active(run):
            where = f"step {progress.step}/{progress.total}" if progress.total else progress.phase
            return (f"run {name} is still training ({where}), so it has no model yet; wait for it to finish "
                    "(`tui-chat models` shows its progress), then chat with it")
    if run.status == "cancelled":
        return f"run {name} was cancelled before it finished, so it has no model; " + _resume_hint(folder, name)
    if run.status == "failed":
        return f"run {name} failed ({run.error or 'no reason recorded'}), so it has no model; " + _resume_hint(
            folder, name
        )
    if run.status == "deleted":
        return f"run {name}'s model was deleted; `tui-chat models show {name}` still shows what it learned from"
    return f"run {name} has no model in {folder} (moved or deleted by hand?); `tui-chat models` lists the models"


@dataclass(frozen=True)
class RunFolder:
    """A model folder to delete, and the run it belongs to."""

    name: str
    path: Path | None  # None: nothing left on disk (only the record is marked)
    run: TrainingRun | None  # None: a folder no chat recorded (`tui-chat train`, a copied model)
    size: int  # bytes it takes

    @property
    def size_text(self) -> str:
        return f"{self.size / 1e6:,.0f} MB" if self.size >= 1e6 else f"{self.size / 1e3:,.0f} kB"


def _size(path: Path) -> int:
    """Bytes deleting ``path`` frees: none for a link (only the link goes), files only once."""
    if path.is_symlink():
        return 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def run_to_delete(store: Store, home: DataHome, name: str) -> RunFolder:
    """What deleting ``name`` removes: a recorded run's folder, or a model folder in the models dir. TrainingError
    (one line) for what must not go: the bundled model, a run still training, a name that is neither."""
    name = name.strip()
    if name.lower() in BUNDLED_ALIASES or name in (BUNDLED_NAME, BUNDLED_DIR):
        raise TrainingError("the bundled model cannot be deleted (tui-chat needs it); `tui-chat models` lists the "
                            "runs you can delete")
    if not name or Path(name).name != name or name in (".", ".."):
        raise TrainingError(f"{name!r} is not a model name; `tui-chat models` lists them")
    run = _recorded(store, name)
    if run is not None:
        if is_active(run):
            raise TrainingError(f"run {name} is still training; stop it first (/runs cancel {name} in the chat, or "
                                "wait for it to finish), then delete it")
        folder = _folder(run, home)
        if not folder.exists():
            if run.status == "deleted":
                raise TrainingError(f"run {name}'s model is already deleted")
            return RunFolder(name, None, run, 0)
        if not (rundir.is_run_dir(folder) or (folder / "config.json").is_file()):
            raise TrainingError(f"{folder} does not look like run {name}'s folder (no {rundir.TRAIN_CONFIG}); "
                                "delete it by hand if it is")
        return RunFolder(name, folder, run, _size(folder))
    folder = home.models / name
    if not folder.is_dir():
        raise TrainingError(f"no run or model called {name!r}; `tui-chat models` lists them")
    if rundir.is_run_dir(folder) and not rundir.is_complete(folder):
        if rundir.unfinished_state(folder)[0] == "training":
            raise TrainingError(f"{name} may still be training (its progress log has no end); stop it first, or "
                                f"if its trainer is gone, delete {folder} by hand")
    elif not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
        raise TrainingError(f"{folder} is not a model folder; delete it by hand if you mean to")
    return RunFolder(name, folder, None, _size(folder))


def delete_run(store: Store, target: RunFolder) -> None:
    """Record the run as deleted, then delete its folder: the store checks in that same write that the run is not
    training, so a folder the trainer writes to is never removed. TrainingError when either fails."""
    try:
        if target.run is not None:
            store.mark_training_run_deleted(target.run.id)
    except StoreError as exc:
        raise TrainingError(str(exc)) from exc
    if target.path is not None:
        try:
            if target.path.is_symlink():
                target.path.unlink()  # a model linked into the models dir: the link goes, what it points to stays
            else:
                shutil.rmtree(target.path)
        except OSError as exc:
            raise TrainingError(f"cannot delete {target.path} ({exc}); delete it by hand") from exc
