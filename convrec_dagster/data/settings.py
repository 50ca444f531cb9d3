"""Where convrec-dagster keeps its things, from the environment with sensible defaults.

- ``CONVREC_HOME`` (default ``./.convrec``): the DuckDB file ``convrec.duckdb`` and ``artifacts/``.
- ``CONVREC_RAW_DIR`` (default: the embedded sample dump, generated on first use under
  ``CONVREC_HOME/sample_dump``): a folder of raw Amazon review + metadata dumps.

No Dagster import here: benchmarks and scripts use these helpers too.
"""

from __future__ import annotations

import os
from pathlib import Path

DUCKDB_FILENAME = "convrec.duckdb"
SAMPLE_DUMP_DIRNAME = "sample_dump"


def convrec_home() -> Path:
    return Path(os.environ.get("CONVREC_HOME") or ".convrec").expanduser().resolve()


def duckdb_path(home: Path | None = None) -> Path:
    return (home or convrec_home()) / DUCKDB_FILENAME


def artifacts_dir(home: Path | None = None) -> Path:
    return (home or convrec_home()) / "artifacts"


def sample_dump_dir(home: Path | None = None) -> Path:
    return (home or convrec_home()) / SAMPLE_DUMP_DIRNAME


def raw_dir_from_env() -> Path | None:
    """The folder named by ``CONVREC_RAW_DIR``, or None when the embedded sample is meant."""
    value = os.environ.get("CONVREC_RAW_DIR")
    return Path(value).expanduser().resolve() if value else None


def models_dir(home: Path | None = None) -> Path:
    """The folder of every model's folder."""
    return artifacts_dir(home) / "models"


def model_dir(home: Path | None, name: str) -> Path:
    """Where model ``name`` keeps best.pt, resume.pt and history.json (the one definition of it)."""
    return models_dir(home) / name
