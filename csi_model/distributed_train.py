"""One rank of a data-parallel training run: ``torchrun --nproc_per_node N -m csi_model.distributed_train JOB``.

The job file holds everything :func:`csi_model.training.train` takes (hparams, the item lists, the retrieval test
sets, the tempo range, the training folder), written by :func:`write_job` so a launcher in another process (the
``trained_model`` asset) hands the run over whole. Rank 0 prints one ``csi-progress <event>`` line per training
event (step, test set, checkpoint, epoch) on stdout for the launcher to follow, and writes the
:class:`~csi_model.training.TrainingResult` to ``<training folder>/distributed/result.json`` when the run ends.
Both files are written atomically.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csi_model.atomic import write_text_atomic
from csi_model.augment import TempoRange
from csi_model.dataset import FeatureItem
from csi_model.hparams import TrainingHParams, to_dict, training_hparams_from_dict
from csi_model.training import EpochRecord, RetrievalTestSet, TrainingEvent, TrainingResult

JOB_FORMAT = 1
PROGRESS_MARK = "csi-progress "
"""Prefix of rank 0's progress lines: the rest of the line is the pickled training event, base64-encoded."""


class JobFileError(ValueError):
    """A job or result file that cannot be read back (names the file)."""


@dataclass(frozen=True)
class TrainingJob:
    """The arguments of one :func:`csi_model.training.train` call, as a file."""

    hparams: TrainingHParams
    model_dir: Path
    train_items: Sequence[FeatureItem]
    val_items: Sequence[FeatureItem] = ()
    test_items: Sequence[FeatureItem] = ()
    test_sets: Sequence[RetrievalTestSet] = ()
    tempo: TempoRange | None = None
    run_id: str = "train"


def run_folder(model_dir: str | Path) -> Path:
    """Where the job and result files of a multi-process run live, inside the training folder."""
    return Path(model_dir) / "distributed"


def job_path(model_dir: str | Path) -> Path:
    return run_folder(model_dir) / "job.json"


def result_path(model_dir: str | Path) -> Path:
    return run_folder(model_dir) / "result.json"


def error_path(model_dir: str | Path, rank: int) -> Path:
    """Where a failing rank writes its error (``Type: message``) for the launcher to lead its report with."""
    return run_folder(model_dir) / f"error_rank{rank}.txt"


def rank_errors(model_dir: str | Path) -> list[str]:
    """``rank N: Type: message`` for every rank that wrote an error, in rank order."""
    by_rank = {int(p.stem.removeprefix("error_rank")): p for p in run_folder(model_dir).glob("error_rank*.txt")}
    return [f"rank {rank}: {by_rank[rank].read_text(encoding='utf-8')}" for rank in sorted(by_rank)]


def _items(items: Sequence[FeatureItem]) -> list[list[Any]]:
    return [[it.perf, it.work_id, str(it.feat_path), it.n_frames, it.start] for it in items]


def _from_items(rows: Sequence[Sequence[Any]]) -> list[FeatureItem]:
    return [FeatureItem(perf, int(work_id), Path(path), int(n_frames), int(start))
            for perf, work_id, path, n_frames, start in rows]


def write_job(job: TrainingJob) -> Path:
    """Write ``job`` to :func:`job_path` of its training folder (atomically) and return that path."""
    content = {
        "format": JOB_FORMAT,
        "hparams": to_dict(job.hparams),
        "hparams_source": job.hparams.source,
        "model_dir": str(job.model_dir),
        "run_id": job.run_id,
        "train": _items(job.train_items),
        "val": _items(job.val_items),
        "test": _items(job.test_items),
        "test_sets": [{"name": ts.name, "queries": _items(ts.queries),
                       "refs": None if ts.refs is None else _items(ts.refs),
                       "exclude_pairs": [list(p) for p in ts.exclude_pairs], "every_n_epoch": ts.every_n_epoch}
                      for ts in job.test_sets],
        "tempo": None if job.tempo is None else dataclasses.asdict(job.tempo),
    }
    path = job_path(job.model_dir)
    write_text_atomic(path, json.dumps(content))
    return path


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise JobFileError(f"{path}: cannot read the {what}: {err}") from err
    if not isinstance(content, dict) or content.get("format") != JOB_FORMAT:
        raise JobFileError(f"{path}: not a {what} of format {JOB_FORMAT}")
    return content


def read_job(path: str | Path) -> TrainingJob:
    path = Path(path)
    raw = _read_json(path, "training job")
    try:
        return TrainingJob(
            hparams=training_hparams_from_dict(raw["hparams"], source=raw["hparams_source"] or str(path)),
            model_dir=Path(raw["model_dir"]),
            train_items=_from_items(raw["train"]),
            val_items=_from_items(raw["val"]),
            test_items=_from_items(raw["test"]),
            test_sets=[RetrievalTestSet(ts["name"], _from_items(ts["queries"]),
                                        None if ts["refs"] is None else _from_items(ts["refs"]),
                                        tuple((int(q), int(r)) for q, r in ts["exclude_pairs"]),
                                        int(ts["every_n_epoch"]))
                       for ts in raw["test_sets"]],
            tempo=None if raw["tempo"] is None else TempoRange(**raw["tempo"]),
            run_id=raw["run_id"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise JobFileError(f"{path}: malformed training job ({type(err).__name__}: {err})") from err


def write_result(result: TrainingResult, path: Path) -> None:
    content = {**dataclasses.asdict(result), "format": JOB_FORMAT}
    for key in ("checkpoint_dir", "best_checkpoint", "latest_checkpoint"):
        content[key] = None if content[key] is None else str(content[key])
    write_text_atomic(path, json.dumps(content))


def read_result(path: str | Path) -> TrainingResult:
    path = Path(path)
    raw = _read_json(path, "training result")
    raw.pop("format")
    try:
        return TrainingResult(**{
            **raw,
            "history": [EpochRecord(**r) for r in raw["history"]],
            "checkpoint_dir": Path(raw["checkpoint_dir"]),
            "best_checkpoint": None if raw["best_checkpoint"] is None else Path(raw["best_checkpoint"]),
            "latest_checkpoint": None if raw["latest_checkpoint"] is None else Path(raw["latest_checkpoint"]),
        })
    except (KeyError, TypeError) as err:
        raise JobFileError(f"{path}: malformed training result ({type(err).__name__}: {err})") from err


def print_progress(event: TrainingEvent) -> None:
    """Rank 0's progress callback: the typed event, pickled, as one marked line on stdout, flushed so the launcher
    sees it at once (the launcher started this process: the stream is trusted)."""
    print(PROGRESS_MARK + base64.b64encode(pickle.dumps(event)).decode("ascii"), flush=True)


def parse_progress(line: str) -> TrainingEvent | None:
    """The :data:`~csi_model.training.TrainingEvent` of a progress line; None for any other line, and for a marked
    line that does not decode (cut short when its process died mid-write): the caller logs it as plain output."""
    if not line.startswith(PROGRESS_MARK):
        return None
    try:
        return pickle.loads(base64.b64decode(line[len(PROGRESS_MARK):], validate=True))
    except (binascii.Error, pickle.UnpicklingError, EOFError, ValueError):
        return None


def run_job(job: TrainingJob) -> TrainingResult | None:
    """Train ``job`` as this process's rank of the group ``torchrun`` set up; rank 0 writes and returns the result,
    the other ranks return None."""
    from csi_model.distributed import process_group
    from csi_model.training import train

    with process_group(job.hparams.distributed.backend, job.hparams.device) as (ranks, device):
        result = train(job.hparams, job.train_items, job.model_dir, job.val_items, job.test_items, job.test_sets,
                       device=device, progress=print_progress if ranks.is_main else None, run_id=job.run_id,
                       tempo=job.tempo, ranks=ranks)
        if not ranks.is_main:
            return None
        write_result(result, result_path(job.model_dir))
        return result


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_main)(argv)  # a failing rank's traceback goes into torchrun's failure summary


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csi_model.distributed_train",
                                     description="One rank of a data-parallel training run (start it with torchrun).")
    parser.add_argument("job", type=Path, help="the job file written by csi_model.distributed_train.write_job")
    args = parser.parse_args(argv)
    job = read_job(args.job)
    try:
        run_job(job)
    except Exception as err:
        write_text_atomic(error_path(job.model_dir, int(os.environ.get("RANK", "0"))), f"{type(err).__name__}: {err}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
