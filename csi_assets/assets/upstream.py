"""Application failures as Dagster failures: the one rule for an asset whose upstream data are missing, and the
conversion of :class:`csi_assets.errors.RunFailed` into ``dg.Failure`` (same message, same metadata)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

from csi_assets import errors


def as_failure(err: errors.RunFailed) -> dg.Failure:
    return dg.Failure(description=err.description, metadata=err.metadata)


@contextlib.contextmanager
def failures() -> Iterator[None]:
    """Inside an asset or check: an application :class:`~csi_assets.errors.RunFailed` fails the step as a
    ``dg.Failure`` with its message and metadata (no traceback of library internals in the UI)."""
    try:
        yield
    except errors.RunFailed as err:
        raise as_failure(err) from err


def require_upstream(present: object, upstream: str, dataset: str, what: str) -> None:
    """:func:`csi_assets.errors.require_upstream`, failing the step as a ``dg.Failure`` with ``missing_upstream``."""
    with failures():
        errors.require_upstream(present, upstream, dataset, what)
