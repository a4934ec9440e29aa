"""Test-wide settings: a throw-away Dagster home, so no test writes into the repository or the user's instance."""

from __future__ import annotations

import os
import tempfile

import pytest


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
