"""Early stopping (early_stop.py): training stops once the validation loss is clearly worse than its best and the
best epoch's weights are the ones saved; a wobble within the tolerance does neither; --no-early-stop trains every
epoch and keeps the last."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer import sft as sft_module
from trainer.config import SFTConfig
from trainer.early_stop import BestEpoch
from trainer.progress import ProgressReporter
from trainer.sft import run_sft

from .tiny_datasets import chat_lines, write_jsonl
from .tiny_models import save_tiny_model


def test_best_epoch_stops_when_clearly_worse_and_keeps_the_lowest_loss() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    losses = iter([3.0, 2.0, 2.5, 1.0])
    best = BestEpoch([weight], lambda: next(losses), patience=1)
    stops = []
    for epoch in range(1, 4):
        with torch.no_grad():
            weight.fill_(epoch)
        stops.append(best.epoch_end())
    assert stops == [False, False, True] and best.best_epoch == 2 and best.losses == [3.0, 2.0, 2.5]
    assert best.restore() and weight.tolist() == [2.0, 2.0] and best.kept_epoch == 2
    assert not BestEpoch([weight], lambda: 1.0, patience=None).epoch_end()  # None: record, never stop
    # Within TOLERANCE of the best (a small split's wobble): training goes on and the last epoch's weights stay.
    wobble = iter([3.0, 2.0, 2.04, 2.05])
    best = BestEpoch([weight], lambda: next(wobble), patience=1)
    for epoch in range(1, 5):
        with torch.no_grad():
            weight.fill_(epoch)
        assert not best.epoch_end()
    assert best.best_epoch == 2 and not best.restore() and weight.tolist() == [4.0, 4.0] and best.kept_epoch == 4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_a_run_stops_early_and_saves_the_best_epoch(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The validation loss, scripted: best after epoch 2, worse after 3. Each call snapshots the adapter it saw.
    scripted = iter([2.0, 1.0, 1.5, 1.4, 1.3])
    seen: list[dict[str, torch.Tensor]] = []

    def validation_loss(model, batches, device, bf16):  # --no-eval: only early stopping asks
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
        return next(scripted), 0.0, 1

    data = write_jsonl(tmp_path / "chats.jsonl", chat_lines(30))
    config = SFTConfig(
        data=str(data), model=str(tiny_dir), home=str(tmp_path / "home"), threads=1, progress="none", epochs=5,
        lr=5e-2, no_replay=True, no_eval=True, keep_adapter=True, out=str(tmp_path / "stopped"),
    )
    monkeypatch.setattr(sft_module, "validation_loss", validation_loss)
    run_dir = run_sft(config, ProgressReporter("none"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["early_stop"] == {"val_losses": [2.0, 1.0, 1.5], "best_epoch": 2, "kept_epoch": 2}
    assert metrics["epochs"] == pytest.approx(3.0)  # stopped after the epoch that did not improve
    saved = load_file(run_dir / "adapter_model.safetensors")
    epoch2 = {n.replace(".default", ""): t for n, t in seen[1].items()}
    assert saved and all(torch.equal(saved[n], epoch2[n]) for n in saved)
    assert not all(torch.equal(seen[1][n], seen[2][n]) for n in seen[1])  # epoch 3 did move the weights
