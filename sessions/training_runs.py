"""The Store's training runs (what was trained on what, its progress and outcome) and model lineage."""

from __future__ import annotations

import json
import time
from typing import Any

from .records import UNSET, Message, NotFound, StoreError, TrainingRun, message_from_row, training_run_from_row


class TrainingRuns:
    """Training-run methods of ``Store``, which provides their ``_query`` and ``_write``."""

    def create_training_run(
        self,
        name: str,
        *,
        base_model: str,
        dataset_path: str | None = None,
        dataset_sha256: str | None = None,
        conversation_ids: list[int] | None = None,
        params: dict[str, Any] | None = None,
        output_dir: str | None = None,
        log_path: str | None = None,
        status: str = "pending",
    ) -> TrainingRun:
        cursor = self._write(
            "INSERT INTO training_runs (name, created_at, base_model, dataset_path, dataset_sha256, "
            "conversation_ids, params, status, output_dir, log_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                time.time(),
                base_model,
                dataset_path,
                dataset_sha256,
                json.dumps(conversation_ids or []),
                json.dumps(params or {}),
                status,
                output_dir,
                log_path,
            ),
        )
        return self.get_training_run(cursor.lastrowid)

    def get_training_run(self, run: int | str) -> TrainingRun:
        column = "id" if isinstance(run, int) else "name"
        rows = self._query(f"SELECT * FROM training_runs WHERE {column} = ?", (run,))
        if not rows:
            raise NotFound(f"no training run {run!r}; `tui-chat models` lists them")
        return training_run_from_row(rows[0])

    def list_training_runs(self) -> list[TrainingRun]:
        return [training_run_from_row(row) for row in self._query("SELECT * FROM training_runs ORDER BY id DESC")]

    def update_training_run(
        self,
        run_id: int,
        *,
        status: str = UNSET,
        metrics: dict[str, Any] = UNSET,
        finished_at: float | None = UNSET,
        pid: int | None = UNSET,
        error: str | None = UNSET,
        output_dir: str | None = UNSET,
    ) -> TrainingRun:
        changes = {
            name: value
            for name, value in {
                "status": status,
                "metrics": json.dumps(metrics) if metrics is not UNSET else UNSET,
                "finished_at": finished_at,
                "pid": pid,
                "error": error,
                "output_dir": output_dir,
            }.items()
            if value is not UNSET
        }
        if changes:
            columns = ", ".join(f"{name} = :{name}" for name in changes)
            self._write(f"UPDATE training_runs SET {columns} WHERE id = :id", {**changes, "id": run_id})
        return self.get_training_run(run_id)

    def mark_training_run_deleted(self, run_id: int) -> TrainingRun:
        """Record that a run's model folder was deleted; its settings, conversations and replies stay for lineage.
        StoreError for a run that is pending or running (checked in the same write, so it cannot start meanwhile)."""
        cursor = self._write(
            "UPDATE training_runs SET status = 'deleted', pid = NULL "
            "WHERE id = ? AND status NOT IN ('pending', 'running')",
            (run_id,),
        )
        run = self.get_training_run(run_id)
        if cursor.rowcount == 0:
            raise StoreError(f"run {run.name} is still {run.status}; stop it first (/runs cancel {run.name} in the "
                             "chat), then delete it")
        return run

    def messages_by_model(self, model: str, limit: int = 100) -> list[Message]:
        """Assistant messages produced by ``model`` (lineage: what a base model or run has said)."""
        rows = self._query(
            "SELECT * FROM messages WHERE role = 'assistant' AND model = ? ORDER BY id DESC LIMIT ?", (model, limit)
        )
        return [message_from_row(row) for row in rows]
