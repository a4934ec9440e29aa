"""The run of the run-monitoring test: one asset in the ``training`` pool that waits to be killed.

The daemon loads this file as its workspace (``dagster-daemon run -f``); ``python tests/monitored_run.py`` runs it
as a run worker on the instance of $DAGSTER_HOME.
"""

import time

import dagster as dg


@dg.asset(pool="training")
def waits_to_be_killed() -> None:
    time.sleep(600)


defs = dg.Definitions(assets=[waits_to_be_killed])

if __name__ == "__main__":
    dg.materialize([waits_to_be_killed], instance=dg.DagsterInstance.get())
