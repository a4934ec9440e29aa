"""Where a local deployment keeps its dataset, training run and store: the defaults and the environment variables
that override them.

Kept free of heavy imports (no Dagster, no DuckDB) so the ``csi`` command can resolve its paths and check its
inputs before anything slow is loaded; the Dagster resources read the same values.
"""

from __future__ import annotations

import os

DEFAULT_DATASET_DIR = "data/demo"
DEFAULT_TRAINING_DIR = "training/demo"
DEFAULT_STORE_PATH = "data/csi.duckdb"


def dataset_dir() -> str:
    """``$CSI_DATASET_DIR``, else ``data/demo``."""
    return os.environ.get("CSI_DATASET_DIR", DEFAULT_DATASET_DIR)


def training_dir() -> str:
    """``$CSI_TRAINING_DIR``, else ``training/demo``."""
    return os.environ.get("CSI_TRAINING_DIR", DEFAULT_TRAINING_DIR)


def training_pair() -> str:
    """The dataset whose training folder ``$CSI_TRAINING_DIR`` is: ``$CSI_DATASET_DIR``'s name when both are set;
    otherwise empty (a default training folder belongs to the dataset named like it, so pointing
    ``CSI_DATASET_DIR`` at another dataset never trains it in the demo's folder)."""
    if "CSI_TRAINING_DIR" in os.environ and "CSI_DATASET_DIR" in os.environ:
        return os.path.basename(os.path.normpath(os.path.abspath(os.environ["CSI_DATASET_DIR"])))
    return ""


def store_path() -> str:
    """``$CSI_STORE_PATH``, else ``data/csi.duckdb``."""
    return os.environ.get("CSI_STORE_PATH", DEFAULT_STORE_PATH)
