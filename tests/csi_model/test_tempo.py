from pathlib import Path

import pytest

from csi_model.audio import SAMPLE_RATE, load_audio
from csi_model.catalog import CatalogRow
from csi_model.identifiers import id_file_name
from csi_model.tempo import plan_variants, render_variant, variant_perf_id
from tests.audio_fixtures import dominant_frequency, write_tone


def _row(perf: str, wav: Path, dur_s: float) -> CatalogRow:
    return CatalogRow(perf=perf, wav=wav, dur_s=dur_s, work="w", version=None, line_no=1)


def test_variant_ids_print_the_factor_as_python_does() -> None:
    assert variant_perf_id("cover80_1", 0.8) == "sp_0.8-cover80_1"
    assert variant_perf_id("x", 1.1) == "sp_1.1-x"
    assert variant_perf_id("x", 2) == "sp_2.0-x"


def test_plan_is_perf_major_identity_keeps_the_original_and_ids_are_unique(tmp_path: Path) -> None:
    rows = [_row("a", tmp_path / "a.wav", 10.0), _row("b", tmp_path / "b.wav", 3.333)]
    plan = plan_variants(rows, [0.8, 1.0, 1.005, 1.2, 0.8], tmp_path / "sp_wav")
    assert [v.perf for v in plan] == ["sp_0.8-a", "a", "sp_1.2-a", "sp_0.8-b", "b", "sp_1.2-b"]
    assert [v.dur_s for v in plan[:3]] == [12.5, 10.0, 8.33]
    assert plan[4].dur_s == 3.33 and plan[4].is_original and plan[4].wav == tmp_path / "b.wav"
    assert plan[0].wav == tmp_path / "sp_wav" / id_file_name("sp_0.8-a", ".wav")
    assert plan[0].source_wav == tmp_path / "a.wav"
    assert not plan[0].is_original and plan[0].original_perf == "a"


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_rendered_variant_changes_duration_by_1_over_k_and_keeps_pitch(tmp_path: Path, factor: float) -> None:
    source = write_tone(tmp_path / "tone.wav", freq=220.0, seconds=2.0, sr=44100, channels=2)
    (variant,) = plan_variants([_row("t", source, 2.0)], [factor], tmp_path / "sp_wav")
    assert render_variant(variant) is True
    y = load_audio(variant.wav)
    assert len(y) / SAMPLE_RATE == pytest.approx(2.0 / factor, rel=0.01)
    assert variant.dur_s == round(2.0 / factor, 2)
    middle = y[len(y) // 4 : 3 * len(y) // 4]
    assert dominant_frequency(middle, SAMPLE_RATE) == pytest.approx(220.0, rel=0.005)  # < 9 cents


def test_render_skips_originals_and_existing_files(tmp_path: Path) -> None:
    source = write_tone(tmp_path / "tone.wav", seconds=0.5)
    original, variant = plan_variants([_row("t", source, 0.5)], [1.0, 0.9], tmp_path / "sp_wav")
    assert render_variant(original) is False
    assert render_variant(variant) is True
    stamp = variant.wav.stat().st_mtime_ns
    assert render_variant(variant) is False and variant.wav.stat().st_mtime_ns == stamp
