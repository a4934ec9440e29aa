"""The dataset catalog (``dataset.txt``): one performance per line, validated line by line.

The format is the reference tool's (see docs/reference_tool.md): a line starting with ``{`` is a JSON object; any other
non-blank line is TAB-separated ``key:value`` fields (the value is everything after the first ``:``).
Unlike the reference, nothing is dropped silently: every line is either a :class:`CatalogRow` or a
:class:`RejectedLine` whose reason names the catalog file and the line number, so a bad line never stops the
good ones and never goes unnoticed. Parsing is cheap and pure; decoding the audio is a separate step
(:func:`verify_row` / :func:`verify_audio`) so an orchestrator can fan it out.
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from csi_model.atomic import write_text_atomic
from csi_model.audio import SAMPLE_RATE, AudioError, load_audio
from csi_model.identifiers import id_problem, tempo_copy_of

REQUIRED_KEYS = ("perf", "wav", "dur_s", "work")
SEGMENT_DELIMITER = "-\u2581start-"
"""Reserved inside perf ids: later stages join a perf id and a segment start with it."""

DURATION_TOLERANCE = 0.01
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CatalogRow:
    perf: str
    wav: Path
    """Resolved absolute path of the audio file."""
    dur_s: float
    work: str
    version: str | None
    line_no: int
    labels: Mapping[str, str | None] = field(default_factory=dict, hash=False)
    """Each label the data hparams list -> its value (trimmed, NFC), or None when the line has none."""


@dataclass(frozen=True)
class RejectedLine:
    line_no: int
    text: str
    """The raw catalog line (parsing) or the perf id (audio checks, which start from parsed rows)."""
    reason: str


@dataclass(frozen=True)
class ParsedCatalog:
    path: Path
    rows: list[CatalogRow]
    rejected: list[RejectedLine]


@dataclass(frozen=True)
class VerifiedCatalog:
    """Outcome of the audio checks: usable rows, rejected rows and warnings (each a full sentence)."""

    rows: list[CatalogRow]
    rejected: list[RejectedLine] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class CatalogLineError(ValueError):
    """Why one catalog line cannot be used (caught per line by :func:`parse_catalog`)."""


def parse_catalog(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None,
                  tempo_copies: bool = False, labels: Sequence[str] = ()) -> ParsedCatalog:
    """Parse and validate every line of a catalog file; relative ``wav`` paths are tried against the
    catalog's folder first and then against ``cwd`` (default: the current working directory). ``labels``: the
    extra keys kept per row (see :func:`label_values`).

    Ids (``perf``, ``work``) are any text without control characters; surrounding whitespace is removed. A perf id
    of the form of a generated tempo copy (``sp_<k>-<perf>``) is refused, since it would name the copy of another
    performance, unless ``tempo_copies`` is set: for exported files that list copies (``full.txt``, the splits).

    Lines are split on bytes (``\n``, ``\r\n``, ``\r``) and decoded one by one, so a line that is not UTF-8
    is one rejection, not a failed file, and Unicode line separators inside JSON strings stay intact.
    """
    catalog = Path(path)
    search_dirs = (catalog.resolve().parent, Path(cwd or os.getcwd()).resolve())
    rows: list[CatalogRow] = []
    rejected: list[RejectedLine] = []
    first_line_of: dict[str, int] = {}
    for line_no, data in enumerate(catalog.read_bytes().removeprefix(UTF8_BOM).splitlines(), start=1):
        raw = data.decode("utf-8", errors="replace")
        text = raw.strip()
        if not text:
            continue
        try:
            _check_utf8(data)
            row = _parse_line(text, line_no, search_dirs, tempo_copies, labels)
            _check_unique(row, first_line_of)
        except CatalogLineError as error:
            rejected.append(RejectedLine(line_no, raw, f"{catalog}:{line_no}: {error}"))
            continue
        first_line_of[row.perf] = line_no
        rows.append(row)
    return ParsedCatalog(catalog, rows, rejected)


def scan_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, object] | CatalogLineError]]:
    """``(line number, fields)`` of every non-blank line, in the catalog's JSON or TAB ``key:value`` format; a line
    that is not a record yields ``(line number, the error)`` instead (naming the file and line), so callers choose
    whether a bad line is fatal. No row validation, no audio lookup."""
    catalog = Path(path)
    for line_no, data in enumerate(catalog.read_bytes().removeprefix(UTF8_BOM).splitlines(), start=1):
        text = data.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        try:
            _check_utf8(data)
            yield line_no, (_json_fields(text) if text.startswith("{") else _tab_fields(text))
        except CatalogLineError as error:
            yield line_no, CatalogLineError(f"{catalog}:{line_no}: {error}")


def read_records(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, object]]]:
    """Every record of a file whose lines only need some keys (a test set's ``perf`` list, a ``query_in_ref``
    file); a line that is not a record is an error naming the file and line."""
    records: list[tuple[int, dict[str, object]]] = []
    for line_no, fields in scan_records(path):
        if isinstance(fields, CatalogLineError):
            raise fields
        records.append((line_no, fields))
    return records


def _check_utf8(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = data[error.start]
        raise CatalogLineError(f"not valid UTF-8 (byte 0x{byte:02x} at column {error.start + 1})") from None


def _parse_line(text: str, line_no: int, search_dirs: Sequence[Path], tempo_copies: bool,
                labels: Sequence[str] = ()) -> CatalogRow:
    fields = _json_fields(text) if text.startswith("{") else _tab_fields(text)
    missing = [key for key in REQUIRED_KEYS if key not in fields]
    if missing:
        hint = "" if text.startswith("{") or "\t" in text else " (key:value fields must be separated by TABs)"
        raise CatalogLineError(f"missing required key(s) {', '.join(missing)}{hint}")
    perf, work = _id_field(fields, "perf"), _id_field(fields, "work")
    if SEGMENT_DELIMITER in perf:
        raise CatalogLineError(f"perf {perf!r} contains the reserved text {SEGMENT_DELIMITER!r}")
    copy_of = tempo_copy_of(perf)
    if copy_of and not tempo_copies:
        raise CatalogLineError(
            f"perf {perf!r} has the form sp_<k>-<perf> reserved for generated tempo copies (it would name the "
            f"{copy_of[1]:g}x copy of {copy_of[0]!r}); rename it (tempo copies are made by the speed_variants step)")
    version = fields.get("version")
    return CatalogRow(
        perf=perf,
        wav=_resolve_audio(_text_field(fields, "wav"), search_dirs),
        dur_s=_duration_field(fields["dur_s"]),
        work=work,
        version=None if version is None else str(version),
        line_no=line_no,
        labels=label_values(fields, labels),
    )


def label_values(fields: Mapping[str, object], names: Sequence[str]) -> dict[str, str | None]:
    """Each label name -> its value on this line, as text: trimmed and Unicode NFC-normalised (so a value typed
    with combining accents equals its precomposed form); numbers and true/false as JSON writes them. A key that
    is absent, null or blank is a missing value (None). A list or object is not a category value: an error."""
    values: dict[str, str | None] = {}
    for name in names:
        value = fields.get(name)
        if isinstance(value, (list, dict)):
            raise CatalogLineError(f"label {name!r} must be a text or number, got {value!r}")
        text = value if isinstance(value, str) or value is None else json.dumps(value)
        text = unicodedata.normalize("NFC", text).strip() if text is not None else None
        values[name] = text or None
    return values


def _json_fields(text: str) -> dict[str, object]:
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        raise CatalogLineError(f"invalid JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(fields, dict):
        raise CatalogLineError(f"JSON line is a {type(fields).__name__}, not an object")
    return fields


def _tab_fields(text: str) -> dict[str, object]:
    fields: dict[str, object] = {}
    for part in text.split("\t"):
        key, colon, value = part.partition(":")
        if not colon or not key.strip():
            raise CatalogLineError(f"field {part!r} is not key:value (fields are TAB-separated key:value pairs)")
        fields[key.strip()] = value
    return fields


def _text_field(fields: Mapping[str, object], key: str) -> str:
    value = fields[key]
    if not isinstance(value, str) or not value.strip():
        raise CatalogLineError(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _id_field(fields: Mapping[str, object], key: str) -> str:
    """A perf or work id: a non-empty string (surrounding whitespace removed) of text characters only."""
    value = _text_field(fields, key)
    problem = id_problem(value)
    if problem:
        raise CatalogLineError(f"{key} {value!r} {problem}: ids must be plain text")
    return value


def _duration_field(value: object) -> float:
    if isinstance(value, bool):
        raise CatalogLineError(f"dur_s must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CatalogLineError(f"dur_s must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise CatalogLineError(f"dur_s must be a positive finite number, got {value!r}")
    return seconds


def _resolve_audio(wav: str, search_dirs: Sequence[Path]) -> Path:
    """Absolute path as given, else relative to the catalog folder, else to the working directory."""
    given = Path(wav).expanduser()
    candidates = [given] if given.is_absolute() else [folder / given for folder in search_dirs]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise CatalogLineError(f"audio file {wav!r} not found (tried {tried})")


def _check_unique(row: CatalogRow, first_line_of: Mapping[str, int]) -> None:
    if row.perf in first_line_of:
        raise CatalogLineError(
            f"duplicate perf {row.perf!r}: already defined on line {first_line_of[row.perf]}, "
            f"line {row.line_no} ignored (the first one is kept)"
        )


def verify_row(row: CatalogRow, tolerance: float = DURATION_TOLERANCE) -> tuple[CatalogRow, str | None]:
    """Decode a row's audio; return the row (``dur_s`` replaced by the decoded length when it is off by more
    than ``tolerance``, relative) and a warning if so. Raises :class:`AudioError` for unusable audio."""
    decoded_s = len(load_audio(row.wav)) / SAMPLE_RATE
    if abs(row.dur_s - decoded_s) <= tolerance * decoded_s:
        return row, None
    warning = (
        f"{row.wav} (catalog line {row.line_no}, perf {row.perf!r}): dur_s {row.dur_s:g} s differs from the "
        f"decoded length {decoded_s:.2f} s by more than {tolerance:.0%}; using the decoded length"
    )
    return replace(row, dur_s=round(decoded_s, 2)), warning


def verify_audio(rows: Iterable[CatalogRow], tolerance: float = DURATION_TOLERANCE) -> VerifiedCatalog:
    """Run :func:`verify_row` on every row; unusable audio becomes a rejection, the rest goes on."""
    result = VerifiedCatalog(rows=[])
    for row in rows:
        try:
            verified, warning = verify_row(row, tolerance)
        except AudioError as error:
            reason = f"{error.path} (catalog line {row.line_no}, perf {row.perf!r}): {error.reason}"
            result.rejected.append(RejectedLine(row.line_no, row.perf, reason))
            continue
        result.rows.append(verified)
        if warning:
            result.warnings.append(warning)
    return result


def catalog_record(row: CatalogRow) -> dict[str, object]:
    """A row in the reference tool's key order (``version`` only when known)."""
    record: dict[str, object] = {"perf": row.perf, "wav": str(row.wav), "dur_s": row.dur_s, "work": row.work}
    if row.version is not None:
        record["version"] = row.version
    return record


def write_catalog(path: str | os.PathLike[str], records: Iterable[Mapping[str, object]]) -> None:
    """Write records as JSON lines (UTF-8, not ASCII-escaped, so titles stay readable), atomically."""
    write_text_atomic(path, "".join(json.dumps(dict(record), ensure_ascii=False) + "\n" for record in records))
