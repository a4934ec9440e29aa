"""A killed run is marked failed and frees its pool slot: the shipped dagster.yaml's run monitoring, run by the real
daemon, against a run worker killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from tests.paths import REPO

WAIT_LIMIT_S = 600.0
"""Upper bound of every wait: generous for a loaded 2-core machine; the waits end as soon as the state is reached."""


def _wait_for(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not (found := probe()):
        assert time.monotonic() < deadline, f"gave up after {WAIT_LIMIT_S:.0f} s waiting for {what}"
        time.sleep(0.5)
    return found


def _home(tmp_path: Path) -> Path:
    """A Dagster home with the shipped dagster.yaml, monitoring polled every second instead of every 15 s and
    pool slots freed one second after the run ends instead of 60 s."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["run_monitoring"].update(poll_interval_seconds=1, free_slots_after_run_end_seconds=1)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def test_run_whose_worker_was_killed_is_marked_failed_and_frees_its_pool_slot(tmp_path: Path) -> None:
    home = _home(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "monitored_run.py")], env=env)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        run = _wait_for("the run to start", lambda: next(iter(instance.get_runs(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))), None))
        _wait_for("the run to take its training pool slot",
                  lambda: instance.event_log_storage.get_concurrency_info("training").claimed_slots)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # nobody noticed by itself

    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-f",
                               str(REPO / "tests" / "monitored_run.py")], env=env, cwd=tmp_path)
    try:
        _wait_for("run monitoring to mark the killed run failed",
                  lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE)
        _wait_for("the killed run's pool slot to be freed",
                  lambda: not instance.event_log_storage.get_concurrency_info("training").claimed_slots)
    finally:
        daemon.terminate()
        daemon.wait()
    messages = [e.message for e in instance.all_logs(run.run_id) if e.message]
    assert any(f"process {worker.pid} is gone" in m for m in messages), messages[-5:]
