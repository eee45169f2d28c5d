"""Orchestration: Dask ingestion graphs and the stforecast command line."""
