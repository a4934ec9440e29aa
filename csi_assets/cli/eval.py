"""``csi eval [--json]``: the latest stored evaluation of each test set for the promoted (or a given) model.

Metrics are over the answerable queries; ``n_unanswerable`` (JSON) / ``unanswerable`` (table) counts those left
out because their work has no other performance among the references."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csi_assets.cli import CliError, add_store_options, locations

if TYPE_CHECKING:
    from csi_assets.store.records import EvaluationRecord

_COLUMNS = (("mean_ap", "mAP"), ("mr1", "MR1"), ("hit_rate", "HR@1"), ("precision_at_10", "P@10"))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="show the stored evaluation metrics of the promoted model")
    p.add_argument("--json", action="store_true", help="print the stored records as JSON")
    p.add_argument("--model", default=None, help="a registered model id (default: the promoted model)")
    add_store_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from csi_assets.layouts import DatasetLayout
    from csi_assets.store import StoreError

    dataset_dir, store_path = locations(args)
    dataset = DatasetLayout.at(dataset_dir).name
    try:
        model_id, records = _stored_evaluations(Path(store_path), dataset, args)
    except StoreError as err:
        raise CliError(str(err)) from err
    if args.json:
        print(json.dumps([asdict(r) | {"model": model_id, "created_at": str(r.created_at)} for r in records],
                         indent=2))
    else:
        from tabulate import tabulate

        print(f"model {model_id}, dataset {dataset}\n" + tabulate(
            [[r.test_set, r.metrics.get("n_queries"), r.metrics.get("n_unanswerable", "?")]
             + [_cell(r.metrics, key) for key, _ in _COLUMNS] + [r.report_path] for r in records],
            headers=["test set", "queries", "unanswerable"] + [name for _, name in _COLUMNS] + ["report"]))
        print("Unanswerable queries (no other performance of their work among the references) are left out of "
              "every metric.")
        if any("n_unanswerable" not in r.metrics for r in records):
            print("'?': evaluated before unanswerable queries were counted (they were then scored as AP 0, rank 0); "
                  "materialize eval_report again for comparable numbers.")
    return 0


def _stored_evaluations(store_path: Path, dataset: str, args: argparse.Namespace) -> tuple[str, list[EvaluationRecord]]:
    """(model id, its evaluation records) from the store opened read-only; CliError when there is nothing."""
    from csi_assets.store import Store
    from csi_assets.store import evaluations as evaluation_store
    from csi_assets.store import models as model_store

    if not store_path.is_file():
        raise CliError(f"no store at {store_path}: materialize eval_report first")
    store = Store(store_path, args.lock_wait, read_only=True)
    promoted = None if args.model else model_store.promoted_model(store, dataset)
    model_id = args.model or (promoted.model_id if promoted else None)
    if model_id is None:
        raise CliError(f"no promoted model for dataset {dataset!r}: materialize trained_model first")
    records = evaluation_store.evaluations(store, dataset, model_id)
    if not records:
        raise CliError(f"no evaluation of model {model_id} for dataset {dataset!r}: materialize eval_report first")
    return model_id, records


def _cell(metrics: dict[str, Any], key: str) -> str:
    """The point estimate with its bootstrap interval when there is one: ``0.812 [0.74, 0.88]``."""
    interval = metrics.get("bootstrap", {}).get(key)
    text = f"{metrics[key]:.3f}"
    return f"{text} [{interval['ci_low']:.2f}, {interval['ci_high']:.2f}]" if interval else text
