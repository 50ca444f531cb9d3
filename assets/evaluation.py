"""Evaluation: the metrics table, the report, and the recommendations a serving system reads.

- ``evaluation_metrics``: every trained model under both protocols (sampled_100, full), on the test
  and validation splits, per user group, one DuckDB row per number.
- ``evaluation_report``: comparison tables, published numbers, plots, data summary; markdown in the
  UI and ``artifacts/reports/evaluation_report.{html,json}``.
- ``recommendations``: top-K unseen items per user from the best model, with raw reviewer ids/ASINs.

The work happens in ``models.evaluate`` (ranking), ``models.metrics`` (numbers) and
``convrec_dagster.report`` (tables, plots, HTML); these assets read DuckDB, call them, write back.
"""

import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from convrec_dagster import report as report_lib
from convrec_dagster import settings
from convrec_dagster.checks import blocking_checks, run_checks
from convrec_dagster.duckdb_utils import table_exists as _table_exists
from convrec_dagster.resources import DUCKDB_POOL, DUCKDB_TAGS, ConvRecPaths, TorchDevice
from models.metrics import DEFAULT_KS, grouped_summary

TRAINING_ASSETS = ["popularity_model", "sasrec_model", "convrec_attention_model", "convrec_model"]
SPLIT_TABLES = ["sequences", "eval_negatives", "proxy_ids", "user_index", "item_index"]
PROTOCOLS = ("sampled_100", "full")
SPLITS = ("test", "valid")

METRICS_DDL = """
CREATE TABLE IF NOT EXISTS evaluation_metrics (
    model VARCHAR, protocol VARCHAR, split VARCHAR, metric VARCHAR, k INTEGER, user_group VARCHAR,
    value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, run_id VARCHAR, evaluated_at TIMESTAMP,
    n_users INTEGER
)"""
METRIC_COLUMNS = [
    "model", "protocol", "split", "metric", "k", "user_group", "value", "ci_low", "ci_high",
    "run_id", "evaluated_at", "n_users",
]
USER_METRICS_DDL = """
CREATE TABLE IF NOT EXISTS evaluation_user_metrics (
    model VARCHAR, protocol VARCHAR, split VARCHAR, user_idx INTEGER, hr10 DOUBLE, ndcg10 DOUBLE
)"""
COMPARISONS_DDL = """
CREATE OR REPLACE TABLE evaluation_comparisons (
    model VARCHAR, baseline VARCHAR, protocol VARCHAR, split VARCHAR, metric VARCHAR, n_users INTEGER,
    value_model DOUBLE, value_baseline DOUBLE, diff DOUBLE, ci_low DOUBLE, ci_high DOUBLE, p_value DOUBLE,
    n_perm INTEGER, verdict VARCHAR, run_id VARCHAR, evaluated_at TIMESTAMP
)"""
COMPARISON_COLUMNS = ["model", "baseline", "protocol", "split", "metric", "n_users", "value_model", "value_baseline",
                      "diff", "ci_low", "ci_high", "p_value", "n_perm", "verdict", "run_id", "evaluated_at"]
RECOMMENDATIONS_DDL = """
CREATE OR REPLACE TABLE recommendations (
    user_id VARCHAR, rank INTEGER, item_id VARCHAR, score DOUBLE, model VARCHAR, run_id VARCHAR,
    user_idx INTEGER, item_idx INTEGER, generated_at TIMESTAMP
)"""


def _json_ready(info: dict) -> dict:
    return json.loads(json.dumps(info, default=str))


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _require_tables(conn, *names: str, hint: str) -> None:
    missing = [n for n in names if not _table_exists(conn, n)]
    if missing:
        raise dg.Failure(f"DuckDB table(s) {', '.join(f'`{n}`' for n in missing)} missing. {hint}")


def _model_dir(paths: ConvRecPaths, name: str) -> Path:
    # the training assets write here via paths.artifacts_path("models", name), which also creates it
    return settings.artifacts_dir(paths.home_path()) / "models" / name


def trained_models(paths: ConvRecPaths) -> dict[str, Path]:
    """name -> best.pt of every model in MODEL_NAMES whose checkpoint exists."""
    from models.registry import MODEL_NAMES

    found = {}
    for name in MODEL_NAMES:
        checkpoint = _model_dir(paths, name) / "best.pt"
        if checkpoint.exists():
            found[name] = checkpoint
    return found


def _read_metric_rows(conn) -> list[dict]:
    if not _table_exists(conn, "evaluation_metrics"):
        return []
    frame = conn.execute(
        "SELECT * FROM evaluation_metrics ORDER BY model, protocol, split, user_group, metric, k"
    ).df()
    frame["evaluated_at"] = frame["evaluated_at"].astype(str)
    frame = frame.astype(object).where(frame.notna(), None)
    rows = frame.to_dict("records")
    for row in rows:
        if row["k"] is not None:
            row["k"] = int(row["k"])
        if row.get("n_users") is not None:
            row["n_users"] = int(row["n_users"])
    return rows


class DataCache:
    """RecData per feature choice, loaded once: a checkpoint names the data it was trained on by
    fingerprint, and the fingerprint covers the item features loaded (attributes, images)."""

    def __init__(self, duckdb: DuckDBResource):
        self.duckdb = duckdb
        self.loaded: dict[str, object] = {}

    def get(self, features: str):
        from convrec_dagster.dataset import load_rec_data

        if features not in self.loaded:
            with self.duckdb.get_connection() as conn:
                _require_tables(conn, *SPLIT_TABLES, hint="Materialize the splits assets first.")
                self.loaded[features] = load_rec_data(conn, features=features)
        return self.loaded[features]

    def for_checkpoint(self, name: str, path: Path):
        """The RecData whose fingerprint the checkpoint was trained on (Failure when none matches)."""
        import torch

        from convrec_dagster.recommend import checkpoint_fingerprint, data_for_checkpoint

        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        found = data_for_checkpoint(self.get, checkpoint)
        if found is not None:
            return found
        raise dg.Failure(
            f"model `{name}` ({path}) was trained on data with fingerprint {checkpoint_fingerprint(checkpoint)}, but the "
            f"prepared data in DuckDB has fingerprint {self.get('auto').info.get('fingerprint')} (with any feature "
            f"choice): its item indices no longer match. Re-materialize `{name}_model` (or run the `retrain` job) first."
        )


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


def evaluate_model(model, data, protocols, splits, ks, device, batch_size, precision, n_boot, seed, ties="expected", log=None,
                   per_user: dict | None = None) -> list[dict]:
    """Metric records (without model/run columns) of one model on every protocol and split.

    ``per_user``, when given, receives ``{(protocol, split): (users, HR@10, NDCG@10)}`` per user, for
    the paired tests between models."""
    from models.evaluate import rank_eval_users
    from models.metrics import per_user_metrics

    records = []
    for protocol in protocols:
        for split in splits:
            started = time.perf_counter()
            users, n_greater, n_equal = rank_eval_users(
                model, data, split, protocol, device, batch_size=batch_size, precision=precision
            )
            users = np.asarray(users, dtype=np.int64)
            lengths = data.user_ptr[users + 1] - data.user_ptr[users]
            found = grouped_summary(
                np.asarray(n_greater), np.asarray(n_equal), lengths, ks=tuple(ks), ties=ties, n_boot=n_boot, seed=seed
            )
            records += [{"protocol": protocol, "split": split, **r} for r in found]
            if per_user is not None:
                values = per_user_metrics(np.asarray(n_greater), np.asarray(n_equal), ks=(10,), ties=ties)
                per_user[(protocol, split)] = (users, values["HR@10"], values["NDCG@10"])
            if log is not None:
                ndcg = next(r["value"] for r in found if r["metric"] == "NDCG" and r["k"] == 10 and r["user_group"] == "all") if 10 in ks else float("nan")
                log(f"  {protocol}/{split}: {len(users):,} users, NDCG@10 {ndcg:.4f} ({time.perf_counter() - started:.1f} s)")
    return records


def evaluation_metrics_in_unit_interval(conn) -> dg.AssetCheckResult:
    """Every metric value and interval bound lies in [0, 1], and every interval holds its value."""
    bad = conn.execute(
        "SELECT model, protocol, split, metric, k, user_group, value, ci_low, ci_high FROM evaluation_metrics "
        "WHERE value IS NULL OR isnan(value) OR value < 0 OR value > 1 "
        "OR (ci_low IS NOT NULL AND (ci_low < 0 OR ci_high > 1 OR ci_low > value + 1e-12 OR ci_high < value - 1e-12))"
    ).df()
    total = conn.execute("SELECT count(*) FROM evaluation_metrics").fetchone()[0]
    return dg.AssetCheckResult(
        passed=bad.empty,
        metadata={"rows": int(total), "bad_rows": len(bad), "examples": dg.MetadataValue.md(bad.head(10).to_markdown(index=False) if len(bad) else "none")},
    )


def evaluation_metrics_cover_trained_models(
    conn, trained: list[str], protocols: Sequence[str] = PROTOCOLS, splits: Sequence[str] = ("test",)
) -> dg.AssetCheckResult:
    """Every model with a best.pt has rows under each evaluated protocol and split (by default both
    protocols, sampled_100 and full, on the test split)."""
    present = set(conn.execute("SELECT DISTINCT model, protocol, split FROM evaluation_metrics").fetchall())
    missing = [f"{m}/{p}/{s}" for m in trained for p in protocols for s in splits if (m, p, s) not in present]
    return dg.AssetCheckResult(
        passed=bool(trained) and not missing,
        metadata={"trained_models": dg.MetadataValue.json(trained), "missing": dg.MetadataValue.json(missing)},
    )


def paired_comparisons(per_user: pd.DataFrame, reference: str = "convrec", split: str = "test",
                       n_perm: int = 10_000, seed: int = 0) -> list[dict]:
    """``reference`` against every other model under each protocol: a paired permutation test of
    per-user NDCG@10 over the users both were evaluated on (rows of `evaluation_user_metrics`)."""
    from models.significance import paired_permutation_test, verdict

    out = []
    if per_user.empty:
        return out
    frame = per_user[per_user["split"] == split]
    for protocol in [p for p in PROTOCOLS if p in set(frame["protocol"])]:
        wide = frame[frame["protocol"] == protocol].pivot_table(index="user_idx", columns="model", values="ndcg10")
        if reference not in wide.columns:
            continue
        for other in report_lib.ordered_models(wide.columns):
            if other == reference:
                continue
            pair = wide[[reference, other]].dropna()
            if pair.empty:
                continue
            r = paired_permutation_test(pair[reference].to_numpy(), pair[other].to_numpy(), n_perm=n_perm, seed=seed)
            out.append({"model": reference, "baseline": other, "protocol": protocol, "split": split, "metric": "NDCG@10",
                        "n_users": r["n_users"], "value_model": r["mean_a"], "value_baseline": r["mean_b"],
                        "diff": r["diff"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"],
                        "n_perm": r["n_perm"], "verdict": verdict(r["p_value"], r["diff"])})
    return out


@dg.asset(
    group_name="evaluation",
    kinds={"duckdb", "pytorch"},
    deps=TRAINING_ASSETS,
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks("evaluation_metrics", evaluation_metrics_in_unit_interval,
                                evaluation_metrics_cover_trained_models),
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
    from models.registry import MODEL_NAMES, load_model

    bad = [p for p in config.protocols if p not in PROTOCOLS] + [s for s in config.splits if s not in SPLITS]
    unknown = [m for m in config.models if m not in MODEL_NAMES]
    if bad or unknown:
        raise dg.Failure(
            f"unknown protocol/split {bad} or model {unknown} in config; protocols are {list(PROTOCOLS)}, "
            f"splits {list(SPLITS)}, models {list(MODEL_NAMES)}"
        )
    checkpoints = trained_models(paths)
    if config.models:
        missing = [m for m in config.models if m not in checkpoints]
        if missing:
            raise dg.Failure(f"no best.pt for {missing} under {settings.artifacts_dir(paths.home_path()) / 'models'}: train them first")
        checkpoints = {m: checkpoints[m] for m in config.models}
    if not checkpoints:
        raise dg.Failure(
            f"no trained model found (no best.pt for any of {list(MODEL_NAMES)} under "
            f"{settings.artifacts_dir(paths.home_path()) / 'models'}). Materialize the training assets first."
        )

    cache = DataCache(duckdb)
    data = cache.get("auto")
    device = torch_device.torch_device
    precision = torch_device.effective_precision() if config.precision == "auto" else config.precision
    context.log.info(
        f"evaluating {list(checkpoints)} on {int(data.is_eval_user.sum()):,} users x {data.n_items:,} items "
        f"({torch_device.describe()}, {precision}); data fingerprint {data.info.get('fingerprint')}"
    )

    evaluated_at = _now()
    rows: list[dict] = []
    timings: dict[str, float] = {}
    data_info: dict[str, dict] = {}
    user_frames: list[pd.DataFrame] = []
    for name, path in checkpoints.items():
        started = time.perf_counter()
        model_data = cache.for_checkpoint(name, path)
        model, _ = load_model(path, model_data, map_location=device)
        context.log.info(f"{name}: {path} (data features {model_data.info.get('features')})")
        per_user: dict = {}
        records = evaluate_model(
            model, model_data, config.protocols, config.splits, config.ks, device, config.batch_size,
            precision, config.n_boot, config.seed, config.ties, log=context.log.info, per_user=per_user,
        )
        rows += [{"model": name, **r, "run_id": context.run_id, "evaluated_at": evaluated_at} for r in records]
        user_frames += [pd.DataFrame({"model": name, "protocol": protocol, "split": split, "user_idx": users.astype(np.int32),
                                      "hr10": hr, "ndcg10": ndcg})
                        for (protocol, split), (users, hr, ndcg) in per_user.items() if split == "test"]
        timings[name] = round(time.perf_counter() - started, 2)
        data_info[name] = model_data.info
        del model

    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    frame["k"] = frame["k"].astype("Int32")
    with duckdb.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        conn.execute(METRICS_DDL)
        conn.execute(
            f"DELETE FROM evaluation_metrics WHERE model IN ({', '.join('?' for _ in checkpoints)})",
            list(checkpoints),
        )
        conn.register("metric_rows", frame)
        conn.execute(f"INSERT INTO evaluation_metrics ({', '.join(METRIC_COLUMNS)}) SELECT {', '.join(METRIC_COLUMNS)} FROM metric_rows")
        conn.unregister("metric_rows")
        conn.execute(USER_METRICS_DDL)
        conn.execute(f"DELETE FROM evaluation_user_metrics WHERE model IN ({', '.join('?' for _ in checkpoints)})",
                     list(checkpoints))
        if user_frames:
            conn.register("user_rows", pd.concat(user_frames, ignore_index=True))
            conn.execute("INSERT INTO evaluation_user_metrics SELECT model, protocol, split, user_idx, hr10, ndcg10 FROM user_rows")
            conn.unregister("user_rows")
        conn.execute("COMMIT")
        total = conn.execute("SELECT count(*) FROM evaluation_metrics").fetchone()[0]
        # ConvRec against every other model on the same users, this run's models and earlier ones alike
        trained_now = sorted(trained_models(paths))
        stored = conn.execute("SELECT * FROM evaluation_user_metrics WHERE model IN "
                              f"({', '.join('?' for _ in trained_now)})", trained_now).df() if trained_now else pd.DataFrame()
        comparisons = [{**c, "run_id": context.run_id, "evaluated_at": evaluated_at}
                       for c in paired_comparisons(stored, n_perm=config.n_perm, seed=config.seed)]
        conn.execute("BEGIN TRANSACTION")
        conn.execute(COMPARISONS_DDL)
        if comparisons:
            conn.register("comparison_rows", pd.DataFrame(comparisons, columns=COMPARISON_COLUMNS))
            conn.execute(f"INSERT INTO evaluation_comparisons SELECT {', '.join(COMPARISON_COLUMNS)} FROM comparison_rows")
            conn.unregister("comparison_rows")
        conn.execute("COMMIT")
        check_results = (run_checks([evaluation_metrics_in_unit_interval], conn)
                         + run_checks([evaluation_metrics_cover_trained_models], conn, sorted(trained_models(paths)),
                                      config.protocols, config.splits))

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
            "data_features_per_model": dg.MetadataValue.json({m: i.get("features") for m, i in data_info.items()}),
            "device": torch_device.describe(),
            "precision": precision,
            "settings": dg.MetadataValue.json(
                {"n_boot": config.n_boot, "seed": config.seed, "ks": list(config.ks), "ties": config.ties,
                 "precision": precision, "device": torch_device.describe()}
            ),
            "seconds_per_model": dg.MetadataValue.json(timings),
            "test_headline": dg.MetadataValue.md(report_lib.headline_markdown(headline)),
            "test_metrics": dg.MetadataValue.json(report_lib.headline_values(clean)),
            "comparisons": dg.MetadataValue.json(_json_ready([{k: v for k, v in c.items() if k not in ("run_id", "evaluated_at")}
                                                              for c in comparisons])),
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


def ingest_counts(conn) -> dict:
    """Rows kept by each ingest table and the quarantined records by stage and reason."""
    counts: dict = {}
    for key, table in (("reviews_kept", "reviews"), ("items_with_metadata", "items"), ("interactions_after_filter", "interactions")):
        if _table_exists(conn, table):
            counts[key] = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    if _table_exists(conn, "quarantine"):
        rows = conn.execute("SELECT stage, reason, count(*) FROM quarantine GROUP BY stage, reason ORDER BY stage, 3 DESC").fetchall()
        counts["quarantined"] = int(sum(n for _, _, n in rows))
        counts["quarantine"] = [{"stage": stage, "reason": reason, "rows": int(n)} for stage, reason, n in rows]
    return counts


def run_warnings(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """Every warning (or worse) a step of the run logged, in order, as ``{"step", "message"}``."""
    import logging

    out = []
    for entry in instance.all_logs(run_id):
        if entry.level >= logging.WARNING and entry.dagster_event is None and entry.user_message:
            out.append({"step": entry.step_key, "message": entry.user_message})
    return out


def data_summary(conn, image_metadata: dict, metrics_metadata: dict, dataset_name: str) -> dict:
    """Sizes, features and provenance of the prepared data, from DuckDB (None where unknown)."""
    summary: dict = {"dataset": dataset_name}
    if _table_exists(conn, "user_index"):
        users, eval_users, avg_len, max_len = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE is_eval), avg(n_interactions), max(n_interactions) FROM user_index"
        ).fetchone()
        summary.update(users=int(users), eval_users=int(eval_users), avg_seq_len=float(avg_len or 0), max_seq_len=int(max_len or 0))
    if _table_exists(conn, "item_index"):
        summary["items"] = int(conn.execute("SELECT count(*) FROM item_index").fetchone()[0])
    if _table_exists(conn, "sequences"):
        n, with_ts = conn.execute("SELECT count(*), count(ts) FROM sequences").fetchone()
        summary["interactions"] = int(n)
        summary["time_context"] = bool(with_ts)
    if _table_exists(conn, "attribute_vocab"):
        summary["feature_kinds"] = dict(conn.execute("SELECT kind, count(*) FROM attribute_vocab GROUP BY kind ORDER BY kind").fetchall())
    if _table_exists(conn, "item_image_features"):
        summary["items_with_image"] = int(conn.execute("SELECT count(*) FILTER (WHERE has_image) FROM item_image_features").fetchone()[0])
    summary["ingest"] = ingest_counts(conn)
    pretrained = image_metadata.get("pretrained")
    summary["image_weights_pretrained"] = pretrained if isinstance(pretrained, bool) else None
    per_model = metrics_metadata.get("data_features_per_model")
    if isinstance(per_model, dict) and per_model:
        kinds = sorted(set(per_model.values()))
        summary["model_inputs"] = kinds[0] if len(kinds) == 1 else ", ".join(f"{m}: {f}" for m, f in per_model.items())
    summary["fingerprint"] = metrics_metadata.get("data_fingerprint")
    summary["device"] = metrics_metadata.get("device")
    return summary


def _histories(paths: ConvRecPaths, models: list[str]) -> dict[str, list[dict]]:
    out = {}
    for name in models:
        path = _model_dir(paths, name) / "history.json"
        if path.exists():
            try:
                history = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise dg.Failure(f"{path}: not valid JSON ({err}); re-materialize `{name}_model`") from err
            out[name] = history if isinstance(history, list) else history.get("epochs", [])
    return out


def _model_configs(paths: ConvRecPaths, models: list[str]) -> dict[str, dict]:
    """Hyper-parameters and provenance (best epoch, validation metrics, data fingerprint) per model."""
    import torch

    configs = {}
    for name in models:
        path = _model_dir(paths, name) / "best.pt"
        if path.exists():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            extra = checkpoint.get("extra") or {}
            configs[name] = {"hparams": checkpoint.get("hparams") or {}, **{k: v for k, v in extra.items() if k != "state_dict"}}
    return configs


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
    dataset_name = "embedded sample" if paths.is_embedded_sample() else paths.raw_path().name
    with duckdb.get_connection() as conn:
        _require_tables(conn, "evaluation_metrics", hint="Materialize `evaluation_metrics` first.")
        rows = _read_metric_rows(conn)
        summary = data_summary(conn, image_metadata, metrics_metadata, dataset_name)
        comparisons = []
        if _table_exists(conn, "evaluation_comparisons"):
            comparisons = [{k: v for k, v in c.items() if k != "evaluated_at"}
                           for c in conn.execute("SELECT * FROM evaluation_comparisons").df().to_dict("records")]
    if not rows:
        raise dg.Failure("`evaluation_metrics` is empty: materialize it (with at least one trained model) first")
    models = report_lib.ordered_models(r["model"] for r in rows)
    if not image_metadata:
        context.log.warning("no materialization of item_image_features recorded: the report says the image weights are 'unknown'")
    model_configs = _model_configs(paths, models)
    warnings = run_warnings(context.instance, context.run_id)
    report = report_lib.build_report(
        rows,
        data_summary=summary,
        histories=_histories(paths, models),
        comparisons=comparisons,
        model_configs=model_configs,
        warnings=warnings,
        config={
            "models": model_configs,
            "evaluation": metrics_metadata.get("settings") or "unknown (no materialization of evaluation_metrics recorded)",
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


def recommendations_exclude_seen_items(conn) -> dg.AssetCheckResult:
    """No recommended item is one the user already interacted with (training, validation or test)."""
    seen = conn.execute(
        "SELECT r.user_id, r.rank, r.item_id FROM recommendations r "
        "JOIN sequences s ON s.user_idx = r.user_idx AND s.item_idx = r.item_idx LIMIT 20"
    ).df()
    total = conn.execute("SELECT count(*) FROM recommendations").fetchone()[0]
    return dg.AssetCheckResult(
        passed=seen.empty and total > 0,
        metadata={"rows": int(total), "seen_items_recommended": len(seen),
                  "examples": dg.MetadataValue.md(seen.to_markdown(index=False) if len(seen) else "none")},
    )


def recommendations_k_per_user(conn, k: int) -> dg.AssetCheckResult:
    """Every user in `user_index` has exactly K rows, ranks 1..K, K distinct items, scores not increasing."""
    per_user = conn.execute(
        """
        SELECT user_idx, count(*) AS n, count(DISTINCT item_idx) AS n_items, min(rank) AS lo, max(rank) AS hi,
               bool_and(score_ok) AS sorted
        FROM (SELECT *, coalesce(score <= lag(score) OVER (PARTITION BY user_idx ORDER BY rank), true) AS score_ok
              FROM recommendations)
        GROUP BY user_idx
        """
    ).df()
    users = conn.execute("SELECT count(*) FROM user_index").fetchone()[0]
    wrong = per_user[(per_user.n != k) | (per_user.n_items != k) | (per_user.lo != 1) | (per_user.hi != k) | ~per_user.sorted.astype(bool)]
    return dg.AssetCheckResult(
        passed=wrong.empty and len(per_user) == users,
        metadata={"k": int(k), "users_with_recommendations": len(per_user), "users": int(users),
                  "users_with_wrong_lists": len(wrong)},
    )


@dg.asset(
    group_name="evaluation",
    kinds={"duckdb", "pytorch"},
    deps=["evaluation_metrics"],
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks("recommendations", recommendations_exclude_seen_items, recommendations_k_per_user),
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
    checkpoints = trained_models(paths)
    with duckdb.get_connection() as conn:
        rows = _read_metric_rows(conn)
    if config.model:
        name, why = config.model, "named in config"
    else:
        # chosen on validation, never on test: picking by test NDCG@10 would leak the test split
        from convrec_dagster.recommend import choose_model

        evaluated = sorted({r["model"] for r in rows if r["model"] in checkpoints})
        valid = {m: (c.get("valid") or {}).get("NDCG@10") for m, c in _model_configs(paths, evaluated).items()}
        name, why = choose_model(rows, evaluated, valid, config.selection_protocol)
    if name is None:
        raise dg.Failure("no model to recommend with: `evaluation_metrics` has no row of a trained model; materialize it first")
    if name not in checkpoints:
        raise dg.Failure(f"model `{name}` has no best.pt under {settings.artifacts_dir(paths.home_path()) / 'models'}; train it first")
    data = DataCache(duckdb).for_checkpoint(name, checkpoints[name])
    if config.k > data.n_items - 1:
        raise dg.Failure(f"k = {config.k} but the catalogue has only {data.n_items} items; lower k")
    device = torch_device.torch_device
    model, _ = load_model(checkpoints[name], data, map_location=device)
    context.log.info(f"recommending top {config.k} with {name}: {why}")
    started = time.perf_counter()
    users, items, scores = recommend_top_k(model, data, config.k, device, batch_size=config.batch_size)
    users, items, scores = np.asarray(users), np.asarray(items), np.asarray(scores, dtype=np.float64)
    seconds = time.perf_counter() - started
    frame = pd.DataFrame(
        {
            "user_idx": np.repeat(users, items.shape[1]).astype(np.int32),
            "rank": np.tile(np.arange(1, items.shape[1] + 1), len(users)).astype(np.int32),
            "item_idx": items.reshape(-1).astype(np.int32),
            "score": scores.reshape(-1),
        }
    )
    masked = ~np.isfinite(frame["score"].to_numpy()) & (frame["score"].to_numpy() < 0)
    if masked.any():  # a user with fewer than k unseen items: -inf marks seen items, never recommend them
        context.log.warning(f"{int(masked.sum())} slots dropped: their users have fewer than {config.k} unseen items")
        frame = frame[~masked]
    generated_at = _now()
    with duckdb.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        conn.execute(RECOMMENDATIONS_DDL)
        conn.register("top_k", frame)
        conn.execute(
            "INSERT INTO recommendations SELECT u.user_id, t.rank, i.item_id, t.score, ?, ?, "
            "t.user_idx, t.item_idx, ? FROM top_k t JOIN user_index u USING (user_idx) JOIN item_index i USING (item_idx) "
            "ORDER BY t.user_idx, t.rank",
            [name, context.run_id, generated_at],
        )
        conn.unregister("top_k")
        written = conn.execute("SELECT count(*) FROM recommendations").fetchone()[0]
        if written != len(frame):
            conn.execute("ROLLBACK")
            raise dg.Failure(
                f"{len(frame) - written} recommendation rows name a user_idx or item_idx absent from "
                "user_index/item_index: the model and the prepared data disagree; retrain the model"
            )
        conn.execute("COMMIT")
        sample = conn.execute(
            "SELECT user_id, rank, item_id, round(score, 4) AS score FROM recommendations "
            "WHERE user_idx = (SELECT min(user_idx) FROM recommendations) ORDER BY rank"
        ).df()
        check_results = (run_checks([recommendations_exclude_seen_items], conn)
                         + run_checks([recommendations_k_per_user], conn, config.k))
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
