"""Typed hyper-parameters that read CoverHunterMPS ``hparams.yaml`` files unchanged.

Researchers arrive with the reference tool's YAML files; we accept every key it defines, check each
value's type where it is read, and turn the nested YAML into frozen dataclasses so a typo in a key is a warning
and a wrong value is an error that names the key and the file -- not a ``KeyError`` deep inside training.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from csi_model.audio import SAMPLE_RATE

LABEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
RESERVED_LABEL_NAMES = frozenset({"perf", "wav", "dur_s", "work", "version"})


class HParamsError(ValueError):
    """A hyper-parameter file has a missing, mistyped or out-of-range value."""


class UnknownHParamWarning(UserWarning):
    """A key the reference tool does not define: probably a typo, so it is reported, not ignored silently."""


@dataclass(frozen=True)
class TestSetHParams:
    """A test set for periodic mAP: any top-level mapping with both ``query_path`` and ``ref_path``."""

    query_path: str
    ref_path: str
    every_n_epoch_to_test: int = 1
    query_in_ref_path: str | None = None
    save_name: str | None = None


@dataclass(frozen=True)
class CqtHParams:
    """The reference declares the hop but ignores it (hard-coding 25 fps); we derive fps from it."""

    hop_size: float = 0.04


@dataclass(frozen=True)
class RandomEraseHParams:
    prob: float = 0.5
    erase_num: int = 4
    region_size: tuple[float, float] = (0.25, 0.1)


@dataclass(frozen=True)
class RollPitchHParams:
    prob: float = 0.5
    shift_num: int = 12
    method: str = "default"

    def __post_init__(self) -> None:
        if self.method not in ("default", "low_melody", "flex_melody"):
            raise HParamsError(
                f"spec_augmentation.roll_pitch.method: {self.method!r} is not one of "
                "'default', 'low_melody', 'flex_melody'"
            )


@dataclass(frozen=True)
class SpecAugHParams:
    random_erase: RandomEraseHParams | None = None
    roll_pitch: RollPitchHParams | None = None
    seed: int = 1234


@dataclass(frozen=True)
class EncoderHParams:
    output_dims: int = 128
    num_blocks: int = 6
    attention_dim: int = 256  # the reference's name for the feed-forward hidden width


@dataclass(frozen=True)
class FocalHParams:
    output_dims: int | None = None  # None: size the classifier to the training data's number of works
    weight: float = 1.0
    gamma: float = 2.0


@dataclass(frozen=True)
class TripletHParams:
    margin: float = 0.3
    weight: float = 0.1


@dataclass(frozen=True)
class CenterHParams:
    weight: float = 0.0


DISTRIBUTED_BACKENDS = ("auto", "nccl", "gloo")
"""``auto``: nccl when the processes train on CUDA devices, gloo on the CPU."""


@dataclass(frozen=True)
class DistributedHParams:
    """Ours: multi-process data-parallel training (see docs/scaling.md). ``nproc`` 1 trains in one process."""

    nproc: int = 1
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.nproc < 1:
            raise HParamsError(f"distributed.nproc: {self.nproc} is not >= 1")
        if self.backend not in DISTRIBUTED_BACKENDS:
            raise HParamsError(f"distributed.backend: {self.backend!r} is not one of "
                               f"{', '.join(DISTRIBUTED_BACKENDS)}")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainingHParams:
    """Training hyper-parameters (see docs/reference_tool.md)."""

    chunk_frame: tuple[int, ...] = (1125, 900, 675)
    chunk_s: float = 135.0
    mode: str = "random"
    mean_size: int = 3
    m_per_class: int = 8
    batch_size: int = 32
    learning_rate: float = 0.001
    adam_b1: float = 0.8
    adam_b2: float = 0.99
    lr_decay: float = 0.9
    min_lr: float = 0.0001
    input_dim: int = 96
    embed_dim: int = 128
    seed: int = 1234
    num_workers: int = 1
    device: str = "auto"
    # training-step speed (ours; see docs/performance.md): autocast dtype, and torch.compile of the model
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto: bf16 (else fp16) on CUDA, fp32 on CPU and MPS
    compile: bool = False
    train_path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    test_sets: Mapping[str, TestSetHParams] = field(default_factory=dict)
    early_stop_metric: str = "val_loss"
    map_stopping_testsets: tuple[str, ...] = ()
    map_smoothing_alpha: float = 0.3
    every_n_epoch_to_test: int = 1
    every_n_epoch_to_save: int = 1
    bootstrap: int = 0
    benchmark_testsets: tuple[str, ...] = ()
    data_type: str = "cqt"
    cqt: CqtHParams = field(default_factory=CqtHParams)
    spec_augmentation: SpecAugHParams | None = None
    num_gpus: int = 1
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    prodigy_d_coef: float = 1.0
    prodigy_safeguard_warmup: bool = False
    warmup: bool = False
    warmup_steps: int = 0
    hold_steps: int = 0
    early_stopping_patience: int = 20
    max_epochs: int = 100
    pool_type: str = "attention"
    encoder: EncoderHParams = field(default_factory=EncoderHParams)
    foc: FocalHParams = field(default_factory=FocalHParams)
    triplet: TripletHParams = field(default_factory=TripletHParams)
    center: CenterHParams = field(default_factory=CenterHParams)
    distributed: DistributedHParams = field(default_factory=DistributedHParams)
    # production training (see docs/reference_tool.md)
    k_folds: int | None = None
    lr_initial_fold2: float | None = None
    fold_hold_steps: int = 0
    fold_lr_decay: float | None = None
    final_lr_decay: float | None = None
    final_fold_position: float | None = None
    final_early_stopping_patience: int | None = None
    map_stopping_patience: int | None = None
    source: str | None = None  # the file these were read from, for error messages

    def __post_init__(self) -> None:
        _require(self.mode in ("random", "defined"), "mode", f"{self.mode!r} is not 'random' or 'defined'", self)
        _require(self.mean_size >= 1, "mean_size", "must be >= 1", self)
        _require(len(self.chunk_frame) >= 1, "chunk_frame", "needs at least one chunk length", self)
        _require(all(c > 0 for c in self.chunk_frame), "chunk_frame", "lengths must be positive", self)
        _require(self.m_per_class >= 1, "m_per_class", "must be >= 1", self)
        _require(
            self.batch_size % self.m_per_class == 0,
            "batch_size",
            f"{self.batch_size} is not a multiple of m_per_class {self.m_per_class}",
            self,
        )
        _require(
            self.early_stop_metric in ("val_loss", "mAP"),
            "early_stop_metric",
            f"{self.early_stop_metric!r} is not 'val_loss' or 'mAP'",
            self,
        )
        _require(self.optimizer in ("adamw", "prodigy"), "optimizer", f"{self.optimizer!r} is unknown", self)
        _require(self.precision in PRECISIONS, "precision", f"{self.precision!r} is not one of {PRECISIONS}", self)
        _require(self.num_workers >= 0, "num_workers", "must be >= 0", self)
        _require(self.learning_rate > 0, "learning_rate", "must be > 0", self)
        _require(0 < self.lr_decay <= 1, "lr_decay", "must be in (0, 1]", self)
        _require(self.cqt.hop_size > 0, "cqt.hop_size", "must be > 0", self)
        _require(self.hop_samples(SAMPLE_RATE) >= 1, "cqt.hop_size", _sub_sample_hop(self.cqt.hop_size), self)

    def hop_samples(self, sample_rate: int = 16000) -> int:
        """The CQT hop in samples at ``sample_rate`` (640 at 16 kHz for the reference's 0.04 s)."""
        return int(round(self.cqt.hop_size * sample_rate))

    def fps(self, sample_rate: int = 16000) -> float:
        """Raw CQT frames per second, derived from the hop instead of the reference's hard-coded 25."""
        return sample_rate / self.hop_samples(sample_rate)

    @property
    def eval_chunk_raw_frames(self) -> int:
        """The evaluation window in raw frames: the first training chunk, before time pooling."""
        return self.chunk_frame[0] * self.mean_size


TEMPO_MODES = ("features", "audio")
"""How ``aug_speed_mode`` is applied: resampling the CQT's time axis per training chunk, or rendered audio copies."""


@dataclass(frozen=True)
class DataPrepHParams:
    """Data-preparation hyper-parameters. ``seed`` is ours: the reference's split is unseeded."""

    fmin: float = 32.0
    n_bins: int = 96
    bins_per_octave: int = 12
    aug_speed_mode: tuple[float, ...] = (1.0,)
    tempo_augmentation: str = "features"  # ours: "features" (time axis of the CQT, on the fly) or "audio" (variants)
    add_noise: Mapping[str, Any] | None = None
    hop_size: float = 0.04  # ours: the CQT hop in seconds (the reference hard-codes 640 samples at 16 kHz)
    device: str = "auto"
    val_data_split: float = 0.0
    val_unseen: float = 0.0
    test_data_split: float = 0.0
    test_data_unseen: float = 0.0
    seed: int = 1234
    labels: tuple[str, ...] = ()
    """Ours: extra ``dataset.txt`` keys stored per performance as musical categories (``label_probe``)."""
    source: str | None = None

    def __post_init__(self) -> None:
        _require(self.fmin > 0, "fmin", "must be > 0", self)
        _require(self.n_bins > 0, "n_bins", "must be > 0", self)
        _require(self.bins_per_octave > 0, "bins_per_octave", "must be > 0", self)
        _require(self.hop_size > 0, "hop_size", "must be > 0", self)
        _require(round(self.hop_size * SAMPLE_RATE) >= 1, "hop_size", _sub_sample_hop(self.hop_size), self)
        problem = cqt_range_problem(self.fmin, self.n_bins, self.bins_per_octave, SAMPLE_RATE)
        _require(problem is None, "fmin, n_bins, bins_per_octave", str(problem), self)
        _require(len(self.aug_speed_mode) > 0, "aug_speed_mode", "needs at least one factor (use [1.0])", self)
        _require(all(k > 0 for k in self.aug_speed_mode), "aug_speed_mode", "factors must be > 0", self)
        _require(self.tempo_augmentation in TEMPO_MODES, "tempo_augmentation",
                 f"{self.tempo_augmentation!r} is not one of {', '.join(TEMPO_MODES)}", self)
        for key in ("val_data_split", "val_unseen", "test_data_split", "test_data_unseen"):
            value = getattr(self, key)
            _require(0.0 <= value < 1.0, key, f"{value} is not a fraction in [0, 1)", self)
        for name in self.labels:
            _require(LABEL_NAME.fullmatch(name) is not None, "labels",
                     f"{name!r} is not a label name (letters, digits, _ . -; it names a partition and a folder)", self)
            _require(name not in RESERVED_LABEL_NAMES, "labels",
                     f"{name!r} is a catalog key of its own, not a label", self)
        _require(len(set(self.labels)) == len(self.labels), "labels", f"{list(self.labels)} repeats a name", self)


def cqt_top_bin_hz(fmin: float, n_bins: int, bins_per_octave: int) -> float:
    """Centre frequency (Hz) of the highest CQT bin: ``fmin · 2^((n_bins − 1) / bins_per_octave)``."""
    return fmin * 2.0 ** ((n_bins - 1) / bins_per_octave)


def cqt_range_problem(fmin: float, n_bins: int, bins_per_octave: int, sample_rate: int) -> str | None:
    """Why a CQT bin layout cannot work at ``sample_rate`` Hz, or None when it can.

    The rule is nnAudio's own (both ``CQT1992v2`` and ``CQT2010v2`` refuse a top-bin centre above the Nyquist
    frequency ``sample_rate / 2``, and build every layout below it): a bin above Nyquist would only see aliased
    energy. The message gives the largest ``n_bins`` (or ``fmin``) that would fit."""
    nyquist = sample_rate / 2
    top = cqt_top_bin_hz(fmin, n_bins, bins_per_octave)
    if top <= nyquist:
        return None
    if fmin > nyquist:
        return f"fmin {fmin:g} Hz is above the Nyquist frequency {nyquist:g} Hz of {sample_rate} Hz audio"
    max_bins = math.floor(bins_per_octave * math.log2(nyquist / fmin)) + 1
    highest_fmin = nyquist / 2.0 ** ((n_bins - 1) / bins_per_octave)
    return (f"the top CQT bin fmin·2^((n_bins−1)/bins_per_octave) = {fmin:g}·2^({n_bins - 1}/{bins_per_octave}) "
            f"= {top:.1f} Hz is above the Nyquist frequency {nyquist:g} Hz of {sample_rate} Hz audio; "
            f"use at most {max_bins} bins from fmin {fmin:g} Hz, or fmin ≤ {math.floor(highest_fmin * 100) / 100:g} "
            f"Hz for {n_bins} bins")


def _sub_sample_hop(hop_size: float) -> str:
    return f"{hop_size:g} s is less than one sample at {SAMPLE_RATE} Hz"


def _require(ok: bool, key: str, message: str, hp: Any) -> None:
    if not ok:
        raise HParamsError(f"{hp.source or '<hparams>'}: {key}: {message}")


# ---------------------------------------------------------------------------------------------------------------
# Loading: YAML mapping -> dataclasses, with type checks that name the key and file.

_TOP_LEVEL_TESTSET_KEYS = frozenset({"query_path", "ref_path"})
T = TypeVar("T")


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check ``value`` against a dataclass field annotation; convert lists to tuples and nested maps to dataclasses."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except HParamsError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise HParamsError(f"{source}: {key}: expected a mapping, got {value!r}")
        return _build(annotation, value, source, prefix=f"{key}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise HParamsError(f"{source}: {key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0]
        return tuple(_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, Mapping):
            raise HParamsError(f"{source}: {key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise HParamsError(f"{source}: {key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HParamsError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HParamsError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise HParamsError(f"{source}: {key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # a programming error, not user input


def _build(cls: type[T], raw: Mapping[str, Any], source: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name not in ("source", "test_sets")}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in known:
            if value is None and _default_is_not_none(cls, key):
                continue  # a null in YAML means "keep the default", as the reference's deep merge does
            kwargs[key] = _coerce(value, hints[key], prefix + key, source)
        else:
            warnings.warn(
                f"{source}: unknown hyper-parameter {prefix}{key!r} is ignored", UnknownHParamWarning, stacklevel=3
            )
    if "source" in hints:
        kwargs["source"] = source
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise HParamsError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {err}") from err


def _default_is_not_none(cls: type, key: str) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    if f.default is not dataclasses.MISSING:
        return f.default is not None
    return True


def training_hparams_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> TrainingHParams:
    """Split off the test-set mappings (any mapping with query_path and ref_path), then build the rest."""
    test_sets: dict[str, TestSetHParams] = {}
    rest: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and _TOP_LEVEL_TESTSET_KEYS <= set(value):
            test_sets[key] = _build(TestSetHParams, value, source, prefix=f"{key}.")
        else:
            rest[key] = value
    hp = _build(TrainingHParams, rest, source)
    return dataclasses.replace(hp, test_sets=test_sets)


def data_hparams_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> DataPrepHParams:
    return _build(DataPrepHParams, raw, source)


def parse_yaml_mapping(text: str, source: str) -> Mapping[str, Any]:
    """A YAML document that must be a mapping of keys (every hyper-parameter file is one)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise HParamsError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(raw, Mapping):
        raise HParamsError(f"{source}: expected a mapping of keys at the top level")
    return raw


def read_config_text(path: str | Path, what: str = "hyper-parameters") -> str:
    """A configuration file's text; an unreadable file is an :class:`HParamsError` naming it."""
    try:
        return Path(path).read_text()
    except OSError as err:
        raise HParamsError(f"{path}: cannot read {what}: {err.strerror}") from err


def _read_yaml(path: str | Path) -> Mapping[str, Any]:
    return parse_yaml_mapping(read_config_text(path), str(path))


def load_training_hparams(path: str | Path) -> TrainingHParams:
    return training_hparams_from_dict(_read_yaml(path), source=str(path))


def load_data_hparams(path: str | Path) -> DataPrepHParams:
    return data_hparams_from_dict(_read_yaml(path), source=str(path))


def to_dict(hp: TrainingHParams | DataPrepHParams) -> dict[str, Any]:
    """The YAML-shaped mapping of ``hp`` (test sets back at the top level), for round trips and the store."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(hp):
        value = getattr(hp, f.name)
        if f.name == "source":
            continue
        if f.name == "test_sets":
            for name, ts in value.items():
                out[name] = _plain(ts)
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def with_overrides(hp: TrainingHParams, overrides: Mapping[str, Any]) -> TrainingHParams:
    """Deep-merge ``overrides`` onto ``hp`` (nulls skipped, as the reference's sweep tool does) and re-validate."""
    merged = _deep_merge(to_dict(hp), overrides)
    return training_hparams_from_dict(merged, source=hp.source or "<overrides>")


def _deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out
