"""The one rule for an asset whose upstream data are missing: fail, naming the asset to materialize.

A partial selection (``--select '+data_splits'`` on a fresh dataset) runs assets whose parents were never
materialized for this dataset. Computed from nothing they would report success with 0 rows (or a misleading
error from deep inside); instead each asset states what it reads from its parents through
:func:`require_upstream`, so every such failure reads the same and names the asset to run first.
"""

from __future__ import annotations

import dagster as dg


def require_upstream(present: object, upstream: str, dataset: str, what: str) -> None:
    """Raise ``dg.Failure`` ("dataset 'd' has no <what>: materialize <upstream> first") unless ``present``.

    ``present``: the rows the asset read from its parent (a list, dict, set: empty means missing) or a bool.
    ``upstream``: the parent asset's key as the user selects it; ``what``: the missing data, in plain words."""
    if not present:
        raise dg.Failure(description=f"dataset {dataset!r} has no {what}: materialize {upstream} first",
                         metadata={"missing_upstream": upstream})
