"""Atomic file output: readers never see a half-written file.

Every artifact of the data stage (wav, .npy, catalog text) is written to a temporary name in the target's own
folder and moved into place with ``os.replace``, which is atomic on POSIX and Windows when both names are on the
same file system. A crash leaves either the old file or the new one, never a truncated mix, so "file exists" can
safely mean "file is complete" (the skip rules of the data stage rely on that).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, on error delete it.

    The temporary name keeps the target's suffix because some writers (soundfile, numpy) pick the format
    or append an extension from it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically (catalogs, maps, id lists)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
