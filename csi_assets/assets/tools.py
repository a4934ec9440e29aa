"""Group ``tools``: coarse alignment of the performances of each work (:mod:`csi_assets.alignment`), and the
performances-per-work histogram (:mod:`csi_assets.catalog_histogram`).

Not part of the ``main`` job: the alignment needs a trained model and only feeds a fine-alignment stage that does
not exist yet, and the histogram is a look at the catalog. Both are materialised on demand (``dagster asset
materialize --select alignments``, the UI, or ``csi align``).
"""

import dagster as dg

from csi_assets import catalog_histogram as histogram
from csi_assets.alignment import align_dataset
from csi_assets.assets.data import cqt_features, dataset_catalog
from csi_assets.assets.training import trained_model
from csi_assets.assets.upstream import failures
from csi_assets.partitions import dataset_of, datasets, training_of
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_model.alignment import DEFAULT_HOP_S, DEFAULT_WINDOW_S

GROUP = "tools"


class AlignmentConfig(dg.Config):
    window_s: float = DEFAULT_WINDOW_S
    hop_s: float = DEFAULT_HOP_S


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[trained_model, cqt_features], kinds={"pytorch", "json"})
def alignments(context: dg.AssetExecutionContext, config: AlignmentConfig, dataset: DatasetResource,
               training: TrainingResource, store: StoreResource) -> dg.MaterializeResult:
    """Coarse time offset (seconds) between every two performances of the same work, from the promoted model's
    embeddings of short overlapping windows; JSON lines in the training folder."""
    with failures():
        run, path = align_dataset(store.store(), dataset_of(context, dataset, store),
                                  training_of(context, training, store).root, config.window_s, config.hop_s,
                                  context.log)
    return dg.MaterializeResult(metadata={**{k: v for k, v in run.metadata().items() if k != "too_short"},
                                          "too_short": dg.MetadataValue.json(run.too_short),
                                          "path": dg.MetadataValue.path(str(path))})


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[dataset_catalog], kinds={"matplotlib"})
def catalog_histogram(context: dg.AssetExecutionContext, dataset: DatasetResource,
                      store: StoreResource) -> dg.MaterializeResult:
    """Histogram of the number of performances per work in the store's catalog, saved next to the catalog."""
    with failures():
        stats, path = histogram.catalog_histogram(store.store(), dataset_of(context, dataset, store))
    return dg.MaterializeResult(metadata={**stats, "path": dg.MetadataValue.path(str(path)),
                                          "histogram": dg.MetadataValue.md(histogram.histogram_markdown(path))})
