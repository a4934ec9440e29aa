"""Hyper-parameter sweeps (see docs/reference_tool.md): ``hp_tuning.yaml`` → experiments → a summary.

A sweep varies one factor at a time, not a grid: each of nine groups (in a fixed order) lists candidate values,
and each value is trained once per seed from the same base hparams. The file is read with PyYAML ``safe_load``
exactly like the reference, so a repeated key wins over the earlier one — the idiom is to keep a list of tried
values and switch the group off by repeating the key with ``[]`` or ``{}``.

Fixed here: ``hp_overrides`` apply to every group (the reference skipped them for ``chunk_frames``), and a run's
seed drives everything random (init, sampler, augmentation), so seeds give genuinely different runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from csi_model.hparams import HParamsError, TrainingHParams, parse_yaml_mapping, read_config_text, with_overrides

GROUPS = ("chunk_frames", "m_per_classes", "num_blockss", "spec_augmentations", "losses", "learning_rates",
          "lr_decays", "adam_betas", "optimizers")
_SETTINGS = {"test_name", "foundation_checkpoint", "restore_optimizer_state", "hp_overrides", "early_stop_metric",
             "map_stopping_testsets", "map_smoothing_alpha", "early_stopping_patience", "max_epochs", "seeds",
             "mean_sizes"}
DEFAULT_MAX_EPOCHS = 15


@dataclass(frozen=True)
class Tuning:
    """The sweep file: tuning-wide settings and the candidate values of each group (empty = group off)."""

    source: str
    early_stopping_patience: int
    groups: Mapping[str, list[Any]]
    test_name: str | None = None
    seeds: tuple[int, ...] | None = None  # None: the base hparams' seed
    mean_sizes: tuple[int, ...] | None = None  # None: the base hparams' mean_size
    hp_overrides: Mapping[str, Any] = field(default_factory=dict)
    max_epochs: int = DEFAULT_MAX_EPOCHS
    early_stop_metric: str = "val_loss"
    map_stopping_testsets: tuple[str, ...] = ()
    map_smoothing_alpha: float = 0.3
    foundation_checkpoint: str | None = None
    restore_optimizer_state: bool = False

    def run_settings(self) -> dict[str, Any]:
        """What every run of the sweep shares, whatever its group."""
        return {"max_epochs": self.max_epochs, "early_stop_metric": self.early_stop_metric,
                "map_stopping_testsets": list(self.map_stopping_testsets),
                "map_smoothing_alpha": self.map_smoothing_alpha,
                "early_stopping_patience": self.early_stopping_patience}


@dataclass(frozen=True)
class Experiment:
    """One run: a group's value at one seed. ``key`` names its partition and folder."""

    key: str
    name: str
    group: str
    seed: int
    factor: Mapping[str, Any]  # the hparams the group's value sets


def parse_tuning(text: str, source: str = "<hp_tuning>") -> Tuning:
    raw = parse_yaml_mapping(text, source)
    unknown = set(raw) - _SETTINGS - set(GROUPS)
    if unknown:
        raise HParamsError(f"{source}: unknown key(s) {sorted(unknown)}; the sweep keys are "
                           f"{sorted(_SETTINGS | set(GROUPS))}")
    if not isinstance(raw.get("early_stopping_patience"), int) or raw["early_stopping_patience"] < 1:
        raise HParamsError(f"{source}: early_stopping_patience: required, a positive integer (it is also the "
                           f"slope window of the summary)")
    groups = {g: _group_values(raw.get(g), g, source) for g in GROUPS}
    overrides = raw.get("hp_overrides") or {}
    if not isinstance(overrides, Mapping):
        raise HParamsError(f"{source}: hp_overrides: expected a mapping, got {overrides!r}")
    return Tuning(
        source=source,
        early_stopping_patience=raw["early_stopping_patience"],
        groups=groups,
        test_name=raw.get("test_name"),
        seeds=_int_tuple(raw.get("seeds"), "seeds", source),
        mean_sizes=_int_tuple(raw.get("mean_sizes"), "mean_sizes", source),
        hp_overrides=dict(overrides),
        max_epochs=int(raw.get("max_epochs") or DEFAULT_MAX_EPOCHS),
        early_stop_metric=raw.get("early_stop_metric") or "val_loss",
        map_stopping_testsets=tuple(raw.get("map_stopping_testsets") or ()),
        map_smoothing_alpha=float(raw.get("map_smoothing_alpha") or 0.3),
        foundation_checkpoint=raw.get("foundation_checkpoint"),
        restore_optimizer_state=bool(raw.get("restore_optimizer_state") or False),
    )


def load_tuning(path: str | Path) -> Tuning:
    return parse_tuning(read_config_text(path, "the sweep file"), str(path))


def _group_values(value: Any, group: str, source: str) -> list[Any]:
    """A group's candidates; ``[]``, ``{}`` or a missing key switch it off."""
    if value is None or value == [] or value == {}:
        return []
    if not isinstance(value, list):
        raise HParamsError(f"{source}: {group}: expected a list of candidate values (or [] / {{}} for off), "
                           f"got {value!r}")
    return value


def _int_tuple(value: Any, key: str, source: str) -> tuple[int, ...] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise HParamsError(f"{source}: {key}: expected a list of integers, got {value!r}")
    return tuple(value)


# -- the groups: hparams each value sets, and the reference's run names ------------------------------------------


def _number(value: Any) -> str:
    return str(value)


def _chunk_runs(tuning: Tuning, base: TrainingHParams) -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for frames in tuning.groups["chunk_frames"]:
        for mean_size in tuning.mean_sizes or (base.mean_size,):
            name = "chunk_frame" + "_".join(_number(f) for f in frames) + f"_mean_size{mean_size}"
            runs.append((name, {"chunk_frame": list(frames), "mean_size": mean_size,
                                "chunk_s": frames[0] * mean_size / base.fps()}))
    return runs


def _spec_aug_name(entry: Mapping[str, Any], source: str) -> str:
    try:
        erase, roll = entry["random_erase"], entry["roll_pitch"]
        width, height = erase["region_size"]
        return (f"erase_prob{_number(erase['prob'])}_num{erase['erase_num']}_size{_number(width)}_{_number(height)}"
                f"_roll_prob{_number(roll['prob'])}_shift{roll['shift_num']}_{roll.get('method', 'default')}")
    except (KeyError, TypeError, ValueError) as err:
        raise HParamsError(f"{source}: spec_augmentations: each entry needs random_erase (prob, erase_num, "
                           f"region_size [w, h]) and roll_pitch (prob, shift_num[, method]); {entry!r} lacks "
                           f"{err}") from None


def _loss_name(entry: Mapping[str, Any], base: TrainingHParams) -> str:
    foc, trip, cen = entry.get("foc", {}), entry.get("triplet", {}), entry.get("center", {})
    return (f"FOC_dims{foc.get('output_dims', base.foc.output_dims)}_wt{foc.get('weight', base.foc.weight)}"
            f"_gamma{foc.get('gamma', base.foc.gamma)}_TRIP_marg{trip.get('margin', base.triplet.margin)}"
            f"_wt{trip.get('weight', base.triplet.weight)}_CNTR_wt{cen.get('weight', base.center.weight)}")


def _group_runs(group: str, tuning: Tuning, base: TrainingHParams) -> list[tuple[str, dict[str, Any]]]:
    values = tuning.groups[group]
    if group == "chunk_frames":
        return _chunk_runs(tuning, base)
    makers: dict[str, Callable[[Any], tuple[str, dict[str, Any]]]] = {
        "m_per_classes": lambda v: (f"m_per_class{v}", {"m_per_class": v}),
        "num_blockss": lambda v: (f"num_blocks{v}", {"encoder": {"num_blocks": v}}),
        "spec_augmentations": lambda v: (_spec_aug_name(v, tuning.source), {"spec_augmentation": v}),
        "losses": lambda v: (_loss_name(v, base), dict(v)),
        "learning_rates": lambda v: (f"lrate{_number(v)}", {"learning_rate": v}),
        "lr_decays": lambda v: (f"lr_decay{_number(v)}", {"lr_decay": v}),
        "adam_betas": lambda v: (f"adam_betas{_number(v[0])}_{_number(v[1])}", {"adam_b1": v[0], "adam_b2": v[1]}),
        "optimizers": lambda v: (f"optimizer_{v}", {"optimizer": v}),
    }
    return [makers[group](v) for v in values]


def plan_experiments(tuning: Tuning, base: TrainingHParams) -> list[Experiment]:
    """Every (group value, seed) in group order; each one's hparams are built once here so a bad value fails the
    plan, naming the file and group, instead of failing a run later."""
    experiments: list[Experiment] = []
    seen: dict[str, str] = {}
    for group in GROUPS:
        for name, factor in _group_runs(group, tuning, base):
            if name in seen:
                raise HParamsError(f"{tuning.source}: {group}: run {name!r} is listed twice")
            seen[name] = group
            for seed in tuning.seeds or (base.seed,):
                experiment = Experiment(f"{name}__seed{seed}", name, group, seed, factor)
                try:
                    experiment_hparams(base, tuning, experiment)
                except HParamsError as err:
                    raise HParamsError(f"{tuning.source}: {group}: value for {name!r} gives invalid hparams: "
                                       f"{err}") from None
                experiments.append(experiment)
    return experiments


def experiment_hparams(base: TrainingHParams, tuning: Tuning, experiment: Experiment) -> TrainingHParams:
    """Base ← hp_overrides (nulls skipped, every group) ← tuning-wide settings ← the group's value ← the seed."""
    hp = with_overrides(base, tuning.hp_overrides)
    hp = with_overrides(hp, tuning.run_settings())
    hp = with_overrides(hp, experiment.factor)
    return dataclasses.replace(hp, seed=experiment.seed)


# -- outcomes and the summary -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    """What one run left behind: its curves (epoch, value) and, when computed, a bootstrap CI of the mAP."""

    key: str
    name: str
    seed: int
    diverged: bool
    val_loss: list[tuple[int, float]]
    mean_ap: dict[str, list[tuple[int, float]]]
    seconds: float
    bootstrap: dict[str, float] | None = None  # ci_low, ci_high, std of the mAP; n_unanswerable (left out)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunOutcome:
        raw = json.loads(text)
        raw["val_loss"] = [tuple(p) for p in raw["val_loss"]]
        raw["mean_ap"] = {name: [tuple(p) for p in points] for name, points in raw["mean_ap"].items()}
        return cls(**raw)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        finite = [v for v in values if not math.isnan(v)]
        return cls(float(np.mean(finite)), float(np.std(finite))) if finite else cls(math.nan, math.nan)

    def __str__(self) -> str:
        return "n/a" if math.isnan(self.mean) else f"{self.mean:.4f}±{self.std:.4f}"


@dataclass(frozen=True)
class CurveSummary:
    final: Stat
    slope: Stat  # least-squares slope over the last `patience` epochs
    best: Stat
    best_epoch: Stat


@dataclass(frozen=True)
class ExperimentSummary:
    name: str
    seeds: tuple[int, ...]
    diverged: tuple[int, ...]
    val_loss: CurveSummary
    mean_ap: CurveSummary | None  # None without a test set
    benchmarks: dict[str, Stat]
    ci: tuple[float, float, float] | None  # mean ci_low, ci_high, std over seeds


def tail_slope(points: Sequence[tuple[int, float]], window: int) -> float:
    """Least-squares slope of value against epoch over the last ``window`` points (NaN with fewer than two)."""
    tail = points[-window:]
    if len(tail) < 2:
        return math.nan
    epochs, values = np.array(tail, dtype=float).T
    return float(np.polyfit(epochs, values, 1)[0])


def _curve(curves: Sequence[Sequence[tuple[int, float]]], window: int, higher_is_better: bool) -> CurveSummary:
    present = [c for c in curves if c]
    pick = max if higher_is_better else min
    bests = [pick(c, key=lambda p: p[1]) for c in present]
    return CurveSummary(Stat.of([c[-1][1] for c in present]), Stat.of([tail_slope(c, window) for c in present]),
                        Stat.of([b[1] for b in bests]), Stat.of([float(b[0]) for b in bests]))


def summarise(outcomes: Sequence[RunOutcome], window: int, test_name: str | None,
              benchmarks: Sequence[str] = ()) -> list[ExperimentSummary]:
    """Per experiment (in first-seen order), mean ± std over its non-diverged seeds (np.std, as the reference)."""
    by_name: dict[str, list[RunOutcome]] = {}
    for outcome in outcomes:
        by_name.setdefault(outcome.name, []).append(outcome)
    summaries = []
    for name, runs in by_name.items():
        ok = [r for r in runs if not r.diverged]
        cis = [r.bootstrap for r in ok if r.bootstrap]
        summaries.append(ExperimentSummary(
            name=name,
            seeds=tuple(r.seed for r in runs),
            diverged=tuple(r.seed for r in runs if r.diverged),
            val_loss=_curve([r.val_loss for r in ok], window, higher_is_better=False),
            mean_ap=_curve([r.mean_ap.get(test_name, []) for r in ok], window, higher_is_better=True)
            if test_name else None,
            benchmarks={b: Stat.of([r.mean_ap[b][-1][1] for r in ok if r.mean_ap.get(b)]) for b in benchmarks},
            ci=tuple(float(np.mean([c[k] for c in cis])) for k in ("ci_low", "ci_high", "std")) if cis else None,
        ))
    return summaries


def _slope(stat: Stat) -> str:
    return "n/a" if math.isnan(stat.mean) else f"{stat.mean:+.4f}"


def _best(curve: CurveSummary) -> str:
    return "n/a" if math.isnan(curve.best.mean) else f"{curve.best.mean:.4f} @{curve.best_epoch.mean:g}"


def markdown_table(summaries: Sequence[ExperimentSummary], test_name: str | None, window: int) -> str:
    """The summary as a Markdown table; slopes read as in the reference's README (val ↓ and mAP ↑: improving)."""
    label = f"mAP [{test_name}]" if test_name else "mAP"
    benchmarks = sorted({b for s in summaries for b in s.benchmarks})
    header = ["experiment", "seeds", "val_loss", f"val slope ({window} ep)", "best val_loss @epoch", label,
              f"mAP slope ({window} ep)", "best mAP @epoch", "95% CI (±sd)", *[f"bmAP {b}" for b in benchmarks],
              "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        m = s.mean_ap
        ci = f"[{s.ci[0]:.3f}, {s.ci[1]:.3f}] ±{s.ci[2]:.3f}" if s.ci else "n/a"
        if len(s.diverged) == len(s.seeds):
            notes = f"ALL {len(s.seeds)} SEEDS DIVERGED"
        elif s.diverged:
            notes = "diverged seeds: " + ", ".join(map(str, s.diverged))
        else:
            notes = ""
        row = [s.name, ", ".join(map(str, s.seeds)), str(s.val_loss.final), _slope(s.val_loss.slope),
               _best(s.val_loss), str(m.final) if m else "n/a", _slope(m.slope) if m else "n/a",
               _best(m) if m else "n/a", ci, *[str(s.benchmarks.get(b, Stat(math.nan, math.nan))) for b in benchmarks],
               notes]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
