"""The Definitions: every asset and check of the five stages, resources, jobs, schedule, sensor.

Load it with ``dagster dev`` (reads ``[tool.dagster]`` in pyproject.toml) or
``dagster job execute -m convrec_dagster.definitions -j full_pipeline``.
"""

from __future__ import annotations

import dagster as dg

from assets import evaluation, features, ingest, preflight, splits, training
from convrec_dagster.console import convrec_console
from convrec_dagster.jobs import ALL_JOBS, convrec_executor
from convrec_dagster.resources import build_resources
from convrec_dagster.schedules import build_retrain_schedule
from convrec_dagster.sensors import raw_dump_sensor

# The pipeline's stages in graph order; each module's assets carry the group of the same name and
# declare their own asset checks (see convrec_dagster/checks.py). `preflight` sits in the ingest
# group, at the root: `reviews` depends on it, so a run checks its inputs before it does work.
ASSET_MODULES = [preflight, ingest, features, splits, training, evaluation]


def build_defs(
    resources: dict | None = None, executor: dg.ExecutorDefinition | None = None
) -> dg.Definitions:
    """The Definitions; resources default to ``build_resources()`` (CONVREC_HOME, CONVREC_RAW_DIR
    from the environment). Tests pass their own on a temporary home; a cluster passes
    ``k8s_job_executor.configured(convrec_dagster.k8s.executor_config(...))`` (docs/deploy/kubernetes.md)."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        resources=resources if resources is not None else build_resources(),
        jobs=ALL_JOBS,
        schedules=[build_retrain_schedule()],
        sensors=[raw_dump_sensor],
        executor=executor or convrec_executor,
        loggers={"console": convrec_console},  # readable INFO lines and a summary block (console.py)
    )


defs = build_defs()
