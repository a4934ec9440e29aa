"""Group ``evaluation``: metrics, distance matrices and plots of the promoted model on its test sets (the
evaluation itself, and why one asset loops over the test sets: :mod:`csi_assets.eval_reports`)."""

from typing import Any

import dagster as dg

from csi_assets.assets.data import data_splits
from csi_assets.assets.training import trained_model
from csi_assets.assets.upstream import failures
from csi_assets.eval_reports import METRIC_LABELS, evaluate_promoted, inline_png, metric_table, scope
from csi_assets.partitions import dataset_of, datasets, training_of
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource

GROUP = "evaluation"


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[trained_model, data_splits], kinds={"pytorch", "duckdb"})
def eval_report(context: dg.AssetExecutionContext, dataset: DatasetResource, training: TrainingResource,
                store: StoreResource) -> dg.MaterializeResult:
    """mAP, MR1, HR@1 and P@10 with bootstrap CIs, the distance matrix and a t-SNE plot per test set of the
    promoted model, written under ``<training_dir>/reports/<model_id>/<test_set>/`` and into ``evaluations``."""
    with failures():
        run = evaluate_promoted(store.store(), dataset_of(context, dataset, store),
                                training_of(context, training, store), context.log)
    metadata: dict[str, Any] = {"model_id": run.model_id, "test_sets": len(run.reports),
                                "n_bootstrap": run.n_bootstrap}
    sections = []
    for report in run.reports:
        metadata |= {f"{report.name}/{label}": round(report.intervals[key].point, 4)
                     for key, label in METRIC_LABELS.items()}
        metadata |= {f"{report.name}/queries": report.metrics.n_queries,
                     f"{report.name}/unanswerable": report.metrics.n_unanswerable,
                     f"{report.name}/seconds": round(report.seconds, 2)}
        sections.append(f"### {report.name}\n\n{scope(report.metrics)}\n\n{metric_table(report)}\n"
                        f"{inline_png(report.plot)}\n")
    metadata["report"] = dg.MetadataValue.md("\n".join(sections))
    metadata["folder"] = dg.MetadataValue.path(str(run.folder))
    return dg.MaterializeResult(metadata=metadata)
