"""Exports in the reference tool's format, so its users can compare results and move data both ways.

Files (see docs/reference_tool.md), all JSON lines with the keys ``perf, wav, dur_s, work, version, feat, feat_len,
work_id`` unless noted: ``full.txt`` (every item), ``train.txt``, ``val.txt``, ``test.txt``,
``work_id.map`` ("<work_id> <work>" per line, sorted by id, as the reference README promised) and
``test-only-work-ids.txt`` (one id per line). Every file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from csi_model.atomic import write_text_atomic
from csi_model.catalog import CatalogRow, catalog_record, write_catalog
from csi_model.splits import Split
from csi_model.tempo import TempoVariant

SPLIT_FILES = {Split.TRAIN: "train.txt", Split.VAL: "val.txt", Split.TEST: "test.txt"}


@dataclass(frozen=True)
class FeatureLine:
    """One line of ``full.txt``: a catalog row as seen through one tempo variant, plus its feature."""

    row: CatalogRow
    variant: TempoVariant
    feat: Path
    feat_len: int
    work_id: int

    def record(self) -> dict[str, object]:
        record = catalog_record(self.row)
        record |= {"perf": self.variant.perf, "wav": str(self.variant.wav), "dur_s": self.variant.dur_s}
        return record | {"feat": str(self.feat), "feat_len": int(self.feat_len), "work_id": int(self.work_id)}


def write_reference_exports(
    out_dir: str | os.PathLike[str],
    lines: Sequence[FeatureLine],
    split_of: Mapping[str, Split],
    work_ids: Mapping[str, int],
    test_only_work_ids: Iterable[int],
) -> dict[str, Path]:
    """Write all six files into ``out_dir``; return their paths by file name.

    ``val.txt`` / ``test.txt`` are written only when non-empty, like the reference; a stale one from an
    earlier run is removed, so the folder never shows a split that no longer exists. An empty train split is
    an error (the reference refuses it too: nothing could be trained).
    """
    folder = Path(out_dir)
    missing = [line.variant.perf for line in lines if line.variant.perf not in split_of]
    if missing:
        raise ValueError(f"no split for {len(missing)} performance(s), e.g. {', '.join(missing[:5])}")
    written = {"full.txt": _write_lines(folder / "full.txt", lines)}
    for split, name in SPLIT_FILES.items():
        members = [line for line in lines if split_of[line.variant.perf] == split]
        if split is Split.TRAIN and not members:
            raise ValueError("the train split is empty: nothing to train on")
        if members:
            written[name] = _write_lines(folder / name, members)
        else:
            (folder / name).unlink(missing_ok=True)
    written["work_id.map"] = _write_text(folder / "work_id.map", work_id_map_text(work_ids))
    ids = "".join(f"{work_id}\n" for work_id in sorted(test_only_work_ids))
    written["test-only-work-ids.txt"] = _write_text(folder / "test-only-work-ids.txt", ids)
    return written


def work_id_map_text(work_ids: Mapping[str, int]) -> str:
    return "".join(f"{work_id} {work}\n" for work, work_id in sorted(work_ids.items(), key=lambda item: item[1]))


def _write_lines(path: Path, lines: Sequence[FeatureLine]) -> Path:
    write_catalog(path, (line.record() for line in lines))
    return path


def _write_text(path: Path, text: str) -> Path:
    write_text_atomic(path, text)
    return path
