"""Evaluation: the metrics table, the report, and the recommendations a serving system reads.

- ``evaluation_metrics``: every trained model under both protocols (sampled_100, full), on the test
  and validation splits, per user group, one DuckDB row per number.
- ``evaluation_report``: comparison tables, published numbers, plots, data summary; markdown in the
  UI and ``artifacts/reports/evaluation_report.{html,json}``.
- ``recommendations``: top-K unseen items per user from the best model, with raw reviewer ids/ASINs.

The work happens in ``convrec_dagster.data.evaluation`` (checkpoints, tables, checks),
``models.evaluate`` (ranking), ``models.metrics`` (numbers) and ``convrec_dagster.data.report``
(tables, plots, HTML); these assets read their config, call them, and return the metadata.
"""

import json
import time
from datetime import UTC, datetime
from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource

from convrec_dagster.checks import blocking_checks, failures, run_checks
from convrec_dagster.data import evaluation as ev
from convrec_dagster.data import report as report_lib
from convrec_dagster.data import settings
from convrec_dagster.data.evaluation import (
    DataCache,
    evaluation_metrics_cover_trained_models,
    evaluation_metrics_in_unit_interval,
    recommendations_exclude_seen_items,
    recommendations_k_per_user,
    trained_models,
)
from convrec_dagster.data.tables import require_tables
from convrec_dagster.resources import DUCKDB_POOL, DUCKDB_TAGS, ConvRecPaths, TorchDevice
from models.metrics import DEFAULT_KS, PROTOCOLS, SPLITS
from models.registry import MODEL_NAMES, MODELS

TRAINING_ASSETS = [m.asset_name for m in MODELS]


def _json_ready(info: dict) -> dict:
    return json.loads(json.dumps(info, default=str))


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


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


def _checkpoints(config: EvaluationConfig, paths: ConvRecPaths) -> dict:
    bad = [p for p in config.protocols if p not in PROTOCOLS] + [s for s in config.splits if s not in SPLITS]
    unknown = [m for m in config.models if m not in MODEL_NAMES]
    if bad or unknown:
        raise dg.Failure(
            f"unknown protocol/split {bad} or model {unknown} in config; protocols are {list(PROTOCOLS)}, "
            f"splits {list(SPLITS)}, models {list(MODEL_NAMES)}"
        )
    checkpoints = trained_models(paths.home_path())
    where = settings.models_dir(paths.home_path())
    if config.models:
        missing = [m for m in config.models if m not in checkpoints]
        if missing:
            raise dg.Failure(f"no best.pt for {missing} under {where}: train them first")
        checkpoints = {m: checkpoints[m] for m in config.models}
    if not checkpoints:
        raise dg.Failure(
            f"no trained model found (no best.pt for any of {list(MODEL_NAMES)} under "
            f"{where}). Materialize the training assets first."
        )
    return checkpoints


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

    checkpoints = _checkpoints(config, paths)
    cache = DataCache(duckdb.get_connection)
    device = torch_device.torch_device
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
        data = cache.get("auto")
        context.log.info(
            f"evaluating {list(checkpoints)} on {int(data.is_eval_user.sum()):,} users x {data.n_items:,} items "
            f"({torch_device.describe()}, {precision}); data fingerprint {data.info.get('fingerprint')}"
        )
        evaluated_at = _now()
        user_frames: list = []
        rows, timings, data_info = ev.evaluate_checkpoints(
            cache,
            checkpoints,
            eval_settings,
            device,
            context.run_id,
            evaluated_at,
            context.log.info,
            user_frames,
        )
    with duckdb.get_connection() as conn:
        total = ev.write_metrics(conn, rows, list(checkpoints))
        ev.write_user_metrics(conn, user_frames, list(checkpoints))
        comparisons = ev.write_comparisons(
            conn,
            list(trained_models(paths.home_path())),
            context.run_id,
            evaluated_at,
            config.n_perm,
            config.seed,
        )
        check_results = run_checks([evaluation_metrics_in_unit_interval], conn) + run_checks(
            [evaluation_metrics_cover_trained_models],
            conn,
            sorted(trained_models(paths.home_path())),
            config.protocols,
            config.splits,
        )

    clean = [{**r, "evaluated_at": str(r["evaluated_at"])} for r in rows]
    headline = report_lib.comparison_table(clean, report_lib.HEADLINE)
    return dg.MaterializeResult(
        metadata={
            "models": dg.MetadataValue.json(list(checkpoints)),
            "rows_written": len(rows),
            "rows_in_table": int(total),
            "eval_users": int(data.is_eval_user.sum()),
            "items": int(data.n_items),
            "data_fingerprint": str(data.info.get("fingerprint")),
            "data_info": dg.MetadataValue.json(_json_ready(data.info)),
            "data_features_per_model": dg.MetadataValue.json(
                {m: i.get("features") for m, i in data_info.items()}
            ),
            "device": torch_device.describe(),
            "precision": precision,
            "settings": dg.MetadataValue.json(
                {
                    "n_boot": config.n_boot,
                    "seed": config.seed,
                    "ks": list(config.ks),
                    "ties": config.ties,
                    "precision": precision,
                    "device": torch_device.describe(),
                }
            ),
            "seconds_per_model": dg.MetadataValue.json(timings),
            "test_headline": dg.MetadataValue.md(report_lib.headline_markdown(headline)),
            "test_metrics": dg.MetadataValue.json(report_lib.headline_values(clean)),
            "comparisons": dg.MetadataValue.json(
                _json_ready(
                    [{k: v for k, v in c.items() if k not in ("run_id", "evaluated_at")} for c in comparisons]
                )
            ),
        },
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
    metrics_metadata = _latest_metadata(context, "evaluation_metrics")
    image_metadata = _latest_metadata(context, "item_image_features")
    home = paths.home_path()
    with duckdb.get_connection() as conn, failures():
        require_tables(conn, "evaluation_metrics", hint="Materialize `evaluation_metrics` first.")
        rows = ev.read_metric_rows(conn)
        summary = ev.data_summary(conn, image_metadata, metrics_metadata, paths.dataset(conn).name)
        comparisons = ev.read_comparisons(conn)
    if not rows:
        raise dg.Failure(
            "`evaluation_metrics` is empty: materialize it (with at least one trained model) first"
        )
    models = report_lib.ordered_models(r["model"] for r in rows)
    if not image_metadata:
        context.log.warning(
            "no materialization of item_image_features recorded: the report says the image "
            "weights are 'unknown'"
        )
    with failures():
        histories = ev.histories(home, models)
    model_configs = ev.model_configs(home, models)
    warnings = run_warnings(context.instance, context.run_id)
    report = report_lib.build_report(
        rows,
        data_summary=summary,
        histories=histories,
        comparisons=comparisons,
        model_configs=model_configs,
        warnings=warnings,
        config={
            "models": model_configs,
            "evaluation": metrics_metadata.get("settings")
            or "unknown (no materialization of evaluation_metrics recorded)",
            "report": {"paper_dataset": config.paper_dataset},
        },
        run_id=context.run_id,
        generated_at=_now().isoformat(timespec="seconds") + "Z",
        paper_dataset=config.paper_dataset,
    )
    plots = report_lib.render_plots(report)
    written = report_lib.write_report(report, paths.artifacts_path("reports"), plots)
    context.log.info(f"report written to {written['html']} and {written['json']}")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(report_lib.render_markdown(report, plots)),
            "html": dg.MetadataValue.path(str(written["html"])),
            "json": dg.MetadataValue.path(str(written["json"])),
            "models": dg.MetadataValue.json(models),
            "best_model": str(report["best_model"]),
            "paper_dataset": str(report["paper"]["dataset"]),
            "findings": dg.MetadataValue.md("\n".join(f"- {line}" for line in report["findings"])),
            "warnings_in_run": len(warnings),
        }
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


def _recommending_model(
    config: RecommendationsConfig, paths: ConvRecPaths, rows: list[dict], checkpoints: dict
) -> tuple[str, str]:
    """(model name, why): named in config, else the best on validation (never on test: picking by
    test NDCG@10 would leak the test split); the same rule as ``convrec_dagster.recommend``."""
    from convrec_dagster.recommend import choose_model

    if config.model:
        return config.model, "named in config"
    evaluated = sorted({r["model"] for r in rows if r["model"] in checkpoints})
    configs = ev.model_configs(paths.home_path(), evaluated)
    valid = {m: (c.get("valid") or {}).get("NDCG@10") for m, c in configs.items()}
    name, why = choose_model(rows, evaluated, valid, config.selection_protocol)
    if name is None:
        raise dg.Failure(
            "no model to recommend with: `evaluation_metrics` has no row of a trained model; "
            "materialize it first"
        )
    return name, why


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
    from models.evaluate import recommend_top_k
    from models.registry import load_model

    if config.k < 1:
        raise dg.Failure(f"recommendations: k must be at least 1, not {config.k}")
    checkpoints = trained_models(paths.home_path())
    with duckdb.get_connection() as conn:
        rows = ev.read_metric_rows(conn)
    name, why = _recommending_model(config, paths, rows, checkpoints)
    if name not in checkpoints:
        raise dg.Failure(
            f"model `{name}` has no best.pt under {settings.models_dir(paths.home_path())}; train it first"
        )
    with failures():
        data = DataCache(duckdb.get_connection).for_checkpoint(name, checkpoints[name])
    if config.k > data.n_items - 1:
        raise dg.Failure(f"k = {config.k} but the catalogue has only {data.n_items} items; lower k")
    device = torch_device.torch_device
    model, _ = load_model(checkpoints[name], data, map_location=device)
    context.log.info(f"recommending top {config.k} with {name}: {why} ({torch_device.describe()})")
    started = time.perf_counter()
    users, items, scores = recommend_top_k(model, data, config.k, device, batch_size=config.batch_size)
    seconds = time.perf_counter() - started
    frame, dropped = ev.top_k_frame(users, items, scores)
    if dropped:  # a user with fewer than k unseen items: -inf marks seen items, never recommend them
        context.log.warning(f"{dropped} slots dropped: their users have fewer than {config.k} unseen items")
    with duckdb.get_connection() as conn:
        with failures():
            written = ev.write_recommendations(conn, frame, name, context.run_id, _now())
        sample = ev.recommendations_sample(conn)
        check_results = run_checks([recommendations_exclude_seen_items], conn) + run_checks(
            [recommendations_k_per_user], conn, config.k
        )
    return dg.MaterializeResult(
        metadata={
            "model": name,
            "selected_by": why,
            "k": config.k,
            "users": len(users),
            "rows": int(written),
            "seconds": round(seconds, 2),
            "users_per_s": round(len(users) / max(seconds, 1e-9), 1),
            "device": torch_device.describe(),
            "sample": dg.MetadataValue.md(sample.to_markdown(index=False)),
        },
        check_results=check_results,
    )
