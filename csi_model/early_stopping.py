"""Early stopping on validation loss or on a smoothed test-set mAP (see docs/reference_tool.md).

In mAP mode one noisy epoch should neither stop the run nor hide a good model, so the two decisions use
different signals: the best checkpoint is the epoch with the best *raw* mAP, while the patience counter follows
an exponential moving average of it. Counters stay frozen during the scheduler's hold period. The state uses the
reference's ``early_stopping`` key names so it reads like a CoverHunterMPS ``do_`` file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    metric: str  # "val_loss" (lower is better) or "mAP" (higher is better)
    patience: int
    smoothing_alpha: float = 0.3
    best_validation_loss: float = math.inf
    best_raw_map: float = -math.inf
    best_smoothed_map: float = -math.inf
    smoothed_map: float | None = None
    early_stopping_counter: int = 0
    map_stopping_counter: int = 0
    best_checkpoint_epoch: int = -1
    best_checkpoint_value: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in ("val_loss", "mAP"):
            raise ValueError(f"early-stopping metric {self.metric!r} is not 'val_loss' or 'mAP'")

    def update(self, epoch: int, value: float, in_hold: bool = False) -> bool:
        """Record this epoch's value; returns True when this epoch is the new best checkpoint."""
        if self.metric == "val_loss":
            return self._update_loss(epoch, value, in_hold)
        return self._update_map(epoch, value, in_hold)

    @property
    def counter(self) -> int:
        return self.early_stopping_counter if self.metric == "val_loss" else self.map_stopping_counter

    @property
    def should_stop(self) -> bool:
        return self.counter >= self.patience

    def _update_loss(self, epoch: int, loss: float, in_hold: bool) -> bool:
        if loss < self.best_validation_loss:
            self.best_validation_loss = loss
            self.early_stopping_counter = 0
            self._best(epoch, loss)
            return True
        if not in_hold:
            self.early_stopping_counter += 1
        return False

    def _update_map(self, epoch: int, raw: float, in_hold: bool) -> bool:
        a = self.smoothing_alpha
        self.smoothed_map = raw if self.smoothed_map is None else a * raw + (1 - a) * self.smoothed_map
        if self.smoothed_map > self.best_smoothed_map:
            self.best_smoothed_map = self.smoothed_map
            self.map_stopping_counter = 0
        elif not in_hold:
            self.map_stopping_counter += 1
        if raw > self.best_raw_map:
            self.best_raw_map = raw
            self._best(epoch, raw)
            return True
        return False

    def _best(self, epoch: int, value: float) -> None:
        self.best_checkpoint_epoch = epoch
        self.best_checkpoint_value = value

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
