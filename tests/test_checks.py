"""Asset checks run inside their asset's step: declared with ``blocking_checks``, run with ``run_checks``."""

from __future__ import annotations

import dagster as dg
import duckdb

from convrec_dagster.checks import blocking_checks, run_checks
from convrec_dagster.data.outcome import CheckOutcome, Markdown
from convrec_dagster.definitions import build_defs


def no_negative_values(conn) -> CheckOutcome:
    """`numbers` holds no negative value."""
    bad = conn.execute("SELECT count(*) FROM numbers WHERE x < 0").fetchone()[0]
    return CheckOutcome(passed=bad == 0, metadata={"negative_values": bad, "examples": Markdown("| x |")})


def _pipeline(values: list[int], db: str):
    """`numbers` (guarded by the check) -> `total`; each asset opens the DuckDB file itself, as the
    project's assets do through the resource."""

    @dg.asset(check_specs=blocking_checks("numbers", no_negative_values))
    def numbers() -> dg.MaterializeResult:
        with duckdb.connect(db) as conn:
            conn.execute("CREATE OR REPLACE TABLE numbers AS SELECT unnest(?::INTEGER[]) AS x", [values])
            return dg.MaterializeResult(check_results=run_checks([no_negative_values], conn))

    @dg.asset(deps=[numbers])
    def total() -> dg.MaterializeResult:
        with duckdb.connect(db) as conn:
            return dg.MaterializeResult(
                metadata={"sum": conn.execute("SELECT sum(x) FROM numbers").fetchone()[0]}
            )

    return dg.materialize([numbers, total], raise_on_error=False)


def test_spec_is_named_after_the_function_and_blocking():
    (spec,) = blocking_checks("numbers", no_negative_values)
    assert spec.name == "no_negative_values" and spec.blocking
    assert (
        spec.asset_key == dg.AssetKey("numbers") and spec.description == "`numbers` holds no negative value."
    )


def test_a_passing_check_lets_downstream_run(tmp_path):
    result = _pipeline([1, 2, 3], str(tmp_path / "n.duckdb"))
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.asset_check_key.name == "no_negative_values"
    assert result.asset_materializations_for_node("total")[0].metadata["sum"].value == 6


def test_a_failing_check_keeps_the_materialization_but_blocks_downstream(tmp_path):
    result = _pipeline([1, -2, 3], str(tmp_path / "n.duckdb"))
    assert not result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["negative_values"].value == 1
    assert isinstance(evaluation.metadata["examples"], dg.MarkdownMetadataValue)  # the adapter keeps markdown
    assert len(result.asset_materializations_for_node("numbers")) == 1  # the table is there to inspect
    assert result.asset_materializations_for_node("total") == []


def test_every_check_runs_in_its_assets_step():
    """14 checks, and no step of their own: full_pipeline has one op per asset."""
    defs = build_defs()
    job = defs.resolve_job_def("full_pipeline")
    graph = defs.resolve_asset_graph()
    assert len(graph.asset_check_keys) == 14
    assert len(job.graph.nodes) == len(graph.get_all_asset_keys()) - len(
        [k for k in graph.get_all_asset_keys() if not graph.get(k).is_materializable]
    )
    assert {key.name for key in graph.asset_check_keys} >= {"reviews_have_ids", "recommendations_k_per_user"}
