"""FAISS segment search ranked into performances and works agrees with the exact search (``csi_model.search``) —
same order, same distances — on random unit vectors, with ragged tracks, clustered works and exact ties; and ids
added and removed in place leave an index that still agrees with an exact search of what remains."""

from __future__ import annotations

import numpy as np
import pytest

from csi_model.search import PerformanceIndex
from csi_model.segment_index import (
    FLAT,
    IVF,
    IVF_REFINE,
    Groups,
    IndexConfig,
    add_vectors,
    build_index,
    index_kind,
    read_index,
    remove_ids,
    search_groups,
    write_index,
)

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _references(seed: int, perfs: int = 60, works: int = 12):
    """Clustered by work (so near neighbours are many segments of few works), 1–6 segments per performance,
    performance names in random order of id ranges, and one performance duplicated exactly (ties)."""
    rng = np.random.default_rng(seed)
    work_of = rng.integers(0, works, perfs)
    counts = rng.integers(1, 7, perfs)
    centres = _unit(rng.standard_normal((works, DIM)))
    tracks = [_unit(centres[w] + 0.6 * rng.standard_normal((n, DIM))) for w, n in zip(work_of, counts)]
    tracks[-1] = tracks[0].copy()
    names = np.array([f"p{i:03d}" for i in rng.permutation(perfs)])
    return tracks, work_of.astype(np.int64), names, rng


def _groups(counts: np.ndarray, names: np.ndarray, work_of: np.ndarray, first: int = 0) -> Groups:
    return Groups(first_id=first + np.cumsum(counts) - counts, count=counts, perfs=names, work_ids=work_of)


def _exact(tracks, work_of, names, queries, top, works):
    """The exact search on references in name order (its ties go to the lower index = the lower name)."""
    order = np.argsort(names)
    segment_perf = np.repeat(np.arange(len(order)), [len(tracks[i]) for i in order])
    exact = PerformanceIndex(np.concatenate([tracks[i] for i in order]), segment_perf, work_of[order])
    found = exact.search_works(queries, top) if works else exact.search_perfs(queries, top)
    labels = found.indices if works else names[order][found.indices]
    return labels, found.distances


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("works", [False, True])
def test_flat_index_ranks_like_exact_search(seed: int, works: bool) -> None:
    tracks, work_of, names, rng = _references(seed)
    counts = np.array([len(t) for t in tracks])
    index = build_index(np.concatenate(tracks), np.arange(counts.sum()), IndexConfig())
    assert index_kind(index) == FLAT
    groups = _groups(counts, names, work_of)
    queries = [tracks[0], *(_unit(rng.standard_normal((n, DIM))) for n in (1, 3, 7))]
    for top in (1, 5, 10):
        hits = search_groups(index, groups, queries, top, works, candidates=4)
        labels, distances = _exact(tracks, work_of, names, queries, top, works)
        for q, row in enumerate(hits):
            got = [h.work_id if works else names[h.perf] for h in row]
            assert got == list(labels[q]), (q, top)
            assert np.allclose([h.distance for h in row], distances[q], atol=1e-5)


@pytest.mark.parametrize("kind", [IVF, IVF_REFINE])
def test_ivf_probing_every_list_is_exact_and_removal_and_addition_keep_it_so(kind: str, tmp_path) -> None:
    tracks, work_of, names, rng = _references(7, perfs=80)
    counts = np.array([len(t) for t in tracks])
    config = IndexConfig(exact_below=1, approximate=kind, nlist=8, nprobe=8)
    index = build_index(np.concatenate(tracks), 1000 + np.arange(counts.sum()), config)
    assert index_kind(index) == kind
    groups = _groups(counts, names, work_of, first=1000)
    dropped = np.arange(0, 80, 3)
    assert remove_ids(index, groups.ids_of(dropped)) == counts[dropped].sum()
    keep = np.setdiff1d(np.arange(80), dropped)
    extra = [_unit(rng.standard_normal((4, DIM))) for _ in range(3)]
    next_id = 1000 + counts.sum() + 50  # ids never reused: a gap is fine
    add_vectors(index, np.concatenate(extra), next_id + np.arange(12))
    all_tracks = [tracks[i] for i in keep] + extra
    all_names = np.r_[names[keep], ["x0", "x1", "x2"]]
    all_works = np.r_[work_of[keep], [99, 99, 98]]
    live = Groups(first_id=np.r_[groups.first_id[keep], next_id + np.arange(3) * 4],
                  count=np.r_[counts[keep], [4, 4, 4]], perfs=all_names, work_ids=all_works)
    assert index.ntotal == live.count.sum()
    queries = [extra[1][:2], tracks[keep[0]], _unit(rng.standard_normal((5, DIM)))]
    write_index(index, tmp_path / "index.faiss")
    reread = read_index(tmp_path / "index.faiss", nprobe=8)
    assert index_kind(reread) == kind and reread.ntotal == index.ntotal
    for works, searched in ((False, index), (True, index), (False, reread), (True, reread)):
        hits = search_groups(searched, live, queries, 10, works)
        labels, distances = _exact(all_tracks, all_works, all_names, queries, 10, works)
        for q, row in enumerate(hits):
            assert [h.work_id if works else all_names[h.perf] for h in row] == list(labels[q])
            assert np.allclose([h.distance for h in row], distances[q], atol=1e-5)
    assert search_groups(index, live, [extra[1]], 1, False)[0][0].distance == pytest.approx(0.0, abs=1e-5)


def test_a_float16_store_ranks_like_exact_search_within_its_precision() -> None:
    tracks, work_of, names, rng = _references(3, perfs=50)
    counts = np.array([len(t) for t in tracks])
    config = IndexConfig(exact_below=1, nlist=4, nprobe=4, store="float16", codes="SQ4")
    index = build_index(np.concatenate(tracks), np.arange(counts.sum()), config)
    queries = [_unit(rng.standard_normal((n, DIM))) for n in (1, 4)]
    hits = search_groups(index, _groups(counts, names, work_of), queries, 5, False)
    _, distances = _exact(tracks, work_of, names, queries, 5, False)
    assert np.allclose([[h.distance for h in row] for row in hits], distances, atol=2e-3)


def test_invalid_index_configs_are_refused() -> None:
    for bad, message in (({"approximate": "hnsw"}, "approximate index"), ({"store": "int8"}, "store"),
                         ({"refine_factor": 0}, "refine_factor")):
        with pytest.raises(ValueError, match=message):
            IndexConfig(**bad)


def test_queries_that_are_not_unit_rows_or_of_another_dimension_are_refused() -> None:
    tracks, work_of, names, _ = _references(1, perfs=5, works=2)
    counts = np.array([len(t) for t in tracks])
    index = build_index(np.concatenate(tracks), np.arange(counts.sum()), IndexConfig())
    groups = _groups(counts, names, work_of)
    with pytest.raises(ValueError, match="norm"):
        search_groups(index, groups, [2 * tracks[0]], 3, False)
    with pytest.raises(ValueError, match="dimension"):
        search_groups(index, groups, [_unit(np.ones((1, DIM + 1)))], 3, False)
