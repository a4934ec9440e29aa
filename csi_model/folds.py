"""Production training (see docs/reference_tool.md): K folds, then a final run on all the data.

One model is trained through a sequence of stages. Fold k trains on the other folds and validates on fold k,
starting from the best checkpoint of the stages so far (the "global best"); the final stage trains on everything
and validates on the held-out test split. The learning rate walks down a geometric ladder from a fold-2 anchor
towards ``min_lr``.

What differs from the reference, on purpose:

- the fold unit is the original performance, stratified by work: every tempo variant of a recording lands in the
  same fold, so no fold validates on a tempo copy of something it trained on;
- every stage trains in its own folder with its own epoch numbering, so each stage gets ``max_epochs`` and a
  resume continues exactly the interrupted stage;
- the ladder's ratio is derived from the persisted anchor, so a run resumed straight into the final stage works.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from csi_model import checkpoint as ckpt
from csi_model.atomic import write_text_atomic
from csi_model.augment import TempoRange
from csi_model.dataset import FeatureItem
from csi_model.hparams import HParamsError, TrainingHParams
from csi_model.training import Progress, RetrievalTestSet, TrainingResult, WarmStart, train

FOLD_INDICES_FILE = "fold_indices.json"
LR_ANCHOR_FILE = "lr_anchor.json"
STATE_FILE = "production_state.json"
FINAL_STAGE = "final"


# -- folds -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolItem:
    """A training feature (one tempo variant) with the original performance it was rendered from."""

    item: FeatureItem
    performance: str
    original: bool  # speed 1.0: validation uses originals only


def stratified_folds(work_of: Mapping[str, int], k_folds: int, seed: int) -> dict[str, int]:
    """Performance → fold (1-based): sklearn StratifiedKFold over performances with the work id as the class."""
    perfs = sorted(work_of)
    if k_folds < 2:
        raise ValueError(f"k_folds must be ≥ 2, got {k_folds}")
    if len(perfs) < k_folds:
        raise ValueError(f"{len(perfs)} performances cannot fill {k_folds} folds")
    labels = np.array([work_of[p] for p in perfs])
    splitter = StratifiedKFold(n_splits=k_folds, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(perfs)), labels), start=1):
        fold_of.update({perfs[i]: fold for i in held_out})
    return fold_of


def load_or_make_folds(path: Path, work_of: Mapping[str, int], k_folds: int, seed: int) -> dict[str, int]:
    """The persisted fold of every performance; made (and saved) on the first run, reused on every resume."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["k_folds"] != k_folds or set(saved["folds"]) != set(work_of):
            raise ValueError(f"{path}: saved for {saved['k_folds']} folds over {len(saved['folds'])} performances, "
                             f"but this run has {k_folds} folds over {len(work_of)}; the training data or k_folds "
                             "changed — use a new training folder (or delete the file to start over)")
        return {perf: int(fold) for perf, fold in saved["folds"].items()}
    folds = stratified_folds(work_of, k_folds, seed)
    write_text_atomic(path, json.dumps({"k_folds": k_folds, "seed": seed, "folds": folds}, indent=1))
    return folds


# -- the learning-rate ladder ----------------------------------------------------------------------------------


def ladder_ratio(anchor: float, min_lr: float, k_folds: int) -> float:
    """One rung of the geometric descent from the anchor (fold 2) to ``min_lr`` (a virtual fold K+1)."""
    return (min_lr / anchor) ** (1.0 / (k_folds - 1))


def fold_lr(fold: int, k_folds: int, learning_rate: float, anchor: float | None, min_lr: float) -> float:
    """Fold 1 uses ``learning_rate``; fold k ≥ 2 uses anchor·ratio^(k−2)."""
    if fold == 1 or anchor is None:
        return learning_rate
    return anchor * ladder_ratio(anchor, min_lr, k_folds) ** (fold - 2)


def final_lr(k_folds: int, learning_rate: float, anchor: float | None, min_lr: float,
             position: float | None = None) -> float:
    """The final run sits at ``position`` on the ladder (default K − 0.5, between the last fold and min_lr)."""
    if anchor is None:
        return learning_rate
    position = k_folds - 0.5 if position is None else position
    return anchor * ladder_ratio(anchor, min_lr, k_folds) ** (position - 2)


# -- the production run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    stage: str  # "1".."K" or "final"
    lr: float
    best_epoch: int
    best_value: float | None
    epochs: int  # epochs this stage has run in total
    stopped_early: bool
    checkpoint: str  # the g_ file of the stage's best epoch


@dataclass(frozen=True)
class ProductionResult:
    folds: list[StageResult]
    final: StageResult
    final_training: TrainingResult
    hparams: TrainingHParams  # the final stage's
    anchor: float | None
    fold_of: dict[str, int]


StageProgress = Callable[[str, TrainingHParams], Progress | None]


class ProductionRun:
    """The K folds and the final stage in ``root``; every call continues from the persisted state."""

    def __init__(self, hp: TrainingHParams, pool: Sequence[PoolItem], final_val: Sequence[FeatureItem], root: Path,
                 test_sets: Sequence[RetrievalTestSet] = (), device: str | torch.device | None = None,
                 progress: StageProgress | None = None, tempo: TempoRange | None = None) -> None:
        if hp.k_folds is None:
            raise HParamsError(f"{hp.source or '<hparams>'}: k_folds: production training needs the number of folds")
        self.hp = with_class_count(hp, [[p.item for p in pool], final_val,
                                        *([*ts.queries, *(ts.refs or ())] for ts in test_sets)])
        self.k = hp.k_folds
        self.pool = list(pool)
        self.final_val = list(final_val)
        self.root = Path(root)
        self.test_sets = list(test_sets)
        self.device = device
        self.tempo = tempo
        self.progress = progress or (lambda stage, stage_hp: None)
        self.state_path = self.root / STATE_FILE
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {
            "k_folds": self.k, "stages": {}, "global_best": None}
        if self.state["k_folds"] != self.k:
            raise ValueError(f"{self.state_path}: this run was started with {self.state['k_folds']} folds, not "
                             f"{self.k}; use a new training folder to change k_folds")

    def run(self) -> ProductionResult:
        work_of = {p.performance: p.item.work_id for p in self.pool}
        fold_of = load_or_make_folds(self.root / FOLD_INDICES_FILE, work_of, self.k, self.hp.seed)
        folds = [self._fold(k, fold_of) for k in range(1, self.k + 1)]
        final, training = self._stage(FINAL_STAGE, self._final_hparams(), [p.item for p in self.pool], self.final_val)
        return ProductionResult(folds, final, training, self._final_hparams(), self._anchor(), fold_of)

    def stage_dir(self, stage: str) -> Path:
        return self.root / (FINAL_STAGE if stage == FINAL_STAGE else f"fold_{stage}")

    def _fold(self, k: int, fold_of: Mapping[str, int]) -> StageResult:
        done = self.state["stages"].get(str(k))
        if done is not None:
            return StageResult(**done)
        train_items = [p.item for p in self.pool if fold_of[p.performance] != k]
        val_items = [p.item for p in self.pool if fold_of[p.performance] == k and p.original]
        result, _ = self._stage(str(k), self._fold_hparams(k), train_items, val_items)
        return result

    def _fold_hparams(self, k: int) -> TrainingHParams:
        hp = self.hp
        if k == 1:
            return dataclasses.replace(hp, hold_steps=0)
        return dataclasses.replace(hp, learning_rate=fold_lr(k, self.k, hp.learning_rate, self._anchor(), hp.min_lr),
                                   lr_decay=hp.fold_lr_decay or hp.lr_decay, hold_steps=hp.fold_hold_steps)

    def _final_hparams(self) -> TrainingHParams:
        hp = self.hp
        lr = final_lr(self.k, hp.learning_rate, self._anchor(), hp.min_lr, hp.final_fold_position)
        return dataclasses.replace(hp, learning_rate=lr, lr_decay=hp.final_lr_decay or hp.lr_decay,
                                   hold_steps=hp.fold_hold_steps,
                                   early_stopping_patience=hp.final_early_stopping_patience
                                   or hp.early_stopping_patience)

    def _stage(self, stage: str, hp: TrainingHParams, train_items: list[FeatureItem],
               val_items: list[FeatureItem]) -> tuple[StageResult, TrainingResult]:
        best = self.state["global_best"]
        warm = None if best is None else WarmStart(Path(best["checkpoint"]), Path(best["state"]))
        training = train(hp, train_items, self.stage_dir(stage), val_items, (), self.test_sets, self.device,
                         self.progress(stage, hp), run_id=f"stage_{stage}", warm_start=warm, tempo=self.tempo)
        if training.best_checkpoint is None:
            raise RuntimeError(f"{training.checkpoint_dir}: stage {stage} left no checkpoint of its best epoch")
        result = StageResult(stage, hp.learning_rate, training.best_epoch, training.best_value,
                             training.last_epoch + 1, training.stopped_early, str(training.best_checkpoint))
        self._record(result, training)
        return result, training

    def _record(self, result: StageResult, training: TrainingResult) -> None:
        """Persist the stage and the global best (lower val loss or higher mAP wins) before the next stage."""
        best = self.state["global_best"]
        higher = self.hp.early_stop_metric == "mAP" and any(
            ts.name in self.hp.map_stopping_testsets for ts in self.test_sets)
        value = result.best_value
        better = best is None or (value is not None and (best["value"] is None or (
            value > best["value"] if higher else value < best["value"])))
        if result.stage != FINAL_STAGE and better:
            state_file = ckpt.checkpoint_paths(training.checkpoint_dir, result.best_epoch).state
            self.state["global_best"] = {"stage": result.stage, "epoch": result.best_epoch, "value": value,
                                         "checkpoint": result.checkpoint, "state": str(state_file)}
        self.state["stages"][result.stage] = dataclasses.asdict(result)
        write_text_atomic(self.state_path, json.dumps(self.state, indent=1))

    def _anchor(self) -> float | None:
        """The fold-2 anchor: ``lr_initial_fold2``, else the lr of fold 1's best checkpoint (persisted once)."""
        path = self.root / LR_ANCHOR_FILE
        if path.exists():
            return json.loads(path.read_text())["lr_anchor"]
        if self.hp.lr_initial_fold2 is not None:
            anchor = {"lr_anchor": self.hp.lr_initial_fold2, "calibrated_from_fold": None,
                      "calibrated_from_epoch": None}
        else:
            fold1 = self.state["stages"].get("1")
            if fold1 is None:
                return None
            state_file = ckpt.checkpoint_paths(self.stage_dir("1") / "checkpoints", fold1["best_epoch"]).state
            lr = float(ckpt.load_training_state(state_file)["optim_g"]["param_groups"][0]["lr"])
            anchor = {"lr_anchor": lr if lr > self.hp.min_lr else None, "calibrated_from_fold": 1,
                      "calibrated_from_epoch": fold1["best_epoch"]}
        write_text_atomic(path, json.dumps(anchor, indent=1))
        return anchor["lr_anchor"]


def with_class_count(hp: TrainingHParams, item_lists: Sequence[Sequence[FeatureItem]]) -> TrainingHParams:
    """Pin ``foc.output_dims`` to the whole data's work count: every stage's classifier must have the same shape
    for one stage's checkpoint to seed the next, although a fold may lack the highest work id."""
    if hp.foc.output_dims is not None:
        return hp
    largest = max((it.work_id for items in item_lists for it in items), default=-1)
    return dataclasses.replace(hp, foc=dataclasses.replace(hp.foc, output_dims=largest + 1))
