"""A small real project for asset tests: synthetic covers on disk, a DuckDB file, and the resources that point
at them. Shared by every test that materialises assets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from csi_assets.layouts import DatasetLayout
from csi_assets.partitions import ensure_partition
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_assets.store import Store
from csi_assets.store import features as feature_store
from csi_assets.store.records import FeatureRecord
from csi_model.synth import generate_covers

DATA_HPARAMS = {
    "fmin": 32, "n_bins": 96, "bins_per_octave": 12, "aug_speed_mode": [0.9, 1.0, 1.1], "tempo_augmentation": "audio",
    "device": "cpu",
    "val_data_split": 0.2, "val_unseen": 0.0, "test_data_split": 0.2, "test_data_unseen": 0.2, "seed": 7,
}


@dataclass
class Project:
    root: Path
    dataset_dir: Path
    training_dir: Path
    store_path: Path

    @property
    def resources(self) -> dict[str, dg.ConfigurableResource]:
        return {
            "dataset": DatasetResource(dataset_dir=str(self.dataset_dir)),
            "training": TrainingResource(training_dir=str(self.training_dir), dataset_name=self.dataset),
            "store": StoreResource(path=str(self.store_path)),
        }

    @property
    def dataset(self) -> str:
        """The dataset's name: its partition key and the key of its rows in the store."""
        return self.dataset_dir.name

    @property
    def store(self) -> Store:
        return Store(self.store_path)


def make_project(root: Path, works: int = 5, perfs: int = 3, seconds: float = 6.0, seed: int = 0,
                 data_hparams: dict | None = None) -> Project:
    dataset_dir = root / "dataset"
    generate_covers(dataset_dir, works, perfs, seed=seed, seconds=seconds)
    (dataset_dir / "hparams.yaml").write_text(yaml.safe_dump(data_hparams or DATA_HPARAMS))
    training_dir = root / "training"
    (training_dir / "config").mkdir(parents=True)
    return Project(root, dataset_dir, training_dir, root / "csi.duckdb")


def materialize(project: Project, assets: list, instance: dg.DagsterInstance | None = None,
                selection: str | list[str] | None = None, raise_on_error: bool = True,
                resources: dict | None = None, run_config: dict | None = None,
                **dimensions: str) -> dg.ExecuteInJobResult:
    """Materialise ``assets`` for the project's dataset partition (with the other ``dimensions`` of a
    multi-partitioned asset: ``label=``, ``batch=``, ``experiment=``), registering the partition first.
    ``resources`` override the project's."""
    instance = instance or dg.DagsterInstance.ephemeral()
    return dg.materialize(
        assets, resources={**project.resources, **(resources or {})}, instance=instance, selection=selection,
        partition_key=str(ensure_partition(instance, project.dataset, **dimensions)), run_config=run_config,
        raise_on_error=raise_on_error,
    )


def stored_features(project: Project) -> dict[str, FeatureRecord]:
    """The store's feature rows of the project's dataset under its CQT settings, by variant."""
    settings_hash = DatasetLayout.at(project.dataset_dir).cqt_settings().settings_hash()
    return feature_store.features(project.store, project.dataset, settings_hash)
