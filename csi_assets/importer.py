"""Import CoverHunterMPS folders as they are (design "Interoperability"): its catalog, its features, its work ids
and its best model go into the store, nothing is re-extracted or re-trained.

* Data folder: ``full.txt`` (with ``cqt_feat/*.cqt.npy``) or only ``dataset.txt``, plus its ``hparams.yaml``. The
  dataset's store name is the folder name, as for every dataset. Original performances (speed 1.0 lines) become
  catalog rows, every line (``sp_<k>-<perf>`` tempo copies included) a variant, and every ``.npy`` a feature as it
  is: its frame count is read from the file (``feat_len`` is not trusted), float32 or float16 alike.
* The features are the reference's, whose CQT class (CQT1992v2 on MPS, CQT2010v2 on CUDA) is unknown. They are
  recorded under the dataset's settings hash (the one ``reference_embeddings`` and identification look up) with
  settings marked ``origin: reference-import`` and the class as unknown, so they are never taken for ours: an
  import refuses a dataset whose features were computed here, and features are only ever reused within the same
  dataset.
* Work ids are full.txt's ``work_id``, kept as they are (the store never renumbers a work).
* Training folder: ``config/hparams.yaml`` and the g_ checkpoint of the highest epoch (the reference's rule for
  inference), registered and promoted for the dataset with those hparams. Its hop and ``input_dim`` must be
  the data folder's ``hop_size`` and ``n_bins``; its input contract is the data folder's CQT settings, with the
  CQT class unknown.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.catalog import rejection_rows
from csi_assets.dataset_folders import dataset_folder, training_folder
from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureRecord, VariantRecord
from csi_model.catalog import CatalogRow, parse_catalog, scan_records
from csi_model.checkpoint import GENERATOR_PREFIX, CheckpointError, checkpoint_epoch, latest_generator
from csi_model.contract import InputContract, InputContractError, check_input_contract
from csi_model.cqt import content_hash, settings_for
from csi_model.hparams import DataPrepHParams, HParamsError, load_data_hparams, load_training_hparams, to_dict
from csi_model.identifiers import UnsafePathError, contained, tempo_copy_of
from csi_model.loading import model_from_checkpoint

IMPORT_ORIGIN = "reference-import"
UNKNOWN_CQT_CLASS = "unknown: CQT1992v2 (MPS) or CQT2010v2 (CUDA)"


class ReferenceImportError(ValueError):
    """A folder that cannot be imported; the message names the file (and line)."""


@dataclass
class ImportReport:
    dataset: str
    performances: int = 0
    variants: int = 0
    features: int = 0
    works: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # line_no, raw, reason
    warnings: list[dict[str, Any]] = field(default_factory=list)  # line_no, perf, message
    model_id: str | None = None
    checkpoint: str | None = None
    epoch: int | None = None


def import_reference(store: Store, data_dir: str | os.PathLike[str], training_dir: str | os.PathLike[str] | None,
                     cwd: str | os.PathLike[str] | None = None) -> ImportReport:
    """Import a reference data folder (and, when given, its training folder) into ``store``.

    Relative ``wav`` and ``feat`` paths are tried against the catalog's folder, then ``cwd`` (default: the
    working directory: the reference tool is run from its repository root, so its files say ``data/…``)."""
    data_dir = DatasetLayout.at(data_dir).root  # named as given, like every dataset folder (a symlink is not followed)
    report = ImportReport(dataset=data_dir.name)
    full, catalog = data_dir / "full.txt", data_dir / "dataset.txt"
    if not full.is_file() and not catalog.is_file():
        raise ReferenceImportError(f"{data_dir}: neither full.txt nor dataset.txt: not a CoverHunterMPS data folder")
    try:  # the name now stands for these folders, in every process (a conflicting record refuses the import)
        dataset_folder(store, data_dir.name, data_dir, source="--data")
        if training_dir is not None:
            training_folder(store, data_dir.name, training_dir, data_dir.name)
    except RunFailed as err:
        raise ReferenceImportError(err.description) from err
    if full.is_file():
        _import_full(store, data_dir, full, Path(cwd or os.getcwd()).resolve(), report)
    else:
        _import_catalog_only(store, data_dir.name, catalog, cwd, report)
    if training_dir is not None:
        _import_model(store, data_dir.name, TrainingLayout.at(training_dir).root, report, _data_hparams(data_dir))
    return report


# ---------------------------------------------------------------------------------------------------------------
# Catalog, variants, features, work ids


@dataclass(frozen=True)
class _Line:
    row: CatalogRow
    original: str
    speed: float
    feat: Path
    n_frames: int
    n_bins: int
    dtype: str
    work_id: int

    @property
    def is_original(self) -> bool:
        """The line of an original recording, not of a tempo copy (whose id names its original)."""
        return self.original == self.row.perf


def _original_of(perf: str) -> tuple[str, float]:
    """A tempo copy's original and factor; ``(perf, 1.0)`` for an original. A copy whose original has no line is
    rejected later, never taken for an original: its id is in the namespace of generated copies."""
    return tempo_copy_of(perf) or (perf, 1.0)


def _import_full(store: Store, data_dir: Path, full: Path, cwd: Path, report: ImportReport) -> None:
    settings = settings_for(_data_hparams(data_dir))
    parsed = parse_catalog(full, cwd, tempo_copies=True)
    report.rejected += rejection_rows(parsed.rejected)
    fields_of = dict(scan_records(full))  # the extra keys (feat, work_id) of each line parse_catalog accepted
    lines = []
    for row in parsed.rows:
        try:
            lines.append(_feature_line(row, fields_of[row.line_no], full, data_dir, cwd, settings.n_bins, report))
        except ReferenceImportError as err:
            report.rejected.append({"line_no": row.line_no, "raw": row.perf, "reason": str(err)})
    _refuse_own_features(store, data_dir.name, settings.settings_hash())
    hashes = {line.row.perf: content_hash(line.row.wav) for line in lines if line.is_original}
    orphans = [line for line in lines if line.original not in hashes]  # a copy whose original was rejected
    report.rejected += [{"line_no": line.row.line_no, "raw": line.row.perf, "reason":
                         f"{full}:{line.row.line_no}: tempo copy of {line.original!r}, which has no usable line"}
                        for line in orphans]
    lines = [line for line in lines if line.original in hashes]
    _record_work_ids(store, data_dir.name, lines, full)  # first: a work id conflict stops the import unwritten
    _record_catalog(store, data_dir.name, str(full), [line.row for line in lines if line.is_original],
                    hashes, report)
    feature_store.replace_variants(store, data_dir.name, sorted(hashes), [
        VariantRecord(variant=line.row.perf, perf=line.original, speed=line.speed, wav=str(line.row.wav),
                      dur_s=line.row.dur_s, source_hash=hashes[line.original]) for line in lines])
    recorded = {**asdict(settings), "origin": IMPORT_ORIGIN, "cqt_class": UNKNOWN_CQT_CLASS,
                "dtype": sorted({line.dtype for line in lines}), "source": str(full)}
    feature_store.record_features(store, data_dir.name, settings.settings_hash(), [
        FeatureRecord(variant=line.row.perf, path=str(line.feat), n_frames=line.n_frames, n_bins=line.n_bins,
                      audio_hash=hashes[line.original], settings=recorded) for line in lines])
    report.variants = report.features = len(lines)
    report.works = len({line.row.work for line in lines})


def _data_hparams(data_dir: Path) -> DataPrepHParams:
    try:
        return load_data_hparams(data_dir / "hparams.yaml")
    except HParamsError as err:
        raise ReferenceImportError(str(err)) from err


def _feature_line(row: CatalogRow, raw: Mapping[str, Any], full: Path, data_dir: Path, cwd: Path, n_bins: int,
                  report: ImportReport) -> _Line:
    where = f"{full}:{row.line_no}"
    if "feat" not in raw or "work_id" not in raw:
        raise ReferenceImportError(f"{where}: a full.txt line needs feat and work_id (perf {row.perf!r})")
    feat = _resolve_feature(str(raw["feat"]), data_dir, cwd, row.perf, where)
    try:
        array = np.load(feat, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ReferenceImportError(f"{where}: cannot read {feat}: {err}") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != n_bins or array.dtype.kind != "f":
        raise ReferenceImportError(f"{where}: {feat} is {array.dtype} {array.shape}, expected float [frames, {n_bins}]")
    feat_len = raw.get("feat_len")
    if feat_len is not None and str(feat_len).strip() != str(array.shape[0]):
        message = f"{where}: feat_len {feat_len} but {feat} has {array.shape[0]} frames; using the file's"
        report.warnings.append({"line_no": row.line_no, "perf": row.perf, "message": message})
    try:
        work_id = int(str(raw["work_id"]).strip())
    except ValueError:
        raise ReferenceImportError(f"{where}: work_id {raw['work_id']!r} is not an integer") from None
    original, speed = _original_of(row.perf)
    return _Line(row, original, speed, feat, int(array.shape[0]), int(array.shape[1]), str(array.dtype), work_id)


def _resolve_feature(feat: str, data_dir: Path, cwd: Path, perf: str, where: str) -> Path:
    given = Path(feat).expanduser()
    candidates = [given] if given.is_absolute() else [data_dir / given, cwd / given]
    try:  # the reference's own name for the feature, looked up only when it stays inside cqt_feat/
        candidates.append(contained(data_dir / "cqt_feat", f"{perf}.cqt.npy"))
    except UnsafePathError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ReferenceImportError(f"{where}: feature file {feat!r} not found (tried {', '.join(map(str, candidates))})")


def _refuse_own_features(store: Store, dataset: str, settings_hash: str) -> None:
    """Features this project computed for the same dataset and settings must not be mixed with imported ones."""
    ours = [v for v, r in feature_store.features(store, dataset, settings_hash).items()
            if r.settings.get("origin") != IMPORT_ORIGIN]
    if ours:
        raise ReferenceImportError(f"dataset {dataset!r} already has {len(ours)} features computed by this project "
                           f"(e.g. {ours[0]}); import into a folder of another name instead of mixing them")


def _record_catalog(store: Store, dataset: str, source: str, rows: Sequence[CatalogRow], hashes: Mapping[str, str],
                    report: ImportReport) -> None:
    records = []
    for row in rows:
        stat = row.wav.stat()
        records.append({"perf": row.perf, "wav": str(row.wav), "dur_s": row.dur_s, "work": row.work,
                        "version": row.version, "line_no": row.line_no, "audio_hash": hashes[row.perf],
                        "audio_size": stat.st_size, "audio_mtime_ns": stat.st_mtime_ns})
    catalog_store.replace_catalog(store, dataset, source, records, report.rejected, report.warnings)
    report.performances = len(records)


def _record_work_ids(store: Store, dataset: str, lines: Sequence[_Line], full: Path) -> None:
    ids: dict[str, int] = {}
    for line in lines:
        if ids.setdefault(line.row.work, line.work_id) != line.work_id:
            raise ReferenceImportError(f"{full}:{line.row.line_no}: work {line.row.work!r} has work_id {line.work_id}, "
                               f"an earlier line gave it {ids[line.row.work]}")
    owners: dict[int, str] = {}
    for work, work_id in ids.items():
        if owners.setdefault(work_id, work) != work:
            raise ReferenceImportError(f"{full}: work_id {work_id} is shared by works {owners[work_id]!r} and {work!r}")
    try:
        split_store.add_work_ids(store, dataset, ids)
    except ValueError as err:
        raise ReferenceImportError(f"{full}: {err}") from err


def _import_catalog_only(store: Store, dataset: str, catalog: Path, cwd: str | os.PathLike[str] | None,
                         report: ImportReport) -> None:
    """Without full.txt there are no features to reuse: the catalog is recorded and the data assets do the rest."""
    parsed = parse_catalog(catalog, cwd)
    report.rejected += rejection_rows(parsed.rejected)
    _record_catalog(store, dataset, str(catalog), parsed.rows, {r.perf: content_hash(r.wav) for r in parsed.rows},
                    report)
    report.works = len({r.work for r in parsed.rows})


# ---------------------------------------------------------------------------------------------------------------
# Model


def best_generator(folder: Path) -> tuple[Path, int]:
    """The g_ file with the highest epoch (``csi_model.checkpoint.latest_generator``: the reference's rule)."""
    path = latest_generator(folder)
    if path is None:
        raise ReferenceImportError(f"{folder}: no g_ checkpoint (expected files like g_00000012)")
    return path, checkpoint_epoch(path.name, GENERATOR_PREFIX)


def _import_model(store: Store, dataset: str, training_dir: Path, report: ImportReport,
                  data_hp: DataPrepHParams) -> None:
    config = training_dir / "config" / "hparams.yaml"
    try:
        hp = load_training_hparams(config)
    except HParamsError as err:
        raise ReferenceImportError(str(err)) from err
    contract = dataclasses.replace(  # the reference's CQT class depended on the machine it ran on
        InputContract.from_settings(settings_for(data_hp), f"{data_hp.source}, imported from CoverHunterMPS"),
        cqt_class=None)
    try:
        check_input_contract(InputContract.from_training_hparams(hp, str(config)), contract,
                             f"of {training_dir}", warn_unknown=False)
    except InputContractError as err:
        raise ReferenceImportError(str(err)) from err
    checkpoint, epoch = best_generator(training_dir / "checkpoints")
    try:
        _, loaded = model_from_checkpoint(checkpoint, hp)
    except (CheckpointError, ValueError) as err:
        raise ReferenceImportError(f"{checkpoint} with {config}: {err}") from err
    model_id = model_store.model_id_for(training_dir.name, loaded.fingerprint)
    model_store.register_model(
        store, model_id=model_id, dataset=dataset, training_dir=str(training_dir), checkpoint=str(checkpoint),
        epoch=epoch, fingerprint=loaded.fingerprint, hparams=to_dict(hp),
        metrics={"origin": IMPORT_ORIGIN}, promote=True, input_contract=contract.to_dict())
    report.model_id, report.checkpoint, report.epoch = model_id, str(checkpoint), epoch
