"""Group ``data``: catalog → tempo variants → CQT features; work ids; leak-free splits."""

from __future__ import annotations

import dagster as dg

GROUP = "data"


@dg.asset(group_name=GROUP)
def dataset_catalog() -> dg.MaterializeResult:
    """One row per performance of ``dataset.txt``, validated line by line."""
    raise dg.Failure(description="dataset_catalog is not implemented yet (issue 3)")


@dg.asset(group_name=GROUP, deps=[dataset_catalog])
def speed_variants() -> dg.MaterializeResult:
    """Tempo-changed copies (pitch kept) of every performance, one per factor of ``aug_speed_mode``."""
    raise dg.Failure(description="speed_variants is not implemented yet (issue 3)")


@dg.asset(group_name=GROUP, deps=[speed_variants])
def cqt_features() -> dg.MaterializeResult:
    """One CQT array per (variant, CQT settings), cached by audio content and settings."""
    raise dg.Failure(description="cqt_features is not implemented yet (issue 3)")


@dg.asset(group_name=GROUP, deps=[dataset_catalog])
def work_ids() -> dg.MaterializeResult:
    """A stable ``work → work_id`` map: a work keeps its id forever."""
    raise dg.Failure(description="work_ids is not implemented yet (issue 3)")


@dg.asset(group_name=GROUP, deps=[cqt_features, work_ids])
def data_splits() -> dg.MaterializeResult:
    """Train / val / test membership with unseen-work holdouts; every variant follows its original."""
    raise dg.Failure(description="data_splits is not implemented yet (issue 3)")
