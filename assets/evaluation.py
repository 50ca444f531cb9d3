"""Evaluation: the metrics table, the report, and the recommendations a serving system reads.

- ``evaluation_metrics``: every trained model under both protocols (sampled_100, full), on the test
  and validation splits, per user group, one DuckDB row per number.
- ``evaluation_report``: comparison tables, published numbers, plots, data summary; markdown in the
  UI and ``artifacts/reports/evaluation_report.{html,json}``.
- ``recommendations``: top-K unseen items per user from the best model, with raw reviewer ids/ASINs.

The work happens in ``convrec_dagster.data.evaluation_steps`` (each asset's work, start to end),
which calls ``convrec_dagster.data.evaluation`` (checkpoints, tables, checks), ``models.evaluate``
(ranking), ``models.metrics`` (numbers) and ``convrec_dagster.data.report`` (tables, plots, HTML);
these assets read their config, call it, run their checks and return the metadata.
"""

from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource

from convrec_dagster.checks import blocking_checks, failures, metadata_values, run_checks
from convrec_dagster.data import evaluation_steps as steps
from convrec_dagster.data.evaluation import (
    evaluation_metrics_cover_trained_models,
    evaluation_metrics_in_unit_interval,
    recommendations_exclude_seen_items,
    recommendations_k_per_user,
)
from convrec_dagster.resources import DUCKDB_POOL, DUCKDB_TAGS, ConvRecPaths, TorchDevice
from models.metrics import DEFAULT_KS, PROTOCOLS, SPLITS
from models.registry import MODELS

TRAINING_ASSETS = [m.asset_name for m in MODELS]


# --- evaluation_metrics ----------------------------------------------------------------------------


class EvaluationConfig(dg.Config):
    """Which numbers to compute.

    ``models``: names to evaluate (empty: every model with a ``best.pt``). ``precision``: ``fp32``
    scores in full precision, so that bf16 rounding cannot create ties between candidates (ties cost
    a model rank); ``auto`` follows the torch_device resource. ``n_boot``: bootstrap resamples for
    the 95 % intervals of HR@10 and NDCG@10. ``n_perm``: sign flips of the paired permutation test
    that compares ConvRec with every other model on the same users (test NDCG@10). ``ties``:
    ``expected`` spreads the positive's rank uniformly over the candidates scored like it (a
    constant model gets HR@10 = 10/101 on sampled_100); ``pessimistic`` ranks it after all of them
    (HR@10 = 0 for that model).
    """

    models: list[str] = []
    protocols: list[str] = list(PROTOCOLS)
    splits: list[str] = list(SPLITS)
    ks: list[int] = list(DEFAULT_KS)
    n_boot: int = 1000
    n_perm: int = 10_000
    seed: int = 0
    batch_size: int = 256
    precision: Literal["fp32", "auto"] = "fp32"
    ties: Literal["expected", "pessimistic"] = "expected"


@dg.asset(
    group_name="evaluation",
    kinds={"duckdb", "pytorch"},
    deps=TRAINING_ASSETS,
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks(
        "evaluation_metrics", evaluation_metrics_in_unit_interval, evaluation_metrics_cover_trained_models
    ),
)
def evaluation_metrics(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    duckdb: DuckDBResource,
    paths: ConvRecPaths,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    """HR@k and NDCG@k (k = 1, 5, 10, 20) and MRR of every trained model, under the sampled_100
    protocol (the positive against its 100 stored negatives, as in the paper) and the full protocol
    (all items, the user's history masked), on the test and validation splits, for all users, the
    20 % with the longest histories and the other 80 %; 95 % bootstrap intervals over users for
    HR@10 and NDCG@10. Long format, one row per number: `evaluation_metrics(model, protocol, split,
    metric, k, user_group, value, ci_low, ci_high, run_id, evaluated_at, n_users)`. Rows of the
    models evaluated are replaced; rows of other models stay. Per-user test HR@10 / NDCG@10 go to
    `evaluation_user_metrics`, and `evaluation_comparisons` holds ConvRec against every other model:
    the difference in test NDCG@10 on the same users, its 95 % interval and the p-value of a paired
    permutation test (a claim of "better" needs p < 0.05)."""
    from models.evaluate import EvalSettings

    home = paths.home_path()
    precision = torch_device.effective_precision() if config.precision == "auto" else config.precision
    eval_settings = EvalSettings(
        tuple(config.protocols),
        tuple(config.splits),
        tuple(config.ks),
        config.batch_size,
        precision,
        config.n_boot,
        config.seed,
        config.ties,
    )
    with failures():
        checkpoints = steps.select_checkpoints(home, config.models, config.protocols, config.splits)
        evaluation = steps.evaluate_models(
            duckdb.get_connection,
            checkpoints,
            eval_settings,
            torch_device.torch_device,
            torch_device.describe(),
            context.run_id,
            context.log.info,
        )
    with duckdb.get_connection() as conn:
        result = steps.write_evaluation(conn, evaluation, home, context.run_id, config.n_perm, config.seed)
        check_results = run_checks([evaluation_metrics_in_unit_interval], conn) + run_checks(
            [evaluation_metrics_cover_trained_models], conn, result.trained, config.protocols, config.splits
        )
    return dg.MaterializeResult(
        metadata=metadata_values(
            result.metadata(),
            md=("test_headline",),
            json=(
                "models",
                "data_info",
                "data_features_per_model",
                "settings",
                "seconds_per_model",
                "test_metrics",
                "comparisons",
            ),
        ),
        check_results=check_results,
    )


# --- evaluation_report -----------------------------------------------------------------------------


class EvaluationReportConfig(dg.Config):
    """``paper_dataset``: whose published numbers to show beside ours: ``auto`` (recognised by the
    dataset's size), ``none``, or one of Beauty, Games, Fashion, Men, S3-Rec Beauty."""

    paper_dataset: str = "auto"


def _latest_metadata(context: dg.AssetExecutionContext, key: str) -> dict:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def run_warnings(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """Every warning (or worse) a step of the run logged, in order, as ``{"step", "message"}``."""
    import logging

    out = []
    for entry in instance.all_logs(run_id):
        if entry.level >= logging.WARNING and entry.dagster_event is None and entry.user_message:
            out.append({"step": entry.step_key, "message": entry.user_message})
    return out


@dg.asset(
    group_name="evaluation",
    kinds={"duckdb", "python"},
    deps=["evaluation_metrics"],
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    duckdb: DuckDBResource,
    paths: ConvRecPaths,
) -> dg.MaterializeResult:
    """The evaluation report users read and cite: models x metrics under both protocols (best in
    bold, 95 % intervals), the paper's published numbers when the dataset is one of the paper's,
    plots (metric by k, metric by user group, training curves), the data summary and the config.
    Also: paired tests of ConvRec against every other model, a training table (parameters, best
    epoch, training time), ingest and quarantine counts, and every warning of the run. Shown here as
    markdown; written to `artifacts/reports/evaluation_report.html` (standalone) and
    `evaluation_report.json` (the same content as data)."""
    with failures():
        report = steps.write_evaluation_report(
            duckdb.get_connection,
            paths.home_path(),
            metrics_metadata=_latest_metadata(context, "evaluation_metrics"),
            image_metadata=_latest_metadata(context, "item_image_features"),
            dataset_name=lambda conn: paths.dataset(conn).name,
            run_warnings=lambda: run_warnings(context.instance, context.run_id),
            paper_dataset=config.paper_dataset,
            run_id=context.run_id,
            log=context.log.info,
            warn=context.log.warning,
        )
    return dg.MaterializeResult(
        metadata=metadata_values(
            report.metadata(), md=("report", "findings"), json=("models",), path=("html", "json")
        )
    )


# --- recommendations -------------------------------------------------------------------------------


class RecommendationsConfig(dg.Config):
    """``k``: items per user. ``model``: which model recommends (empty: the best by *validation*
    NDCG@10 under ``selection_protocol`` in `evaluation_metrics`, else the validation score kept in
    each checkpoint; never chosen on test; or one of the model names)."""

    k: int = 10
    model: str = ""
    selection_protocol: str = "sampled_100"
    batch_size: int = 256


@dg.asset(
    group_name="evaluation",
    kinds={"duckdb", "pytorch"},
    deps=["evaluation_metrics"],
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks(
        "recommendations", recommendations_exclude_seen_items, recommendations_k_per_user
    ),
)
def recommendations(
    context: dg.AssetExecutionContext,
    config: RecommendationsConfig,
    duckdb: DuckDBResource,
    paths: ConvRecPaths,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    """Top-K items per user from the model with the best *validation* NDCG@10 (never chosen on
    test), never an item the user already has, ready for a serving system: `recommendations(user_id,
    rank, item_id, score, model, run_id, user_idx, item_idx, generated_at)`; `user_id` is the raw
    reviewer id, `item_id` the raw ASIN (`user_idx` / `item_idx`: the pipeline's indices), `rank`
    counts from 1. The table is replaced on every run. For a history that is not in the data, use
    `convrec_dagster.recommend` (Python API and CLI)."""
    from convrec_dagster.recommend import choose_model

    with failures():
        top = steps.recommend(
            duckdb.get_connection,
            paths.home_path(),
            k=config.k,
            model=config.model,
            selection_protocol=config.selection_protocol,
            batch_size=config.batch_size,
            device=torch_device.torch_device,
            device_name=torch_device.describe(),
            choose_model=choose_model,
            log=context.log.info,
            warn=context.log.warning,
        )
    with duckdb.get_connection() as conn:
        with failures():
            result = steps.write_top_k(conn, top, context.run_id)
        check_results = run_checks([recommendations_exclude_seen_items], conn) + run_checks(
            [recommendations_k_per_user], conn, config.k
        )
    return dg.MaterializeResult(
        metadata=metadata_values(result.metadata(), md=("sample",)), check_results=check_results
    )
