"""Early stopping on validation loss, keeping the best epoch's weights.

Why: how many passes a dataset needs is a guess made before training (schedule.py); past the right number the model
only memorises its training replies, which does nothing for the user's other conversations and pulls general
answers away (measured in schedule.py). The validation split says when that starts: after each epoch its loss is
measured (a forward pass over a few conversations, seconds), the trainable weights of the best epoch so far are kept
in memory (a LoRA adapter is a few MB), training stops after ``PATIENCE`` epochs clearly worse than the best, and
then the best weights are put back.

"Clearly": more than ``TOLERANCE`` above the best. The validation split of a small dataset is a few conversations,
so its loss wobbles by a percent or two once the model has learned them, and the epochs after such a wobble still
help: on the teach-a-fact set (20 conversations) the loss went 1.185, 1.208, 1.201, 1.190 over epochs 5-8, and the
weights of epoch 5 recalled 11 of 12 taught facts and kept 20-22 of 26 general answers where epoch 8's recalled 12
and kept 24 (the learning rate anneals and replay pulls general answers back in those epochs). Over-fitting shows
as a clear rise: 60 real conversations without replay went 2.663, 2.718, 2.945 over epochs 2-4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

# Epochs without a new best validation loss before training stops. 1: the validation split of a small dataset is a
# handful of conversations, but its loss rarely turns back down once it has risen (see README: Replay and retention).
PATIENCE = 1
TOLERANCE = 0.03  # a loss more than 3% above the best is worse; less is the split's noise (see above)


@dataclass
class BestEpoch:
    """Tracks the validation loss after each epoch and keeps a copy of the best epoch's trainable weights."""

    parameters: list[torch.nn.Parameter]
    validation_loss: Callable[[], float]
    patience: int | None = PATIENCE  # None: never stop (the losses are still recorded)
    losses: list[float] = field(default_factory=list)  # after each epoch, in order
    best_epoch: int = 0  # 1-based; 0 until an epoch ended
    kept_epoch: int = 0  # the epoch whose weights the model holds after ``restore`` (else the last one)
    _best: list[torch.Tensor] | None = None

    @property
    def best_loss(self) -> float:
        return self.losses[self.best_epoch - 1] if self.best_epoch else float("inf")

    def _worse(self, loss: float) -> bool:
        return loss > self.best_loss * (1 + TOLERANCE)

    def epoch_end(self) -> bool:
        """Measure the epoch just finished; True when training should stop (``patience`` epochs in a row clearly
        worse than the best)."""
        loss = self.validation_loss()
        self.losses.append(loss)
        self.kept_epoch = len(self.losses)
        if loss < self.best_loss:
            self.best_epoch = len(self.losses)
            self._best = [p.detach().clone() for p in self.parameters]
        recent = self.losses[-self.patience:] if self.patience else []
        return len(recent) == self.patience and all(self._worse(loss) for loss in recent)

    @torch.no_grad()
    def restore(self) -> bool:
        """Put the best epoch's weights back when the last epoch is clearly worse; True if it did."""
        if self._best is None or not self.losses or not self._worse(self.losses[-1]):
            return False
        for parameter, best in zip(self.parameters, self._best):
            parameter.copy_(best)
        self.kept_epoch = self.best_epoch
        return True
