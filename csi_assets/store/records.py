"""What the store returns: one frozen dataclass per kind of row, so a caller reads ``row.perf``, not SQL.

Every read of the store selects exactly the fields of one record type, in order (:func:`fetch_records` checks it),
so a query and its record cannot drift apart silently. Rows are scoped by the ``dataset`` a read is given, so the
dataset is a field only where one row does not say it otherwise (models, ingest batches). A field stored as JSON
names its decoder in the field's metadata and arrives decoded.

Writes take the same records where the caller has the whole row (variants, features, a calibration), keyword
arguments for one row (a model, an evaluation, a batch's state), and the catalog writes take the verified catalog
lines as mappings: a line carries its labels and lacks what the store adds (source, batch), so it is no record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

from csi_model.calibration import Calibration

Record = TypeVar("Record")


class RecordMismatch(TypeError):
    """A query's columns are not the fields of the record type it is read into."""


def _json_object(text: str | None) -> dict[str, Any]:
    """A JSON object column; NULL (never written) reads as an empty object."""
    return json.loads(text) if text else {}


def _json_or_none(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _calibration(text: str) -> Calibration:
    return Calibration.from_dict(json.loads(text))


def _decoded(decode: Callable[[Any], Any]) -> Any:
    """A field whose stored column is decoded by ``decode`` when read."""
    return field(metadata={"decode": decode})


def record_fields(record_type: type) -> list[str]:
    """The field names of a record type, in order: the columns its query must select."""
    return [f.name for f in fields(record_type)]


def build_records(record_type: type[Record], columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Record]:
    """One ``record_type`` per row, after checking that ``columns`` (the query's) are exactly its fields, in order;
    raises :class:`RecordMismatch` naming both lists otherwise."""
    expected = record_fields(record_type)
    if list(columns) != expected:
        raise RecordMismatch(f"the query selects columns {list(columns)} but {record_type.__name__} has fields "
                             f"{expected}; select exactly the record's fields, in order")
    decoders = [f.metadata.get("decode") for f in fields(record_type)]
    return [record_type(*(value if decode is None else decode(value)  # type: ignore[call-arg]
                          for decode, value in zip(decoders, row))) for row in rows]


@dataclass(frozen=True)
class PerformanceRecord:
    """One performance of a dataset's catalog (the main catalog or a delta batch)."""

    perf: str
    """The performance id (unique in the dataset)."""
    wav: str
    """Absolute path of the audio file."""
    dur_s: float
    """Duration of the audio, seconds."""
    work: str
    """The work (composition) the performance is a version of."""
    version: str | None
    """Free-text version name from the catalog line, None when the line has none."""
    source: str
    """The catalog file whose line stored it."""
    line_no: int | None
    """1-based line of ``source``."""
    audio_hash: str
    """Content hash of the audio file: a changed recording is decoded and embedded again."""
    audio_size: int | None
    """Size of the audio file, bytes, when it was hashed (with ``audio_mtime_ns``: skip re-hashing unchanged files)."""
    audio_mtime_ns: int | None
    """Modification time of the audio file, nanoseconds since the epoch, when it was hashed."""
    batch_id: str | None
    """The delta batch that brought it; None for the main catalog."""

    @property
    def holder(self) -> str:
        """Who stored it, for messages: its batch, or its catalog file."""
        return f"batch {self.batch_id} ({self.source})" if self.batch_id else f"catalog {self.source}"


@dataclass(frozen=True)
class RejectedLineRecord:
    """A catalog line that was not stored, and why."""

    source: str
    """The catalog file."""
    line_no: int | None
    """1-based line of ``source``."""
    perf: str | None
    """The perf id, when the line got far enough to have one."""
    reason: str
    """Full sentence naming file, line and problem."""


@dataclass(frozen=True)
class CatalogWarningRecord:
    """Something odd about a stored catalog line (e.g. its duration differs from the audio's)."""

    source: str
    """The catalog file."""
    line_no: int | None
    """1-based line of ``source``."""
    perf: str | None
    """The perf id the warning is about."""
    message: str
    """Full sentence."""


@dataclass(frozen=True)
class VariantRecord:
    """One audio rendering of a performance: the original (speed 1.0, ``variant == perf``) or a tempo copy."""

    variant: str
    """The variant id (the perf id for the original, ``sp_<k>-<perf>`` for a copy)."""
    perf: str
    """The original performance."""
    speed: float
    """Tempo factor (1.0 = original)."""
    wav: str
    """Absolute path of the variant's audio."""
    dur_s: float
    """Duration of the variant's audio, seconds."""
    source_hash: str
    """``audio_hash`` of the original it was rendered from: a replaced original renders its copies again."""


@dataclass(frozen=True)
class FeatureRecord:
    """The CQT feature file of one variant under one CQT setting."""

    variant: str
    """The variant the feature was computed from."""
    path: str
    """Absolute path of the ``.npy`` file ([n_frames, n_bins] float32)."""
    n_frames: int
    """Frames in the file."""
    n_bins: int
    """CQT bins per frame."""
    audio_hash: str
    """Hash of the audio it was computed from (the variant's ``source_hash``)."""
    settings: dict[str, Any] = _decoded(_json_object)
    """The CQT settings it was computed with (``CqtSettings`` as a dict; imported features add ``origin``)."""
    verified_size: int | None = None
    """Size of the file, bytes, when it was last read whole and found sound; None until then (or once rewritten)."""
    verified_mtime_ns: int | None = None
    """Modification time of the file, nanoseconds since the epoch, when it was last read whole and found sound."""


@dataclass(frozen=True)
class FeatureTableRecord:
    """A variant with its feature, original performance, work id and split: one item for training, embedding and
    the reference-format exports."""

    variant: str
    """The variant id."""
    perf: str
    """Its original performance."""
    speed: float
    """Tempo factor of the variant (1.0 = original)."""
    variant_wav: str
    """Absolute path of the variant's audio."""
    variant_dur_s: float
    """Duration of the variant's audio, seconds."""
    wav: str
    """Absolute path of the original's audio."""
    dur_s: float
    """Duration of the original's audio, seconds."""
    work: str
    """The work of the performance."""
    version: str | None
    """Version name from the catalog line."""
    line_no: int | None
    """Catalog line of the performance."""
    batch_id: str | None
    """The delta batch that brought the performance; None for the main catalog."""
    feat: str
    """Absolute path of the feature ``.npy``."""
    n_frames: int
    """Frames in the feature."""
    audio_hash: str
    """Hash of the audio the feature was computed from."""
    work_id: int
    """The permanent integer id of ``work`` (the classifier's class)."""
    split: str | None
    """``train`` / ``val`` / ``test`` of the performance; None when it has no split (batch performances)."""


@dataclass(frozen=True)
class SplitLeakRecord:
    """A performance of a work held out as unseen that landed in another split (there should be none)."""

    work_id: int
    """The held-out work."""
    unseen_in: str
    """The split the work is held out for."""
    perf: str
    """The performance in the wrong split."""
    split: str
    """The split it is in."""


@dataclass(frozen=True)
class ModelRecord:
    """A registered model: a checkpoint of a training run, what it scored, and whether it is the one served."""

    model_id: str
    """``<training name>-<first 12 hex digits of the weight fingerprint>``."""
    dataset: str
    """The dataset it was trained on."""
    training_dir: str
    """Absolute path of the training folder."""
    checkpoint: str
    """Absolute path of the checkpoint file."""
    epoch: int | None
    """Epoch the checkpoint was written after."""
    fingerprint: str | None
    """Hash of the weights."""
    hparams: dict[str, Any] = _decoded(_json_object)
    """The training hparams (decoded)."""
    metrics: dict[str, Any] = _decoded(_json_object)
    """Validation metrics at registration (decoded; mAP, MR1, ...)."""
    promoted: bool
    """True for the dataset's one served model."""
    created_at: datetime | None
    """When it was first registered (UTC)."""
    input_contract: dict[str, Any] | None = _decoded(_json_or_none)
    """``InputContract.to_dict()`` of the features it was trained on; None when nobody knows them."""


@dataclass(frozen=True)
class EvaluationRecord:
    """The latest evaluation of a model on one test set."""

    test_set: str
    """Name of the test set."""
    metrics: dict[str, Any] = _decoded(_json_object)
    """mAP, MR1, ... (decoded)."""
    report_path: str | None
    """The written report file."""
    created_at: datetime | None
    """When the evaluation was recorded (UTC)."""


@dataclass(frozen=True)
class IngestBatchRecord:
    """The state of one delta batch."""

    batch_id: str
    """The batch id (the dynamic partition key)."""
    dataset: str
    """The dataset it adds to."""
    source: str
    """Its catalog file."""
    status: str
    """``received`` / ``ingested`` / ``failed`` / ``rejected``."""
    n_good: int
    """Lines stored."""
    n_bad: int
    """Lines rejected."""
    reason: str | None
    """Why it failed or was rejected."""
    received_at: datetime
    """When it was first recorded (UTC)."""
    updated_at: datetime
    """When its state last changed (UTC)."""


@dataclass(frozen=True)
class CentroidRecord:
    """The mean reference embedding of one work, for one model."""

    work_id: int
    """The work."""
    centroid: list[float]
    """[D] unit vector."""
    radius: float | None
    """Spread of the members: mean + 1.5 std of their cosine distances (1 - member . centroid) to the centroid."""
    coherence: float | None
    """Length of the members' plain mean, in [0, 1] (1.0 = identical members, 0 = the mean vanished)."""
    n_members: int | None
    """Reference performances averaged."""


@dataclass(frozen=True, eq=False)
class CalibrationRecord:
    """The null-distance calibration of one model (p-values and z-scores of identification)."""

    model_id: str
    """The model."""
    calibration: Calibration = _decoded(_calibration)
    """The decoded calibration."""
    created_at: datetime | None
    """When it was computed (UTC)."""


@dataclass(frozen=True)
class DatasetFoldersRecord:
    """The folders a dataset name stands for, recorded at its first use."""

    dataset: str
    """The dataset's name (its partition key)."""
    folder: str
    """Its dataset folder (absolute)."""
    training_folder: str | None
    """Its training folder (absolute), once a training run used one."""


def as_columns(record: Any, **extra: Any) -> dict[str, Any]:
    """A record's fields as a column mapping for a write, plus ``extra`` columns (e.g. the dataset)."""
    return {name: getattr(record, name) for name in record_fields(type(record))} | extra
