"""Coarse alignment: identical tracks align at 0, known shifts are recovered within one hop, with synthetic window
embeddings (pure voting) and end to end through the CQT and a tiny untrained model (identical content gives
identical embeddings whatever the weights)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from csi_assets.alignment import ALIGNMENT_FILE, ALIGNMENT_META_FILE
from csi_assets.assets import tools
from csi_assets.cli import main as csi
from csi_assets.store import catalog as catalog_store
from csi_model.alignment import TrackWindows, align_works, coarse_shifts, embed_windows, window_starts
from csi_model.audio import SAMPLE_RATE
from csi_model.cqt import CqtSettings, compute_cqt
from csi_model.embedding import Embedder
from csi_model.model import CoverHunter, ModelConfig
from tests.graph_fixtures import materialize
from tests.serving_fixtures import project_with_model

HOP_S, WINDOW_S = 5.0, 15.0


def content_track(content: np.ndarray, first_s: int, last_s: int, hop_s: int = 5, window_s: int = 15) -> TrackWindows:
    """Windows over seconds [first_s, last_s) of a per-second content sequence; each window's embedding is a
    deterministic function of the content it covers (the normalised sum), as a model's would be."""
    length = last_s - first_s
    starts = window_starts(length, window_s, hop_s)
    vectors = np.stack([content[first_s + a : first_s + a + window_s].sum(axis=0) for a in starts])
    return TrackWindows(starts.astype(float), vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


@pytest.fixture(scope="module")
def content() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(200, 16))


def test_window_starts_cover_the_track_and_keep_short_tracks() -> None:
    assert window_starts(100, 30, 10).tolist() == [0, 10, 20, 30, 40, 50, 60, 70]
    assert window_starts(10, 30, 10).tolist() == [0]
    assert window_starts(30, 30, 10).tolist() == [0]


def test_identical_recordings_align_at_zero(content: np.ndarray) -> None:
    track = content_track(content, 0, 90)
    shifts = coarse_shifts([track, track, track])
    assert np.array_equal(shifts, np.zeros((3, 3)))


@pytest.mark.parametrize("shift_s", [10, 25, 7, 13])
def test_known_shift_is_recovered_within_one_hop(content: np.ndarray, shift_s: int) -> None:
    # perf j starts shift_s seconds into the content of perf i: content at t in i is at t - shift_s in j.
    i, j = content_track(content, 0, 120), content_track(content, shift_s, 110)
    shifts = coarse_shifts([i, j])
    assert abs(shifts[0, 1] - shift_s) <= HOP_S
    assert abs(shifts[1, 0] + shift_s) <= HOP_S
    if shift_s % HOP_S == 0:  # on the window grid the answer is exact
        assert shifts[0, 1] == shift_s and shifts[1, 0] == -shift_s


def test_one_window_tracks_align(content: np.ndarray) -> None:
    short_a, short_b = content_track(content, 0, 12), content_track(content, 0, 12)
    long_track = content_track(content, 0, 60)
    shifts = coarse_shifts([short_a, short_b, long_track])
    assert shifts[0, 1] == 0.0 and shifts[1, 0] == 0.0
    assert shifts.shape == (3, 3) and np.isfinite(shifts).all()


def test_pairs_are_within_works_by_exact_perf_id(content: np.ndarray) -> None:
    x, sp_x = content_track(content, 0, 60), content_track(content, 10, 60)
    other = content_track(np.random.default_rng(5).normal(size=(80, 16)), 0, 60)
    out = align_works(["X", "sp_0.9-X", "Y"], [0, 1, 0], [x, sp_x, other])
    pairs = {(a.perf_i, a.perf_j) for a in out}
    assert pairs == {("X", "X"), ("X", "Y"), ("Y", "X"), ("Y", "Y"), ("sp_0.9-X", "sp_0.9-X")}
    assert all(a.shift_s == 0.0 for a in out if a.perf_i == a.perf_j)
    assert out[0].to_dict() == {"perf_i": "X", "perf_j": "X", "shift_s": 0.0}


def test_duplicate_perf_ids_are_refused(content: np.ndarray) -> None:
    x = content_track(content, 0, 60)
    with pytest.raises(ValueError, match="unique"):
        align_works(["X", "X"], [0, 0], [x, x])


def tone_sequence(seconds: float, seed: int) -> np.ndarray:
    """A melody that never repeats: a random pitch every quarter second (so every window's content is unique)."""
    rng = np.random.default_rng(seed)
    notes = int(seconds * 4)
    freqs = np.repeat(110.0 * 2 ** (rng.integers(0, 36, size=notes) / 12), SAMPLE_RATE // 4)
    phase = 2 * np.pi * np.cumsum(freqs) / SAMPLE_RATE
    return (0.5 * np.sin(phase) + 0.2 * np.sin(2 * phase)).astype(np.float32)


def test_shift_recovered_end_to_end_through_cqt_and_an_untrained_model() -> None:
    torch.manual_seed(0)
    model = CoverHunter(ModelConfig(input_dim=96, embed_dim=32, d_model=32, num_blocks=1, ff_dim=64, num_classes=2))
    signal = tone_sequence(50.0, seed=3)
    shift_s = 10.0
    shifted = signal[int(shift_s * SAMPLE_RATE):]  # perf j = perf i without its first 10 s
    settings = CqtSettings()
    features = compute_cqt([signal, shifted], settings, torch.device("cpu"))
    embedder = Embedder(model, chunk_frames=20, mean_size=3, batch_size=16)  # the window is alignment's own
    tracks = embed_windows(embedder, features, settings.fps, window_s=4.0, hop_s=1.0)
    assert [len(t.starts_s) for t in tracks] == [47, 37]
    shifts = coarse_shifts(tracks)
    assert abs(shifts[0, 1] - shift_s) <= 1.0
    assert abs(shifts[1, 0] + shift_s) <= 1.0
    # the same recording twice aligns at 0
    assert coarse_shifts([tracks[0], tracks[0]])[0, 1] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# The ``alignments`` asset and ``csi align`` on a synthetic project with a tiny promoted model


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    project, model_id, _ = project_with_model(tmp_path_factory.mktemp("align"), works=3, perfs=3, seconds=6.0)
    return project, model_id


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_alignments_asset_writes_every_same_work_pair(project) -> None:
    project, model_id = project
    result = materialize(project, [tools.alignments],
                         run_config={"ops": {"alignments": {"config": {"window_s": 2.0, "hop_s": 1.0}}}})
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("alignments")[0].metadata.items()}
    lines = _read_lines(project.training_dir / ALIGNMENT_FILE)
    work_of = {p.perf: p.work for p in catalog_store.performances(project.store, project.dataset_dir.name)}
    assert len(lines) == 3 * 3 * 3 and metadata["pairs"] == 27 and metadata["distinct_pairs"] == 18
    assert all(set(line) == {"perf_i", "perf_j", "shift_s"} for line in lines)
    assert all(work_of[line["perf_i"]] == work_of[line["perf_j"]] for line in lines)
    assert all(line["shift_s"] == 0.0 for line in lines if line["perf_i"] == line["perf_j"])
    assert all(float(line["shift_s"]).is_integer() for line in lines)  # on the 1 s hop grid
    meta = json.loads((project.training_dir / ALIGNMENT_META_FILE).read_text())
    assert meta["model_id"] == model_id and meta["window_s"] == 2.0 and meta["hop_s"] == 1.0
    assert metadata["windows"] == meta["windows"] > 9


def test_csi_align_matches_the_asset(project, capsys) -> None:
    project, _ = project
    path = project.training_dir / ALIGNMENT_FILE
    before = path.read_text() if path.exists() else None
    args = ["align", "--dataset-dir", str(project.dataset_dir), "--training-dir", str(project.training_dir),
            "--store", str(project.store_path), "--window", "2", "--hop", "1"]
    assert csi(args) == 0
    assert "27 pairs" in capsys.readouterr().out
    if before is not None:
        assert path.read_text() == before  # same model, same windows: same answer
    assert csi([*args[:-4], "--window", "0", "--hop", "1"]) == 2
