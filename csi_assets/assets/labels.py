"""Musical categories beyond cover songs: ``label_probe`` (group ``evaluation``) asks how much the promoted CSI
model's embedding already knows about a label of the catalog; ``label_model`` (group ``training``) trains the
CoverHunter network with the label as its class.

Both are partitioned by label, one partition per name in the dataset hparams' ``labels:`` list, read when the
definitions load (``StaticPartitionsDefinition``): a new label appears after a reload of the code location (the UI's
"Reload" or a new ``dagster`` command). A dataset without labels, or whose hparams cannot be read, gets assets with
no partitions; nothing else changes. :func:`label_assets` builds the pair for any list of labels.

A label's values come from the store (``performance_labels``, filled by ``dataset_catalog`` and ingestion); a
performance whose value is missing is left out and counted. Reports go to
``<training_dir>/reports/<model_id>/labels/<label>/`` (probe) and ``<training_dir>/labels/<label>/`` (label model).
"""


import base64
import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import dagster as dg
import numpy as np

from csi_assets.assets.data import cqt_features, data_splits, dataset_catalog
from csi_assets.assets.serving import perf_vectors, reference_embeddings
from csi_assets.assets.training import (TrainingLog, best_model, check_compatible, steps_per_epoch, trained_contract,
                                       trained_model)
from csi_assets.classify import PROBE_FILE, label_model_folder, probe_file
from csi_assets.label_model import LabelSplit, label_split, write_label_model
from csi_assets.resources import DEFAULT_DATASET_DIR, DatasetResource, StoreResource, TrainingResource
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_assets.testsets import too_short_message
from csi_model.atomic import write_text_atomic
from csi_model.cqt import load_feature, settings_for
from csi_model.devices import pick_device
from csi_model.embedding import Embedder, softmax_rows
from csi_model.hparams import HParamsError, TrainingHParams, load_data_hparams
from csi_model.label_probe import (KNN_NEIGHBOURS, METRICS, PROBES, ProbeDataError, ProbeResult, bootstrap_scores,
                                   confusion_png, fit_linear, label_map_png, probe_label, verdict)
from csi_model.augment import TempoRange
from csi_model.training import WarmStart, train


def configured_labels(dataset_dir: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """The ``labels:`` of a dataset's hparams (default: ``$CSI_DATASET_DIR``); none when they cannot be read --
    the data assets report that error when they run, and the definitions still load."""
    folder = Path(dataset_dir or os.environ.get("CSI_DATASET_DIR", DEFAULT_DATASET_DIR))
    try:
        return load_data_hparams(folder / "hparams.yaml").labels
    except HParamsError:
        return ()


@dataclass(frozen=True)
class LabelledPerformances:
    """The performances a label can be probed on, in ``stored.perfs`` order, and what was left out."""

    perfs: np.ndarray  # [P] perf ids
    works: np.ndarray  # [P] work ids
    values: np.ndarray  # [P] label values
    vectors: np.ndarray  # [P, D] unit performance vectors
    counts: dict[str, int]


def labelled_performances(db: Store, dataset: str, model_id: str, label: str) -> LabelledPerformances:
    """Join the label's stored values with the model's stored embeddings (one vector per performance: the mean of
    its unit segment vectors, renormalised). Raises :class:`dg.Failure` when the label was never catalogued."""
    values = catalog_store.performance_labels(db, dataset, label)
    if not values:
        raise dg.Failure(description=f"no values of label {label!r} in the store for dataset {dataset!r}: list it "
                                     "under `labels:` in the data hparams and materialize dataset_catalog")
    stored = embedding_store.load_embeddings(db, dataset, model_id)
    vectors = perf_vectors(stored) if len(stored) else np.empty((0, 0), np.float32)
    keep = np.array([values.get(perf) is not None for perf in stored.perfs.tolist()], dtype=bool)
    with_value = sum(v is not None for v in values.values())
    counts = {"catalogued": len(values), "missing_value": len(values) - with_value,
              "with_value_not_embedded": with_value - int(keep.sum()), "with_value_and_embedding": int(keep.sum())}
    return LabelledPerformances(stored.perfs[keep], stored.work_ids[keep],
                                np.array([values[p] for p in stored.perfs[keep].tolist()], dtype=str),
                                vectors[keep], counts)


def write_probe_report(folder: Path, label: str, model_id: str, data: LabelledPerformances,
                       result: ProbeResult, seed: int) -> dict[str, Path]:
    """metrics.json, report.md, confusion.png, tsne.png, predictions.csv and the fitted probe (probe.npz)."""
    kept = result.kept
    files = {name: folder / name for name in ("metrics.json", "report.md", "confusion.png", "tsne.png",
                                              "predictions.csv", PROBE_FILE)}
    fit_linear(data.vectors[kept], result.y_true, result.classes, seed).save(files[PROBE_FILE])
    confusion_png(result.y_true, result.predictions["logistic"], result.classes, files["confusion.png"],
                  f"{label}: logistic probe, out-of-fold")
    label_map_png(data.vectors, data.values, files["tsne.png"], f"{label}: t-SNE of embeddings ({model_id})")
    classes = np.asarray(result.classes)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["perf", "work_id", "value", "logistic", "knn"])
    writer.writerows(zip(data.perfs[kept], data.works[kept], data.values[kept],
                         classes[result.predictions["logistic"]], classes[result.predictions["knn"]]))
    write_text_atomic(files["predictions.csv"], table.getvalue())
    record = {"label": label, "model_id": model_id, "counts": data.counts, **result.record()}
    write_text_atomic(files["metrics.json"], json.dumps(record, indent=2, ensure_ascii=False))
    write_text_atomic(files["report.md"], probe_markdown(label, model_id, data.counts, result))
    return files


def score_table(result: ProbeResult) -> str:
    rows = [f"| {probe} | " + " | ".join(f"{result.scores[probe][m].point:.3f} [{result.scores[probe][m].ci_low:.3f}, "
                                         f"{result.scores[probe][m].ci_high:.3f}]" for m in METRICS) + " |"
            for probe in PROBES]
    return ("| probe | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS) + "\n" + "\n".join(rows) + "\n")


def probe_markdown(label: str, model_id: str, counts: dict[str, int], result: ProbeResult) -> str:
    left_out = ", ".join(f"{v!r} ({n})" for v, n in result.left_out.items()) or "none"
    return (f"# Label probe: {label} (model {model_id})\n\n**{result.verdict}**\n\n"
            f"{score_table(result)}\n"
            f"Probes: logistic regression and a {KNN_NEIGHBOURS}-nearest-neighbour vote (cosine) on one vector per "
            "performance (the mean of its unit segment embeddings, renormalised); majority = always the most frequent "
            f"value (balanced accuracy 1/K). {result.n_folds}-fold cross-validation grouped by work (no work in both "
            f"training and test), {result.n_works} works; 95 % intervals from a bootstrap over works.\n\n"
            f"Performances: {counts['catalogued']} catalogued, {counts['missing_value']} without a value, "
            f"{counts['with_value_not_embedded']} with a value but no embedding, {len(result.y_true)} probed; "
            f"values of a single work left out: {left_out}.\n\n"
            "![confusion](confusion.png)\n\n![t-SNE](tsne.png)\n")


def _inline(path: Path) -> str:
    return f"![{path.stem}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"


def _probe_metadata(result: ProbeResult, files: dict[str, Path], data: LabelledPerformances,
                    model_id: str) -> dict[str, Any]:
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


def label_assets(labels: Sequence[str]) -> tuple[dg.AssetsDefinition, ...]:
    """``label_probe`` and ``label_model`` with one partition per label."""
    partitions = dg.StaticPartitionsDefinition(list(labels))

    @dg.asset(group_name="evaluation", partitions_def=partitions, deps=[reference_embeddings, dataset_catalog],
              kinds={"scikitlearn", "duckdb"})
    def label_probe(context: dg.AssetExecutionContext, dataset: DatasetResource, training: TrainingResource,
                    store: StoreResource) -> dg.MaterializeResult:
        """Is this category reflected in the promoted model's embedding? Logistic and kNN probes against a
        majority baseline, cross-validated with works never split, bootstrap CIs, confusion matrix, t-SNE."""
        label = context.partition_key
        db = store.store()
        model = model_store.promoted_model(db, dataset.name)
        if model is None:
            raise dg.Failure(description=f"no promoted model for dataset {dataset.name!r}: materialize "
                                         "trained_model and reference_embeddings first")
        data = labelled_performances(db, dataset.name, model["model_id"], label)
        try:
            result = probe_label(data.vectors, data.values, data.works, seed=dataset.hparams().seed)
        except ProbeDataError as err:
            raise dg.Failure(description=f"label {label!r} cannot be probed: {err} ({data.counts})") from err
        folder = probe_file(training.root, model["model_id"], label).parent
        files = write_probe_report(folder, label, model["model_id"], data, result, dataset.hparams().seed)
        context.log.info(f"{label}: {result.verdict}")
        return dg.MaterializeResult(metadata=_probe_metadata(result, files, data, model["model_id"]))

    @dg.asset(group_name="training", partitions_def=partitions, deps=[data_splits, cqt_features, trained_model],
              pool="training", kinds={"pytorch"})
    def label_model(context: dg.AssetExecutionContext, config: LabelModelConfig, dataset: DatasetResource,
                    training: TrainingResource, store: StoreResource) -> dg.MaterializeResult:
        """CoverHunter trained with this label as its class (the training loop, losses, sampler, augmentation
        and resumable checkpoints of trained_model), scored on held-out works like the probe."""
        label = context.partition_key
        db = store.store()
        data_hp = dataset.hparams()
        hp = label_hparams(training.hparams(), config)
        check_compatible(hp, data_hp)
        table = feature_store.feature_table(db, dataset.name, settings_for(data_hp).settings_hash())
        # the tempo augmentation trained_model uses: rendered variants ('audio') or drawn per chunk ('features')
        tempo = None if data_hp.tempo_augmentation == "audio" else TempoRange.from_factors(data_hp.aug_speed_mode)
        try:
            split = label_split(table, catalog_store.performance_labels(db, dataset.name, label), data_hp.seed,
                                hp.mean_size, stored_variants=tempo is None)
        except ProbeDataError as err:
            raise dg.Failure(description=f"label {label!r} cannot be learnt: {err}") from err
        for row in split.too_short:
            context.log.warning(too_short_message(row, hp.mean_size))
        warm = WarmStart(_warm_start(db, dataset.name), heads=False) if config.warm_start else None
        folder = label_model_folder(training.root, label)
        device = pick_device(hp.device)
        context.log.info(f"{label}: {len(split.classes)} values {split.classes}, {len(split.train)} train / "
                         f"{len(split.val)} val / {len(split.test)} test items, warm start {warm.generator if warm else 'none'}")
        copies = tempo.copies if tempo is not None else 1
        log = TrainingLog(context.log, steps_per_epoch(hp, [it.work_id for it in split.train], copies), 0,
                          hp.max_epochs)
        result = train(hp, split.train, folder, split.val, device=device, progress=log, warm_start=warm, tempo=tempo)
        model, loaded = best_model(hp, result)
        scores, gain, predicted = held_out_scores(model, hp, split, device, data_hp.seed)
        reading = verdict(scores, gain, len(set(split.test_works.tolist())), "label_model",
                          "the category is learnable from the audio features",
                          "so this network hears it beyond the tunes it was trained on")
        record = {"label": label, "classes": split.classes, "best_epoch": result.best_epoch,
                  "epochs": result.last_epoch + 1, "items": {"train": len(split.train), "val": len(split.val),
                                                             "test": len(split.test)},
                  "left_out_single_work_values": split.left_out, "verdict": reading,
                  "gain_balanced_accuracy": gain.to_dict(),
                  "scores": {p: {m: i.to_dict() for m, i in v.items()} for p, v in scores.items()}}
        y_test = np.array([it.work_id for it in split.test])
        confusion_png(y_test, predicted, split.classes, folder / "confusion.png", f"{label}: label model, held out")
        write_text_atomic(folder / "metrics.json", json.dumps(record, indent=2, ensure_ascii=False))
        write_label_model(folder, label, split.classes, result.best_checkpoint, loaded.fingerprint, hp, record,
                          str(warm.generator) if warm else None, trained_contract(data_hp))
        context.log.info(f"{label}: {reading}")
        return dg.MaterializeResult(metadata={
            "verdict": dg.MetadataValue.md(reading), "above_baseline": gain.ci_low > 0,
            "classes": dg.MetadataValue.json(split.classes), "best_epoch": result.best_epoch,
            "epochs_trained_now": result.epochs_run, "gain_balanced_accuracy": dg.MetadataValue.json(gain.to_dict()),
            **{f"{p}/{m}": dg.MetadataValue.float(v[m].point) for p, v in scores.items() for m in METRICS},
            "items": dg.MetadataValue.json(record["items"]), "warm_start": str(warm.generator) if warm else "none",
            "confusion": dg.MetadataValue.md(_inline(folder / "confusion.png")),
            "checkpoint": dg.MetadataValue.path(str(result.best_checkpoint)),
            "folder": dg.MetadataValue.path(str(folder)),
        })

    return label_probe, label_model


class LabelModelConfig(dg.Config):
    """Run config of ``label_model``."""

    max_epochs: Optional[int] = None
    """Override the training hparams' ``max_epochs``."""
    warm_start: bool = False
    """Start the embedding network from the promoted CSI model's weights (its class heads are not reused)."""
    augmentation: bool = True
    """The hparams' spectrogram augmentation; switch it off for labels it would erase (pitch rolls move a
    register, for instance)."""


def label_hparams(hp: TrainingHParams, config: LabelModelConfig) -> TrainingHParams:
    """The training hparams with the label's values as classes: no retrieval test sets, validation loss for early
    stopping and the best checkpoint, the classifier sized by the values."""
    return dataclasses.replace(
        hp, test_sets={}, early_stop_metric="val_loss", map_stopping_testsets=(), foc=dataclasses.replace(
            hp.foc, output_dims=None), max_epochs=config.max_epochs or hp.max_epochs,
        spec_augmentation=hp.spec_augmentation if config.augmentation else None)


def _warm_start(db: Store, dataset: str) -> Path:
    promoted = model_store.promoted_model(db, dataset)
    if promoted is None:
        raise dg.Failure(description=f"warm_start needs a promoted model for dataset {dataset!r}: materialize "
                                     "trained_model (or run without warm_start)")
    return Path(promoted["checkpoint"])


def held_out_scores(model: Any, hp: TrainingHParams, split: LabelSplit, device: Any, seed: int) -> tuple:
    """(scores, gain, predicted [T]): each held-out recording's value is the argmax of its segments' mean class
    probabilities; the baseline answers the training items' most frequent value."""
    features = [load_feature(item.feat_path) for item in split.test]
    logits = Embedder.for_hparams(model, hp, device).logits(features)
    predicted = np.array([softmax_rows(track).mean(axis=0).argmax() for track in logits])
    y = np.array([item.work_id for item in split.test])
    majority = np.bincount([item.work_id for item in split.train], minlength=len(split.classes)).argmax()
    predictions = {"label_model": predicted, "majority": np.full(len(y), majority)}
    scores, gain = bootstrap_scores(y, predictions, split.test_works, len(split.classes), seed,
                                    primary="label_model")
    return scores, gain, predicted


LABEL_ASSETS = label_assets(configured_labels())
label_probe, label_model = LABEL_ASSETS


if __name__ == "__main__":  # `make demo` loops over the labels to probe
    print(" ".join(configured_labels()))
