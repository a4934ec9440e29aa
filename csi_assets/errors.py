"""The application layer's one failure type: a run cannot go on, for a reason the user can act on.

Application code raises :class:`RunFailed` (or :class:`MissingUpstream`); the Dagster layer turns either into a
``dagster.Failure`` with the same message and metadata, the CLI into a one-line error. Keeping Dagster's type out
of the application code is what lets the CLI, ``bench/`` and tests use it without loading Dagster.
"""

from __future__ import annotations

from typing import Any


class RunFailed(Exception):
    """A run stopped for a reason stated in its message; ``metadata`` is shown beside it in the UI."""

    def __init__(self, description: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.metadata = dict(metadata or {})


class MissingUpstream(RunFailed):
    """An asset's parent data are missing for this dataset: the message names the asset to materialize first."""

    def __init__(self, upstream: str, dataset: str, what: str) -> None:
        super().__init__(f"dataset {dataset!r} has no {what}: materialize {upstream} first",
                         {"missing_upstream": upstream})
        self.upstream = upstream


def require_upstream(present: object, upstream: str, dataset: str, what: str) -> None:
    """Raise :class:`MissingUpstream` ("dataset 'd' has no <what>: materialize <upstream> first") unless ``present``.

    A partial selection (``--select '+data_splits'`` on a fresh dataset) runs assets whose parents were never
    materialized for this dataset; computed from nothing they would report success with 0 rows, so each states what
    it reads from its parents through this rule and every such failure reads the same.

    ``present``: the rows read from the parent (a list, dict, set: empty means missing) or a bool.
    ``upstream``: the parent asset's key as the user selects it; ``what``: the missing data, in plain words."""
    if not present:
        raise MissingUpstream(upstream, dataset, what)
