"""The Definitions load, and the graph, jobs, executor and concurrency settings are what the docs say."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from convrec_dagster.jobs import RETRAIN_GROUPS, STAGE_GROUPS
from convrec_dagster.resources import DUCKDB_POOL, DUCKDB_TAGS, GPU_POOL

# The asset graph of docs/ARCHITECTURE.md, by group.
DOCUMENTED_ASSETS = {
    "ingest": {"reviews", "items", "interactions"},
    "features": {"item_attributes", "item_image_features"},
    "splits": {"sequences", "eval_negatives", "proxy_ids", "training_data_parquet"},
    "training": {"popularity_model", "sasrec_model", "convrec_attention_model", "convrec_model"},
    "evaluation": {"evaluation_metrics", "evaluation_report", "recommendations"},
}
# Steps that may fail for reasons that pass (device, image decoding at scale) and so retry.
TRANSIENT_STEPS = DOCUMENTED_ASSETS["training"] | {"item_image_features"}


@pytest.fixture(scope="module")
def defs(tmp_path_factory) -> dg.Definitions:
    """The module's `defs`, imported here so that its resources point at a temporary home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVREC_HOME", str(tmp_path_factory.mktemp("convrec_home")))
        patch.delenv("CONVREC_RAW_DIR", raising=False)
        from convrec_dagster import definitions

        yield definitions.defs


@pytest.fixture(scope="module")
def specs(defs) -> dict[str, dg.AssetSpec]:
    return {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}


def _job_asset_keys(defs: dg.Definitions, job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {key.to_user_string() for key in job.asset_layer.selected_asset_keys}


def _job_check_keys(defs: dg.Definitions, job_name: str) -> set[dg.AssetCheckKey]:
    return set(defs.resolve_job_def(job_name).asset_layer.asset_graph.asset_check_keys)


def test_definitions_load(defs):
    dg.Definitions.validate_loadable(defs)
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"full_pipeline", "retrain"}
    assert defs.resolve_schedule_def("weekly_retrain").job_name == "retrain"
    assert defs.resolve_sensor_def("raw_dump_sensor").job_name == "full_pipeline"
    assert set(defs.resources) == {"paths", "duckdb", "torch_device", "pipes_subprocess_client"}


def test_every_asset_sits_in_a_stage_group_with_description_and_kinds(defs, specs):
    by_group: dict[str, set[str]] = {}
    for name, spec in specs.items():
        by_group.setdefault(spec.group_name, set()).add(name)
        assert spec.description and spec.description.strip(), f"{name} has no description"
        assert spec.kinds, f"{name} has no kinds"
    assert set(by_group) == set(STAGE_GROUPS)
    for group, documented in DOCUMENTED_ASSETS.items():
        assert documented <= by_group[group], f"group {group} lacks {documented - by_group[group]}"


def test_graph_is_one_dag_from_raw_dumps_to_report(defs, specs):
    graph = defs.resolve_asset_graph()
    for name in specs:
        for dep in graph.get(dg.AssetKey(name)).parent_keys:
            assert dep.to_user_string() in specs, f"{name} depends on undefined asset {dep}"
    report_upstream = {
        key.to_user_string()
        for key in dg.AssetSelection.assets("evaluation_report").upstream().resolve(graph)
    }
    assert {"reviews", "sequences", "convrec_model", "evaluation_metrics"} <= report_upstream


def test_full_pipeline_selects_every_asset_and_check(defs, specs):
    assert _job_asset_keys(defs, "full_pipeline") == set(specs)
    all_checks = set(defs.resolve_asset_graph().asset_check_keys)
    assert all_checks, "no asset checks are defined"
    assert _job_check_keys(defs, "full_pipeline") == all_checks


def test_retrain_selects_training_and_evaluation_only(defs, specs):
    expected = {name for name, spec in specs.items() if spec.group_name in RETRAIN_GROUPS}
    assert _job_asset_keys(defs, "retrain") == expected
    assert {"recommendations", "evaluation_report", "convrec_model"} <= expected
    assert not expected & (DOCUMENTED_ASSETS["ingest"] | DOCUMENTED_ASSETS["splits"])


def test_every_job_and_the_ui_materialize_use_the_convrec_executor(defs):
    # Its tag limit (one DuckDB step at a time) is checked by running it: tests/test_pipeline_e2e.py.
    jobs = [defs.resolve_job_def(name) for name in ("full_pipeline", "retrain")]
    jobs.append(defs.resolve_implicit_global_asset_job_def())  # the UI's "Materialize" buttons
    for job in jobs:
        assert job.executor_def.name == "convrec_multiprocess", job.name


def test_every_step_that_opens_duckdb_is_tagged_and_pooled(defs):
    job = defs.resolve_job_def("full_pipeline")
    duckdb_steps = [
        node.definition for node in job.graph.nodes if "duckdb" in node.definition.required_resource_keys
    ]
    assert len(duckdb_steps) >= 10, [op.name for op in duckdb_steps]
    for op in duckdb_steps:
        assert DUCKDB_TAGS.items() <= op.tags.items(), f"step {op.name} lacks {DUCKDB_TAGS}"
        assert op.pool in (DUCKDB_POOL, GPU_POOL), f"step {op.name} is in pool {op.pool!r}"


def test_training_steps_share_the_gpu_pool(defs, specs):
    graph = defs.resolve_asset_graph()
    for name in DOCUMENTED_ASSETS["training"]:
        assets_def = graph.get(dg.AssetKey(name)).assets_def
        assert assets_def.op.pool == GPU_POOL, f"{name} is in pool {assets_def.op.pool!r}"


def test_retries_only_on_transient_steps(defs):
    job = defs.resolve_job_def("full_pipeline")
    for node in job.graph.nodes:
        policy = node.definition.retry_policy
        if node.name in TRANSIENT_STEPS:
            assert policy is not None and policy.max_retries >= 1, (
                f"{node.name} never retries: add retry_policy=TRANSIENT_RETRY_POLICY "
                "(from convrec_dagster.jobs) to its @dg.asset"
            )
        elif node.name in DOCUMENTED_ASSETS["ingest"] | DOCUMENTED_ASSETS["splits"]:
            assert policy is None, f"{node.name} retries, but bad data fails the same way twice"


def test_run_config_example_is_valid_for_full_pipeline(defs):
    import yaml

    example = Path(__file__).resolve().parents[1] / "docs" / "run_config.example.yaml"
    run_config = yaml.safe_load(example.read_text())
    assert {"resources", "ops"} <= set(run_config)
    validated = dg.validate_run_config(defs.resolve_job_def("full_pipeline"), run_config)
    assert validated["ops"]["convrec_model"]["config"]["budget"] == "auto"
    assert validated["loggers"]["console"]["config"]["log_level"] == "INFO"
    # the accuracy benchmark's run config, with every override it offers, is valid config too
    from benchmarks.accuracy import run_config as accuracy_run_config

    overrides = accuracy_run_config(
        "beauty", "cpu", 5, 1e-3, {"min_count": 1}, 1, loss="full_softmax", valid_protocol="full", max_len=2,
        batch_size=1024, weight_decay=0.5, augment_prob=0.0, ensemble_size=1, mutual_learning=1.0,
    )  # fmt: skip
    checked = dg.validate_run_config(defs.resolve_job_def("full_pipeline"), overrides)
    assert checked["ops"]["convrec_model"]["config"]["valid_protocol"] == "full"
    assert checked["ops"]["convrec_model"]["config"]["max_len"] == 2
    assert checked["ops"]["convrec_model"]["config"]["weight_decay"] == 0.5
    assert checked["ops"]["convrec_model"]["config"]["augment_prob"] == 0.0  # 0 is a value, not "unset"
    assert (
        checked["ops"]["convrec_model"]["config"]["ensemble_size"],
        checked["ops"]["convrec_model"]["config"]["mutual_learning"],
    ) == (1, 1.0)
    assert checked["ops"]["sasrec_model"]["config"]["loss"] == "full_softmax"
    assert "valid_protocol" not in accuracy_run_config("video", "cpu")["ops"]["convrec_model"]["config"]
    with pytest.raises(dg.DagsterInvalidConfigError):  # a typo is caught, not ignored
        dg.validate_run_config(
            defs.resolve_job_def("full_pipeline"),
            {"ops": {"convrec_model": {"config": {"learning_rate": 0.1}}}},
        )


def test_jobs_log_through_the_convrec_console_by_default(defs):
    """Dagster builds a job's loggers only when the run config names them: the jobs' default config
    does, also when a run config with only `ops` is given (it is merged with the default)."""
    for name in ("full_pipeline", "retrain"):
        job = defs.resolve_job_def(name)
        assert job.loggers["console"].description.startswith("convrec's console")
        validated = dg.validate_run_config(job, {"ops": {"convrec_model": {"config": {"seed": 1}}}})
        assert "console" in validated["loggers"], name


def test_every_forkserver_preload_module_imports():
    """The forkserver silently skips a module that fails to import (a renamed Dagster internal would
    only cost time per step), so check here that each one exists."""
    import importlib

    from convrec_dagster.jobs import PRELOAD_MODULES

    for name in PRELOAD_MODULES:
        importlib.import_module(name)
