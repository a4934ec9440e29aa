"""A real Dagster web UI for tests: ``dagster-webserver`` plus ``dagster-daemon`` as subprocesses.

The project's ``dagster.yaml`` sets run concurrency, which makes the instance queue every run; only the daemon
dequeues runs, so a UI without it would show a launched run as "Queued" forever. Both processes run in their own
session (process group), so stopping them also stops the code server and run workers they spawned.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file, for failure messages."""
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A subprocess in its own process group, with its output captured to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> ManagedProcess:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(name, process, log_path)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.process.returncode}; "
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL it if it has not exited after ``grace_s``."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # stragglers of the group (code server, run workers) too
        self.process.wait(timeout=grace_s)

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


RUN_STALL_S = 600.0
"""A run with no new event for this long is stuck, not slow: every step logs its start, output and end."""


@dataclass
class DagsterUi:
    """A running web UI (and daemon) for one Dagster home; ``url`` is its base address."""

    url: str
    webserver: ManagedProcess
    daemon: ManagedProcess

    def log_tails(self, lines: int = 60) -> str:
        return _log_tails([self.webserver, self.daemon], lines)

    def wait_for_run(self, dagster_home: Path, run_id: str, stall_s: float = RUN_STALL_S) -> str:
        """Poll the run's status in the instance's storage until it is terminal; return its name ("SUCCESS", ...).

        No deadline for a run that moves: a slow machine only makes it take longer. It fails (with the run's
        status, its last events and the webserver and daemon logs) when the webserver or daemon dies, or when the
        run records no new event and no status change for ``stall_s`` seconds."""
        import dagster as dg

        last_change, seen = time.monotonic(), None
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            while True:
                run = instance.get_run_by_id(run_id)
                events = instance.all_logs(run_id) if run else []
                state = (run.status if run else None, len(events))
                if run is not None and run.is_finished:
                    return run.status.name
                if state != seen:
                    seen, last_change = state, time.monotonic()
                try:
                    for process in (self.webserver, self.daemon):
                        process.check_alive()
                    if time.monotonic() - last_change > stall_s:
                        raise TimeoutError(f"run {run_id} made no progress for {stall_s:.0f} s")
                except (RuntimeError, TimeoutError) as exc:
                    status = run.status.name if run else "not in the run storage"
                    raise AssertionError(f"{exc}; run status {status}; last run events:\n"
                                         f"{_event_tail(events)}\n{self.log_tails()}") from exc
                time.sleep(1.0)


def _event_tail(events: list, count: int = 20) -> str:
    """The last ``count`` event-log entries of a run, one line each."""
    return "\n".join(f"  {e.dagster_event.event_type_value if e.dagster_event else 'log'}: {e.message}"
                     for e in events[-count:]) or "  (no events)"


def _log_tails(processes: list[ManagedProcess], lines: int = 60) -> str:
    return "\n".join(
        f"--- {p.name} log ({p.log_path}), last {lines} lines ---\n{log_tail(p.log_path, lines)}" for p in processes
    )


def wait_until_serving(url: str, processes: list[ManagedProcess], timeout_s: float) -> None:
    """Poll ``url/server_info`` until it answers 200; fail early if a process dies, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        for process in processes:
            process.check_alive()
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url}/server_info did not answer within {timeout_s:.0f} s ({last_error})")


def _create_instance_storage(dagster_home: Path) -> None:
    """Create the instance's storage once, here: the webserver and the daemon creating a fresh SQLite storage at
    the same moment collide ("table alembic_version already exists")."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)):
        pass


@contextmanager
def dagster_ui(
    env: Mapping[str, str],
    log_dir: Path,
    workspace: Path = REPO_ROOT / "workspace.yaml",
    cwd: Path = REPO_ROOT,
    startup_timeout_s: float = 90.0,
) -> Iterator[DagsterUi]:
    """Start ``dagster-webserver`` and ``dagster-daemon run`` for ``env["DAGSTER_HOME"]``; always stop both.

    ``env`` is the complete environment of both processes. Logs go to ``log_dir/webserver.log`` and
    ``log_dir/daemon.log``; a failure to start raises with their tails.
    """
    _create_instance_storage(Path(env["DAGSTER_HOME"]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[ManagedProcess] = []
    try:
        started.append(
            ManagedProcess.start(
                "dagster-webserver",
                [str(BIN_DIR / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
                env, cwd, log_dir / "webserver.log",
            )
        )
        started.append(
            ManagedProcess.start(
                "dagster-daemon",
                [str(BIN_DIR / "dagster-daemon"), "run", "-w", str(workspace)],
                env, cwd, log_dir / "daemon.log",
            )
        )
        try:
            wait_until_serving(url, started, startup_timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{_log_tails(started)}") from exc
        yield DagsterUi(url, *started)
    finally:
        for process in reversed(started):
            process.stop()
