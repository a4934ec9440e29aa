"""Trained models: where their checkpoints are, what they scored, and which one is promoted for serving.

A model id is derived from the checkpoint's weight fingerprint, so the same weights always get the same id and
re-registering a checkpoint is harmless. One model per dataset is promoted: the one identification, reference
embeddings and evaluation use unless told otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from csi_assets.store.connection import Store
from csi_assets.store.records import ModelRecord
from csi_assets.store.rows import fetch_records, select_fields, upsert


def model_id_for(training_name: str, fingerprint: str) -> str:
    return f"{training_name}-{fingerprint[:12]}"


def register_model(
    store: Store,
    *,
    model_id: str,
    dataset: str,
    training_dir: str,
    checkpoint: str,
    epoch: int | None,
    fingerprint: str,
    hparams: Mapping[str, Any],
    metrics: Mapping[str, Any],
    promote: bool,
    input_contract: Mapping[str, Any] | None,
) -> None:
    """Record (or update) a model; with ``promote`` it becomes the dataset's only promoted model.

    ``input_contract`` is ``csi_model.contract.InputContract.to_dict()`` of the features the model was trained
    on (None only when nobody knows them)."""
    with store.transaction() as con:
        if promote:
            con.execute("UPDATE models SET promoted = false WHERE dataset = ?", [dataset])
        upsert(con, "models", ("model_id",), [{
            "model_id": model_id, "dataset": dataset, "training_dir": training_dir, "checkpoint": checkpoint,
            "epoch": epoch, "fingerprint": fingerprint, "hparams": json.dumps(dict(hparams), default=str),
            "metrics": json.dumps(dict(metrics), default=str), "promoted": promote,
            "input_contract": None if input_contract is None else json.dumps(dict(input_contract)),
        }])


def promote(store: Store, dataset: str, model_id: str) -> None:
    with store.transaction() as con:
        if not con.execute("SELECT 1 FROM models WHERE model_id = ? AND dataset = ?", [model_id, dataset]).fetchone():
            raise KeyError(f"no model {model_id!r} for dataset {dataset!r}")
        con.execute("UPDATE models SET promoted = (model_id = ?) WHERE dataset = ?", [model_id, dataset])


def promoted_model(store: Store, dataset: str) -> ModelRecord | None:
    """The promoted model of ``dataset``, or None when none is promoted."""
    rows = _models(store, "dataset = ? AND promoted", [dataset])
    return rows[0] if rows else None


def get_model(store: Store, model_id: str) -> ModelRecord | None:
    """The model ``model_id``, or None when no such model is registered."""
    rows = _models(store, "model_id = ?", [model_id])
    return rows[0] if rows else None


def models(store: Store, dataset: str) -> list[ModelRecord]:
    """Every model of ``dataset``, oldest first."""
    return _models(store, "dataset = ?", [dataset])


def _models(store: Store, where: str, params: list[Any]) -> list[ModelRecord]:
    with store.transaction() as con:
        return fetch_records(con, f"SELECT {select_fields(ModelRecord)} FROM models WHERE {where} "
                                  "ORDER BY created_at, model_id", params, ModelRecord)
