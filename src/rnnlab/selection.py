"""Model selection on the validation split: the best weights so far (``train.keep_best``) and early
stopping (``train.patience``).

Both look only at the validation accuracy of the periodic evaluations, never at the test set, so
the test accuracy of the chosen weights is still an honest estimate. The state is saved with every
checkpoint, so a resumed run chooses what an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class BestByValidation:
    """The best validation accuracy so far, the iteration it was reached at, and with
    ``keep_weights`` a copy of the model's weights then (these models are small: a few MB)."""

    def __init__(self, *, keep_weights: bool, patience: int) -> None:
        self.keep_weights, self.patience = keep_weights, patience
        self.accuracy = -math.inf
        self.iteration: int | None = None
        self.evaluations_since = 0  # evaluations since the best one, without a better accuracy
        self.weights: dict[str, torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        return self.keep_weights or self.patience > 0

    @property
    def patience_spent(self) -> bool:
        """Whether ``patience`` evaluations in a row have not beaten the best: training is over."""
        return self.patience > 0 and self.evaluations_since >= self.patience

    def update(self, accuracy: float, iteration: int, model: torch.nn.Module) -> bool:
        """Take one evaluation's validation accuracy; True once ``patience`` evaluations in a row
        have not beaten the best (ties do not count as better: the earlier weights are kept)."""
        if accuracy > self.accuracy:
            self.accuracy, self.iteration, self.evaluations_since = accuracy, iteration, 0
            if self.keep_weights:
                self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.evaluations_since += 1
        return self.patience_spent

    def state(self) -> dict[str, Any]:
        """For the checkpoint's JSON metadata (the weights go with its tensors)."""
        return {"val_accuracy": None if self.iteration is None else self.accuracy, "iteration": self.iteration,
                "evaluations_since": self.evaluations_since}

    def load_state(self, state: dict[str, Any] | None, weights: dict[str, torch.Tensor] | None) -> None:
        if not state or state.get("iteration") is None:  # nothing measured yet, or an older checkpoint
            return
        self.accuracy, self.iteration = float(state["val_accuracy"]), int(state["iteration"])
        self.evaluations_since = int(state["evaluations_since"])
        self.weights = weights
