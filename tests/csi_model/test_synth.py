"""The synthetic covers generator: reproducible bytes, a valid catalog, and real per-performance variation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from csi_model.synth import DEMO_LABELS, compose_work, draw_rendition, generate_covers, render_performance

WORKS, PERFS, SECONDS = 3, 2, 5.0


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _records(catalog: Path) -> list[dict]:
    return [json.loads(line) for line in catalog.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_a")
    generate_covers(out, WORKS, PERFS, seed=7, seconds=SECONDS)
    return out


def test_same_seed_gives_identical_bytes(demo: Path, tmp_path: Path) -> None:
    generate_covers(tmp_path, WORKS, PERFS, seed=7, seconds=SECONDS)
    first, second = _hashes(demo), _hashes(tmp_path)
    assert len(first) == WORKS * PERFS + 1  # every wav + dataset.txt, no temp files left behind
    assert first == second


def test_different_seed_changes_every_wav(demo: Path, tmp_path: Path) -> None:
    generate_covers(tmp_path, WORKS, PERFS, seed=8, seconds=SECONDS)
    first, second = _hashes(demo), _hashes(tmp_path)
    wavs = [name for name in first if name.endswith(".wav")]
    assert all(first[name] != second[name] for name in wavs)


def test_a_file_depends_only_on_its_own_indices(demo: Path, tmp_path: Path) -> None:
    generate_covers(tmp_path, WORKS - 1, PERFS, seed=7, seconds=SECONDS)
    fewer = _hashes(tmp_path)
    wavs = [name for name in fewer if name.endswith(".wav")]
    assert len(wavs) == (WORKS - 1) * PERFS
    assert all(fewer[name] == _hashes(demo)[name] for name in wavs)


def test_catalog_matches_the_audio(demo: Path) -> None:
    records = _records(demo / "dataset.txt")
    assert len(records) == WORKS * PERFS
    assert len({r["perf"] for r in records}) == len(records)
    for record in records:
        assert set(record) == {"perf", "wav", "dur_s", "work", "version", *DEMO_LABELS}
        assert record["wav"] == f"wav/{record['perf']}.wav"
        info = sf.info(demo / record["wav"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(record["dur_s"] - info.frames / info.samplerate) <= 0.01
        assert record["dur_s"] == round(record["dur_s"], 2)
    per_work: dict[str, int] = {}
    for record in records:
        per_work[record["work"]] = per_work.get(record["work"], 0) + 1
    assert per_work == {f"work_{w:03d}": PERFS for w in range(WORKS)}


def test_performances_of_a_work_differ(demo: Path) -> None:
    records = _records(demo / "dataset.txt")
    for w in range(WORKS):
        perfs = [r for r in records if r["work"] == f"work_{w:03d}"]
        assert len({r["dur_s"] for r in perfs}) == PERFS
        assert len({r["version"] for r in perfs}) == PERFS
        lengths = [sf.info(demo / r["wav"]).frames for r in perfs]
        # tempo 0.8-1.25x and start offsets keep durations near the nominal length
        assert all(0.6 * SECONDS * 16000 < n < 1.6 * SECONDS * 16000 for n in lengths)


def _render(transpose: int, tempo: float) -> np.ndarray:
    work = compose_work(np.random.default_rng(0), seconds=SECONDS)
    base = draw_rendition(np.random.default_rng(1), work)
    rendition = dataclasses.replace(
        base, transpose=transpose, tempo=tempo, start_beat=0.0, lead_silence_s=0.0, vibrato_cents=0.0, snr_db=60.0
    )
    return render_performance(work, rendition, np.random.default_rng(2))


def test_transposition_shifts_every_pitch() -> None:
    plain, up = _render(0, 1.0), _render(3, 1.0)
    spectrum_plain, spectrum_up = np.abs(np.fft.rfft(plain)), np.abs(np.fft.rfft(up))
    ratio = np.argmax(spectrum_up) / np.argmax(spectrum_plain)
    assert ratio == pytest.approx(2 ** (3 / 12), rel=0.01)


def test_tempo_changes_the_length_not_the_pitch() -> None:
    plain, fast = _render(0, 1.0), _render(0, 1.25)
    assert len(fast) / len(plain) == pytest.approx(1 / 1.25, abs=1e-3)
    peak_plain = np.argmax(np.abs(np.fft.rfft(plain))) / len(plain)
    peak_fast = np.argmax(np.abs(np.fft.rfft(fast))) / len(fast)
    assert peak_fast == pytest.approx(peak_plain, rel=0.01)


def test_progress_counts_every_performance(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    generate_covers(tmp_path, 2, 2, seed=0, seconds=2.0, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("works, perfs, seconds", [(0, 2, 5.0), (2, 0, 5.0), (2, 2, 0.5)])
def test_bad_sizes_are_refused(tmp_path: Path, works: int, perfs: int, seconds: float) -> None:
    with pytest.raises(ValueError):
        generate_covers(tmp_path, works, perfs, seconds=seconds)


def test_parallel_workers_write_the_same_bytes_as_one(tmp_path: Path) -> None:
    generate_covers(tmp_path / "one", 3, 2, seed=4, seconds=2.0, workers=1)
    generate_covers(tmp_path / "two", 3, 2, seed=4, seconds=2.0, workers=2)
    one, two = sorted((tmp_path / "one").rglob("*.*")), sorted((tmp_path / "two").rglob("*.*"))
    assert [p.relative_to(tmp_path / "one") for p in one] == [p.relative_to(tmp_path / "two") for p in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
