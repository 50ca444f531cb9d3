"""The evaluation stage's data work (no Dagster): trained checkpoints, the `evaluation_metrics` and
`recommendations` tables, the report's inputs, and the checks of both tables.

``evaluation_steps.py`` puts them together for the assets in ``assets/evaluation.py``.
Ranking and metrics are in ``models.evaluate`` / ``models.metrics``; report rendering in ``report.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd

from convrec_dagster.data import settings
from convrec_dagster.data.outcome import CheckOutcome, Markdown, examples_markdown
from convrec_dagster.data.tables import DataError, require_tables, table_exists, transaction
from models.data import RecData
from models.metrics import PROTOCOLS
from models.registry import MODEL_NAMES

if TYPE_CHECKING:
    from models.evaluate import EvalSettings

SPLIT_TABLES = ["sequences", "eval_negatives", "proxy_ids", "user_index", "item_index"]
METRICS_DDL = """
CREATE TABLE IF NOT EXISTS evaluation_metrics (
    model VARCHAR, protocol VARCHAR, split VARCHAR, metric VARCHAR, k INTEGER, user_group VARCHAR,
    value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, run_id VARCHAR, evaluated_at TIMESTAMP,
    n_users INTEGER
)"""
METRIC_COLUMNS = [
    "model", "protocol", "split", "metric", "k", "user_group", "value", "ci_low", "ci_high",
    "run_id", "evaluated_at", "n_users",
]  # fmt: skip
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
COMPARISON_COLUMNS = [
    "model", "baseline", "protocol", "split", "metric", "n_users", "value_model", "value_baseline",
    "diff", "ci_low", "ci_high", "p_value", "n_perm", "verdict", "run_id", "evaluated_at",
]  # fmt: skip
RECOMMENDATIONS_DDL = """
CREATE OR REPLACE TABLE recommendations (
    user_id VARCHAR, rank INTEGER, item_id VARCHAR, score DOUBLE, model VARCHAR, run_id VARCHAR,
    user_idx INTEGER, item_idx INTEGER, generated_at TIMESTAMP
)"""


# --- checkpoints -------------------------------------------------------------------------------------


def trained_models(home: Path) -> dict[str, Path]:
    """name -> best.pt of every model in MODEL_NAMES whose checkpoint exists."""
    found = {}
    for name in MODEL_NAMES:
        checkpoint = settings.model_dir(home, name) / "best.pt"
        if checkpoint.exists():
            found[name] = checkpoint
    return found


def protocol_checkpoints(best: Path, protocols: Sequence[str]) -> dict[Path, tuple[str, ...]]:
    """Which checkpoint scores which protocol: the sampled-100 figures come from ``best_sampled_100.pt``
    where training kept one (the epoch its own validation picked, under ``valid_protocol: full``;
    ``models.train``), every other protocol from ``best.pt``."""
    from models.train import SAMPLED_BEST

    sampled = best.with_name(SAMPLED_BEST)
    if "sampled_100" not in protocols or not sampled.is_file():
        return {best: tuple(protocols)}
    rest = tuple(p for p in protocols if p != "sampled_100")
    return {sampled: ("sampled_100",), **({best: rest} if rest else {})}


class DataCache:
    """RecData per feature choice, loaded once: a checkpoint names the data it was trained on by
    fingerprint, and the fingerprint covers the item features loaded (attributes, images).
    ``connect`` opens a DuckDB connection (a context manager)."""

    def __init__(self, connect):
        self.connect = connect
        self.loaded: dict[str, RecData] = {}

    def get(self, features: str) -> RecData:
        from convrec_dagster.data.dataset import load_rec_data

        if features not in self.loaded:
            with self.connect() as conn:
                require_tables(conn, *SPLIT_TABLES, hint="Materialize the splits assets first.")
                self.loaded[features] = load_rec_data(conn, features=features)
        return self.loaded[features]

    def for_checkpoint(self, name: str, path: Path) -> RecData:
        """The RecData whose fingerprint the checkpoint was trained on (DataError when none matches)."""
        import torch

        from convrec_dagster.data.dataset import checkpoint_fingerprint, data_for_checkpoint

        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        found = data_for_checkpoint(self.get, checkpoint)
        if found is not None:
            return found
        raise DataError(
            f"model `{name}` ({path}) was trained on data with fingerprint {checkpoint_fingerprint(checkpoint)}, "
            f"but the prepared data in DuckDB has fingerprint {self.get('auto').info.get('fingerprint')} (with any "
            f"feature choice): its item indices no longer match. Re-materialize `{name}_model` (or run the "
            "`retrain` job) first."
        )


def histories(home: Path, models: list[str]) -> dict[str, list[dict]]:
    """Each model's training history (history.json), where there is one."""
    out = {}
    for name in models:
        path = settings.model_dir(home, name) / "history.json"
        if path.exists():
            try:
                history = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: not valid JSON ({err}); re-materialize `{name}_model`") from err
            out[name] = history if isinstance(history, list) else history.get("epochs", [])
    return out


def model_configs(home: Path, models: list[str]) -> dict[str, dict]:
    """Hyper-parameters and provenance (best epoch, validation metrics, data fingerprint) per model. The
    checkpoints are memory-mapped (``mmap=True``): only their small metadata is read, not the weights."""
    import torch

    configs = {}
    for name in models:
        path = settings.model_dir(home, name) / "best.pt"
        if path.exists():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            extra = checkpoint.get("extra") or {}
            configs[name] = {
                "hparams": checkpoint.get("hparams") or {},
                **{k: v for k, v in extra.items() if k != "state_dict"},
            }
            sampled = next(iter(protocol_checkpoints(path, ("sampled_100",))))
            if sampled != path:  # the sampled-100 figures come from the epoch their own validation picked
                picked = (
                    torch.load(sampled, map_location="cpu", weights_only=True, mmap=True).get("extra") or {}
                )
                configs[name]["sampled_100_epoch"] = picked.get("epoch")
    return configs


# --- evaluation_metrics ----------------------------------------------------------------------------


def write_metrics(conn: duckdb.DuckDBPyConnection, rows: list[dict], models: Sequence[str]) -> int:
    """Replace the rows of ``models`` in `evaluation_metrics` with ``rows``; returns the table's size."""
    frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    frame["k"] = frame["k"].astype("Int32")
    with transaction(conn):
        conn.execute(METRICS_DDL)
        conn.execute(
            f"DELETE FROM evaluation_metrics WHERE model IN ({', '.join('?' for _ in models)})", list(models)
        )
        conn.register("metric_rows", frame)
        columns = ", ".join(METRIC_COLUMNS)
        conn.execute(f"INSERT INTO evaluation_metrics ({columns}) SELECT {columns} FROM metric_rows")
        conn.unregister("metric_rows")
    return int(conn.execute("SELECT count(*) FROM evaluation_metrics").fetchone()[0])


def write_user_metrics(
    conn: duckdb.DuckDBPyConnection, frames: list[pd.DataFrame], models: Sequence[str]
) -> None:
    """Replace the per-user test HR@10 / NDCG@10 of ``models`` in `evaluation_user_metrics`."""
    with transaction(conn):
        conn.execute(USER_METRICS_DDL)
        conn.execute(
            f"DELETE FROM evaluation_user_metrics WHERE model IN ({', '.join('?' for _ in models)})",
            list(models),
        )
        if frames:
            conn.register("user_rows", pd.concat(frames, ignore_index=True))
            conn.execute(
                "INSERT INTO evaluation_user_metrics SELECT model, protocol, split, user_idx, hr10, ndcg10 FROM user_rows"
            )
            conn.unregister("user_rows")


def paired_comparisons(
    per_user: pd.DataFrame,
    reference: str = "convrec",
    split: str = "test",
    n_perm: int = 10_000,
    seed: int = 0,
) -> list[dict]:
    """``reference`` against every other model under each protocol: a paired permutation test of
    per-user NDCG@10 over the users both were evaluated on (rows of `evaluation_user_metrics`)."""
    from convrec_dagster.data.report import ordered_models
    from models.significance import paired_permutation_test, verdict

    out: list[dict] = []
    if per_user.empty:
        return out
    frame = per_user[per_user["split"] == split]
    for protocol in [p for p in PROTOCOLS if p in set(frame["protocol"])]:
        wide = frame[frame["protocol"] == protocol].pivot_table(
            index="user_idx", columns="model", values="ndcg10"
        )
        if reference not in wide.columns:
            continue
        for other in ordered_models(wide.columns):
            if other == reference:
                continue
            pair = wide[[reference, other]].dropna()
            if pair.empty:
                continue
            r = paired_permutation_test(
                pair[reference].to_numpy(), pair[other].to_numpy(), n_perm=n_perm, seed=seed
            )
            out.append({
                "model": reference, "baseline": other, "protocol": protocol, "split": split, "metric": "NDCG@10",
                "n_users": r["n_users"], "value_model": r["mean_a"], "value_baseline": r["mean_b"],
                "diff": r["diff"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"],
                "n_perm": r["n_perm"], "verdict": verdict(r["p_value"], r["diff"]),
            })  # fmt: skip
    return out


def write_comparisons(
    conn: duckdb.DuckDBPyConnection,
    models: Sequence[str],
    run_id: str,
    evaluated_at: datetime,
    n_perm: int,
    seed: int,
) -> list[dict]:
    """ConvRec against every other trained model on the same users (this run's models and earlier
    ones alike) into `evaluation_comparisons`; returns the rows."""
    models = sorted(models)
    stored = (
        conn.execute(
            f"SELECT * FROM evaluation_user_metrics WHERE model IN ({', '.join('?' for _ in models)})", models
        ).df()
        if models and table_exists(conn, "evaluation_user_metrics")
        else pd.DataFrame()
    )
    comparisons = [
        {**c, "run_id": run_id, "evaluated_at": evaluated_at}
        for c in paired_comparisons(stored, n_perm=n_perm, seed=seed)
    ]
    with transaction(conn):
        conn.execute(COMPARISONS_DDL)
        if comparisons:
            conn.register("comparison_rows", pd.DataFrame(comparisons, columns=COMPARISON_COLUMNS))
            conn.execute(
                f"INSERT INTO evaluation_comparisons SELECT {', '.join(COMPARISON_COLUMNS)} FROM comparison_rows"
            )
            conn.unregister("comparison_rows")
    return comparisons


def read_comparisons(conn: duckdb.DuckDBPyConnection) -> list[dict]:
    if not table_exists(conn, "evaluation_comparisons"):
        return []
    rows = conn.execute("SELECT * FROM evaluation_comparisons").df().to_dict("records")
    return [{k: v for k, v in c.items() if k != "evaluated_at"} for c in rows]


def read_metric_rows(conn: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every row of `evaluation_metrics` as plain Python (timestamps as text), [] without the table."""
    if not table_exists(conn, "evaluation_metrics"):
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


def evaluation_metrics_in_unit_interval(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """Every metric value and interval bound lies in [0, 1], and every interval holds its value."""
    bad = conn.execute(
        "SELECT model, protocol, split, metric, k, user_group, value, ci_low, ci_high FROM evaluation_metrics "
        "WHERE value IS NULL OR isnan(value) OR value < 0 OR value > 1 OR (ci_low IS NOT NULL AND "
        "(ci_low < 0 OR ci_high > 1 OR ci_low > value + 1e-12 OR ci_high < value - 1e-12))"
    ).df()
    total = conn.execute("SELECT count(*) FROM evaluation_metrics").fetchone()[0]
    return CheckOutcome(
        bad.empty, metadata={"rows": int(total), "bad_rows": len(bad), "examples": examples_markdown(bad)}
    )


def evaluation_metrics_cover_trained_models(
    conn: duckdb.DuckDBPyConnection,
    trained: list[str],
    protocols: Sequence[str] = PROTOCOLS,
    splits: Sequence[str] = ("test",),
) -> CheckOutcome:
    """Every model with a best.pt has rows under each evaluated protocol and split (by default both
    protocols, sampled_100 and full, on the test split)."""
    present = set(conn.execute("SELECT DISTINCT model, protocol, split FROM evaluation_metrics").fetchall())
    missing = [f"{m}/{p}/{s}" for m in trained for p in protocols for s in splits if (m, p, s) not in present]
    return CheckOutcome(
        bool(trained) and not missing, metadata={"trained_models": list(trained), "missing": missing}
    )


# --- evaluation_report -----------------------------------------------------------------------------


def ingest_counts(conn: duckdb.DuckDBPyConnection) -> dict:
    """Rows kept by each ingest table and the quarantined records by stage and reason."""
    counts: dict = {}
    for key, table in (
        ("reviews_kept", "reviews"),
        ("items_with_metadata", "items"),
        ("interactions_after_filter", "interactions"),
    ):
        if table_exists(conn, table):
            counts[key] = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    if table_exists(conn, "quarantine"):
        rows = conn.execute(
            "SELECT stage, reason, count(*) FROM quarantine GROUP BY stage, reason ORDER BY stage, 3 DESC"
        ).fetchall()
        counts["quarantined"] = int(sum(n for _, _, n in rows))
        counts["quarantine"] = [
            {"stage": stage, "reason": reason, "rows": int(n)} for stage, reason, n in rows
        ]
    return counts


def data_summary(
    conn: duckdb.DuckDBPyConnection, image_metadata: dict, metrics_metadata: dict, dataset_name: str
) -> dict:
    """Sizes, features and provenance of the prepared data, from DuckDB (None where unknown)."""
    summary: dict = {"dataset": dataset_name}
    if table_exists(conn, "user_index"):
        users, eval_users, avg_len, max_len = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE is_eval), avg(n_interactions), max(n_interactions) "
            "FROM user_index"
        ).fetchone()
        summary.update(
            users=int(users),
            eval_users=int(eval_users),
            avg_seq_len=float(avg_len or 0),
            max_seq_len=int(max_len or 0),
        )
    if table_exists(conn, "item_index"):
        summary["items"] = int(conn.execute("SELECT count(*) FROM item_index").fetchone()[0])
    if table_exists(conn, "sequences"):
        n, with_ts = conn.execute("SELECT count(*), count(ts) FROM sequences").fetchone()
        summary["interactions"] = int(n)
        summary["time_context"] = bool(with_ts)
    if table_exists(conn, "attribute_vocab"):
        summary["feature_kinds"] = dict(
            conn.execute("SELECT kind, count(*) FROM attribute_vocab GROUP BY kind ORDER BY kind").fetchall()
        )
    if table_exists(conn, "item_image_features"):
        summary["items_with_image"] = int(
            conn.execute("SELECT count(*) FILTER (WHERE has_image) FROM item_image_features").fetchone()[0]
        )
    summary["ingest"] = ingest_counts(conn)
    pretrained = image_metadata.get("pretrained")
    summary["image_weights_pretrained"] = pretrained if isinstance(pretrained, bool) else None
    per_model = metrics_metadata.get("data_features_per_model")
    if isinstance(per_model, dict) and per_model:
        kinds = sorted(set(per_model.values()))
        summary["model_inputs"] = (
            kinds[0] if len(kinds) == 1 else ", ".join(f"{m}: {f}" for m, f in per_model.items())
        )
    summary["fingerprint"] = metrics_metadata.get("data_fingerprint")
    summary["device"] = metrics_metadata.get("device")
    return summary


# --- recommendations -------------------------------------------------------------------------------


def top_k_frame(users, items, scores) -> tuple[pd.DataFrame, int]:
    """(user_idx, rank, item_idx, score) rows of ``models.evaluate.recommend_top_k``'s output, and how
    many slots were dropped: -inf marks a seen item, left when a user has fewer than k unseen items."""
    users, items, scores = np.asarray(users), np.asarray(items), np.asarray(scores, dtype=np.float64)
    frame = pd.DataFrame(
        {
            "user_idx": np.repeat(users, items.shape[1]).astype(np.int32),
            "rank": np.tile(np.arange(1, items.shape[1] + 1), len(users)).astype(np.int32),
            "item_idx": items.reshape(-1).astype(np.int32),
            "score": scores.reshape(-1),
        }
    )
    masked = ~np.isfinite(frame["score"].to_numpy()) & (frame["score"].to_numpy() < 0)
    return frame[~masked] if masked.any() else frame, int(masked.sum())


def write_recommendations(
    conn: duckdb.DuckDBPyConnection, frame: pd.DataFrame, model: str, run_id: str, generated_at: datetime
) -> int:
    """Replace `recommendations` with ``frame`` joined to the raw ids; returns the rows written."""
    with transaction(conn):
        conn.execute(RECOMMENDATIONS_DDL)
        conn.register("top_k", frame)
        conn.execute(
            "INSERT INTO recommendations SELECT u.user_id, t.rank, i.item_id, t.score, ?, ?, "
            "t.user_idx, t.item_idx, ? FROM top_k t JOIN user_index u USING (user_idx) "
            "JOIN item_index i USING (item_idx) ORDER BY t.user_idx, t.rank",
            [model, run_id, generated_at],
        )
        conn.unregister("top_k")
        written = conn.execute("SELECT count(*) FROM recommendations").fetchone()[0]
        if written != len(frame):  # raising rolls the transaction back
            raise DataError(
                f"{len(frame) - written} recommendation rows name a user_idx or item_idx absent from "
                "user_index/item_index: the model and the prepared data disagree; retrain the model"
            )
    return int(written)


def recommendations_sample(conn: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The first user's list, for the asset's metadata."""
    return conn.execute(
        "SELECT user_id, rank, item_id, round(score, 4) AS score FROM recommendations "
        "WHERE user_idx = (SELECT min(user_idx) FROM recommendations) ORDER BY rank"
    ).df()


def recommendations_exclude_seen_items(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """No recommended item is one the user already interacted with (training, validation or test)."""
    seen = conn.execute(
        "SELECT r.user_id, r.rank, r.item_id FROM recommendations r "
        "JOIN sequences s ON s.user_idx = r.user_idx AND s.item_idx = r.item_idx LIMIT 20"
    ).df()
    total = conn.execute("SELECT count(*) FROM recommendations").fetchone()[0]
    return CheckOutcome(
        seen.empty and total > 0,
        metadata={
            "rows": int(total),
            "seen_items_recommended": len(seen),
            "examples": Markdown(seen.to_markdown(index=False) if len(seen) else "none"),
        },
    )


def recommendations_k_per_user(conn: duckdb.DuckDBPyConnection, k: int) -> CheckOutcome:
    """Every user in `user_index` has a list of K items, or of every item they have not interacted with where
    that is fewer: ranks 1..n, n distinct items, scores not increasing, and no list for anyone else."""
    lists = conn.execute(
        """
        WITH lists AS (
            SELECT user_idx, count(*) AS n, count(DISTINCT item_idx) AS n_items, min(rank) AS lo, max(rank) AS hi,
                   bool_and(score_ok) AS sorted
            FROM (SELECT *, coalesce(score <= lag(score) OVER (PARTITION BY user_idx ORDER BY rank), true) AS score_ok
                  FROM recommendations)
            GROUP BY user_idx
        ), expected AS (
            SELECT u.user_idx, least(?, (SELECT count(*) FROM item_index) - count(DISTINCT s.item_idx)) AS want
            FROM user_index u LEFT JOIN sequences s USING (user_idx)
            GROUP BY u.user_idx
        )
        SELECT e.user_idx, e.want, coalesce(l.n, 0) AS n, coalesce(l.n_items, 0) AS n_items,
               coalesce(l.lo, 1) AS lo, coalesce(l.hi, 0) AS hi, coalesce(l.sorted, true) AS sorted
        FROM expected e LEFT JOIN lists l USING (user_idx)
        """,
        [int(k)],
    ).df()
    strays = conn.execute(
        "SELECT count(DISTINCT user_idx) FROM recommendations WHERE user_idx NOT IN (SELECT user_idx FROM user_index)"
    ).fetchone()[0]
    wrong = lists[
        (lists.n != lists.want)
        | (lists.n_items != lists.want)
        | (lists.lo != 1)
        | (lists.hi != lists.want)
        | ~lists.sorted.astype(bool)
    ]
    return CheckOutcome(
        wrong.empty and strays == 0,
        metadata={
            "k": int(k),
            "users_with_recommendations": int((lists.n > 0).sum()),
            "users": len(lists),
            "users_with_fewer_unseen_items_than_k": int((lists.want < k).sum()),
            "users_with_wrong_lists": len(wrong),
            "lists_for_users_not_in_user_index": int(strays),
        },
    )


def evaluate_checkpoints(
    cache: DataCache,
    checkpoints: dict[str, Path],
    settings_: EvalSettings,
    device,
    run_id: str,
    evaluated_at: datetime,
    log=None,
    user_frames: list | None = None,
) -> tuple[list[dict], dict, dict]:
    """Every checkpoint scored on the data it was trained on: (metric rows, seconds per model, data
    info per model). ``user_frames``, when given, receives per-user test HR@10 / NDCG@10 frames
    (the rows of `evaluation_user_metrics`)."""
    import time

    from models.evaluate import evaluate_model
    from models.registry import load_model

    rows: list[dict] = []
    timings: dict[str, float] = {}
    data_info: dict[str, dict] = {}
    for name, path in checkpoints.items():
        started = time.perf_counter()
        model_data = cache.for_checkpoint(name, path)
        per_user: dict = {}
        for checkpoint, protocols in protocol_checkpoints(path, settings_.protocols).items():
            model, _ = load_model(checkpoint, model_data, map_location=device)
            if log is not None:
                tau = model.popularity_adjustment
                log(
                    f"{name}: {checkpoint} for {', '.join(protocols)} (data features {model_data.info.get('features')}"
                    + (f"; ranked by score - {tau:g} x log(1 + training count))" if tau else ")")
                )
            protocol_settings = dataclasses.replace(settings_, protocols=protocols)
            records = evaluate_model(model, model_data, protocol_settings, device, log=log, per_user=per_user)
            rows += [{"model": name, **r, "run_id": run_id, "evaluated_at": evaluated_at} for r in records]
            del model
        if user_frames is not None:
            user_frames += [
                pd.DataFrame(
                    {
                        "model": name,
                        "protocol": protocol,
                        "split": split,
                        "user_idx": users.astype(np.int32),
                        "hr10": hr,
                        "ndcg10": ndcg,
                    }
                )  # fmt: skip
                for (protocol, split), (users, hr, ndcg) in per_user.items()
                if split == "test"
            ]
        timings[name] = round(time.perf_counter() - started, 2)
        data_info[name] = model_data.info
    return rows, timings, data_info
