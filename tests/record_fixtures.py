"""Store records built by hand, for tests of functions that take what the store returns without a store."""

from __future__ import annotations

from csi_assets.store.records import FeatureTableRecord


def table_record(variant: str, perf: str, speed: float, work_id: int, feat: str, n_frames: int,
                 split: str | None = None, batch_id: str | None = None) -> FeatureTableRecord:
    """A feature-table row; the fields no test of items and test sets reads get plain placeholder values."""
    return FeatureTableRecord(
        variant=variant, perf=perf, speed=speed, variant_wav=f"/audio/{variant}.wav", variant_dur_s=10.0 / speed,
        wav=f"/audio/{perf}.wav", dur_s=10.0, work=f"work_{work_id}", version=None, line_no=None, batch_id=batch_id,
        feat=feat, n_frames=n_frames, audio_hash=f"hash_{perf}", work_id=work_id, split=split)
