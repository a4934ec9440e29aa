"""Run a job's steps on a Dask cluster, dynamic fan-out included: the ``cluster`` deployment's executor.

dagster-dask's ``dask_executor`` submits the steps of the *static* plan only: the ops a planning step maps over
its shards (``DynamicOutput``) are never run, and the run still ends in success. This executor keeps its
configuration (``cluster: {existing | local | slurm | pbs | ...}``, the same keys) and its worker entry point's
approach, but drives the plan like Dagster's multiprocess executor: each step is submitted when its inputs exist,
mapped steps as soon as their shards are known. A worker that dies mid-step is replaced by Dask and the step run
again elsewhere (sharded stages find what the dead worker finished; see ``csi_assets.shards``).

Where the cluster comes from, first match wins: the run config's ``cluster``; ``$CSI_DASK_SCHEDULER`` (the address
of a running scheduler); ``$CSI_DASK_CLUSTER_FILE`` (a YAML file ``{<kind>: {kwargs}}``, e.g.
``deploy/dask/slurm.yaml``); a local cluster of one single-threaded worker process per core.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.api import create_execution_plan, execute_plan
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.base import Executor
from dagster._core.instance import InstanceRef
from dagster._utils.error import serializable_error_info_from_exc_info
from dagster_dask.executor import dask_executor, get_dask_resource_requirements

JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                  "moab": "MoabCluster", "oar": "OARCluster"}
"""Cluster kinds started through dask-jobqueue (the ``cluster`` extra): batch jobs that each run Dask workers."""


def cluster_from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The ``cluster`` config when the run config gives none: see the module's docstring."""
    if environ.get("CSI_DASK_SCHEDULER"):
        return {"existing": {"address": environ["CSI_DASK_SCHEDULER"]}}
    if environ.get("CSI_DASK_CLUSTER_FILE"):
        path = Path(environ["CSI_DASK_CLUSTER_FILE"])
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or len(config) != 1:
            raise ValueError(f"{path}: a Dask cluster file holds one mapping {{kind: {{settings}}}}, e.g. "
                             f"{{slurm: {{cores: 8, memory: 16GB}}}}; got {config!r}")
        return config
    return {"local": {}}


def make_cluster(kind: str, settings: Mapping[str, Any], name: str) -> Any:
    """A Dask cluster (or a scheduler address for ``existing``) of ``kind`` with ``settings`` as its keyword
    arguments. Local workers get one thread each: Dagster steps are not thread-safe."""
    if kind == "existing":
        return settings["address"]
    if kind == "local":
        from distributed import LocalCluster

        return LocalCluster(**{"threads_per_worker": 1, **settings})
    if kind in JOBQUEUE_KINDS:
        try:
            import dask_jobqueue
        except ImportError as err:
            raise RuntimeError(f"cluster kind {kind!r} needs dask-jobqueue: pip install 'csi-dagster[cluster]'") \
                from err
        return getattr(dask_jobqueue, JOBQUEUE_KINDS[kind])(**{"name": name, **settings})
    if kind == "kube":
        from dask_kubernetes import KubeCluster  # installed by whoever runs Dask on Kubernetes

        return KubeCluster(**{"name": name, **settings})
    raise ValueError(f"unknown Dask cluster kind {kind!r}: existing, local, kube or one of {sorted(JOBQUEUE_KINDS)}")


def run_step(recon_job: ReconstructableJob, run_id: str, run_config: Mapping[str, Any], step_key: str,
             instance_ref: InstanceRef, known_state: KnownExecutionState) -> Sequence[DagsterEvent]:
    """On a Dask worker: execute one step of the run against the run's instance; returns its events. The run is
    read from the instance by id: a partitioned run carries a partitions subset that Dask's argument parsing cannot
    walk (it iterates tuples, and Dagster's records forbid iteration)."""
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        dagster_run = instance.get_run_by_id(run_id)
        if dagster_run is None:
            raise dg.DagsterInvariantViolationError(f"run {run_id} is not on the instance the Dask worker reads")
        plan = create_execution_plan(recon_job, run_config=run_config, step_keys_to_execute=[step_key],
                                     known_state=known_state)
        return execute_plan(plan, recon_job, instance, dagster_run, run_config=run_config)


class DaskExecutor(Executor):
    """Submits each ready step to a Dask cluster (see the module)."""

    def __init__(self, kind: str, settings: Mapping[str, Any]) -> None:
        self.kind = kind
        self.settings = dict(settings)

    @property
    def retries(self) -> RetryMode:
        return RetryMode.DISABLED

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
                ) -> Iterator[DagsterEvent]:
        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError("the Dask executor needs a persistent Dagster instance "
                                                    "(DAGSTER_HOME): workers report to it")
        yield DagsterEvent.engine_event(plan_context, f"Executing steps on a Dask cluster ({self.kind})",
                                        EngineEventData())
        cluster = make_cluster(self.kind, self.settings, plan_context.job_name)
        try:
            yield from self._run_plan(plan_context, execution_plan, cluster)
        finally:
            if self.kind != "existing":
                cluster.close()

    def _run_plan(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan, cluster: Any
                  ) -> Iterator[DagsterEvent]:
        import distributed

        run = plan_context.dagster_run
        with distributed.Client(cluster) as client, ActiveExecution(execution_plan, self.retries) as active:
            running: dict[str, distributed.Future] = {}  # step key → its task
            while True:
                if active.check_for_interrupts():  # the run was asked to stop: cancel what runs, start nothing
                    yield DagsterEvent.engine_event(
                        plan_context, f"Dask executor: stop requested, cancelling {len(running)} running step(s)",
                        EngineEventData.interrupted(list(running)))
                    active.mark_interrupted()
                    client.cancel(list(running.values()))
                    break
                for step in active.get_steps_to_execute():  # also resolves newly known dynamic outputs
                    running[step.key] = client.submit(
                        run_step, plan_context.reconstructable_job, run.run_id, plan_context.run_config, step.key,
                        plan_context.instance.get_ref(), active.get_known_state(), pure=False,
                        key=f"{run.run_id}.{step.key}", resources=get_dask_resource_requirements(step.tags))
                yield from active.plan_events_iterator(plan_context)  # skipped and abandoned steps
                if active.is_complete and not running:
                    break
                finished = [key for key, future in running.items() if future.done()]
                if not finished:  # poll, so a stop request is seen while long steps run
                    time.sleep(0.1)
                    continue
                for step_key in finished:
                    yield from self._events_of(plan_context, active, running.pop(step_key), step_key)
                    active.verify_complete(plan_context, step_key)

    def _events_of(self, plan_context: PlanOrchestrationContext, active: ActiveExecution, future: Any,
                   step_key: str) -> Iterator[DagsterEvent]:
        """The step's events, or, when the task itself failed (e.g. its workers kept dying), a step failure."""
        try:
            events = future.result()
        except Exception:  # noqa: BLE001 -- any task error is the step's failure, reported with its traceback
            error = serializable_error_info_from_exc_info(sys.exc_info())
            step_context = plan_context.for_step(active.get_step_by_key(step_key))
            event = self.log_failure_or_retry_event_after_error(step_context, error, active.get_known_state())
            active.handle_event(event)
            yield event
            return
        for event in events:
            active.handle_event(event)
            yield event


_CLUSTER_CONFIG = dask_executor.config_schema.as_field().config_type.fields["cluster"].config_type
"""dagster-dask's ``cluster`` selector: one of existing/local/slurm/pbs/... with that kind's settings."""


@dg.executor(name="dask", config_schema={"cluster": dg.Field(_CLUSTER_CONFIG, is_required=False)},
             requirements=dg.multiple_process_executor_requirements())
def csi_dask_executor(init_context: dg.InitExecutorContext) -> DaskExecutor:
    """dagster-dask's configuration, dynamic fan-out supported; without ``cluster`` config, the environment's."""
    cluster = init_context.executor_config.get("cluster") or cluster_from_environment()
    ((kind, settings),) = cluster.items()
    return DaskExecutor(kind, settings or {})
