"""Definitions for tests/test_home_guard.py: the project's assets, resources and executor, with a
small job, loaded by `dagster job execute -f` in a subprocess (resources from the environment)."""

import dagster as dg

from convrec_dagster.definitions import ASSET_MODULES
from convrec_dagster.jobs import convrec_executor
from convrec_dagster.resources import build_resources

ingest_only = dg.define_asset_job("ingest_only", selection=dg.AssetSelection.groups("ingest"))

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(ASSET_MODULES),
    resources=build_resources(),
    jobs=[ingest_only],
    executor=convrec_executor,
)
