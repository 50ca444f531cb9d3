"""What each evaluation asset does, start to end (no Dagster).

``assets/evaluation.py`` reads its config, calls these with the step's logger as ``log`` / ``warn``,
runs its checks and returns the metadata built here; a :class:`DataError` becomes ``dg.Failure``.
The tables, checkpoints and checks are in ``evaluation.py``, the report's rendering in ``report.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from convrec_dagster.data import evaluation as ev
from convrec_dagster.data import report as report_lib
from convrec_dagster.data import settings
from convrec_dagster.data.evaluation import DataCache, trained_models
from convrec_dagster.data.tables import DataError, require_tables
from models.data import RecData
from models.metrics import PROTOCOLS, SPLITS
from models.registry import MODEL_NAMES

if TYPE_CHECKING:
    from models.evaluate import EvalSettings

Log = Callable[[str], None]
Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
# (metric rows, evaluated models, validation NDCG@10 kept per checkpoint, protocol) -> (model, why)
ChooseModel = Callable[[list[dict], list[str], dict[str, float | None], str], tuple[str | None, str]]


def now() -> datetime:
    """UTC now, without a zone (as DuckDB's TIMESTAMP columns hold it)."""
    return datetime.now(UTC).replace(tzinfo=None)


def json_ready(value: Any) -> Any:
    """``value`` with whatever JSON cannot hold (timestamps, paths, numpy numbers) as text."""
    return json.loads(json.dumps(value, default=str))


# --- evaluation_metrics ----------------------------------------------------------------------------


def select_checkpoints(
    home: Path, models: Sequence[str], protocols: Sequence[str], splits: Sequence[str]
) -> dict[str, Path]:
    """name -> best.pt of the models to evaluate (``models``; empty: every trained one)."""
    bad = [p for p in protocols if p not in PROTOCOLS] + [s for s in splits if s not in SPLITS]
    unknown = [m for m in models if m not in MODEL_NAMES]
    if bad or unknown:
        raise DataError(
            f"unknown protocol/split {bad} or model {unknown} in config; protocols are {list(PROTOCOLS)}, "
            f"splits {list(SPLITS)}, models {list(MODEL_NAMES)}"
        )
    checkpoints = trained_models(home)
    where = settings.models_dir(home)
    if models:
        missing = [m for m in models if m not in checkpoints]
        if missing:
            raise DataError(f"no best.pt for {missing} under {where}: train them first")
        checkpoints = {m: checkpoints[m] for m in models}
    if not checkpoints:
        raise DataError(
            f"no trained model found (no best.pt for any of {list(MODEL_NAMES)} under "
            f"{where}). Materialize the training assets first."
        )
    return checkpoints


@dataclass
class Evaluation:
    """Every checkpoint scored, not yet written."""

    checkpoints: dict[str, Path]
    data: RecData  # the prepared data with the default features: its sizes go into the metadata
    rows: list[dict]  # `evaluation_metrics` rows
    user_frames: list[pd.DataFrame]  # `evaluation_user_metrics` rows
    timings: dict[str, float]  # seconds per model
    data_info: dict[str, dict]  # per model, the info of the data it was scored on
    settings: EvalSettings
    device_name: str
    evaluated_at: datetime


def evaluate_models(
    connect: Connect,
    checkpoints: dict[str, Path],
    eval_settings: EvalSettings,
    device,
    device_name: str,
    run_id: str,
    log: Log,
) -> Evaluation:
    """Score every checkpoint on the data it was trained on (a :class:`DataError` when none matches)."""
    cache = DataCache(connect)
    data = cache.get("auto")
    log(
        f"evaluating {list(checkpoints)} on {int(data.is_eval_user.sum()):,} users x {data.n_items:,} items "
        f"({device_name}, {eval_settings.precision}); data fingerprint {data.info.get('fingerprint')}"
    )
    evaluated_at = now()
    user_frames: list[pd.DataFrame] = []
    rows, timings, data_info = ev.evaluate_checkpoints(
        cache, checkpoints, eval_settings, device, run_id, evaluated_at, log, user_frames
    )
    return Evaluation(
        checkpoints, data, rows, user_frames, timings, data_info, eval_settings, device_name, evaluated_at
    )


@dataclass
class MetricsResult:
    evaluation: Evaluation
    rows_in_table: int
    comparisons: list[dict]
    trained: list[str]  # every model with a best.pt, sorted

    def metadata(self) -> dict:
        """The asset's metadata (``test_headline``: markdown)."""
        e, s = self.evaluation, self.evaluation.settings
        clean = [{**r, "evaluated_at": str(r["evaluated_at"])} for r in e.rows]
        headline = report_lib.comparison_table(clean, report_lib.HEADLINE)
        return {
            "models": list(e.checkpoints),
            "rows_written": len(e.rows),
            "rows_in_table": int(self.rows_in_table),
            "eval_users": int(e.data.is_eval_user.sum()),
            "items": int(e.data.n_items),
            "data_fingerprint": str(e.data.info.get("fingerprint")),
            "data_info": json_ready(e.data.info),
            "data_features_per_model": {m: i.get("features") for m, i in e.data_info.items()},
            "device": e.device_name,
            "precision": s.precision,
            "settings": {
                "n_boot": s.n_boot,
                "seed": s.seed,
                "ks": list(s.ks),
                "ties": s.ties,
                "precision": s.precision,
                "device": e.device_name,
            },
            "seconds_per_model": e.timings,
            "test_headline": report_lib.headline_markdown(headline),
            "test_metrics": report_lib.headline_values(clean),
            "comparisons": json_ready(
                [
                    {k: v for k, v in c.items() if k not in ("run_id", "evaluated_at")}
                    for c in self.comparisons
                ]
            ),
        }


def write_evaluation(
    conn: duckdb.DuckDBPyConnection, evaluation: Evaluation, home: Path, run_id: str, n_perm: int, seed: int
) -> MetricsResult:
    """Replace the evaluated models' rows of `evaluation_metrics` and `evaluation_user_metrics`, and
    compare ConvRec with every trained model into `evaluation_comparisons`."""
    models = list(evaluation.checkpoints)
    total = ev.write_metrics(conn, evaluation.rows, models)
    ev.write_user_metrics(conn, evaluation.user_frames, models)
    trained = sorted(trained_models(home))
    comparisons = ev.write_comparisons(conn, trained, run_id, evaluation.evaluated_at, n_perm, seed)
    return MetricsResult(evaluation, total, comparisons, trained)


# --- evaluation_report -----------------------------------------------------------------------------


@dataclass
class Report:
    report: dict[str, Any]
    plots: dict[str, bytes]
    written: dict[str, Path]  # "html", "json" -> file
    models: list[str]
    warnings_in_run: int

    def metadata(self) -> dict:
        """The asset's metadata (``report``, ``findings``: markdown; ``html``, ``json``: file paths)."""
        return {
            "report": report_lib.render_markdown(self.report, self.plots),
            "html": str(self.written["html"]),
            "json": str(self.written["json"]),
            "models": self.models,
            "best_model": str(self.report["best_model"]),
            "paper_dataset": str(self.report["paper"]["dataset"]),
            "findings": "\n".join(f"- {line}" for line in self.report["findings"]),
            "warnings_in_run": self.warnings_in_run,
        }


def write_evaluation_report(
    connect: Connect,
    home: Path,
    *,
    metrics_metadata: dict,
    image_metadata: dict,
    dataset_name: Callable[[duckdb.DuckDBPyConnection], str],
    run_warnings: Callable[[], list[dict]],
    paper_dataset: str,
    run_id: str,
    log: Log,
    warn: Log,
) -> Report:
    """Build the report from DuckDB, the training artifacts and the latest metadata of
    `evaluation_metrics` / `item_image_features`, and write it under ``artifacts/reports``.
    ``run_warnings`` is called after this step's own warning, so the report lists it too."""
    with connect() as conn:
        require_tables(conn, "evaluation_metrics", hint="Materialize `evaluation_metrics` first.")
        rows = ev.read_metric_rows(conn)
        summary = ev.data_summary(conn, image_metadata, metrics_metadata, dataset_name(conn))
        comparisons = ev.read_comparisons(conn)
    if not rows:
        raise DataError(
            "`evaluation_metrics` is empty: materialize it (with at least one trained model) first"
        )
    models = report_lib.ordered_models(r["model"] for r in rows)
    if not image_metadata:
        warn(
            "no materialization of item_image_features recorded: the report says the image "
            "weights are 'unknown'"
        )
    histories = ev.histories(home, models)
    model_configs = ev.model_configs(home, models)
    warnings = run_warnings()
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
            "report": {"paper_dataset": paper_dataset},
        },
        run_id=run_id,
        generated_at=now().isoformat(timespec="seconds") + "Z",
        paper_dataset=paper_dataset,
    )
    plots = report_lib.render_plots(report)
    written = report_lib.write_report(report, settings.artifacts_dir(home) / "reports", plots)
    log(f"report written to {written['html']} and {written['json']}")
    return Report(report, plots, written, models, len(warnings))


# --- recommendations -------------------------------------------------------------------------------


@dataclass
class TopK:
    """One model's top-k lists, not yet written."""

    model: str
    selected_by: str
    k: int
    frame: pd.DataFrame  # user_idx, rank, item_idx, score
    users: int
    seconds: float  # scoring time
    device_name: str


def _recommending_model(
    home: Path,
    model: str,
    selection_protocol: str,
    rows: list[dict],
    checkpoints: dict[str, Path],
    choose_model: ChooseModel,
) -> tuple[str, str]:
    """(model name, why): named in config, else the best on validation (never on test: picking by
    test NDCG@10 would leak the test split)."""
    if model:
        return model, "named in config"
    evaluated = sorted({r["model"] for r in rows if r["model"] in checkpoints})
    configs = ev.model_configs(home, evaluated)
    valid = {m: (c.get("valid") or {}).get("NDCG@10") for m, c in configs.items()}
    name, why = choose_model(rows, evaluated, valid, selection_protocol)
    if name is None:
        raise DataError(
            "no model to recommend with: `evaluation_metrics` has no row of a trained model; "
            "materialize it first"
        )
    return name, why


def recommend(
    connect: Connect,
    home: Path,
    *,
    k: int,
    model: str,
    selection_protocol: str,
    batch_size: int,
    device,
    device_name: str,
    choose_model: ChooseModel,
    log: Log,
    warn: Log,
) -> TopK:
    """The top ``k`` unseen items of every user from ``model`` (empty: the one ``choose_model``
    picks from `evaluation_metrics`; it is ``convrec_dagster.recommend.choose_model``, the CLI's
    rule, passed in because that module sits a floor above this one)."""
    from models.evaluate import recommend_top_k
    from models.registry import load_model

    if k < 1:
        raise DataError(f"recommendations: k must be at least 1, not {k}")
    checkpoints = trained_models(home)
    with connect() as conn:
        rows = ev.read_metric_rows(conn)
    name, why = _recommending_model(home, model, selection_protocol, rows, checkpoints, choose_model)
    if name not in checkpoints:
        raise DataError(f"model `{name}` has no best.pt under {settings.models_dir(home)}; train it first")
    data = DataCache(connect).for_checkpoint(name, checkpoints[name])
    if k > data.n_items - 1:
        raise DataError(f"k = {k} but the catalogue has only {data.n_items} items; lower k")
    net, _ = load_model(checkpoints[name], data, map_location=device)
    log(f"recommending top {k} with {name}: {why} ({device_name})")
    started = time.perf_counter()
    users, items, scores = recommend_top_k(net, data, k, device, batch_size=batch_size)
    seconds = time.perf_counter() - started
    frame, dropped = ev.top_k_frame(users, items, scores)
    if dropped:  # a user with fewer than k unseen items: -inf marks seen items, never recommend them
        warn(f"{dropped} slots dropped: their users have fewer than {k} unseen items")
    return TopK(name, why, k, frame, len(users), seconds, device_name)


@dataclass
class RecommendationsResult:
    top: TopK
    rows: int
    sample: str  # the first user's list, a markdown table

    def metadata(self) -> dict:
        """The asset's metadata (``sample``: markdown)."""
        top = self.top
        return {
            "model": top.model,
            "selected_by": top.selected_by,
            "k": top.k,
            "users": top.users,
            "rows": int(self.rows),
            "seconds": round(top.seconds, 2),
            "users_per_s": round(top.users / max(top.seconds, 1e-9), 1),
            "device": top.device_name,
            "sample": self.sample,
        }


def write_top_k(conn: duckdb.DuckDBPyConnection, top: TopK, run_id: str) -> RecommendationsResult:
    """Replace `recommendations` with ``top`` (raw ids joined in)."""
    written = ev.write_recommendations(conn, top.frame, top.model, run_id, now())
    sample = ev.recommendations_sample(conn).to_markdown(index=False)
    return RecommendationsResult(top, written, sample)
