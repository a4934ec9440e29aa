"""The learning-rate schedule (see docs/reference_tool.md): warmup, hold, then step decay every 1000 steps.

The reference's warmup was never switched on and a resume reset the decayed lr; here warmup works and the
complete state (step count and decayed lr) round-trips through ``state_dict`` so a resumed run continues with
exactly the lr it had.
"""

from __future__ import annotations

from typing import Any

import torch

DECAY_EVERY = 1000


class StepDecayLR:
    """Call ``step()`` once before each optimizer step; it sets and returns that step's lr.

    Global step g (1-based) decays the lr, ``lr ← max(lr·lr_decay, min_lr)``, when g is a multiple of
    ``decay_every`` and the hold is over. With warmup the applied lr is ``lr·g/warmup_steps`` up to warmup_steps.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: float,
        lr_decay: float,
        min_lr: float,
        hold_steps: int = 0,
        warmup_steps: int = 0,
        decay_every: int = DECAY_EVERY,
    ) -> None:
        self.optimizer = optimizer
        self.lr = lr
        self.lr_decay = lr_decay
        self.min_lr = min_lr
        self.hold_steps = hold_steps
        self.warmup_steps = warmup_steps
        self.decay_every = decay_every
        self.steps_done = 0

    @property
    def in_hold(self) -> bool:
        """True while the hold period runs: no decay, and early-stopping counters stay frozen."""
        return self.hold_steps > 0 and self.steps_done <= self.hold_steps

    def step(self) -> float:
        global_step = self.steps_done + 1
        if global_step % self.decay_every == 0 and not self.in_hold:
            self.lr = max(self.lr * self.lr_decay, self.min_lr)
        applied = self.lr
        if global_step <= self.warmup_steps:
            applied = self.lr * global_step / self.warmup_steps
        for group in self.optimizer.param_groups:
            group["lr"] = applied
        self.steps_done = global_step
        return applied

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.steps_done = int(state["steps_done"])
