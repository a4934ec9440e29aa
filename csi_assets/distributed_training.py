"""Train in this process, or in ``distributed.nproc`` processes started by ``torchrun``, as the hparams ask.

One process (the default) calls :func:`csi_model.training.train` directly. More write the run to a job file in the
training folder, start ``torchrun --nproc_per_node N -m csi_model.distributed_train JOB`` on this machine (loopback
rendezvous on a free port), pass rank 0's progress lines to the same progress callback and every other output line
to ``log``, and read the result back from the file rank 0 writes. A failed rank is an error carrying the tail of
the processes' stderr. No Dagster here: the ``trained_model`` asset calls :func:`train_model`.
"""

from __future__ import annotations

import collections
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from csi_model.augment import TempoRange
from csi_model.dataset import FeatureItem
from csi_model.distributed_train import (
    TrainingJob,
    parse_progress,
    rank_errors,
    read_result,
    result_path,
    run_folder,
    write_job,
)
from csi_model.hparams import TrainingHParams
from csi_model.training import Progress, RetrievalTestSet, TrainingResult, train

STDERR_TAIL_LINES = 40


class DistributedTrainingFailed(RuntimeError):
    """torchrun or one of its training processes failed."""


def train_model(hp: TrainingHParams, train_items: Sequence[FeatureItem], model_dir: Path,
                val_items: Sequence[FeatureItem] = (), test_items: Sequence[FeatureItem] = (),
                test_sets: Sequence[RetrievalTestSet] = (), tempo: TempoRange | None = None,
                progress: Progress | None = None, log: Callable[[str], None] = print,
                device: str | None = None) -> TrainingResult:
    """Train (or resume) in ``model_dir`` with ``hp.distributed.nproc`` processes; ``device`` applies to one
    process only (each of several picks its own from ``hp.device`` and its local rank)."""
    if hp.distributed.nproc == 1:
        return train(hp, train_items, model_dir, val_items, test_items, test_sets, device=device, progress=progress,
                     tempo=tempo)
    job = TrainingJob(hp, Path(model_dir), list(train_items), list(val_items), list(test_items), list(test_sets),
                      tempo)
    return run_torchrun(job, progress, log)


def torchrun_command(nproc: int, job_file: Path, port: int) -> list[str]:
    """``torchrun`` (as this interpreter's ``torch.distributed.run``) for ``nproc`` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "csi_model.distributed_train",
            str(job_file)]


def free_port() -> int:
    """A TCP port free on the loopback interface right now (the rendezvous binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_torchrun(job: TrainingJob, progress: Progress | None, log: Callable[[str], None]) -> TrainingResult:
    """Run ``job`` under torchrun and return rank 0's result; :class:`DistributedTrainingFailed` with the tail of
    stderr when any process fails."""
    result_file = result_path(job.model_dir)
    for stale in [result_file, *run_folder(job.model_dir).glob("error_rank*.txt")]:
        stale.unlink(missing_ok=True)  # never report the result or errors of an earlier run
    command = torchrun_command(job.hparams.distributed.nproc, write_job(job), free_port())
    log("starting " + " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1) as proc:
        lines = _lines(proc.stdout, proc.stderr)
        try:
            for stream, line in lines:
                if stream == "stderr":
                    tail.append(line)
                event = parse_progress(line) if stream == "stdout" else None
                if event is None:
                    log(line)
                elif progress is not None:
                    progress(event)
        except BaseException:  # the caller gave up (run cancelled, callback failed): stop every rank, not just wait
            proc.terminate()  # torchrun passes SIGTERM on to its processes
            for _ in lines:  # until both pipes close: no reader thread outlives them
                pass
            proc.wait()
            raise
        code = proc.wait()
    if code != 0:
        errors = "".join(f"\n{line}" for line in rank_errors(job.model_dir))
        raise DistributedTrainingFailed(
            f"torchrun with {job.hparams.distributed.nproc} processes exited with code {code} (training folder "
            f"{job.model_dir}){errors}\nthe last lines of its stderr:\n" + "\n".join(tail))
    if not result_file.exists():
        raise DistributedTrainingFailed(f"torchrun finished but rank 0 wrote no result at {result_file}")
    return read_result(result_file)


def _lines(stdout: IO[str] | None, stderr: IO[str] | None) -> collections.abc.Iterator[tuple[str, str]]:
    """(stream name, line without its newline) from both pipes as they arrive, until both are closed. Readers run
    in threads; the lines are handed over here so the caller logs from its own thread."""
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()

    def read(name: str, pipe: IO[str]) -> None:
        for line in pipe:
            lines.put((name, line.rstrip("\n")))
        lines.put((name, None))

    readers = [threading.Thread(target=read, args=(name, pipe), daemon=True)
               for name, pipe in (("stdout", stdout), ("stderr", stderr)) if pipe is not None]
    for reader in readers:
        reader.start()
    open_streams = len(readers)
    while open_streams:
        name, line = lines.get()
        if line is None:
            open_streams -= 1
        else:
            yield name, line
    for reader in readers:
        reader.join()
