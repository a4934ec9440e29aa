"""Which features training and evaluation use: the split item lists and the hparams' retrieval test sets.

Test sets are the reference's: any hparams mapping with ``query_path`` and ``ref_path``, each a
catalog-format file whose lines name performances by ``perf``. We resolve every line against the store instead of
trusting the file's ``feat``/``work_id`` fields, so a test set always scores the features and the stable work ids
this dataset actually has:

- a line must name a performance of the dataset that has a feature; anything else is an error naming the file
  and line (a typo must not silently shrink the test set);
- lines naming a tempo variant (speed ≠ 1, e.g. the ``sp_0.9-…`` lines of an exported ``full.txt``) are dropped:
  a retrieval test measures how well real recordings find each other, and a tempo copy of a query would be an
  artificial near-duplicate of it. The kept lines are the original recordings;
- lines naming a recording shorter than the model's minimum input at the hparams' ``mean_size`` are dropped and
  counted: the rows they name go through :func:`by_length`, the length filter of the split items, so a clip the
  catalog accepted never stops a run and a test set keeps exactly the recordings training may use;
- ``query_path == ref_path`` is a self set: references are the queries, the diagonal is excluded;
- otherwise a query is never matched against the same performance among the references, and the pairs of an
  optional ``query_in_ref_path`` file (``{"query_in_ref": [[i, j], …]}``, indexes in file order) are excluded too,
  renumbered after the dropped lines.

Relative paths in the hparams are tried against the current working directory first (the reference tool is run
from its repository root, so its files say ``data/…``), then against the training folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csi_assets.store.records import FeatureTableRecord
from csi_model.augment import TempoRange
from csi_model.catalog import CatalogLineError, read_records
from csi_model.dataset import FeatureItem
from csi_model.evaluation import RetrievalTestSet
from csi_model.hparams import DataPrepHParams, TestSetHParams, TrainingHParams
from csi_model.identifiers import is_original_speed
from csi_model.metrics import NoAnswerableQueries, require_answerable
from csi_model.model import CoverHunter


class InvalidTestSet(ValueError):
    """A test-set file that cannot be resolved against the dataset: names the file (and line)."""


@dataclass(frozen=True)
class SplitItems:
    """Training items: every tempo variant of the train performances (the augmentation the variants exist for).
    Validation and test: the original recordings only, so each performance counts once and the losses measure
    real recordings, not tempo copies of them. Items shorter than the model's minimum are left out of all three and
    listed in ``too_short`` (the feature_table rows), so the caller can name them."""

    train: list[FeatureItem]
    val: list[FeatureItem]
    test: list[FeatureItem]
    too_short: list[FeatureTableRecord]


def feature_item(row: FeatureTableRecord) -> FeatureItem:
    """A ``feature_table`` row as the training library's item (its perf id is the variant id)."""
    return FeatureItem(row.variant, int(row.work_id), Path(row.feat), int(row.n_frames))


def by_length(rows: Sequence[FeatureTableRecord], mean_size: int
              ) -> tuple[list[FeatureTableRecord], list[FeatureTableRecord]]:
    """(rows long enough for the model at ``mean_size``, rows too short), in order: the one length filter of every
    split (training, production folds, label splits) and of the rows the lines of a test-set file name
    (:func:`retrieval_test_set`); see ``CoverHunter.min_raw_frames``."""
    shortest = CoverHunter.min_raw_frames(mean_size)
    return [r for r in rows if r.n_frames >= shortest], [r for r in rows if r.n_frames < shortest]


def split_items(table: Sequence[FeatureTableRecord], mean_size: int, stored_variants: bool = True) -> SplitItems:
    """Train / val / test items of a ``store.features.feature_table``; rows without a split are ignored, rows too
    short for the model at ``mean_size`` go to ``too_short``. ``stored_variants=False`` trains on the original
    recordings only (tempo is then drawn in the feature domain)."""
    usable, too_short = by_length([r for r in table if r.split], mean_size)

    def members(split: str, originals_only: bool) -> list[FeatureItem]:
        return [feature_item(r) for r in usable
                if r.split == split and (not originals_only or is_original_speed(r.speed))]

    return SplitItems(members("train", not stored_variants), members("val", True), members("test", True), too_short)


def too_short_message(row: FeatureTableRecord, mean_size: int) -> str:
    """One line naming a recording (variant) too short for the model, with its catalog line and length."""
    line = f"catalog line {row.line_no}, " if row.line_no else ""
    return (f"{row.variant} ({line}{row.variant_dur_s:g} s, {row.n_frames} CQT frames): shorter than the "
            f"{CoverHunter.min_raw_frames(mean_size)} frames the model needs at mean_size {mean_size}; left out")


class TempoModeMismatch(ValueError):
    """The data hparams ask for rendered tempo variants that the store does not hold."""


@dataclass(frozen=True)
class TrainingData:
    """What a training run uses: its items, the feature-domain tempo range (None with rendered variants or no
    tempo augmentation) and a record of the tempo mode for logs and metadata."""

    items: SplitItems
    tempo: TempoRange | None
    tempo_record: dict[str, Any]


def training_data(data_hp: DataPrepHParams, table: Sequence[FeatureTableRecord], mean_size: int) -> TrainingData:
    """Apply ``tempo_augmentation`` to the stored features, never stacking both kinds of tempo augmentation;
    recordings too short for the model at ``mean_size`` are left out (``items.too_short``).

    ``features``: train on the originals, each chunk at a random tempo; tempo variants stored by an earlier
    ``audio`` run are ignored (and counted). ``audio``: train on the stored variants as they are, with no tempo
    drawn on top; if ``aug_speed_mode`` asks for variants and none are stored (the dataset was processed in
    ``features`` mode), that is an error rather than a silent run without tempo augmentation.
    """
    stored = sum(1 for r in table if r.split == "train" and not is_original_speed(r.speed))
    mode = data_hp.tempo_augmentation
    record: dict[str, Any] = {"mode": mode, "aug_speed_mode": list(data_hp.aug_speed_mode)}
    if mode == "audio":
        wanted = any(not is_original_speed(k) for k in data_hp.aug_speed_mode)
        if wanted and not stored:
            raise TempoModeMismatch(
                f"{data_hp.source or 'data hparams'}: tempo_augmentation is 'audio' with aug_speed_mode "
                f"{list(data_hp.aug_speed_mode)} but the store holds no rendered tempo variants of the train split; "
                "materialise speed_variants and cqt_features again")
        return TrainingData(split_items(table, mean_size, stored_variants=True), None,
                            record | {"stored_variants_used": stored})
    tempo = TempoRange.from_factors(data_hp.aug_speed_mode)
    record |= {"tempo": tempo.describe() if tempo else "none (aug_speed_mode is the identity)",
               "stored_variants_ignored": stored}
    return TrainingData(split_items(table, mean_size, stored_variants=False), tempo, record)


def resolve_path(value: str, training_dir: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> Path:
    """An hparams path: absolute as given, else the first that exists of ``cwd/value`` and ``training_dir/value``."""
    given = Path(value).expanduser()
    candidates = [given] if given.is_absolute() else [Path(cwd or os.getcwd()) / given, Path(training_dir) / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise InvalidTestSet(f"{value}: file not found (tried {', '.join(str(c) for c in candidates)})")


@dataclass(frozen=True)
class _ResolvedFile:
    items: list[FeatureItem]
    new_index: list[int | None]  # per record of the file (file order): its index in ``items``, None if dropped
    dropped: int


def _records(path: Path) -> list[tuple[int, dict[str, object]]]:
    try:
        return read_records(path)
    except CatalogLineError as err:
        raise InvalidTestSet(str(err)) from None


def _resolve_file(path: Path, table: Mapping[str, FeatureTableRecord], too_short: set[str]) -> _ResolvedFile:
    """The file's lines resolved to items; a line naming a tempo copy or a row of ``too_short`` (variants that
    :func:`by_length` left out) is dropped."""
    records = _records(path)
    items: list[FeatureItem] = []
    new_index: list[int | None] = []
    line_of: dict[str, int] = {}
    for line_no, fields in records:
        perf = fields.get("perf")
        row = table.get(perf) if isinstance(perf, str) else None
        if row is None:
            raise InvalidTestSet(f"{path}:{line_no}: perf {perf!r} is not a performance of this dataset with a CQT "
                               "feature (run the data assets first, or fix the test-set file)")
        if not is_original_speed(row.speed) or row.variant in too_short:
            new_index.append(None)
            continue
        if perf in line_of:
            raise InvalidTestSet(f"{path}:{line_no}: perf {perf!r} is already listed on line {line_of[perf]}")
        line_of[perf] = line_no
        new_index.append(len(items))
        items.append(feature_item(row))
    return _ResolvedFile(items, new_index, sum(i is None for i in new_index))


def _query_in_ref_pairs(path: Path, queries: _ResolvedFile, refs: _ResolvedFile) -> list[tuple[int, int]]:
    """The file's (query, ref) pairs in the kept lines' numbering; pairs touching a dropped line vanish with it."""
    records = _records(path)
    pairs = records[0][1].get("query_in_ref") if records else None
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(k, int) and not isinstance(k, bool) for k in p)
        for p in pairs
    ):
        raise InvalidTestSet(f"{path}:{records[0][0] if records else 1}: expected {{\"query_in_ref\": [[i, j], ...]}} "
                           "with integer indexes")
    n_q, n_r = len(queries.new_index), len(refs.new_index)
    outside = [(i, j) for i, j in pairs if not (0 <= i < n_q and 0 <= j < n_r)]
    if outside:
        raise InvalidTestSet(f"{path}: query_in_ref pair {list(outside[0])} is outside the files' {n_q} queries × "
                           f"{n_r} references ({len(outside)} such pairs)")
    remapped = ((queries.new_index[i], refs.new_index[j]) for i, j in pairs)
    return [(i, j) for i, j in remapped if i is not None and j is not None]


def _same_perf_pairs(queries: Sequence[FeatureItem], refs: Sequence[FeatureItem]) -> list[tuple[int, int]]:
    ref_index = {item.perf: j for j, item in enumerate(refs)}
    return [(i, ref_index[q.perf]) for i, q in enumerate(queries) if q.perf in ref_index]


def retrieval_test_set(name: str, spec: TestSetHParams, table: Sequence[FeatureTableRecord],
                       training_dir: str | os.PathLike[str], mean_size: int, cwd: str | os.PathLike[str] | None = None
                       ) -> tuple[RetrievalTestSet, dict[str, int]]:
    """One test set and its line counts (``queries``, ``refs``, ``dropped_variant_lines``: tempo copies and
    recordings :func:`by_length` finds too short for the model at ``mean_size``)."""
    by_variant = {r.variant: r for r in table}
    too_short = {r.variant for r in by_length(table, mean_size)[1]}
    query_path = resolve_path(spec.query_path, training_dir, cwd)
    ref_path = resolve_path(spec.ref_path, training_dir, cwd)
    queries = _resolve_file(query_path, by_variant, too_short)
    if not queries.items:
        raise InvalidTestSet(f"{query_path}: test set {name!r} has no original recordings to query with")
    every = spec.every_n_epoch_to_test
    if query_path == ref_path and spec.query_in_ref_path is None:
        counts = {"queries": len(queries.items), "refs": len(queries.items), "dropped_variant_lines": queries.dropped}
        return RetrievalTestSet(name, queries.items, None, (), every), counts
    refs = queries if query_path == ref_path else _resolve_file(ref_path, by_variant, too_short)
    pairs = set(_same_perf_pairs(queries.items, refs.items))
    if spec.query_in_ref_path is not None:
        pairs |= set(_query_in_ref_pairs(resolve_path(spec.query_in_ref_path, training_dir, cwd), queries, refs))
    counts = {"queries": len(queries.items), "refs": len(refs.items),
              "dropped_variant_lines": queries.dropped + (refs.dropped if refs is not queries else 0)}
    return RetrievalTestSet(name, queries.items, refs.items, tuple(sorted(pairs)), every), counts


def require_answerable_test_sets(test_sets: Sequence[RetrievalTestSet]) -> None:
    """Raise ``InvalidTestSet`` naming every test set in which no query has another performance of its work among
    the references: its metrics are undefined, so it must be fixed before any training or evaluation."""
    problems = []
    for test_set in test_sets:
        try:
            require_answerable(test_set.answerable(), f"test set {test_set.name!r}")
        except NoAnswerableQueries as err:
            problems.append(str(err))
    if problems:
        raise InvalidTestSet("\n".join(problems))


def retrieval_test_sets(hp: TrainingHParams, table: Sequence[FeatureTableRecord],
                        training_dir: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None
                        ) -> tuple[list[RetrievalTestSet], dict[str, dict[str, int]]]:
    """Every test set of ``hp`` (in the hparams' order) with its line counts, by name."""
    resolved = {name: retrieval_test_set(name, spec, table, training_dir, hp.mean_size, cwd)
                for name, spec in hp.test_sets.items()}
    return [ts for ts, _ in resolved.values()], {name: counts for name, (_, counts) in resolved.items()}
