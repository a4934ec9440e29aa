"""Group ``data``: catalog → tempo variants → CQT features; work ids; leak-free splits.

Each asset reads what it needs from the store, calls ``csi_model``, writes files atomically and records rows;
every one is idempotent (a re-run with unchanged inputs recomputes nothing) and resumable (work is recorded as
it completes, so a killed run continues where it stopped).
"""


from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from csi_assets import features
from csi_assets.assets.upstream import failures
from csi_assets.catalog import catalog_dataset
from csi_assets.dataset_splits import record_work_ids, split_dataset, split_leaks
from csi_assets.features import feature_problems
from csi_assets.layouts import DatasetLayout
from csi_assets.partitions import dataset_of, datasets
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.shards import Shard, ShardResult, staging_dir
from csi_assets.store import catalog as catalog_store
from csi_assets.store.records import FeatureRecord
from csi_assets.tempo_variants import record_variants

GROUP = "data"


# ---------------------------------------------------------------------------------------------------------------
# dataset_catalog


def _markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], limit: int = 20) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join(
        "| " + " | ".join(str(r.get(c, "")).replace("|", "\\|").replace("\n", " ") for c in columns) + " |\n"
        for r in rows[:limit]
    )
    more = f"\n… and {len(rows) - limit} more" if len(rows) > limit else ""
    return head + body + more


LINES_CHECK, DURATIONS_CHECK = "catalog_lines_all_usable", "catalog_durations_match_audio"


@dg.asset(group_name=GROUP, partitions_def=datasets, kinds={"duckdb"}, check_specs=[
    dg.AssetCheckSpec(LINES_CHECK, asset="dataset_catalog",
                      description="Every catalog line was usable (bad lines are listed)."),
    dg.AssetCheckSpec(DURATIONS_CHECK, asset="dataset_catalog",
                      description="Catalogued durations match the decoded audio within 1 %.")])
def dataset_catalog(
    context: dg.AssetExecutionContext, dataset: DatasetResource, store: StoreResource
) -> dg.MaterializeResult:
    """One row per performance of ``dataset.txt``, validated line by line; bad lines land in ``rejected``."""
    db, layout = store.store(), dataset_of(context, dataset, store)
    with failures():
        run = catalog_dataset(db, layout, context.log)
    good, rejected, warned, change = run.good, run.rejected, run.warned, run.change
    return dg.MaterializeResult(
        metadata={
            "performances": len(good),
            "already_present": run.already,
            "works": len({r["work"] for r in good}),
            "rejected_lines": len(rejected),
            "duration_warnings": len(warned),
            "added": change.added,
            "changed": change.changed,
            "unchanged": change.unchanged,
            "removed": change.removed,
            "audio_hours": round(sum(r["dur_s"] for r in good) / 3600, 3),
            "rejected": dg.MetadataValue.md(_markdown_table(rejected, ["line_no", "reason"]) if rejected else "none"),
            **label_metadata(catalog_store.label_counts(db, layout.name)),
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


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[dataset_catalog], kinds={"audio"})
def speed_variants(
    context: dg.AssetExecutionContext, dataset: DatasetResource, store: StoreResource
) -> dg.MaterializeResult:
    """The recordings the CQT stage computes. With ``tempo_augmentation: features`` (the default) these are the
    originals only: training draws tempo on the CQT's time axis. With ``audio``, tempo-changed copies (pitch kept)
    of every performance of the main catalog, one per ``aug_speed_mode`` factor; factor 1.0 is the original
    itself, and existing, up-to-date files are not redone."""
    layout = dataset_of(context, dataset, store)
    with failures():
        hp = layout.hparams()
        run = record_variants(store.store(), layout, context.log)
    return dg.MaterializeResult(
        metadata={
            "variants": run.variants,
            "performances": run.performances,
            "tempo_augmentation": hp.tempo_augmentation,
            "factors": dg.MetadataValue.json(list(hp.aug_speed_mode)),
            "rendered_now": run.rendered,
            "cached": run.cached,
            "folder": dg.MetadataValue.path(str(layout.variants_dir)),
        }
    )


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
    with failures():
        plan, shards = features.plan_features(store.store(), dataset_of(context, dataset, store),
                                              config.items_per_shard, context.log)
    yield dg.Output(plan, "plan")
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
    db, layout = store.store(), dataset_of(context, dataset, store)
    with failures():
        settings = layout.cqt_settings()
        run = features.commit_features(db, layout, plan, results)
    stored = run.stored
    frames = np.array([r.n_frames for r in stored.values()] or [0])
    yield dg.Output(None, "result", metadata={
        "features": len(stored),
        "computed_now": run.computed,
        "shards": len(results),
        "bad_files_recomputed": len(plan.problems),
        "settings_hash": settings.settings_hash(),
        "settings": dg.MetadataValue.json(asdict(settings)),
        "fps": settings.fps,
        "frames_median": int(np.median(frames)),
        "hours_of_features": round(float(frames.sum()) / settings.fps / 3600, 3),
        "folder": dg.MetadataValue.path(str(layout.features_dir / settings.settings_hash())),
    })
    yield features_check(stored, settings.n_bins, run.verified, features.marker_recorder(db, layout.name, settings))


@dg.graph_asset(group_name=GROUP, partitions_def=datasets, ins={"speed_variants": dg.AssetIn(dagster_type=dg.Nothing)},
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


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[dataset_catalog], kinds={"duckdb"})
def work_ids(context: dg.AssetExecutionContext, dataset: DatasetResource, store: StoreResource) -> dg.MaterializeResult:
    """A stable ``work → work_id`` map: existing works keep their ids; new works are numbered in sorted order."""
    with failures():
        works, added = record_work_ids(store.store(), dataset_of(context, dataset, store))
    return dg.MaterializeResult(metadata={"works": works, "new_works": added})


LEAK_CHECK = "splits_are_leak_free"


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[cqt_features, work_ids], kinds={"duckdb"}, check_specs=[
    dg.AssetCheckSpec(LEAK_CHECK, asset="data_splits",
                      description="No performance (or tempo variant of it) is in two splits of the exported files, "
                                  "and unseen works appear only in their split.")])
def data_splits(context: dg.AssetExecutionContext, dataset: DatasetResource,
                store: StoreResource) -> dg.MaterializeResult:
    """Train / val / test membership of the original performances (every tempo variant follows its original),
    unseen-work holdouts, and the reference-format exports."""
    layout = dataset_of(context, dataset, store)
    with failures():
        hp = layout.hparams()
        run = split_dataset(store.store(), layout)
    assignment, counts = run.assignment, run.counts()
    context.log.info(f"split {run.performances} performances: {counts}; exports in {layout.root}")
    return dg.MaterializeResult(
        metadata={
            **{f"{name}_performances": n for name, n in counts.items()},
            "test_only_works": len(assignment.test_only_work_ids),
            "val_only_works": len(assignment.val_only_work_ids),
            "seed": hp.seed,
            "exports": dg.MetadataValue.json(sorted(run.exports)),
        },
        check_results=[splits_leak_check(layout, store)],
    )


def splits_leak_check(layout: DatasetLayout, store: StoreResource) -> dg.AssetCheckResult:
    """Reads the exported files back and the store's unseen works; runs inside the splits' step."""
    in_two, leaks = split_leaks(store.store(), layout)
    return dg.AssetCheckResult(
        check_name=LEAK_CHECK,
        passed=not in_two and not leaks,
        metadata={"performances_in_two_splits": len(in_two), "unseen_work_leaks": len(leaks),
                  "examples": dg.MetadataValue.json(in_two[:10])},
    )
