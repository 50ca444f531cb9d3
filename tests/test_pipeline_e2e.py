"""`full_pipeline` end to end on the embedded sample dump, on a real Dagster instance, in process.

The run with the Definitions' multiprocess executor (one process per step, forked from a
forkserver, at most one DuckDB step at a time) is `dagster job execute` itself, in a subprocess:
tests/test_cli_run.py, which reuses the helpers below.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from convrec_dagster.data import settings

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]

# docs/ARCHITECTURE.md: the tables the pipeline leaves in CONVREC_HOME/convrec.duckdb
TABLES = {
    "reviews", "items", "quarantine", "interactions", "attribute_vocab", "item_attributes",
    "item_image_features", "user_index", "item_index", "sequences", "eval_negatives", "proxy_ids",
    "evaluation_metrics", "recommendations",
}  # fmt: skip
MODELS = ("popularity", "sasrec", "convrec_attention", "convrec")


def build_defs(resources: dict | None = None) -> dg.Definitions:
    # imported late: importing the module builds `defs`, whose resources read CONVREC_HOME
    from convrec_dagster.definitions import build_defs

    return build_defs(resources)


@pytest.fixture
def instance(tmp_path):
    """A persistent instance on a temporary DAGSTER_HOME with the project's dagster.yaml (pools)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "convrec_dagster" / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _assert_pipeline_outputs(home: Path, instance: dg.DagsterInstance, run_id: str) -> None:
    with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert TABLES <= tables, f"missing tables: {TABLES - tables}"
        assert conn.execute("SELECT count(*) FROM interactions").fetchone()[0] > 0
        models = {r[0] for r in conn.execute("SELECT DISTINCT model FROM evaluation_metrics").fetchall()}
        assert set(MODELS) <= models
        assert conn.execute("SELECT count(DISTINCT user_id) FROM recommendations").fetchone()[0] > 0

    reports = settings.artifacts_dir(home) / "reports"
    for name in ("evaluation_report.html", "evaluation_report.json"):
        assert (reports / name).stat().st_size > 0, f"{reports / name} is empty"

    materialized = {
        event.asset_key.to_user_string()
        for event in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        for event in [event.event_log_entry.dagster_event]
    }
    expected = {spec.key.to_user_string() for spec in build_defs().resolve_all_asset_specs()}
    assert materialized == expected

    evaluations = [
        record.event_log_entry.dagster_event.event_specific_data
        for record in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
    ]
    assert evaluations, "no asset check ran"
    failed = [f"{e.asset_check_key.to_user_string()}" for e in evaluations if not e.passed]
    assert not failed, f"asset checks failed: {failed}"


def _step_intervals(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records:
        starts[record.event_log_entry.step_key] = record.event_log_entry.timestamp
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records:
        ends[record.event_log_entry.step_key] = record.event_log_entry.timestamp
    return {key: (starts[key], ends[key]) for key in starts}


def test_full_pipeline_in_process(instance, convrec_home, make_resources):
    job = build_defs(make_resources()).resolve_job_def("full_pipeline")
    result = job.execute_in_process(instance=instance)
    assert result.success
    _assert_pipeline_outputs(convrec_home, instance, result.run_id)
