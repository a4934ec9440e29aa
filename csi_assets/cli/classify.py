"""``csi classify AUDIO... --label NAME [--json]``: the value of a musical category (a catalog label) for each
recording, with its probability and the top 3, from the label's model (``label_model``) or, without one, from
the promoted model's probe (``label_probe``).

Every file is checked (present, decodable) before any model loads: the readable ones are answered, the others
(and those too short for the model) listed on stderr. Exit status, as for ``csi identify``: 0 all answered, 1 some
failed, 2 none could be answered. Heavy libraries load inside :func:`run` only."""

from __future__ import annotations

import argparse
import json
import sys

from csi_assets.cli import CliError, add_store_options


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("classify", help="predict a catalog label (musical category) of recordings")
    p.add_argument("queries", nargs="+", metavar="AUDIO", help="audio files (any format libsndfile reads)")
    p.add_argument("--label", required=True, help="a label of the data hparams' labels: list")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per readable file")
    add_store_options(p)
    p.add_argument("--device", default=None, help="torch device (default: the model's, else cuda > mps > cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from csi_model.audio import AudioError, load_audio

    names, signals, failed = [], [], []
    for path in args.queries:
        try:
            signals.append(load_audio(path))
            names.append(path)
        except AudioError as err:
            failed.append(str(err))
    if not names:
        raise CliError("no readable audio:\n  " + "\n  ".join(failed))
    from csi_assets.classify import Classifier, ClassifyError
    from csi_assets.cli import locations
    from csi_assets.store import StoreError

    dataset_dir, store = locations(args)
    try:
        predictions = Classifier(store, dataset_dir, args.label, args.device, args.lock_wait).classify(
            names, signals, lambda _, message: failed.append(message))
    except (ClassifyError, StoreError) as err:  # a store locked beyond --lock-wait: one line naming the holder
        raise CliError(str(err)) from err
    if predictions:
        if args.json:
            print(json.dumps([p.to_dict() for p in predictions], indent=2, ensure_ascii=False))
        else:
            print("\n".join(_line(p) for p in predictions))
    for reason in failed:
        print(f"csi classify: error: {reason}", file=sys.stderr)
    if failed:
        print(f"csi classify: {len(predictions)} of {len(args.queries)} recordings classified", file=sys.stderr)
    return 0 if not failed else 1 if predictions else 2


def _line(prediction) -> str:
    """``path  label=value (p)  [top 3]`` for a ``csi_assets.classify.Prediction``."""
    top = ", ".join(f"{value} {probability:.3f}" for value, probability in prediction.top)
    return (f"{prediction.query}  {prediction.label} = {prediction.value} ({prediction.probability:.3f})  "
            f"top: {top}  [{prediction.source} {prediction.model}]")
