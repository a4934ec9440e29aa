import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from csi_model.catalog import CatalogRow, catalog_record, parse_catalog, verify_audio, write_catalog
from tests.audio_fixtures import write_tone


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    (folder / "wav").mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        write_tone(folder / "wav" / f"{name}.wav", seconds=0.5)
    return folder


def _write(folder: Path, lines: list[str]) -> Path:
    path = folder / "dataset.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_json_and_tab_lines_both_parse(dataset: Path) -> None:
    path = _write(
        dataset,
        [
            json.dumps({"perf": "p1", "wav": "wav/a.wav", "dur_s": 0.5, "work": "Song A", "version": "live"}),
            "",
            "perf:p2\twav:wav/b.wav\tdur_s:0.5\twork:Song: B\tlen:3",
            "   ",
        ],
    )
    parsed = parse_catalog(path)
    assert parsed.rejected == []
    assert parsed.rows == [
        CatalogRow("p1", (dataset / "wav/a.wav").resolve(), 0.5, "Song A", "live", 1),
        CatalogRow("p2", (dataset / "wav/b.wav").resolve(), 0.5, "Song: B", None, 3),
    ]


def test_wav_resolution_absolute_then_dataset_folder_then_cwd(dataset: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    (elsewhere / "audio").mkdir(parents=True)
    write_tone(elsewhere / "audio" / "e.wav", seconds=0.5)
    write_tone(elsewhere / "wav_a.wav", seconds=0.5)
    (elsewhere / "wav").mkdir()
    write_tone(elsewhere / "wav" / "a.wav", seconds=0.5)  # shadowed: the dataset folder wins
    lines = [
        json.dumps({"perf": "abs", "wav": str(dataset / "wav" / "c.wav"), "dur_s": 0.5, "work": "w"}),
        json.dumps({"perf": "ds", "wav": "wav/a.wav", "dur_s": 0.5, "work": "w"}),
        json.dumps({"perf": "cwd", "wav": "audio/e.wav", "dur_s": 0.5, "work": "w"}),
    ]
    parsed = parse_catalog(_write(dataset, lines), cwd=elsewhere)
    assert [row.wav for row in parsed.rows] == [
        (dataset / "wav" / "c.wav").resolve(),
        (dataset / "wav" / "a.wav").resolve(),
        (elsewhere / "audio" / "e.wav").resolve(),
    ]


def test_every_bad_line_gets_its_reason_and_good_lines_still_come_through(dataset: Path) -> None:
    good = {"wav": "wav/a.wav", "dur_s": 0.5, "work": "w"}
    lines = [
        json.dumps({"perf": "ok1", **good}),  # 1
        '{"perf": "broken", "wav": ',  # 2 bad JSON
        json.dumps({"perf": "nowork", "wav": "wav/a.wav", "dur_s": 0.5}),  # 3 missing key
        json.dumps({"perf": "typ", "wav": "wav/a.wav", "dur_s": "long", "work": "w"}),  # 4 wrong type
        json.dumps({"perf": 7, **good}),  # 5 wrong type (perf)
        json.dumps({"perf": "ok1", **good}),  # 6 duplicate of line 1
        json.dumps({"perf": "gone", "wav": "wav/missing.wav", "dur_s": 0.5, "work": "w"}),  # 7 missing audio
        "perf:sp wav:wav/a.wav dur_s:0.5 work:w",  # 8 spaces instead of TABs
        "just some text",  # 9 not key:value
        json.dumps({"perf": "x-\u2581start-3", **good}),  # 10 reserved delimiter
        "[1, 2]",  # 11 JSON that is not an object (does not start with '{': read as TAB text)
        json.dumps({"perf": "neg", "wav": "wav/a.wav", "dur_s": -1, "work": "w"}),  # 12 bad value
        "perf:ok2\twav:wav/b.wav\tdur_s:0.5\twork:w2",  # 13
        "perf:latin1\twav:wav/b.wav\tdur_s:0.5\twork:caf\udce9",  # 14 not UTF-8 (a Latin-1 byte)
        json.dumps({"perf": "sep\u2028in-json", **good}, ensure_ascii=False),  # 15 U+2028 is not a line break
    ]
    path = dataset / "dataset.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8", errors="surrogateescape") + b"\n")
    parsed = parse_catalog(path)
    assert [row.perf for row in parsed.rows] == ["ok1", "ok2", "sep\u2028in-json"]
    reasons = {rejected.line_no: rejected.reason for rejected in parsed.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]
    expected = {
        2: "invalid JSON",
        3: "missing required key(s) work",
        4: "dur_s must be a number",
        5: "perf must be a non-empty string",
        6: "duplicate perf 'ok1': already defined on line 1, line 6 ignored",
        7: "audio file 'wav/missing.wav' not found",
        8: "separated by TABs",
        9: "is not key:value",
        10: "reserved text",
        11: "is not key:value",
        12: "positive finite number",
        14: "not valid UTF-8 (byte 0xe9 at column 45)",
    }
    for line_no, fragment in expected.items():
        assert reasons[line_no].startswith(f"{path}:{line_no}: "), reasons[line_no]
        assert fragment in reasons[line_no]
    assert parsed.rejected[0].text == lines[1]


def test_audio_checks_reject_bad_audio_warn_on_duration_and_keep_the_rest(dataset: Path) -> None:
    (dataset / "wav" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 20)
    (dataset / "wav" / "empty.wav").write_bytes(b"")
    sf.write(dataset / "wav" / "silent.wav", np.zeros(8000, dtype=np.float32), 16000)
    records = [
        ("good", "a.wav", 0.5),
        ("corrupt", "corrupt.wav", 1.0),
        ("empty", "empty.wav", 1.0),
        ("silent", "silent.wav", 0.5),
        ("offby", "b.wav", 0.6),  # 20 % off the decoded 0.5 s
        ("close", "c.wav", 0.504),  # within 1 %
    ]
    lines = [json.dumps({"perf": p, "wav": f"wav/{w}", "dur_s": d, "work": "w"}) for p, w, d in records]
    parsed = parse_catalog(_write(dataset, lines))
    assert len(parsed.rows) == 6
    verified = verify_audio(parsed.rows)
    assert [(row.perf, row.dur_s) for row in verified.rows] == [("good", 0.5), ("offby", 0.5), ("close", 0.504)]
    reasons = {rejected.text: rejected.reason for rejected in verified.rejected}
    assert "cannot decode" in reasons["corrupt"] and "catalog line 2" in reasons["corrupt"]
    assert "empty file" in reasons["empty"] and "empty.wav" in reasons["empty"]
    assert "silent" in reasons["silent"] and "catalog line 4" in reasons["silent"]
    (warning,) = verified.warnings
    assert "b.wav" in warning and "catalog line 5" in warning and "decoded length 0.50 s" in warning


def test_writer_round_trips_through_the_parser(dataset: Path) -> None:
    rows = [
        CatalogRow("p1", (dataset / "wav/a.wav").resolve(), 0.5, "Ünïcode work", "v1", 1),
        CatalogRow("p2", (dataset / "wav/b.wav").resolve(), 0.5, "w2", None, 2),
    ]
    path = dataset / "out" / "catalog.txt"
    write_catalog(path, (catalog_record(row) for row in rows))
    assert "Ünïcode" in path.read_text(encoding="utf-8")
    assert list(json.loads(path.read_text().splitlines()[0])) == ["perf", "wav", "dur_s", "work", "version"]
    assert parse_catalog(path).rows == rows
