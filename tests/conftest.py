"""Test-wide settings: one torch thread, and a throw-away Dagster home so no test writes into the repository or
the user's instance.

One intra-op thread makes float reductions (and so tiny training runs) repeat exactly from run to run, and is
faster for the tests' tiny models than two threads spinning on a shared 2-core machine. Subprocesses inherit it
through OMP_NUM_THREADS.
"""

from __future__ import annotations

import os
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_dagster_home() -> None:
    with tempfile.TemporaryDirectory(prefix="csi-dagster-home-") as home:
        previous = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = home
        yield
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous
