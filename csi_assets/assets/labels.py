"""Musical categories beyond cover songs: ``label_probe`` (group ``evaluation``) asks how much the promoted CSI
model's embedding already knows about a label of the catalog (:mod:`csi_assets.labels`); ``label_model`` (group
``training``) trains the CoverHunter network with the label as its class (:mod:`csi_assets.label_model`).

Both are partitioned by (dataset, label). The labels are registered with the datasets (the ``dataset_folders``
sensor, or ``python -m csi_assets.partitions``) from each dataset's ``labels:`` list, so a label added to the hparams
appears without a code reload; a pair whose dataset does not list the label fails with a message saying so.
"""

import base64
from pathlib import Path
from typing import Any

import dagster as dg

from csi_assets.assets.data import cqt_features, data_splits, dataset_catalog
from csi_assets.assets.serving import reference_embeddings
from csi_assets.assets.training import trained_model
from csi_assets.assets.upstream import failures
from csi_assets.label_model import run_label_model
from csi_assets.labels import ProbeRun, run_label_probe, score_table
from csi_assets.partitions import LABEL, dataset_labels, dataset_of, key_part, training_of
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_model.label_probe import METRICS, PROBES


def _inline(path: Path) -> str:
    return f"![{path.stem}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"


def _probe_metadata(run: ProbeRun) -> dict[str, Any]:
    result, files, data, model_id = run.result, run.files, run.data, run.model_id
    metadata: dict[str, Any] = {
        "model_id": model_id, "verdict": dg.MetadataValue.md(result.verdict),
        "above_baseline": result.gain.ci_low > 0, "classes": dg.MetadataValue.json(result.classes),
        "gain_balanced_accuracy": dg.MetadataValue.json(result.gain.to_dict()),
        "counts": dg.MetadataValue.json(data.counts), "works": result.n_works, "folds": result.n_folds,
        "left_out_single_work_values": dg.MetadataValue.json(result.left_out),
        "scores": dg.MetadataValue.md(score_table(result)),
        "confusion": dg.MetadataValue.md(_inline(files["confusion.png"])),
        "tsne": dg.MetadataValue.md(_inline(files["tsne.png"])),
        "folder": dg.MetadataValue.path(str(files["report.md"].parent)),
    }
    for probe in PROBES:
        metadata |= {f"{probe}/{m}": dg.MetadataValue.float(result.scores[probe][m].point) for m in METRICS}
    return metadata


class LabelModelConfig(dg.Config):
    """Run config of ``label_model``."""

    max_epochs: int | None = None
    """Override the training hparams' ``max_epochs``."""
    warm_start: bool = False
    """Start the embedding network from the promoted CSI model's weights (its class heads are not reused)."""
    augmentation: bool = True
    """The hparams' spectrogram augmentation; switch it off for labels it would erase (pitch rolls move a
    register, for instance)."""


@dg.asset(group_name="evaluation", partitions_def=dataset_labels, deps=[reference_embeddings, dataset_catalog],
          kinds={"scikitlearn", "duckdb"})
def label_probe(context: dg.AssetExecutionContext, dataset: DatasetResource, training: TrainingResource,
                store: StoreResource) -> dg.MaterializeResult:
    """Is this category reflected in the promoted model's embedding? Logistic and kNN probes against a
    majority baseline, cross-validated with works never split, bootstrap CIs, confusion matrix, t-SNE."""
    with failures():
        run = run_label_probe(store.store(), dataset_of(context, dataset, store), training_of(context, training, store),
                              key_part(context, LABEL), context.log)
    return dg.MaterializeResult(metadata=_probe_metadata(run))


@dg.asset(group_name="training", partitions_def=dataset_labels, deps=[data_splits, cqt_features, trained_model],
          pool="training", kinds={"pytorch"})
def label_model(context: dg.AssetExecutionContext, config: LabelModelConfig, dataset: DatasetResource,
                training: TrainingResource, store: StoreResource) -> dg.MaterializeResult:
    """CoverHunter trained with this label as its class (the training loop, losses, sampler, augmentation
    and resumable checkpoints of trained_model), scored on held-out works like the probe."""
    with failures():
        run = run_label_model(store.store(), dataset_of(context, dataset, store), training_of(context, training, store),
                              key_part(context, LABEL), context.log, config.max_epochs, config.warm_start,
                              config.augmentation)
    result, scores, gain = run.result, run.scores, run.gain
    return dg.MaterializeResult(metadata={
        "verdict": dg.MetadataValue.md(run.reading), "above_baseline": gain.ci_low > 0,
        "classes": dg.MetadataValue.json(run.split.classes), "best_epoch": result.best_epoch,
        "epochs_trained_now": result.epochs_run, "gain_balanced_accuracy": dg.MetadataValue.json(gain.to_dict()),
        **{f"{p}/{m}": dg.MetadataValue.float(v[m].point) for p, v in scores.items() for m in METRICS},
        "items": dg.MetadataValue.json(run.record["items"]),
        "warm_start": str(run.warm_start) if run.warm_start else "none",
        "confusion": dg.MetadataValue.md(_inline(run.folder / "confusion.png")),
        "checkpoint": dg.MetadataValue.path(str(result.best_checkpoint)),
        "folder": dg.MetadataValue.path(str(run.folder)),
    })


LABEL_ASSETS = (label_probe, label_model)
