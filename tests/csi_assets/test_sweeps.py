"""Sweeps: the hp_tuning.yaml grammar, seeds that really change a run, the summary's statistics, and a 2 × 2 sweep
(two learning rates × two seeds) run through Dagster as partitions of ``sweep_runs``."""

from __future__ import annotations

import json
import math
import time

import dagster as dg
import numpy as np
import pytest
import yaml

from csi_assets.assets import research
from csi_assets.errors import RunFailed
from csi_assets.partitions import dataset_key, sweep_experiments
from csi_assets.sweeps import foundation_warm_start
from csi_model.hparams import HParamsError, to_dict
from csi_model.sweeps import (
    RunOutcome,
    experiment_hparams,
    markdown_table,
    parse_tuning,
    plan_experiments,
    summarise,
    tail_slope,
)
from csi_model.training import train
from tests.graph_fixtures import Project, make_project, materialize
from tests.serving_fixtures import DATA_ASSETS
from tests.train_fixtures import synthetic_features, tiny_hparams

TUNING = """
test_name: demo
early_stopping_patience: 3
max_epochs: 4
seeds: [11, 22]
hp_overrides: {lr_decay: 0.5, learning_rate: null, hold_steps: null}
chunk_frames: [[30, 24, 18]]
mean_sizes: [2, 3]
learning_rates: [0.0005, 0.002]
learning_rates: [0.001]
m_per_classes: [2, 4]
m_per_classes: []
num_blockss: {}
spec_augmentations:
  - random_erase: {prob: 0.5, erase_num: 4, region_size: [0.25, 0.1]}
    roll_pitch: {prob: 0.5, shift_num: 7, method: low_melody}
losses:
  - foc: {output_dims: 30000, weight: 1.0, gamma: 2}
    triplet: {margin: 0.3, weight: 0.1}
    center: {weight: 0.1}
adam_betas: [[0.9, 0.999]]
optimizers: []
"""


def test_grammar_last_key_wins_empty_groups_off_and_reference_run_names():
    tuning = parse_tuning(TUNING, "hp_tuning.yaml")
    experiments = plan_experiments(tuning, tiny_hparams())
    names = list(dict.fromkeys(e.name for e in experiments))
    assert names == [  # the nine groups' order; m_per_classes and num_blockss are off; learning_rates' last list wins
        "chunk_frame30_24_18_mean_size2", "chunk_frame30_24_18_mean_size3",
        "erase_prob0.5_num4_size0.25_0.1_roll_prob0.5_shift7_low_melody",
        "FOC_dims30000_wt1.0_gamma2_TRIP_marg0.3_wt0.1_CNTR_wt0.1",
        "lrate0.001",
        "adam_betas0.9_0.999",
    ]
    assert [e.key for e in experiments[:2]] == ["chunk_frame30_24_18_mean_size2__seed11",
                                                "chunk_frame30_24_18_mean_size2__seed22"]
    assert len(experiments) == len(names) * 2


def test_overrides_and_run_settings_apply_to_every_group_chunk_frames_included():
    base = tiny_hparams(lr_decay=0.9, max_epochs=99, early_stopping_patience=50)
    tuning = parse_tuning(TUNING, "hp_tuning.yaml")
    for experiment in plan_experiments(tuning, base):
        hp = experiment_hparams(base, tuning, experiment)
        assert hp.lr_decay == 0.5  # the override, in the chunk_frames group too (a reference bug we fix)
        assert (hp.max_epochs, hp.early_stopping_patience, hp.seed) == (4, 3, experiment.seed)
        assert hp.learning_rate == (0.001 if experiment.group == "learning_rates" else base.learning_rate)
    chunk = experiment_hparams(base, tuning, plan_experiments(tuning, base)[2])
    assert (chunk.chunk_frame, chunk.mean_size, chunk.chunk_s) == ((30, 24, 18), 3, pytest.approx(30 * 3 / 25))


def test_grammar_errors_name_the_file_and_key():
    with pytest.raises(HParamsError, match="hp_tuning.yaml: early_stopping_patience"):
        parse_tuning("learning_rates: [0.1]\n", "hp_tuning.yaml")
    with pytest.raises(HParamsError, match="hp_tuning.yaml: unknown key"):
        parse_tuning("early_stopping_patience: 2\nlearning_rate: [0.1]\n", "hp_tuning.yaml")
    with pytest.raises(HParamsError, match="m_per_classes: value for 'm_per_class3'"):
        plan_experiments(parse_tuning("early_stopping_patience: 2\nm_per_classes: [3]\n", "hp_tuning.yaml"),
                         tiny_hparams(batch_size=8))
    with pytest.raises(HParamsError, match="spec_augmentations: each entry needs"):
        plan_experiments(parse_tuning("early_stopping_patience: 2\nspec_augmentations: [{roll_pitch: {}}]\n",
                                      "hp_tuning.yaml"), tiny_hparams())


def test_seeds_change_the_run_and_the_same_seed_repeats_it(tmp_path):
    items = synthetic_features(tmp_path / "feat", n_works=4, perfs_per_work=4)
    base = tiny_hparams(spec_augmentation=None)
    tuning = parse_tuning("early_stopping_patience: 2\nmax_epochs: 1\nseeds: [1, 2]\nlearning_rates: [0.002]\n"
                          "spec_augmentations: [{random_erase: {prob: 0.5, erase_num: 2, region_size: [0.25, 0.1]},"
                          " roll_pitch: {prob: 0.5, shift_num: 4}}]\n")
    experiments = [e for e in plan_experiments(tuning, base) if e.group == "spec_augmentations"]
    losses = [train(experiment_hparams(base, tuning, e), items, tmp_path / f"run{i}").history[0].train["total"]
              for i, e in enumerate([*experiments, experiments[0]])]
    assert losses[0] != losses[1]
    assert losses[0] == losses[2]


def _outcome(name: str, seed: int, val: list[float], maps: list[float], diverged: bool = False,
             ci: dict | None = None) -> RunOutcome:
    return RunOutcome(f"{name}__seed{seed}", name, seed, diverged, list(enumerate(val)),
                      {"demo": list(enumerate(maps))}, 1.0, ci)


def test_summary_statistics_match_a_direct_computation():
    val_a, val_b = [3.0, 2.0, 1.5, 1.4, 1.45], [2.8, 2.2, 1.9, 1.6, 1.5]
    map_a, map_b = [0.1, 0.3, 0.45, 0.5, 0.48], [0.2, 0.25, 0.4, 0.42, 0.47]
    outcomes = [_outcome("lrate0.001", 1, val_a, map_a, ci={"ci_low": 0.3, "ci_high": 0.6, "std": 0.07}),
                _outcome("lrate0.001", 2, val_b, map_b, ci={"ci_low": 0.2, "ci_high": 0.5, "std": 0.09}),
                _outcome("lrate0.001", 3, [], [], diverged=True),
                _outcome("lrate0.01", 1, [], [], diverged=True)]
    first, second = summarise(outcomes, window=3, test_name="demo")
    assert first.val_loss.final.mean == pytest.approx(np.mean([1.45, 1.5]))
    assert first.val_loss.final.std == pytest.approx(np.std([1.45, 1.5]))
    slope_a = np.polyfit([2, 3, 4], val_a[2:], 1)[0]
    slope_b = np.polyfit([2, 3, 4], val_b[2:], 1)[0]
    assert first.val_loss.slope.mean == pytest.approx((slope_a + slope_b) / 2)
    assert first.mean_ap.slope.mean == pytest.approx(np.mean([np.polyfit([2, 3, 4], m[2:], 1)[0]
                                                              for m in (map_a, map_b)]))
    assert (first.mean_ap.best.mean, first.mean_ap.best_epoch.mean) == (pytest.approx(0.485), 3.5)
    assert first.ci == pytest.approx((0.25, 0.55, 0.08))
    assert first.diverged == (3,) and second.diverged == (1,)
    assert tail_slope([(0, 1.0)], 3) != tail_slope([(0, 1.0)], 3)  # NaN with one point
    table = markdown_table([first, second], "demo", 3)
    assert "diverged seeds: 3" in table and "ALL 1 SEEDS DIVERGED" in table
    assert f"{np.mean([1.45, 1.5]):.4f}±{np.std([1.45, 1.5]):.4f}" in table


def test_outcome_json_round_trip():
    outcome = _outcome("x", 1, [1.0, 0.5], [0.2, 0.4], ci={"ci_low": 0.1, "ci_high": 0.5, "std": 0.1})
    assert RunOutcome.from_json(outcome.to_json()) == outcome


# -- the sweep through Dagster -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("sweep"))
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(project, DATA_ASSETS, instance).success
    full = str(project.dataset_dir / "full.txt")
    hp = to_dict(tiny_hparams(input_dim=96, bootstrap=50))
    hp["demo"] = {"query_path": full, "ref_path": full}
    (project.training_dir / "config" / "hparams.yaml").write_text(yaml.safe_dump(hp))
    (project.training_dir / "config" / "hp_tuning.yaml").write_text(
        "test_name: demo\nearly_stopping_patience: 2\nmax_epochs: 3\nseeds: [1, 2]\n"
        "learning_rates: [0.001, 0.004]\nlr_decays: [0.5]\nlr_decays: []\n")
    plan = materialize(project, [research.sweep_plan], instance)
    keys = instance.get_dynamic_partitions(sweep_experiments.name)
    seconds = {}
    for key in keys:
        started = time.monotonic()
        materialize(project, [research.sweep_runs], instance, experiment=key)
        seconds[key] = time.monotonic() - started
    summary = materialize(project, [research.sweep_summary], instance)
    print("seconds per experiment:", {k: round(v, 1) for k, v in seconds.items()})
    return project, instance, plan, keys, summary


def test_sweep_partitions_are_the_plan(swept):
    project, instance, plan, keys, _ = swept
    assert sorted(keys) == ["lrate0.001__seed1", "lrate0.001__seed2", "lrate0.004__seed1", "lrate0.004__seed2"]
    for key in keys:
        folder = project.training_dir / "sweeps" / key
        assert (folder / "checkpoints").is_dir() and (folder / "outcome.json").is_file()
    done = instance.get_materialized_partitions(dg.AssetKey("sweep_runs"))
    assert done == {str(dataset_key(project.dataset, experiment=key)) for key in keys}


def test_sweep_summary_matches_the_runs(swept):
    project, _, _, keys, summary = swept
    outcomes = {k: json.loads((project.training_dir / "sweeps" / k / "outcome.json").read_text()) for k in keys}
    assert all(len(o["val_loss"]) == 3 and len(o["mean_ap"]["demo"]) == 3 for o in outcomes.values())
    assert outcomes["lrate0.001__seed1"]["val_loss"] != outcomes["lrate0.001__seed2"]["val_loss"]
    finals = [outcomes[f"lrate0.001__seed{s}"]["val_loss"][-1][1] for s in (1, 2)]
    slopes = [np.polyfit(*np.array(outcomes[f"lrate0.001__seed{s}"]["mean_ap"]["demo"][-2:]).T, 1)[0]
              for s in (1, 2)]
    table = (project.training_dir / "sweeps" / "summary.md").read_text()
    print(table)
    row = next(line for line in table.splitlines() if line.startswith("| lrate0.001 "))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == f"{np.mean(finals):.4f}±{np.std(finals):.4f}"
    assert cells[6] == f"{np.mean(slopes):+.4f}"
    assert cells[8].startswith("[") and not math.isnan(outcomes["lrate0.001__seed1"]["bootstrap"]["ci_low"])
    metadata = summary.asset_materializations_for_node("sweep_summary")[0].metadata
    assert metadata["runs"].value == 4 and "lrate0.004" in metadata["summary"].value


def test_replanning_removes_experiments_no_dataset_plans_and_a_bad_file_fails_the_plan(tmp_path):
    """Experiments are one list across datasets: re-planning dataset ``a`` removes the experiments it dropped
    unless another registered dataset's plan (``b``, beside it) still names them; ``b``'s experiment is not ``a``'s
    to run."""
    a = Project(tmp_path, tmp_path / "data" / "a", tmp_path / "training" / "a", tmp_path / "csi.duckdb")
    b = Project(tmp_path, tmp_path / "data" / "b", tmp_path / "training" / "b", tmp_path / "csi.duckdb")
    for project in (a, b):
        project.dataset_dir.mkdir(parents=True)
        (project.dataset_dir / "dataset.txt").write_text("")  # a dataset folder; its catalog is not read here
        (project.training_dir / "config").mkdir(parents=True)
        (project.training_dir / "config" / "hparams.yaml").write_text(yaml.safe_dump(to_dict(tiny_hparams())))
    instance = dg.DagsterInstance.ephemeral()

    def plan(project: Project, text: str) -> bool:
        (project.training_dir / "config" / "hp_tuning.yaml").write_text(text)
        return materialize(project, [research.sweep_plan], instance, resources=a.resources,
                           raise_on_error=False).success

    def planned() -> list[str]:
        return sorted(instance.get_dynamic_partitions(sweep_experiments.name))

    assert plan(a, "early_stopping_patience: 2\nseeds: [1]\nlearning_rates: [0.001, 0.002]\n")
    assert plan(a, "early_stopping_patience: 2\nseeds: [1]\nlearning_rates: [0.002, 0.003]\n")
    assert planned() == ["lrate0.002__seed1", "lrate0.003__seed1"]
    assert plan(b, "early_stopping_patience: 2\nseeds: [1]\nlearning_rates: [0.001, 0.002]\n")
    assert planned() == ["lrate0.001__seed1", "lrate0.002__seed1", "lrate0.003__seed1"]  # b removed none of a's
    assert plan(a, "early_stopping_patience: 2\nseeds: [1]\nlearning_rates: [0.004]\n")
    assert planned() == ["lrate0.001__seed1", "lrate0.002__seed1", "lrate0.004__seed1"]  # b still plans 0.001, 0.002
    assert not plan(a, "seeds: [1]\nlearning_rates: [0.002]\n")  # early_stopping_patience missing
    assert planned() == ["lrate0.001__seed1", "lrate0.002__seed1", "lrate0.004__seed1"]

    assert plan(a, "early_stopping_patience: 2\nseeds: [1]\nlearning_rates: [0.004]\n")
    run = materialize(a, [research.sweep_runs], instance, raise_on_error=False, experiment="lrate0.001__seed1")
    failure = next(e for e in run.all_events if e.is_step_failure).step_failure_data.error.message
    assert not run.success and "'lrate0.001__seed1' is not in" in failure and "hp_tuning.yaml" in failure
    assert not (a.training_dir / "sweeps").exists()


def test_foundation_checkpoint_warm_start(tmp_path):
    generator, state = tmp_path / "g_00000004", tmp_path / "do_00000004"
    text = f"early_stopping_patience: 2\nfoundation_checkpoint: {generator}\nrestore_optimizer_state: true\n"
    with pytest.raises(RunFailed, match="does not exist"):
        foundation_warm_start(parse_tuning(text, "hp_tuning.yaml"))
    generator.write_bytes(b"")
    assert foundation_warm_start(parse_tuning(text)).state is None  # no do_ file: cold optimizer
    state.write_bytes(b"")
    assert foundation_warm_start(parse_tuning(text)).state == state
    assert foundation_warm_start(parse_tuning(text.replace("true", "false"))).state is None
