"""The DuckDB metadata store: the only package that speaks SQL.

``connection`` opens short-lived, retried connections; ``schema`` owns the tables and their migrations; each other
module holds the reads and writes of one part of the graph, so an asset never builds SQL itself. Reads return the
frozen dataclasses of ``records`` (one per kind of row, fields documented with their units), never dicts.
"""

from csi_assets.store.connection import Store, StoreError, StoreLockedError

__all__ = ["Store", "StoreError", "StoreLockedError"]
