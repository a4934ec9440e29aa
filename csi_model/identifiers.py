"""Identifiers are data, never paths: how a perf or variant id becomes a file name, and what an id may contain.

Catalogs come from other people (batches dropped in ``incoming/``), and real ids contain ``/``, ``#``, spaces and
any script (``collection/book/X12#p0``, 120 CJK characters). A file named after an id is therefore never the id
itself but :func:`id_file_name`: a readable ASCII slug of the id, cut to :data:`SLUG_CHARS`, then ``~`` and the
first :data:`HASH_CHARS` hex digits of the SHA-256 of the id's exact UTF-8 bytes, then the suffix.

* Same id, same name (pure function of the id); different ids, different names (the hash of the exact id, 64
  bits: two ids share a name with probability about n² / 2⁶⁵, ~3e-8 for a million ids). The hash is lower-case
  hex, so two names differ in their hash digits even on a case-insensitive file system (``A`` and ``a`` do not
  collide on macOS or Windows).
* Safe: only ``[A-Za-z0-9._-]`` and ``~``, never a path separator, never ``..`` as a name, never a leading dot
  (hidden files, and the ``.*.tmp*`` names of atomic writes), at most ``SLUG_CHARS + 1 + HASH_CHARS`` bytes plus
  the suffix, far below the 255-byte limit of common file systems.
* Contained: :func:`id_path` resolves the result and checks it is a direct child of its folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

SLUG_CHARS = 40
HASH_CHARS = 16
_NOT_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
_FORBIDDEN_CATEGORIES = {"Cc": "a control character", "Cs": "a lone surrogate"}


TEMPO_COPY_ID = re.compile(r"^sp_(?P<factor>[0-9]+\.[0-9]+)-(?P<perf>.+)$", re.DOTALL)
"""The id form of a generated tempo copy, ``sp_<k>-<perf>`` (``csi_model.tempo.variant_perf_id``; the reference
tool's form, kept for its exports and imports). The namespace is reserved: a catalog refuses a user perf id of this
form, so a generated id never names a user's recording."""


IDENTITY_TOLERANCE = 0.01
"""A tempo factor closer than this to 1.0 means "the original": no copy is rendered (the reference tool's rule)."""


def is_original_speed(speed: float) -> bool:
    """Whether a recording at tempo factor ``speed`` is the original recording, not a tempo copy (the rule of
    every stored feature row's ``speed``, and of which factors make a copy at all)."""
    return abs(speed - 1.0) < IDENTITY_TOLERANCE


class UnsafePathError(ValueError):
    """A path the product was about to write lies outside the folder it belongs to."""


def id_problem(identifier: str) -> str | None:
    """Why ``identifier`` cannot be an id (``None`` when it can): empty, or containing a character that is not
    text: control characters (TAB, newline, NUL, DEL, C1) and lone surrogates, which have no UTF-8 form.
    Every other Unicode string is a valid id; ``/``, ``..``, ``#`` and spaces inside are just characters."""
    if not identifier:
        return "is empty"
    for position, char in enumerate(identifier, start=1):
        category = unicodedata.category(char)
        if category in _FORBIDDEN_CATEGORIES:
            return f"contains {_FORBIDDEN_CATEGORIES[category]} (U+{ord(char):04X}) at character {position}"
    return None


def tempo_copy_of(perf: str) -> tuple[str, float] | None:
    """``(original perf, factor)`` when ``perf`` has the form of a tempo copy's id, else ``None``."""
    match = TEMPO_COPY_ID.match(perf)
    return (match["perf"], float(match["factor"])) if match else None


def id_file_name(identifier: str, suffix: str) -> str:
    """The file name of ``identifier`` (see the module docstring), e.g. ``collection_book_X12_p0~<16 hex>.wav``.

    ``suffix`` (``".wav"``, ``".cqt.npy"``) must itself be a safe name part. Raises ``ValueError`` for an id
    :func:`id_problem` refuses."""
    problem = id_problem(identifier)
    if problem:
        raise ValueError(f"id {identifier!r} {problem}")
    if not re.fullmatch(r"(\.[A-Za-z0-9_-]+)*", suffix):
        raise ValueError(f"file suffix {suffix!r} is not a sequence of .extensions")
    slug = _NOT_SLUG.sub("_", identifier)[:SLUG_CHARS].lstrip("._-")
    digest = hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:HASH_CHARS]
    return f"{slug}~{digest}{suffix}" if slug else f"{digest}{suffix}"


def id_path(folder: str | os.PathLike[str], identifier: str, suffix: str) -> Path:
    """``folder / id_file_name(identifier, suffix)``, checked to stay inside ``folder``."""
    return contained(folder, id_file_name(identifier, suffix))


def contained(folder: str | os.PathLike[str], name: str) -> Path:
    """``folder / name`` after checking that, resolved (symbolic links followed), it is a direct child of the
    resolved ``folder``. Raises :class:`UnsafePathError` otherwise: no write may leave its folder."""
    base = Path(folder)
    path = base / name
    if path.resolve().parent != base.resolve() or name in ("", ".", ".."):
        raise UnsafePathError(f"{path}: refusing to write outside {base} (the name {name!r} is not a plain file name)")
    return path
