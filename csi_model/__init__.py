"""CoverHunter cover-song identification: the pure library (no Dagster, no DuckDB)."""
