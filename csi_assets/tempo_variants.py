"""Tempo variants of the main catalog's performances: which recordings the CQT stage computes, and the
tempo-changed copies (pitch kept) rendered as audio in ``tempo_augmentation: audio`` mode, without Dagster.

With ``tempo_augmentation: features`` (the default) the variants are the originals only: training draws tempo on
the CQT's time axis. Factor 1.0 is the original itself; existing, up-to-date files are not rendered again.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from csi_assets.errors import RunFailed, require_upstream
from csi_assets.layouts import DatasetLayout
from csi_assets.progress import Log, Progress
from csi_assets.shards import local_cores
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store.records import PerformanceRecord, VariantRecord
from csi_model.audio import AudioError
from csi_model.catalog import CatalogRow
from csi_model.hparams import DataPrepHParams
from csi_model.tempo import TempoVariant, plan_variants, render_variant


def plan_dataset_variants(
    performances: Sequence[PerformanceRecord], factors: Sequence[float], out_dir: Path
) -> list[tuple[TempoVariant, str]]:
    """Every (performance, factor) variant with the hash of the audio it comes from."""
    rows = [CatalogRow(p.perf, Path(p.wav), p.dur_s, p.work, p.version, p.line_no or 0)
            for p in performances]
    hashes = {p.perf: p.audio_hash for p in performances}
    return [(v, hashes[v.original_perf]) for v in plan_variants(rows, factors, out_dir)]


def render_variants(
    planned: Sequence[tuple[TempoVariant, str]], stored: Mapping[str, VariantRecord], log: Log
) -> tuple[int, list[str]]:
    """Render missing variants; a variant whose source audio changed is rendered again. Returns (count, errors)."""
    todo = []
    for variant, source_hash in planned:
        if variant.is_original:
            continue
        known = stored.get(variant.perf)
        if known and known.source_hash != source_hash:
            variant.wav.unlink(missing_ok=True)  # stale: made from audio that has since changed
        if not variant.wav.exists():
            todo.append(variant)
    if not todo:
        return 0, []
    progress = Progress(log, "rendering tempo variants", len(todo), "files")
    errors = []
    # Rubber Band holds the GIL: processes, not threads, put both cores to work.
    with ProcessPoolExecutor(local_cores(), mp_context=multiprocessing.get_context("spawn")) as pool:
        for error in pool.map(_render_or_error, todo, chunksize=4):
            progress.advance()
            if error:
                errors.append(error)
    return len(todo) - len(errors), errors


def _render_or_error(variant: TempoVariant) -> str | None:
    try:
        render_variant(variant)
        return None
    except AudioError as err:
        return f"{variant.perf}: {err}"


def rendered_factors(hp: DataPrepHParams) -> tuple[float, ...]:
    """The factors rendered as audio: all of ``aug_speed_mode`` in ``audio`` mode, only the identity otherwise."""
    return hp.aug_speed_mode if hp.tempo_augmentation == "audio" else (1.0,)


def variant_row(variant: TempoVariant, source_hash: str) -> VariantRecord:
    return VariantRecord(variant=variant.perf, perf=variant.original_perf, speed=variant.factor,
                         wav=str(variant.wav), dur_s=variant.dur_s, source_hash=source_hash)


@dataclass(frozen=True)
class VariantsRun:
    """Counts of one :func:`record_variants`: variants planned, performances, rendered now, reused files."""

    variants: int
    performances: int
    rendered: int
    cached: int


def record_variants(store: Store, dataset: DatasetLayout, log: Log) -> VariantsRun:
    """Plan the variants of every main-catalog performance, render the missing ones and record them all. Raises
    :class:`RunFailed` without catalogued performances or when a rendering failed (the variants are then not
    recorded)."""
    hp = dataset.hparams()
    originals = [p for p in catalog_store.performances(store, dataset.name) if p.batch_id is None]
    require_upstream(originals, "dataset_catalog", dataset.name, "catalogued performances")
    planned = plan_dataset_variants(originals, rendered_factors(hp), dataset.variants_dir)
    stored = {v.variant: v for v in feature_store.variants(store, dataset.name)}
    dropped = sum(1 for v in stored.values() if v.perf != v.variant) if hp.tempo_augmentation == "features" else 0
    if dropped:
        log.warning(f"tempo_augmentation is 'features': {dropped} tempo variants recorded by an earlier "
                    f"'audio' run are no longer used (their audio stays in {dataset.variants_dir})")
    rendered, errors = render_variants(planned, stored, log)
    if errors:
        raise RunFailed("tempo variants failed:\n" + "\n".join(errors[:20]))
    feature_store.replace_variants(store, dataset.name, [p.perf for p in originals],
                                   [variant_row(v, h) for v, h in planned])
    return VariantsRun(len(planned), len(originals), rendered,
                       sum(1 for v, _ in planned if not v.is_original) - rendered)
