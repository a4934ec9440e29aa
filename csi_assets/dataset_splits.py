"""Work ids, train / val / test splits and the reference-format exports of a dataset, without Dagster.

Work ids are permanent: existing works keep theirs, new works are numbered in sorted order. Every tempo variant
follows its original performance's split; the exports (``full/train/val/test.txt``, ``work_id.map``,
``test-only-work-ids.txt``) are written into the dataset folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from csi_assets.errors import require_upstream
from csi_assets.layouts import DatasetLayout
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureTableRecord, SplitLeakRecord
from csi_model.catalog import CatalogRow, parse_catalog
from csi_model.export import FeatureLine, write_reference_exports
from csi_model.splits import Split, SplitAssignment, assign_work_ids, split_performances
from csi_model.tempo import TempoVariant


def record_work_ids(store: Store, dataset: DatasetLayout) -> tuple[int, int]:
    """Give every catalogued work without one a new id; returns (works, new works)."""
    existing = split_store.work_ids(store, dataset.name)
    works = {p.work for p in catalog_store.performances(store, dataset.name)}
    require_upstream(works, "dataset_catalog", dataset.name, "catalogued performances")
    assigned = assign_work_ids(works, existing)
    return len(assigned), split_store.add_work_ids(store, dataset.name, assigned)


@dataclass(frozen=True)
class SplitsRun:
    """What :func:`split_dataset` did: the assignment, how many originals, the exported files."""

    assignment: SplitAssignment
    performances: int
    exports: dict[str, Path]

    def counts(self) -> dict[str, int]:
        """Performances per split name."""
        return {s.value: sum(1 for v in self.assignment.split_of.values() if v == s) for s in Split}


def split_dataset(store: Store, dataset: DatasetLayout) -> SplitsRun:
    """Assign the main catalog's original performances to splits (with the unseen-work holdouts), record them and
    write the reference-format exports. Raises :class:`~csi_assets.errors.MissingUpstream` without catalogued
    performances, work ids or features."""
    hp = dataset.hparams()
    ids = split_store.work_ids(store, dataset.name)
    originals = [p for p in catalog_store.performances(store, dataset.name) if p.batch_id is None]
    require_upstream(originals, "dataset_catalog", dataset.name, "catalogued performances")
    require_upstream(all(p.work in ids for p in originals), "work_ids", dataset.name,
                     "work id for every catalogued work")
    require_upstream(feature_store.features(store, dataset.name, dataset.cqt_settings().settings_hash()),
                     "cqt_features", dataset.name, "CQT features at its hparams' settings")
    assignment = split_performances(
        {p.perf: ids[p.work] for p in originals},
        val_data_split=hp.val_data_split, val_unseen=hp.val_unseen, test_data_split=hp.test_data_split,
        test_data_unseen=hp.test_data_unseen, seed=hp.seed,
    )
    unseen = {w: str(Split.TEST) for w in assignment.test_only_work_ids}
    unseen |= {w: str(Split.VAL) for w in assignment.val_only_work_ids}
    split_store.replace_splits(store, dataset.name, assignment.split_of, unseen, hp.seed)
    return SplitsRun(assignment, len(originals), export_reference_files(store, dataset))


def build_feature_lines(table: Sequence[FeatureTableRecord]) -> list[FeatureLine]:
    """The export lines of feature_table rows (one per variant)."""
    lines = []
    for r in table:
        row = CatalogRow(r.perf, Path(r.wav), r.dur_s, r.work, r.version, r.line_no or 0)
        variant = TempoVariant(r.variant, r.perf, r.speed, Path(r.variant_wav), Path(r.wav),
                               r.variant_dur_s)
        lines.append(FeatureLine(row, variant, Path(r.feat), r.n_frames, r.work_id))
    return lines


def export_reference_files(store: Store, dataset: DatasetLayout) -> dict[str, Path]:
    """Write full/train/val/test.txt, work_id.map and test-only-work-ids.txt into the dataset folder."""
    settings = dataset.cqt_settings()
    table = [r for r in feature_store.feature_table(store, dataset.name, settings.settings_hash())
             if r.batch_id is None]
    split_of = {r.variant: Split(r.split) for r in table if r.split}
    test_only = [w for w, s in split_store.unseen_works(store, dataset.name).items() if s == Split.TEST]
    return write_reference_exports(dataset.root, build_feature_lines(table), split_of,
                                   split_store.work_ids(store, dataset.name), test_only)


def split_leaks(store: Store, dataset: DatasetLayout) -> tuple[list[str], list[SplitLeakRecord]]:
    """(performances in two splits of the exported files, read back; the store's unseen-work leaks)."""
    original_of = {v.variant: v.perf for v in feature_store.variants(store, dataset.name)}
    seen_in: dict[str, set[str]] = {}
    for split in Split:
        path = dataset.root / f"{split.value}.txt"
        if path.exists():
            for row in parse_catalog(path, tempo_copies=True).rows:
                seen_in.setdefault(original_of.get(row.perf, row.perf), set()).add(split.value)
    return sorted(p for p, s in seen_in.items() if len(s) > 1), split_store.split_leaks(store, dataset.name)
