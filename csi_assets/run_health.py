"""Is a run's worker process still alive? The answer run monitoring needs to mark killed runs failed.

Dagster's default run launcher cannot tell run monitoring whether a run worker is alive, so a run whose worker was
killed (``kill -9``, a crash, the machine's OOM killer, ``dagster dev`` stopped hard) stays STARTED for ever and
keeps its run slot and its concurrency-pool slot. Every run worker on this single machine records its process id
in the run's RUN_START event; :class:`LocalRunLauncher` (the launcher ``dagster.yaml`` configures) answers the
monitoring daemon's health check from it, and the delta-batch sensor asks the same question before requesting a
stuck batch again.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

PID_START_SLACK_S = 2.0
"""A process that started this much later than the run's RUN_START event is another process reusing the pid."""


def worker_process(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, start timestamp in s) of the process that emitted the run's RUN_START event, None before it started."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_START, limit=1).records
    if not records or records[0].event_log_entry.dagster_event is None:
        return None
    entry = records[0].event_log_entry
    return entry.dagster_event.pid, entry.timestamp


def process_alive(pid: int, started_by: float) -> bool:
    """Whether ``pid`` is a live (not zombie) process that existed at time ``started_by`` (epoch s).

    Where ``/proc`` exists (Linux) its state and start time are read, so a zombie or a new process that reused the
    pid counts as dead; elsewhere the pid's existence is all that is known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    stat = Path(f"/proc/{pid}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, IndexError, StopIteration):
        return True
    state, start_ticks = fields[0], int(fields[19])
    started = boot + start_ticks / os.sysconf("SC_CLK_TCK")
    return state not in ("Z", "X") and started <= started_by + PID_START_SLACK_S


def run_alive(instance: DagsterInstance, run: DagsterRun) -> bool:
    """Whether ``run`` may still finish: queued or starting (run monitoring's start timeout handles those that never
    start), or started with a live worker. A finished run, or a started one whose worker is gone, is not."""
    if run.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                      DagsterRunStatus.CANCELING):
        return True
    if run.status != DagsterRunStatus.STARTED:
        return False
    worker = worker_process(instance, run.run_id)
    return worker is None or process_alive(*worker)


class LocalRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (a process per run, beside the code server) plus a run-worker health check, so
    run monitoring marks a run failed once its worker process is gone."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = worker_process(self._instance, run.run_id)
        if worker is None or process_alive(*worker):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker process {worker[0]} is gone (killed or crashed)")
