"""Jobs and the executor: `full_pipeline` (raw dumps → report), `retrain` (models → report).

Concurrency, in one place (see also `DUCKDB_POOL` / `DUCKDB_TAGS` in resources.py):

- inside a run, the multiprocess executor runs at most one step tagged ``DUCKDB_TAGS`` at a time:
  DuckDB allows one writing process per file and a reader cannot open it while another process
  writes, so DuckDB steps go one after the other while steps without the tag could run beside them;
- across runs, the ``duckdb`` and ``gpu`` pools (limit 1 each, `concurrency.pools.default_limit` in
  dagster.yaml) keep two runs from writing the file, or training on the device, at the same time.
"""

from __future__ import annotations

import dagster as dg

from convrec_dagster.resources import DUCKDB_TAGS
from convrec_dagster.run_guard import guarded

STAGE_GROUPS = ("ingest", "features", "splits", "training", "evaluation")
RETRAIN_GROUPS = ("training", "evaluation")

_duckdb_tag_key, _duckdb_tag_value = next(iter(DUCKDB_TAGS.items()))

# What every step process needs, imported once per run by the forkserver instead of once per step:
# torch alone takes ~1.5 s to import on 2 cores, torchvision ~1.3 s, the model code and matplotlib
# ~0.5 s, and Dagster's SQLite instance storage (SQLAlchemy, Alembic) ~0.5 s in every step process
# when it opens the instance. Importing torch does not initialise CUDA, so forking after it is safe.
# The forkserver skips a module that fails to import, so a renamed Dagster internal costs only time.
PRELOAD_MODULES = [
    "dagster", "torch", "torchvision", "matplotlib.pyplot",
    "convrec_dagster.definitions", "convrec_dagster.data.dataset", "models.registry", "models.train", "models.evaluate",
    "dagster._core.instance.factory", "dagster._core.storage.sqlite_storage", "dagster._core.storage.root",
    "dagster._core.secrets.loader", "dagster._daemon",
]  # fmt: skip

# The default executor of the Definitions (so it covers `full_pipeline`, `retrain` and the UI's
# "Materialize" buttons): one process per step, at most one DuckDB step at a time per run. Step
# processes fork from a forkserver that has already imported PRELOAD_MODULES, instead of spawning a
# fresh interpreter that imports them again per step. `guarded`: the run holds CONVREC_HOME's run
# lock from start to end, and a copy of the store is kept after a successful run (run_guard.py).
convrec_executor = guarded(dg.multiprocess_executor).configured(
    {
        "tag_concurrency_limits": [
            {"key": _duckdb_tag_key, "value": _duckdb_tag_value, "limit": 1},
        ],
        "start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}},
    },
    name="convrec_multiprocess",
)

# Every job names the console logger in its default run config: Dagster builds the Definitions'
# loggers only when the run config names them (else it prints its own DEBUG console). A run config
# given with `-c` or in the Launchpad is merged with this default, so the logger stays.
CONSOLE_LOGGER_CONFIG = {"loggers": {"console": {"config": {"log_level": ""}}}}

full_pipeline = dg.define_asset_job(
    name="full_pipeline",
    selection=dg.AssetSelection.groups(*STAGE_GROUPS),
    description=(
        "Everything from the raw dump folder (CONVREC_RAW_DIR, or the embedded sample) to the "
        "evaluation report and the recommendations: ingest, features, splits, training, evaluation."
    ),
    tags={"convrec/job": "full_pipeline"},
    config=CONSOLE_LOGGER_CONFIG,
)

retrain = dg.define_asset_job(
    name="retrain",
    selection=dg.AssetSelection.groups(*RETRAIN_GROUPS),
    description=(
        "Retrains every model on the prepared data already in DuckDB (sequences, negatives, proxy "
        "IDs, item features), then re-evaluates and rewrites the report and the recommendations."
    ),
    tags={"convrec/job": "retrain"},
    config=CONSOLE_LOGGER_CONFIG,
)

ALL_JOBS = [full_pipeline, retrain]
