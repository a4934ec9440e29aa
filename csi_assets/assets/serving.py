"""Group ``serving``: reference embeddings of every known performance, for identification."""


import dagster as dg

from csi_assets.assets.data import cqt_features
from csi_assets.assets.training import trained_model

GROUP = "serving"


@dg.asset(group_name=GROUP, deps=[trained_model, cqt_features])
def reference_embeddings() -> dg.MaterializeResult:
    """Segment embeddings of every reference performance for the promoted model; only missing pairs computed."""
    raise dg.Failure(description="reference_embeddings is not implemented yet (issue 5)")
