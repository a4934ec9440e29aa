"""Evaluation results: one row per (dataset, model, test set), replaced by each new evaluation of that model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from csi_assets.store.connection import Store
from csi_assets.store.records import EvaluationRecord
from csi_assets.store.rows import fetch_records, select_fields, upsert


def record_evaluation(store: Store, dataset: str, model_id: str, test_set: str, metrics: Mapping[str, Any],
                      report_path: str) -> None:
    with store.transaction() as con:
        upsert(con, "evaluations", ("dataset", "model_id", "test_set"), [{
            "dataset": dataset, "model_id": model_id, "test_set": test_set,
            "metrics": json.dumps(dict(metrics)), "report_path": report_path,
        }])
        con.execute("UPDATE evaluations SET created_at = current_timestamp "
                    "WHERE dataset = ? AND model_id = ? AND test_set = ?", [dataset, model_id, test_set])


def evaluations(store: Store, dataset: str, model_id: str) -> list[EvaluationRecord]:
    """The latest evaluation of each test set of ``model_id``, by test-set name."""
    with store.transaction() as con:
        return fetch_records(con, f"SELECT {select_fields(EvaluationRecord)} FROM evaluations "
                                  "WHERE dataset = ? AND model_id = ? ORDER BY test_set", [dataset, model_id],
                             EvaluationRecord)
