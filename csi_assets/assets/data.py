"""Group ``data``: catalog → tempo variants → CQT features; work ids; leak-free splits.

Each asset reads what it needs from the store, calls ``csi_model``, writes files atomically and records rows;
every one is idempotent (a re-run with unchanged inputs recomputes nothing) and resumable (work is recorded as
it completes, so a killed run continues where it stopped).
"""


import multiprocessing
from collections.abc import Iterator, Mapping, Sequence, Set
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from csi_assets import features
from csi_assets.assets.upstream import require_upstream
from csi_assets.features import feature_problems, pending_features
from csi_assets.progress import Progress
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.shards import Shard, ShardResult, local_cores, staging_dir
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import shards as shard_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureRecord, FeatureTableRecord, PerformanceRecord, VariantRecord
from csi_model.audio import AudioError
from csi_model.catalog import CatalogRow, RejectedLine, parse_catalog, verify_row
from csi_model.cqt import content_hash
from csi_model.export import FeatureLine, write_reference_exports
from csi_model.hparams import DataPrepHParams
from csi_model.splits import Split, assign_work_ids, split_performances
from csi_model.tempo import TempoVariant, plan_variants, render_variant

GROUP = "data"


# ---------------------------------------------------------------------------------------------------------------
# dataset_catalog


def _audio_identity(row: CatalogRow, known: PerformanceRecord | None) -> tuple[str, int, int, bool]:
    """(hash, size, mtime_ns, needs_decode): the stored hash is trusted while the file's size and mtime match."""
    stat = row.wav.stat()
    if known and known.wav == str(row.wav) and known.audio_size == stat.st_size \
            and known.audio_mtime_ns == stat.st_mtime_ns:
        return known.audio_hash, stat.st_size, stat.st_mtime_ns, False
    return content_hash(row.wav), stat.st_size, stat.st_mtime_ns, True


def verify_catalog_rows(
    rows: Sequence[CatalogRow], known: Mapping[str, PerformanceRecord], log: Any, label: str
) -> tuple[list[dict[str, Any]], list[RejectedLine], list[dict[str, Any]]]:
    """Decode each new or changed audio file (in parallel), keep unchanged ones as stored."""
    progress = Progress(log, label, len(rows), "files")

    def check(row: CatalogRow) -> tuple[dict[str, Any] | None, RejectedLine | None, str | None]:
        try:
            audio_hash, size, mtime, needs_decode = _audio_identity(row, known.get(row.perf))
            warning = None
            if needs_decode:
                row, warning = verify_row(row)
            else:
                row = replace(row, dur_s=known[row.perf].dur_s)
        except AudioError as err:
            return None, RejectedLine(row.line_no, row.perf, f"{err.path} (line {row.line_no}): {err.reason}"), None
        finally:
            progress.advance()
        record = {
            "perf": row.perf, "wav": str(row.wav), "dur_s": row.dur_s, "work": row.work, "version": row.version,
            "line_no": row.line_no, "audio_hash": audio_hash, "audio_size": size, "audio_mtime_ns": mtime,
            "labels": dict(row.labels),
        }
        return record, None, warning

    good, bad, warned = [], [], []
    with ThreadPoolExecutor(local_cores()) as pool:
        for (record, rejection, warning), row in zip(pool.map(check, rows), rows):
            if record:
                good.append(record)
            if rejection:
                bad.append(rejection)
            if warning:
                warned.append({"line_no": row.line_no, "perf": row.perf, "message": warning})
    return good, bad, warned


def rejection_rows(lines: Sequence[RejectedLine]) -> list[dict[str, Any]]:
    return [{"line_no": r.line_no, "raw": r.text, "reason": r.reason} for r in lines]


def split_collisions(
    rows: Sequence[dict[str, Any]], stored: Mapping[str, PerformanceRecord], source: str, batch_id: str | None = None
) -> tuple[list[dict[str, Any]], list[RejectedLine], int]:
    """Sort the verified rows of catalog file ``source`` by who holds their perf id: (own rows, rejections, already).

    The main catalog (``batch_id`` None) owns the performances no batch brought; a delta batch owns those stored
    with its id. A row is its own when its perf id is new or already its own; a perf id the main catalog or another
    batch holds is never taken over: with the same audio and work it is counted as already present, otherwise the
    line is rejected naming file, line and holder. ``stored``: perf -> stored performance."""
    own, clashes, already = [], [], 0
    for row in rows:
        held = stored.get(row["perf"])
        if held is None or held.batch_id == batch_id:
            own.append(row)
        elif held.audio_hash == row["audio_hash"] and held.work == row["work"]:
            already += 1
        else:
            clashes.append(RejectedLine(row["line_no"], row["perf"], (
                f"{source} (line {row['line_no']}): perf {row['perf']!r} already exists with different content "
                f"in {held.holder} (work {held.work!r}); give this recording its own perf id")))
    return own, clashes, already


def _markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], limit: int = 20) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join(
        "| " + " | ".join(str(r.get(c, "")).replace("|", "\\|").replace("\n", " ") for c in columns) + " |\n"
        for r in rows[:limit]
    )
    more = f"\n… and {len(rows) - limit} more" if len(rows) > limit else ""
    return head + body + more


LINES_CHECK, DURATIONS_CHECK = "catalog_lines_all_usable", "catalog_durations_match_audio"


@dg.asset(group_name=GROUP, kinds={"duckdb"}, check_specs=[
    dg.AssetCheckSpec(LINES_CHECK, asset="dataset_catalog",
                      description="Every catalog line was usable (bad lines are listed)."),
    dg.AssetCheckSpec(DURATIONS_CHECK, asset="dataset_catalog",
                      description="Catalogued durations match the decoded audio within 1 %.")])
def dataset_catalog(
    context: dg.AssetExecutionContext, dataset: DatasetResource, store: StoreResource
) -> dg.MaterializeResult:
    """One row per performance of ``dataset.txt``, validated line by line; bad lines land in ``rejected``."""
    if not dataset.catalog_path.exists():
        raise dg.Failure(description=f"{dataset.catalog_path}: no catalog (dataset.txt) in the dataset folder; "
                                     "set CSI_DATASET_DIR or run `csi synth` for the demo")
    db = store.store()
    parsed = parse_catalog(dataset.catalog_path, labels=dataset.hparams().labels)
    known = {r.perf: r for r in catalog_store.performances(db, dataset.name)}
    verified, bad_audio, warned = verify_catalog_rows(parsed.rows, known, context.log, "checking audio")
    good, clashes, already = split_collisions(verified, known, str(dataset.catalog_path))
    rejected = rejection_rows([*parsed.rejected, *bad_audio, *clashes])
    if not good:
        reasons = "; ".join(r["reason"] for r in rejected[:3]) or "it has no lines"
        raise dg.Failure(description=f"{dataset.catalog_path}: no usable line ({reasons}); the store is unchanged")
    change = catalog_store.replace_catalog(
        db, dataset.name, str(dataset.catalog_path), good, rejected, warned
    )
    for r in rejected:
        context.log.warning(r["reason"])
    for w in warned:
        context.log.warning(w["message"])
    return dg.MaterializeResult(
        metadata={
            "performances": len(good),
            "already_present": already,
            "works": len({r["work"] for r in good}),
            "rejected_lines": len(rejected),
            "duration_warnings": len(warned),
            "added": change.added,
            "changed": change.changed,
            "unchanged": change.unchanged,
            "removed": change.removed,
            "audio_hours": round(sum(r["dur_s"] for r in good) / 3600, 3),
            "rejected": dg.MetadataValue.md(_markdown_table(rejected, ["line_no", "reason"]) if rejected else "none"),
            **label_metadata(catalog_store.label_counts(db, dataset.name)),
        },
        check_results=catalog_checks(rejected, warned),
    )


def label_metadata(counts: dict[str, dict[str | None, int]]) -> dict[str, Any]:
    """Per label: how many performances have a value, how many miss one, and the count of each value."""
    return {f"label/{label}": dg.MetadataValue.json({
        "with_value": sum(n for v, n in values.items() if v is not None), "missing": values.get(None, 0),
        "values": {v: n for v, n in values.items() if v is not None}}) for label, values in counts.items()}


def catalog_checks(rejected: Sequence[dict[str, Any]], warned: Sequence[dict[str, Any]]
                   ) -> list[dg.AssetCheckResult]:
    """Warnings, not failures: the good lines went through. Run inside the catalog's step (no process of their own)."""
    reasons = _markdown_table(rejected, ["line_no", "reason"]) if rejected else "none"
    return [
        dg.AssetCheckResult(check_name=LINES_CHECK, passed=not rejected, severity=dg.AssetCheckSeverity.WARN,
                            metadata={"rejected_lines": len(rejected), "reasons": dg.MetadataValue.md(reasons)}),
        dg.AssetCheckResult(check_name=DURATIONS_CHECK, passed=not warned, severity=dg.AssetCheckSeverity.WARN,
                            metadata={"corrected_durations": len(warned)}),
    ]


# ---------------------------------------------------------------------------------------------------------------
# speed_variants


def plan_dataset_variants(
    performances: Sequence[PerformanceRecord], factors: Sequence[float], out_dir: Path
) -> list[tuple[TempoVariant, str]]:
    """Every (performance, factor) variant with the hash of the audio it comes from."""
    rows = [CatalogRow(p.perf, Path(p.wav), p.dur_s, p.work, p.version, p.line_no or 0)
            for p in performances]
    hashes = {p.perf: p.audio_hash for p in performances}
    return [(v, hashes[v.original_perf]) for v in plan_variants(rows, factors, out_dir)]


def render_variants(
    planned: Sequence[tuple[TempoVariant, str]], stored: Mapping[str, VariantRecord], log: Any
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


@dg.asset(group_name=GROUP, deps=[dataset_catalog], kinds={"audio"})
def speed_variants(
    context: dg.AssetExecutionContext, dataset: DatasetResource, store: StoreResource
) -> dg.MaterializeResult:
    """The recordings the CQT stage computes. With ``tempo_augmentation: features`` (the default) these are the
    originals only: training draws tempo on the CQT's time axis. With ``audio``, tempo-changed copies (pitch kept)
    of every performance of the main catalog, one per ``aug_speed_mode`` factor; factor 1.0 is the original
    itself, and existing, up-to-date files are not redone."""
    db = store.store()
    hp = dataset.hparams()
    originals = [p for p in catalog_store.performances(db, dataset.name) if p.batch_id is None]
    require_upstream(originals, "dataset_catalog", dataset.name, "catalogued performances")
    planned = plan_dataset_variants(originals, rendered_factors(hp), dataset.variants_dir)
    stored = {v.variant: v for v in feature_store.variants(db, dataset.name)}
    dropped = sum(1 for v in stored.values() if v.perf != v.variant) if hp.tempo_augmentation == "features" else 0
    if dropped:
        context.log.warning(f"tempo_augmentation is 'features': {dropped} tempo variants recorded by an earlier "
                            f"'audio' run are no longer used (their audio stays in {dataset.variants_dir})")
    rendered, errors = render_variants(planned, stored, context.log)
    if errors:
        raise dg.Failure(description="tempo variants failed:\n" + "\n".join(errors[:20]))
    feature_store.replace_variants(db, dataset.name, [p.perf for p in originals],
                                  [variant_row(v, h) for v, h in planned])
    return dg.MaterializeResult(
        metadata={
            "variants": len(planned),
            "performances": len(originals),
            "tempo_augmentation": hp.tempo_augmentation,
            "factors": dg.MetadataValue.json(list(hp.aug_speed_mode)),
            "rendered_now": rendered,
            "cached": sum(1 for v, _ in planned if not v.is_original) - rendered,
            "folder": dg.MetadataValue.path(str(dataset.variants_dir)),
        }
    )


def rendered_factors(hp: DataPrepHParams) -> tuple[float, ...]:
    """The factors rendered as audio: all of ``aug_speed_mode`` in ``audio`` mode, only the identity otherwise."""
    return hp.aug_speed_mode if hp.tempo_augmentation == "audio" else (1.0,)


def variant_row(variant: TempoVariant, source_hash: str) -> VariantRecord:
    return VariantRecord(variant=variant.perf, perf=variant.original_perf, speed=variant.factor,
                         wav=str(variant.wav), dur_s=variant.dur_s, source_hash=source_hash)


# ---------------------------------------------------------------------------------------------------------------
# cqt_features: decode in parallel processes, CQT in batches, check in the same step


def _discard_bad_features(stored: Mapping[str, FeatureRecord], problems: Mapping[str, str], folder: Path,
                          log: Any) -> None:
    """Name every bad feature file and delete those this project wrote (inside ``folder``), so they are computed
    again; bad files imported from the reference tool cannot be recomputed here without mixing two feature
    extractors, so they stop the run."""
    imported = [v for v in problems if "origin" in stored[v].settings]
    if imported:
        raise dg.Failure(description=f"{len(imported)} imported feature file(s) are unusable; import the reference "
                                     "folder again:\n" + "\n".join(problems[v] for v in imported[:20]))
    for variant, reason in problems.items():
        log.warning(f"{reason}; computing it again")
        path = Path(stored[variant].path)
        if path.resolve().parent == folder.resolve():
            path.unlink(missing_ok=True)


FEATURES_CHECK = "features_are_finite"
FEATURES_CHECK_OUTPUT = "cqt_features_features_are_finite"


class ShardConfig(dg.Config):
    """How a sharded stage fans out: ``items_per_shard`` items per op (0: one shard per core of the machine that
    plans, the local default; on a cluster set it so that shards take minutes, e.g. 200 recordings)."""

    items_per_shard: int = 0


@dg.op(ins={"after": dg.In(dg.Nothing)}, out={"plan": dg.Out(), "shards": dg.DynamicOut()})
def plan_cqt_shards(context: dg.OpExecutionContext, config: ShardConfig, dataset: DatasetResource,
                    store: StoreResource) -> Iterator[dg.Output | dg.DynamicOutput]:
    """Read every stored feature file once, discard bad ones, and cut the recordings without a usable feature
    into shards."""
    settings = dataset.cqt_settings()
    db = store.store()
    folder = dataset.features_dir / settings.settings_hash()
    features.remove_abandoned_temporaries(folder)  # left by killed writers; live writes are left alone
    variants = feature_store.variants(db, dataset.name)
    require_upstream(variants, "speed_variants", dataset.name, "recordings to compute features of")
    stored = feature_store.features(db, dataset.name, settings.settings_hash())
    problems = feature_problems(stored, settings.n_bins,
                                record_verified=features.marker_recorder(db, dataset.name, settings))
    _discard_bad_features(stored, problems, folder, context.log)
    pending = pending_features(variants, stored, problems)
    stage = features.feature_stage(dataset.name, settings)
    shards = features.plan_feature_shards(stage, pending, settings, dataset.features_dir, dataset.hparams().device,
                                          config.items_per_shard)
    shard_store.forget(db, stage, [s.shard_id for s in shards])
    context.log.info(f"{len(pending)} of {len(variants)} recordings to compute, in {len(shards)} shard(s)")
    yield dg.Output(features.FeaturePlan(stage, len(variants), tuple(v.variant for v in pending), problems,
                                         {v: r.path for v, r in stored.items()}), "plan")
    for shard in shards:
        yield dg.DynamicOutput(shard, output_name="shards", mapping_key=shard.shard_id)


@dg.op
def compute_cqt_shard(context: dg.OpExecutionContext, shard: Shard, store: StoreResource) -> ShardResult:
    """Decode and CQT one shard on whichever worker runs it; its rows go to a file beside the store."""
    return features.compute_feature_shard(shard, staging_dir(store.path), context.log)


@dg.op(out={"result": dg.Out(dg.Nothing), FEATURES_CHECK_OUTPUT: dg.Out(dg.Nothing)})
def commit_cqt_features(context: dg.OpExecutionContext, dataset: DatasetResource, store: StoreResource,
                        plan: features.FeaturePlan, results: list[ShardResult]) -> Iterator[Any]:
    """Record every shard's features in one store transaction, then check every feature file."""
    settings = dataset.cqt_settings()
    db = store.store()
    computed, errors = features.commit_feature_shards(db, dataset.name, settings, plan.stage, results)
    stored = feature_store.features(db, dataset.name, settings.settings_hash())
    rewritten = set(plan.pending) | set(plan.problems)
    verified = {v for v, r in stored.items()  # read whole by the plan and not rewritten since: not read again
                if v not in rewritten and plan.verified_paths.get(v) == r.path}
    missing = pending_features(feature_store.variants(db, dataset.name), stored)
    if errors or missing:
        raise dg.Failure(description=f"{len(missing)} of {plan.variants} variants have no feature:\n"
                                     + "\n".join(errors[:20]))
    frames = np.array([r.n_frames for r in stored.values()] or [0])
    yield dg.Output(None, "result", metadata={
        "features": len(stored),
        "computed_now": computed,
        "shards": len(results),
        "bad_files_recomputed": len(plan.problems),
        "settings_hash": settings.settings_hash(),
        "settings": dg.MetadataValue.json(asdict(settings)),
        "fps": settings.fps,
        "frames_median": int(np.median(frames)),
        "hours_of_features": round(float(frames.sum()) / settings.fps / 3600, 3),
        "folder": dg.MetadataValue.path(str(dataset.features_dir / settings.settings_hash())),
    })
    yield features_check(stored, settings.n_bins, verified, features.marker_recorder(db, dataset.name, settings))


@dg.graph_asset(group_name=GROUP, ins={"speed_variants": dg.AssetIn(dagster_type=dg.Nothing)},
                kinds={"pytorch", "numpy"},
                check_specs=[dg.AssetCheckSpec(FEATURES_CHECK, asset="cqt_features",
                                               description="Feature files have the configured bins and no NaN/inf.")])
def cqt_features(speed_variants: None) -> dict[str, Any]:
    """One CQT array ``[T, n_bins]`` (float16 dB) per recording and CQT settings, computed once per audio content
    and settings: a planning op cuts the recordings without a usable feature into shards, one op per shard
    decodes and computes them (anywhere: a process, a Dask worker), and one op records them all in a single
    store transaction and checks every file."""
    plan, shards = plan_cqt_shards(speed_variants)
    result, check = commit_cqt_features(plan, shards.map(compute_cqt_shard).collect())
    return {"result": result, FEATURES_CHECK_OUTPUT: check}


def features_check(stored: Mapping[str, FeatureRecord], n_bins: int, verified: Set[str] = frozenset(),
                   record_verified: features.Verified | None = None) -> dg.AssetCheckResult:
    """Every feature file is readable, has the recorded frames, ``n_bins`` bins and only finite values (float16 or
    float32); bad and missing ones are named. ``verified``: variants whose files this step already read whole;
    ``record_verified``: see :func:`csi_assets.features.feature_problems`."""
    problems = feature_problems(stored, n_bins, verified, record_verified)
    problems |= {v: f"{r.path}: file missing" for v, r in stored.items() if not Path(r.path).exists()}
    listing = "\n".join(f"- `{v}`: {reason}" for v, reason in sorted(problems.items())[:20])
    return dg.AssetCheckResult(
        check_name=FEATURES_CHECK, passed=not problems,
        description=None if not problems else f"{len(problems)} bad feature file(s); materialize cqt_features to "
                                              "compute them again",
        metadata={"checked": len(stored), "bad": len(problems), "examples": dg.MetadataValue.md(listing or "none")})


# ---------------------------------------------------------------------------------------------------------------
# work_ids and data_splits


@dg.asset(group_name=GROUP, deps=[dataset_catalog], kinds={"duckdb"})
def work_ids(dataset: DatasetResource, store: StoreResource) -> dg.MaterializeResult:
    """A stable ``work → work_id`` map: existing works keep their ids; new works are numbered in sorted order."""
    db = store.store()
    existing = split_store.work_ids(db, dataset.name)
    works = {p.work for p in catalog_store.performances(db, dataset.name)}
    require_upstream(works, "dataset_catalog", dataset.name, "catalogued performances")
    assigned = assign_work_ids(works, existing)
    added = split_store.add_work_ids(db, dataset.name, assigned)
    return dg.MaterializeResult(metadata={"works": len(assigned), "new_works": added})


def build_feature_lines(table: Sequence[FeatureTableRecord]) -> list[FeatureLine]:
    lines = []
    for r in table:
        row = CatalogRow(r.perf, Path(r.wav), r.dur_s, r.work, r.version, r.line_no or 0)
        variant = TempoVariant(r.variant, r.perf, r.speed, Path(r.variant_wav), Path(r.wav),
                               r.variant_dur_s)
        lines.append(FeatureLine(row, variant, Path(r.feat), r.n_frames, r.work_id))
    return lines


def export_reference_files(dataset: DatasetResource, store: StoreResource) -> dict[str, Path]:
    """Write full/train/val/test.txt, work_id.map and test-only-work-ids.txt into the dataset folder."""
    db = store.store()
    settings = dataset.cqt_settings()
    table = [r for r in feature_store.feature_table(db, dataset.name, settings.settings_hash())
             if r.batch_id is None]
    split_of = {r.variant: Split(r.split) for r in table if r.split}
    test_only = [w for w, s in split_store.unseen_works(db, dataset.name).items() if s == Split.TEST]
    return write_reference_exports(dataset.root, build_feature_lines(table), split_of,
                                   split_store.work_ids(db, dataset.name), test_only)


LEAK_CHECK = "splits_are_leak_free"


@dg.asset(group_name=GROUP, deps=[cqt_features, work_ids], kinds={"duckdb"}, check_specs=[
    dg.AssetCheckSpec(LEAK_CHECK, asset="data_splits",
                      description="No performance (or tempo variant of it) is in two splits of the exported files, "
                                  "and unseen works appear only in their split.")])
def data_splits(context: dg.AssetExecutionContext, dataset: DatasetResource,
                store: StoreResource) -> dg.MaterializeResult:
    """Train / val / test membership of the original performances (every tempo variant follows its original),
    unseen-work holdouts, and the reference-format exports."""
    db = store.store()
    hp = dataset.hparams()
    ids = split_store.work_ids(db, dataset.name)
    originals = [p for p in catalog_store.performances(db, dataset.name) if p.batch_id is None]
    require_upstream(originals, "dataset_catalog", dataset.name, "catalogued performances")
    require_upstream(all(p.work in ids for p in originals), "work_ids", dataset.name,
                     "work id for every catalogued work")
    require_upstream(feature_store.features(db, dataset.name, dataset.cqt_settings().settings_hash()),
                     "cqt_features", dataset.name, "CQT features at its hparams' settings")
    assignment = split_performances(
        {p.perf: ids[p.work] for p in originals},
        val_data_split=hp.val_data_split, val_unseen=hp.val_unseen, test_data_split=hp.test_data_split,
        test_data_unseen=hp.test_data_unseen, seed=hp.seed,
    )
    unseen = {w: str(Split.TEST) for w in assignment.test_only_work_ids}
    unseen |= {w: str(Split.VAL) for w in assignment.val_only_work_ids}
    split_store.replace_splits(db, dataset.name, assignment.split_of, unseen, hp.seed)
    written = export_reference_files(dataset, store)
    counts = {s.value: sum(1 for v in assignment.split_of.values() if v == s) for s in Split}
    context.log.info(f"split {len(originals)} performances: {counts}; exports in {dataset.root}")
    return dg.MaterializeResult(
        metadata={
            **{f"{name}_performances": n for name, n in counts.items()},
            "test_only_works": len(assignment.test_only_work_ids),
            "val_only_works": len(assignment.val_only_work_ids),
            "seed": hp.seed,
            "exports": dg.MetadataValue.json(sorted(written)),
        },
        check_results=[splits_leak_check(dataset, store)],
    )


def splits_leak_check(dataset: DatasetResource, store: StoreResource) -> dg.AssetCheckResult:
    """Reads the exported files back and the store's unseen works; runs inside the splits' step."""
    db = store.store()
    original_of = {v.variant: v.perf for v in feature_store.variants(db, dataset.name)}
    seen_in: dict[str, set[str]] = {}
    for split in Split:
        path = dataset.root / f"{split.value}.txt"
        if path.exists():
            for row in parse_catalog(path, tempo_copies=True).rows:
                seen_in.setdefault(original_of.get(row.perf, row.perf), set()).add(split.value)
    in_two = sorted(p for p, s in seen_in.items() if len(s) > 1)
    leaks = split_store.split_leaks(db, dataset.name)
    return dg.AssetCheckResult(
        check_name=LEAK_CHECK,
        passed=not in_two and not leaks,
        metadata={"performances_in_two_splits": len(in_two), "unseen_work_leaks": len(leaks),
                  "examples": dg.MetadataValue.json(in_two[:10])},
    )
