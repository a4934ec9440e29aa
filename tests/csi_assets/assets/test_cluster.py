"""The cluster deployment for real: the data assets and reference_embeddings run through the Dask executor on a
``distributed.LocalCluster`` of two worker processes (loopback only) and store exactly what the in-process run
stores; a worker killed while it computes a shard costs nothing but time; and a materialisation on a Dagster
instance kept in a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster._core.storage.tags import PARTITION_NAME_TAG

from csi_assets.assets import data, serving
from csi_assets.dask_execution import cluster_from_environment, make_cluster
from csi_assets.partitions import datasets, ensure_partition
from csi_assets.shards import Shard, finished, rows_path, split_shards, staging_dir, write_rows
from csi_assets.store import Store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import features as feature_store
from csi_assets.store import shards as shard_store
from csi_assets.store.records import FeatureRecord
from tests import cluster_job
from tests.graph_fixtures import Project, make_project, materialize
from tests.paths import REPO
from tests.serving_fixtures import ORIGINALS_ONLY, random_model, register_model, serving_hparams

distributed = pytest.importorskip("distributed")

SHARD_ITEMS = 3
LOCAL_ASSETS = [data.dataset_catalog, data.speed_variants, data.cqt_features, data.work_ids, data.data_splits,
                serving.reference_embeddings]


def _project(root: Path) -> Project:
    """4 works × 3 performances of 5 s, originals only, with the same tiny promoted model every time."""
    project = make_project(root, works=4, perfs=3, seconds=5.0, data_hparams=ORIGINALS_ONLY)
    hp = serving_hparams()
    register_model(project, random_model(hp), hp)
    return project


def _run_config(project: Project, address: str, per_shard: int) -> dict:
    shards = {"config": {"items_per_shard": per_shard}}
    return {
        "execution": {"config": {"cluster": {"existing": {"address": address}}}},
        "resources": {"dataset": {"config": {"dataset_dir": str(project.dataset_dir)}},
                      "training": {"config": {"training_dir": str(project.training_dir),
                                              "dataset_name": project.dataset}},
                      "store": {"config": {"path": str(project.store_path)}}},
        "ops": {"cqt_features": {"ops": {"plan_cqt_shards": shards}},
                "reference_embeddings": {"ops": {"plan_reference_shards": shards}}},
    }


def _run_on_dask(project: Project, instance: dg.DagsterInstance, address: str) -> dg.ExecuteJobResult:
    """The job on the project's dataset partition (registered first), every step on a Dask worker."""
    job = dg.build_reconstructable_job("tests.cluster_job", "data_and_references")
    key = ensure_partition(instance, project.dataset)
    result = dg.execute_job(job, instance=instance, run_config=_run_config(project, address, SHARD_ITEMS),
                            tags={PARTITION_NAME_TAG: key}, raise_on_error=False)
    materialized = {e.event_specific_data.materialization.partition for e in result.get_asset_materialization_events()}
    assert materialized <= {key}, materialized  # every step ran on the run's partition, in every worker
    return result


def _instance(tmp_path: Path):
    """A persistent instance (Dask workers report to it) in a folder of its own."""
    home = tmp_path / "home"
    home.mkdir()
    return dg.instance_for_test(temp_dir=str(home))


def _stored(project: Project) -> tuple[dict, dict, dict]:
    """(feature rows, feature arrays, segment vectors) by variant/perf, paths relative to the project."""
    settings_hash = project.resources["dataset"].layout(project.dataset).cqt_settings().settings_hash()
    rows = feature_store.features(project.store, "dataset", settings_hash)
    table = {v: (str(Path(r.path).relative_to(project.root)), r.n_frames, r.n_bins, r.audio_hash, r.settings)
             for v, r in rows.items()}
    arrays = {v: np.load(r.path) for v, r in rows.items()}
    [model_id] = {m for (m,) in _query(project, "SELECT DISTINCT model_id FROM embeddings")}
    stored = embedding_store.load_embeddings(project.store, "dataset", model_id)
    vectors = {p: (stored.start_frames[stored.segment_perf == i].tolist(), stored.vectors[stored.segment_perf == i])
               for i, p in enumerate(stored.perfs)}
    return table, arrays, vectors


def _query(project: Project, sql: str) -> list[tuple]:
    with project.store.transaction() as con:
        return con.execute(sql).fetchall()


def _assert_same_store(actual: Project, expected: Project, same_shards: bool = True) -> None:
    """Same rows and feature bytes; same vectors, bit for bit when both runs embedded the same shards (a shard is
    one batch of segments: other batches may change the last float bit)."""
    table, arrays, vectors = _stored(actual)
    want_table, want_arrays, want_vectors = _stored(expected)
    assert table == want_table
    assert arrays.keys() == want_arrays.keys()
    for variant, array in arrays.items():
        assert array.dtype == want_arrays[variant].dtype and np.array_equal(array, want_arrays[variant]), variant
    assert vectors.keys() == want_vectors.keys()
    for perf, (starts, v) in vectors.items():
        assert starts == want_vectors[perf][0]
        if same_shards:
            assert np.array_equal(v, want_vectors[perf][1]), perf
        else:
            np.testing.assert_allclose(v, want_vectors[perf][1], rtol=0, atol=1e-6, err_msg=perf)
    duplicates = "SELECT count(*) FROM (SELECT dataset, perf, model_id, segment FROM embeddings GROUP BY ALL " \
                 "HAVING count(*) > 1)"
    assert _query(actual, duplicates) == [(0,)]
    assert not list(staging_dir(actual.store_path).glob("*.json")), "every shard file is committed and removed"


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> Project:
    project = _project(tmp_path_factory.mktemp("in_process"))
    shards = {"config": {"items_per_shard": SHARD_ITEMS}}
    result = materialize(project, LOCAL_ASSETS,
                         run_config={"ops": {"cqt_features": {"ops": {"plan_cqt_shards": shards}},
                                             "reference_embeddings": {"ops": {"plan_reference_shards": shards}}}})
    assert result.success
    return project


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as local:
        yield local


def test_dask_run_stores_what_the_in_process_run_stores(in_process, cluster, tmp_path) -> None:
    project = _project(tmp_path / "dask")
    with _instance(tmp_path) as instance:
        result = _run_on_dask(project, instance, cluster.scheduler_address)
        assert result.success
        shard_steps = {e.step_key for e in result.all_events
                       if e.event_type_value == "STEP_SUCCESS" and "shard[" in (e.step_key or "")}
        names = [key.split(".")[-1] for key in shard_steps]
        assert sum(n.startswith("compute_cqt_shard[") for n in names) == 12 // SHARD_ITEMS
        assert sum(n.startswith("embed_reference_shard[") for n in names) == 12 // SHARD_ITEMS
        materialized = {(e.asset_key.to_user_string(), e.event_specific_data.materialization.partition)
                        for e in result.get_asset_materialization_events()}
        assert materialized == {(asset, project.dataset) for asset in cluster_job.ASSETS}
        checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert checks and all(e.event_specific_data.passed for e in checks)
    _assert_same_store(project, in_process)


def _when_a_shard_runs(address: str, prefix: str, act: Callable[[distributed.Client, str], None],
                       done: list) -> None:
    """Poll the scheduler until a worker runs a task of ``prefix`` shards, then ``act(client, worker)`` once and
    note it in ``done``."""
    with distributed.Client(address, timeout=60) as client:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not done:
            for worker, tasks in client.processing().items():
                if any(prefix in str(key) for key in tasks):
                    act(client, worker)
                    done.append(worker)
                    return
            time.sleep(0.02)


def _kill_worker(client: distributed.Client, worker: str) -> None:
    os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)


def _stop_this_run(client: distributed.Client, worker: str) -> None:
    """The SIGINT a run's stop request is, to this process: the run executes in its main thread, where Dagster
    captures it."""
    os.kill(os.getpid(), signal.SIGINT)


def _run_acting_on_a_shard(project: Project, instance: dg.DagsterInstance, address: str,
                           act: Callable[[distributed.Client, str], None]) -> dg.ExecuteJobResult:
    """Run the job on Dask while a thread does ``act`` once a CQT shard is running."""
    acted: list[str] = []
    actor = threading.Thread(target=_when_a_shard_runs, args=(address, ".compute_cqt_shard[", act, acted))
    actor.start()
    result = _run_on_dask(project, instance, address)
    actor.join()
    assert acted, "no shard step was ever seen running"
    return result


def test_a_worker_killed_mid_stage_costs_nothing_but_time(in_process, cluster, tmp_path) -> None:
    project = _project(tmp_path / "dask")
    with _instance(tmp_path) as instance:
        first = _run_acting_on_a_shard(project, instance, cluster.scheduler_address, _kill_worker)
        # Dask runs the dead worker's step again elsewhere; whatever the first run's outcome, a re-run finishes
        # the stage and commits nothing twice.
        again = _run_on_dask(project, instance, cluster.scheduler_address)
        assert again.success
        metadata = {m.asset_key.to_user_string(): m.metadata for m in
                    (e.event_specific_data.materialization for e in again.get_asset_materialization_events())}
        if first.success:
            assert metadata["cqt_features"]["computed_now"].value == 0
            assert metadata["reference_embeddings"]["computed_now"].value == 0
    _assert_same_store(project, in_process, same_shards=first.success)


def test_a_stop_request_cancels_the_running_shards_and_starts_no_other_step(cluster, tmp_path) -> None:
    project = _project(tmp_path / "dask")
    with _instance(tmp_path) as instance:
        result = _run_acting_on_a_shard(project, instance, cluster.scheduler_address, _stop_this_run)
        assert not result.success
        started = {e.step_key.split(".")[-1] for e in result.all_events if e.event_type_value == "STEP_START"}
        assert not {"commit_cqt_features", "data_splits"} & started  # nothing after the stop was started
        assert any("stop requested" in (e.message or "") for e in result.all_events)


def test_shards_are_sized_by_item_count_and_addressed_by_their_inputs() -> None:
    items = [{"variant": f"v{i}"} for i in range(10)]
    shards = split_shards("stage", items, {"p": 1}, items_per_shard=4)
    assert [len(s.items) for s in shards] == [4, 4, 2]
    assert [dict(i) for s in shards for i in s.items] == items
    assert split_shards("stage", [], {}, 4) == []
    again = split_shards("stage", items, {"p": 1}, items_per_shard=4)
    assert [s.shard_id for s in again] == [s.shard_id for s in shards]
    assert len({s.shard_id for s in shards}) == 3
    assert Shard("stage", shards[0].items, {"p": 2}).shard_id != shards[0].shard_id
    assert len(split_shards("stage", items, {}, items_per_shard=0)) == min(10, len(os.sched_getaffinity(0)))
    with pytest.raises(ValueError, match="items_per_shard"):
        split_shards("stage", items, {}, items_per_shard=-1)


def test_a_stage_commit_is_all_or_nothing_and_never_twice(tmp_path) -> None:
    store = Store(tmp_path / "csi.duckdb")
    rows = {"a": [FeatureRecord("v1", "/f/v1", 3, 96, "h1", {})], "b": [FeatureRecord("v2", "/f/v2", 4, 96, "h2", {})]}

    def write(con, shard_rows):
        return feature_store.upsert_features(con, "d", "s", shard_rows)

    def features() -> list[tuple]:
        with store.transaction() as con:
            return con.execute("SELECT variant, n_frames FROM features ORDER BY variant").fetchall()

    def crash(con, shard_rows):
        write(con, shard_rows)
        if shard_rows[0].variant == "v2":
            raise OSError("worker lost mid-commit")
        return 1

    with pytest.raises(OSError):
        shard_store.commit(store, "stage", list(rows.items()), crash)
    assert features() == [] and shard_store.committed(store, "stage") == set()
    assert shard_store.commit(store, "stage", list(rows.items()), write) == 2
    assert shard_store.commit(store, "stage", list(rows.items()), write) == 0  # a retried commit: nothing twice
    assert features() == [("v1", 3), ("v2", 4)] and shard_store.committed(store, "stage") == {"a", "b"}
    shard_store.forget(store, "stage", ["a"])  # planned again: its items are pending once more
    assert shard_store.commit(store, "stage", list(rows.items()), write) == 1


def test_a_rows_file_is_found_again_only_when_whole(tmp_path) -> None:
    [shard] = split_shards("stage", [{"variant": "v1"}], {}, items_per_shard=1)
    path = rows_path(tmp_path, shard)
    feature = tmp_path / "v1.npy"
    assert finished(path, shard, lambda row: [row["path"]]) is None
    write_rows(path, shard, [{"variant": "v1", "path": str(feature)}], [])
    assert not list(tmp_path.glob(".*tmp*")), "the temporary file was renamed into place"
    assert finished(path, shard, lambda row: [row["path"]]) is None  # its feature file is gone: compute again
    feature.write_bytes(b"")
    assert finished(path, shard, lambda row: [row["path"]]).rows == 1
    path.write_text('{"shard_id": "another"')  # torn or foreign: computed again, never trusted
    assert finished(path, shard, lambda row: [row["path"]]) is None


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 run as an unprivileged user; yields the CSI_PG_* variables."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql (Debian: apt-get install postgresql)")
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="csi-pg-"))  # not under pytest's root-only folder: the server reads it
    if os.geteuid() == 0:  # initdb refuses root: run the server as the package's own user
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if not shutil.which("runuser") or user is None:
            shutil.rmtree(folder)
            pytest.skip("running as root with no runuser or no unprivileged user (postgres, nobody) to start "
                        "PostgreSQL as")
        run_as = ["runuser", "-u", user, "--"]
        shutil.chown(folder, user)
    password = "csi-test"
    (folder / "pw").write_text(password)
    if run_as:
        shutil.chown(folder / "pw", run_as[2])
    port = _free_port()

    def pg(*args: str) -> None:
        done = subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr or done.stdout}")

    try:
        pg(str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "csi", f"--pwfile={folder / 'pw'}",
           "--auth-local=trust", "--auth-host=scram-sha-256")
        pg(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-t", "60",
           "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
        try:
            yield {"CSI_PG_HOST": "127.0.0.1", "CSI_PG_PORT": str(port), "CSI_PG_USER": "csi",
                   "CSI_PG_PASSWORD": password, "CSI_PG_DB": "postgres"}
        finally:
            pg(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_a_materialisation_on_a_postgres_instance(postgres, tmp_path, monkeypatch) -> None:
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    project = make_project(tmp_path / "project", works=2, perfs=2, seconds=3.0, data_hparams=ORIGINALS_ONLY)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = materialize(project, [data.dataset_catalog, data.work_ids], instance=instance)
        assert result.success
        assert instance.get_dynamic_partitions(datasets.name) == [project.dataset]  # kept in PostgreSQL
        record = instance.get_latest_materialization_event(dg.AssetKey("work_ids"))
        assert record is not None and record.run_id == result.run_id
        assert record.asset_materialization.partition == project.dataset
        assert record.asset_materialization.metadata["works"].value == 2


# ---------------------------------------------------------------------------------------------------------------
# the deployment switch and the example cluster files


def test_one_variable_selects_the_deployment(tmp_path, monkeypatch) -> None:
    from csi_assets import definitions

    monkeypatch.delenv("CSI_DEPLOYMENT", raising=False)
    assert definitions._executor() is dg.multi_or_in_process_executor and "io_manager" not in definitions._resources()
    monkeypatch.setenv("CSI_DEPLOYMENT", "cluster")
    monkeypatch.setenv("CSI_STORE_PATH", str(tmp_path / "csi.duckdb"))
    assert definitions._executor().name == "dask"
    assert definitions._resources()["io_manager"].base_dir == str(tmp_path / "csi.duckdb.shards" / "io")
    monkeypatch.setenv("CSI_DEPLOYMENT", "elsewhere")
    with pytest.raises(ValueError, match="CSI_DEPLOYMENT='elsewhere'"):
        definitions._executor()


def test_cluster_config_comes_from_run_config_or_environment(tmp_path) -> None:
    assert cluster_from_environment({}) == {"local": {}}
    assert cluster_from_environment({"CSI_DASK_SCHEDULER": "tcp://10.0.0.1:8786"}) == \
        {"existing": {"address": "tcp://10.0.0.1:8786"}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("slurm: {}\npbs: {}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        cluster_from_environment({"CSI_DASK_CLUSTER_FILE": str(bad)})
    with pytest.raises(ValueError, match="unknown Dask cluster kind 'mesos'"):
        make_cluster("mesos", {}, "job")


@pytest.mark.parametrize("name", ["slurm", "pbs"])
def test_the_example_batch_cluster_files_make_job_scripts(name) -> None:
    """Build the Slurm/PBS cluster of deploy/dask/<name>.yaml without submitting a job (no workers asked for)."""
    pytest.importorskip("dask_jobqueue")
    path = REPO / "deploy" / "dask" / f"{name}.yaml"
    [(kind, settings)] = cluster_from_environment({"CSI_DASK_CLUSTER_FILE": str(path)}).items()
    cluster = make_cluster(kind, {**settings, "n_workers": 0, "scheduler_options": {"host": "127.0.0.1"}}, "csi")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "OMP_NUM_THREADS=1" in script and "--nworkers 8" in script and "--nthreads 1" in script
    assert ("#SBATCH -A my-lab" if name == "slurm" else "#PBS -A my-lab") in script
