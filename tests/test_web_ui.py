"""The Dagster web UI, driven in a real browser: the graph is visible and a materialization of one dataset
partition, launched from it, runs.

Debian's Chromium (installed by ``scripts/install_browser.sh``) is driven with Playwright; the test skips only
when that browser is missing. The webserver and daemon run against a throw-away Dagster home and dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from playwright.sync_api import Page, expect, sync_playwright

from tests.audio_fixtures import write_tone
from tests.ui_server import REPO_ROOT, DagsterUi, dagster_ui

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESIGN_ASSETS = (
    "dataset_catalog",
    "speed_variants",
    "cqt_features",
    "work_ids",
    "data_splits",
    "trained_model",
    "reference_embeddings",
    "eval_report",
)
UI_TIMEOUT_MS = 60_000
"""Generous per-step wait: the UI's first GraphQL answers are slow while the code server warms up on 2 cores."""
SAMPLE_RATE = 16_000
DEMO_HPARAMS = REPO_ROOT / "data" / "demo" / "hparams.yaml"
SPEC_8_1_HPARAMS = {
    "fmin": 32,
    "n_bins": 96,
    "bins_per_octave": 12,
    "aug_speed_mode": [1.0],
    "device": "cpu",
    "val_data_split": 0.1,
    "val_unseen": 0.0,
    "test_data_split": 0.1,
    "test_data_unseen": 0.0,
}
pytestmark = pytest.mark.ui


SENSOR_WAIT_S = 180.0
"""How long the daemon's ``dataset_folders`` sensor (a tick every 30 s, the first at once) may take to register
the dataset folders on a loaded machine."""


@dataclass(frozen=True)
class ProjectState:
    root: Path
    dagster_home: Path
    dataset_dir: Path
    other_dataset_dir: Path
    env: dict[str, str]


def _write_dataset(dataset_dir: Path) -> None:
    """Three 2-second harmonic tones (two works) and a reference-format catalog pointing at them."""
    (dataset_dir / "wav").mkdir(parents=True)
    lines = []
    for perf, work, freq in (("w0_p0", "w0", 220.0), ("w0_p1", "w0", 233.1), ("w1_p0", "w1", 329.6)):
        write_tone(dataset_dir / "wav" / f"{perf}.wav", freq, seconds=2.0, sr=SAMPLE_RATE)
        record = {"perf": perf, "wav": f"wav/{perf}.wav", "dur_s": 2.0, "work": work, "version": perf}
        lines.append(json.dumps(record))
    if DEMO_HPARAMS.exists():
        shutil.copy(DEMO_HPARAMS, dataset_dir / "hparams.yaml")
    else:
        (dataset_dir / "hparams.yaml").write_text(yaml.safe_dump(SPEC_8_1_HPARAMS), encoding="utf-8")
    (dataset_dir / "dataset.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _install_instance_config(dagster_home: Path) -> None:
    """The repo's ``dagster.yaml``, as ``make ui`` installs it (storage defaults to SQLite under DAGSTER_HOME)."""
    shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")


@pytest.fixture
def project_state(tmp_path: Path) -> ProjectState:
    """Everything under pytest's ``tmp_path``, which outlives the test, so logs and screenshots can be read after
    a failure."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    _install_instance_config(home)
    dataset_dir = tmp_path / "dataset"
    _write_dataset(dataset_dir)
    other_dataset_dir = tmp_path / "other"  # a second dataset beside the default one: a partition of its own
    _write_dataset(other_dataset_dir)
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        CSI_DATASET_DIR=str(dataset_dir),
        CSI_TRAINING_DIR=str(tmp_path / "training"),
        CSI_STORE_PATH=str(tmp_path / "csi.duckdb"),
    )
    return ProjectState(tmp_path, home, dataset_dir, other_dataset_dir, env)


@pytest.fixture
def web_ui(project_state: ProjectState) -> Iterator[DagsterUi]:
    with dagster_ui(project_state.env, project_state.root) as ui:
        yield ui


@pytest.fixture
def browser_page(project_state: ProjectState) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install_browser.sh as root to install Debian's chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(project_state.root / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        # A fresh browser gets a "Join the Dagster community" dialog over the page a second after the first load;
        # mark it seen (the UI's own local-storage flag), so it cannot close the partition dialog's open list.
        context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"');")
        page = context.new_page()
        # Should it still show, dismiss it whenever it does.
        page.add_locator_handler(
            page.get_by_text("Join the Dagster community"), lambda: page.get_by_role("button", name="Skip").click()
        )
        try:
            yield page
        finally:
            context.close()


def _wait_for_dataset_partitions(dagster_home: Path, names: set[str], ui: DagsterUi) -> None:
    """Poll the instance until the daemon's sensors have registered every dataset in ``names`` as a partition."""
    deadline = time.monotonic() + SENSOR_WAIT_S
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        while not names <= set(instance.get_dynamic_partitions("datasets")):
            ui.daemon.check_alive()
            if time.monotonic() > deadline:
                registered = instance.get_dynamic_partitions("datasets")
                raise AssertionError(f"datasets {sorted(names)} not registered within {SENSOR_WAIT_S:.0f} s "
                                     f"(registered: {registered})\n{ui.log_tails()}")
            time.sleep(1.0)


@dataclass(frozen=True)
class RunOutcome:
    """The newest run that targeted an asset, as the instance's storage records it (not as the page shows it)."""

    run_id: str
    status: str
    partition: str | None
    step_failures: list[str]
    latest_materialization_run_id: str | None
    materialized_partitions: set[str]


def _latest_run(dagster_home: Path, asset: str) -> RunOutcome | None:
    key = dg.AssetKey(asset)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = [run for run in instance.get_runs() if key in (run.asset_selection or ())]
        if not runs:
            return None
        failures = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        materialization = instance.get_latest_materialization_event(key)
        return RunOutcome(
            run_id=runs[0].run_id,
            status=runs[0].status.name,
            partition=runs[0].tags.get("dagster/partition"),
            step_failures=[str(event.dagster_event.event_specific_data) for event in failures],
            latest_materialization_run_id=materialization.run_id if materialization else None,
            materialized_partitions=set(instance.get_materialized_partitions(key)),
        )


def test_materialize_dataset_catalog_from_the_ui(
    project_state: ProjectState, browser_page: Page, web_ui: DagsterUi
) -> None:
    page = browser_page
    shots = project_state.root / "screenshots"
    shots.mkdir()
    started = time.monotonic()
    try:
        # 1. Every design asset is listed in the asset catalog.
        page.goto(f"{web_ui.url}/assets")
        for asset in DESIGN_ASSETS:
            expect(page.locator(f'a[href="/assets/{asset}"]')).to_contain_text(asset)
        page.screenshot(path=str(shots / "1-assets.png"))

        # 2. Materialize dataset_catalog from its page, for one dataset: every dataset folder is a partition, which
        #    the daemon's dataset_folders sensor registers (the default dataset and the one beside it). The
        #    Materialize button opens the partition dialog; pick the default dataset and launch its one run. The
        #    toast links to the launched run.
        dataset, other = project_state.dataset_dir.name, project_state.other_dataset_dir.name
        _wait_for_dataset_partitions(project_state.dagster_home, {dataset, other}, web_ui)
        page.goto(f"{web_ui.url}/assets/dataset_catalog")
        # Button names carry their icon's name ("materialization Materialize…"), hence the anchored pattern.
        page.get_by_role("button", name=re.compile(r"(^|\s)Materialize…?$")).click()
        # (the partition list is a popover, also a "dialog": pick the launch dialog by its title)
        dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize dataset_catalog")
        title = dialog.get_by_text("Launch runs to materialize dataset_catalog")
        expect(title).to_be_visible()
        dialog.get_by_text("Select a partition or create one").click()
        expect(page.get_by_role("menuitem", name=re.compile(rf"^{other}\b"))).to_be_visible()
        page.get_by_role("menuitem", name=re.compile(rf"^{dataset}\b")).click()
        title.click()  # closes the partition list
        expect(dialog).to_contain_text("1 partition")
        page.screenshot(path=str(shots / "2-partition.png"))
        dialog.get_by_role("button", name="Launch 1 run").click()
        toasts = page.get_by_role("region", name=re.compile("Notifications")).get_by_role("listitem")
        toast = toasts.filter(has_text="Launched run")
        expect(toast).to_be_visible()
        page.screenshot(path=str(shots / "3-launched.png"))
        toast.get_by_role("link", name="View", exact=True).click()
        page.wait_for_url("**/runs/**")
        run_id_in_url = page.url.rstrip("/").split("/")[-1]

        # 3. The run ends (polled in the instance's run storage, however long a loaded machine takes), then its
        #    page shows the terminal status: the tag moves Queued -> Starting -> Started -> Success (or Failure).
        status = web_ui.wait_for_run(project_state.dagster_home, run_id_in_url)
        terminal = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$"))
        terminal.first.wait_for()
        ui_status = terminal.first.inner_text()
        page.screenshot(path=str(shots / "4-run.png"))
    except Exception:
        page.screenshot(path=str(shots / "failure.png"))
        print(f"screenshots in {shots}\n{web_ui.log_tails()}")
        raise
    print(f"UI flow took {time.monotonic() - started:.1f} s; screenshots in {shots}")

    run = _latest_run(project_state.dagster_home, "dataset_catalog")
    assert run is not None, "no run targeting dataset_catalog in the instance's run storage"
    assert run.run_id == run_id_in_url, "the run page shown is not the newest dataset_catalog run"
    assert (status, run.status, ui_status) == ("SUCCESS", "SUCCESS", "Success"), (
        f"run {run.run_id} ended {run.status} (page: {ui_status}); step failures: {run.step_failures}"
    )
    assert run.latest_materialization_run_id == run.run_id, "the run recorded no materialization of dataset_catalog"
    assert run.partition == dataset, f"the run targeted partition {run.partition!r}, not the picked {dataset!r}"
    assert run.materialized_partitions == {dataset}, (
        f"materialized partitions {run.materialized_partitions}: only the picked dataset {dataset!r} should be"
    )
