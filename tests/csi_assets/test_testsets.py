"""Test-set resolution against the dataset's features: self sets, exclusions, query_in_ref remapping, dropped
tempo-variant lines, clear errors; and the split item lists training uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csi_assets.store.records import FeatureTableRecord
from csi_assets.testsets import (
    InvalidTestSet,
    by_length,
    resolve_path,
    retrieval_test_set,
    retrieval_test_sets,
    split_items,
)
from csi_model.hparams import training_hparams_from_dict
from csi_model.model import CoverHunter
from tests.record_fixtures import table_record

PERFS = {"a": (0, "train"), "b": (1, "train"), "c": (0, "test"), "d": (2, "val"), "e": (1, "test")}
SPEEDS = (0.9, 1.0, 1.1)


def _table(root: Path) -> list[FeatureTableRecord]:
    """Feature-table rows (the store's shape) for every performance × speed, as feature_table returns them."""
    rows = []
    for perf, (work_id, split) in PERFS.items():
        for speed in SPEEDS:
            variant = perf if speed == 1.0 else f"sp_{speed}-{perf}"
            rows.append(table_record(variant, perf, speed, work_id, str(root / f"{variant}.npy"), 100 + len(rows),
                                     split))
    return rows


def _write(path: Path, perfs: list[str], tab: bool = False) -> Path:
    # The file's own work_id is deliberately wrong: ids must come from the store.
    lines = [f"perf:{p}\twork_id:99" if tab else json.dumps({"perf": p, "work_id": 99}) for p in perfs]
    path.write_text("\n".join(lines) + "\n\n")
    return path


def _sets(tmp_path: Path, **test_sets: dict):
    hp = training_hparams_from_dict(test_sets, source="hparams.yaml")
    return retrieval_test_sets(hp, _table(tmp_path), training_dir=tmp_path / "training", cwd=tmp_path)


def test_self_set_drops_variant_lines_and_takes_work_ids_from_the_store(tmp_path: Path) -> None:
    _write(tmp_path / "full.txt", ["a", "sp_0.9-a", "c", "sp_1.1-c", "e"], tab=True)
    [ts], counts = _sets(tmp_path, covers={"query_path": "full.txt", "ref_path": "full.txt",
                                           "every_n_epoch_to_test": 3})
    assert ts.refs is None and ts.exclude_pairs == () and ts.every_n_epoch == 3
    assert [(q.perf, q.work_id) for q in ts.queries] == [("a", 0), ("c", 0), ("e", 1)]
    assert ts.queries[1].feat_path == tmp_path / "c.npy"
    assert counts == {"covers": {"queries": 3, "refs": 3, "dropped_variant_lines": 2}}


def test_queries_never_match_their_own_performance_among_the_refs(tmp_path: Path) -> None:
    _write(tmp_path / "q.txt", ["c", "e"])
    _write(tmp_path / "r.txt", ["a", "c", "sp_0.9-c", "b", "e", "d"])
    [ts], counts = _sets(tmp_path, t={"query_path": "q.txt", "ref_path": "r.txt"})
    assert [r.perf for r in ts.refs] == ["a", "c", "b", "e", "d"]
    assert ts.exclude_pairs == ((0, 1), (1, 3))
    assert counts["t"] == {"queries": 2, "refs": 5, "dropped_variant_lines": 1}


def test_query_in_ref_pairs_are_remapped_after_dropped_lines(tmp_path: Path) -> None:
    _write(tmp_path / "q.txt", ["sp_1.1-c", "c", "e"])  # file indexes 0 (dropped), 1 → 0, 2 → 1
    _write(tmp_path / "r.txt", ["a", "sp_0.9-b", "b", "d"])  # 0 → 0, 1 (dropped), 2 → 1, 3 → 2
    (tmp_path / "qir.txt").write_text(json.dumps({"query_in_ref": [[1, 2], [0, 3], [2, 1], [2, 3]]}) + "\n")
    [ts], _ = _sets(tmp_path, t={"query_path": "q.txt", "ref_path": "r.txt", "query_in_ref_path": "qir.txt"})
    assert ts.exclude_pairs == ((0, 1), (1, 2))  # [0, 3] and [2, 1] touched dropped lines


def test_query_in_ref_on_a_self_set_keeps_the_diagonal_excluded(tmp_path: Path) -> None:
    _write(tmp_path / "full.txt", ["a", "b", "c"])
    (tmp_path / "qir.txt").write_text(json.dumps({"query_in_ref": [[0, 2]]}) + "\n")
    [ts], _ = _sets(tmp_path, t={"query_path": "full.txt", "ref_path": "full.txt", "query_in_ref_path": "qir.txt"})
    assert [r.perf for r in ts.refs] == ["a", "b", "c"]
    assert ts.exclude_pairs == ((0, 0), (0, 2), (1, 1), (2, 2))


def test_unknown_perf_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.txt", ["a", "nobody"])
    with pytest.raises(InvalidTestSet, match=rf"{path}:2: perf 'nobody' is not a performance"):
        _sets(tmp_path, t={"query_path": "q.txt", "ref_path": "q.txt"})


@pytest.mark.parametrize("content, message", [
    ('{"perf": "a"}\n{broken\n', r"q\.txt:2: invalid JSON"),
    ('{"perf": "a"}\n{"perf": "a"}\n', r"q\.txt:2: perf 'a' is already listed on line 1"),
    ('{"work": "x"}\n', r"q\.txt:1: perf None is not a performance"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "q.txt").write_text(content)
    with pytest.raises(InvalidTestSet, match=message):
        _sets(tmp_path, t={"query_path": "q.txt", "ref_path": "q.txt"})


def test_query_in_ref_out_of_range_or_malformed_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "q.txt", ["c"])
    _write(tmp_path / "r.txt", ["a", "c"])
    spec = {"query_path": "q.txt", "ref_path": "r.txt", "query_in_ref_path": "qir.txt"}
    (tmp_path / "qir.txt").write_text(json.dumps({"query_in_ref": [[0, 2]]}))
    with pytest.raises(InvalidTestSet, match=r"qir\.txt: query_in_ref pair \[0, 2\] is outside"):
        _sets(tmp_path, t=spec)
    (tmp_path / "qir.txt").write_text(json.dumps({"pairs": [[0, 1]]}))
    with pytest.raises(InvalidTestSet, match=r"qir\.txt:1: expected"):
        _sets(tmp_path, t=spec)


def test_relative_paths_try_the_working_directory_then_the_training_folder(tmp_path: Path) -> None:
    training = tmp_path / "training"
    (training / "data").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    in_training = _write(training / "data" / "only_here.txt", ["a"])
    in_cwd = _write(tmp_path / "data" / "both.txt", ["a"])
    _write(training / "data" / "both.txt", ["b"])
    assert resolve_path("data/only_here.txt", training, cwd=tmp_path) == in_training.resolve()
    assert resolve_path("data/both.txt", training, cwd=tmp_path) == in_cwd.resolve()
    with pytest.raises(InvalidTestSet, match="missing.txt: file not found"):
        resolve_path("data/missing.txt", training, cwd=tmp_path)


def test_split_items_train_on_every_variant_evaluate_on_originals(tmp_path: Path) -> None:
    table = _table(tmp_path) + [table_record("z", "z", 1.0, 3, "z.npy", 5, None, batch_id="delta-1")]
    items = split_items(table, mean_size=1)
    assert sorted(it.perf for it in items.train) == sorted(
        [*"ab", "sp_0.9-a", "sp_1.1-a", "sp_0.9-b", "sp_1.1-b"])
    assert [it.perf for it in items.val] == ["d"]
    assert [(it.perf, it.work_id) for it in items.test] == [("c", 0), ("e", 1)]


@pytest.mark.parametrize("mean_size", [1, 3, 8])
def test_a_test_set_keeps_exactly_the_recordings_the_split_length_filter_keeps(tmp_path: Path, mean_size: int) -> None:
    """One length rule: the rows a test-set file names go through ``by_length`` at the hparams' ``mean_size``,
    the filter of the split items, so a recording at the boundary is in both or in neither."""
    shortest = CoverHunter.min_raw_frames(mean_size)
    lengths = [1, shortest - 1, shortest, shortest + 1, 10 * shortest]
    table = [table_record(f"p{i}", f"p{i}", 1.0, i, str(tmp_path / f"p{i}.npy"), n, "test")
             for i, n in enumerate(lengths)]
    table += [table_record(f"p{i}b", f"p{i}b", 1.0, i, str(tmp_path / f"p{i}b.npy"), 10 * shortest, "test")
              for i in range(len(lengths))]  # a second performance of every work: each query is answerable
    _write(tmp_path / "all.txt", [r.variant for r in table])
    spec = training_hparams_from_dict({"all": {"query_path": "all.txt", "ref_path": "all.txt"}},
                                      source="hparams.yaml").test_sets["all"]
    test_set, counts = retrieval_test_set("all", spec, table, tmp_path, mean_size=mean_size, cwd=tmp_path)
    kept, short = by_length(table, mean_size)
    assert [item.perf for item in test_set.queries] == [r.variant for r in kept]
    assert [item.perf for item in split_items(table, mean_size).test] == [r.variant for r in kept]
    assert counts == {"queries": len(kept), "refs": len(kept), "dropped_variant_lines": len(short)}
    assert [r.n_frames for r in short] == [n for n in lengths if n < shortest] and len(short) == 2

    hp = training_hparams_from_dict({"all": {"query_path": "all.txt", "ref_path": "all.txt"}, "mean_size": mean_size},
                                    source="hparams.yaml")
    [from_hparams], _ = retrieval_test_sets(hp, table, training_dir=tmp_path, cwd=tmp_path)
    assert from_hparams.queries == test_set.queries
