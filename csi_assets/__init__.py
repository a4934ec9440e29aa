"""Dagster orchestration of the csi_model library: assets, resources, store, sensors."""
