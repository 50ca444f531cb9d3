"""The evaluation assets on a real run: metrics table, HTML/JSON report, recommendations, checks.

One module-scoped run materializes every asset on the embedded sample dump (real DuckDB, real
Dagster, real torch; SASRec and the attention model with fewer epochs to keep it short), then the
tests read what it left behind. The checks are also run on hand-written bad tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets import evaluation as ev
from convrec_dagster.data import settings
from convrec_dagster.data.evaluation import METRICS_DDL, read_metric_rows
from convrec_dagster.definitions import ASSET_MODULES
from convrec_dagster.recommend import choose_model
from convrec_dagster.resources import build_resources

pytestmark = pytest.mark.slow

MODELS = {"popularity", "sasrec", "convrec_attention", "convrec"}
ASSETS = dg.load_assets_from_modules(ASSET_MODULES)
SHORT_TRAINING = {"sasrec_model": 8, "convrec_attention_model": 8}  # max_epochs; ConvRec keeps its profile


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("eval_home")
    instance = dg.DagsterInstance.ephemeral()
    resources = build_resources(home=home, device="cpu")
    run_config = {
        "ops": {
            **{name: {"config": {"max_epochs": epochs}} for name, epochs in SHORT_TRAINING.items()},
            "evaluation_metrics": {"config": {"n_boot": 300}},
        }
    }
    result = dg.materialize(ASSETS, resources=resources, instance=instance, run_config=run_config)
    assert result.success
    return {"home": home, "instance": instance, "resources": resources, "result": result}


def _db(home: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(settings.duckdb_path(home)), read_only=True)


def test_every_check_passed(run):
    evaluations = run["result"].get_asset_check_evaluations()
    names = {e.asset_check_key.name for e in evaluations}
    assert {
        "evaluation_metrics_in_unit_interval", "evaluation_metrics_cover_trained_models",
        "recommendations_exclude_seen_items", "recommendations_k_per_user",
    } <= names  # fmt: skip
    assert [e.asset_check_key.name for e in evaluations if not e.passed] == []


def test_metrics_table_has_one_row_per_number(run):
    with _db(run["home"]) as conn:
        frame = conn.execute("SELECT * FROM evaluation_metrics").df()
        n_eval = conn.execute("SELECT count(*) FROM user_index WHERE is_eval").fetchone()[0]
    assert set(frame.model) == MODELS
    # 4 models x 2 protocols x 2 splits x 3 user groups x (HR, NDCG at k = 1, 5, 10, 20 + MRR)
    assert len(frame) == 4 * 2 * 2 * 3 * 9
    assert not frame.duplicated(["model", "protocol", "split", "metric", "k", "user_group"]).any()
    assert set(frame.protocol) == {"sampled_100", "full"} and set(frame.split) == {"test", "valid"}
    assert set(frame.user_group) == {"all", "top20_longest", "bottom80"}
    assert frame[frame.metric == "MRR"].k.isna().all() and frame[frame.metric != "MRR"].k.notna().all()
    with_ci = frame[frame.ci_low.notna()]
    assert set(zip(with_ci.metric, with_ci.k.astype(int))) == {("HR", 10), ("NDCG", 10)}
    assert len(with_ci) == 4 * 2 * 2 * 3 * 2
    assert ((with_ci.ci_low <= with_ci.value) & (with_ci.value <= with_ci.ci_high)).all()
    assert (frame.run_id == run["result"].run_id).all()
    everyone = frame[frame.user_group == "all"]
    assert (everyone.n_users == n_eval).all()
    top = frame[frame.user_group == "top20_longest"].n_users.iloc[0]
    assert top == round(0.2 * n_eval)


def test_popularity_numbers_match_an_independent_sql_computation(run):
    """Popularity scores items by training count, so its sampled_100 HR@k follows from SQL alone:
    with g negatives counted above the target and e equal, HR@k = clip((k - g) / (e + 1), 0, 1)."""
    with _db(run["home"]) as conn:
        expected = conn.execute(
            """
            WITH counts AS (
                SELECT i.item_idx, count(s.item_idx) AS n
                FROM item_index i LEFT JOIN sequences s ON s.item_idx = i.item_idx AND s.split = 'train'
                GROUP BY i.item_idx),
            targets AS (
                SELECT s.user_idx, c.n FROM sequences s JOIN counts c USING (item_idx) WHERE s.split = 'test'),
            ranks AS (
                SELECT t.user_idx, count(*) FILTER (WHERE c.n > t.n) AS g, count(*) FILTER (WHERE c.n = t.n) AS e
                FROM targets t JOIN eval_negatives x USING (user_idx) JOIN counts c ON c.item_idx = x.item_idx
                GROUP BY t.user_idx)
            SELECT k, avg(least(greatest((k - g) / (e + 1.0), 0.0), 1.0)) AS hr
            FROM ranks CROSS JOIN (VALUES (1), (5), (10), (20)) v(k) GROUP BY k ORDER BY k
            """
        ).fetchall()
        ours = dict(
            conn.execute(
                "SELECT k, value FROM evaluation_metrics WHERE model = 'popularity' AND protocol = 'sampled_100' "
                "AND split = 'test' AND user_group = 'all' AND metric = 'HR' ORDER BY k"
            ).fetchall()
        )
    assert len(expected) == 4
    for k, hr in expected:
        assert ours[k] == pytest.approx(hr, abs=1e-9)


def test_convrec_is_present_and_beats_popularity(run):
    with _db(run["home"]) as conn:
        ndcg = dict(
            conn.execute(
                "SELECT model, value FROM evaluation_metrics WHERE protocol = 'sampled_100' AND split = 'test' "
                "AND user_group = 'all' AND metric = 'NDCG' AND k = 10"
            ).fetchall()
        )
    assert "convrec" in ndcg
    assert ndcg["convrec"] > ndcg["popularity"], ndcg


def test_report_files_and_metadata(run):
    reports = settings.artifacts_dir(run["home"]) / "reports"
    page = (reports / "evaluation_report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<img ") == 3 and "sampled_100" in page and "full" in page and "ConvRec" in page
    report = json.loads((reports / "evaluation_report.json").read_text(encoding="utf-8"))
    assert {r["model"] for r in report["metrics"]} == MODELS
    assert report["data"]["users"] == 600 and report["data"]["time_context"] is True
    assert report["data"]["image_weights_pretrained"] is False  # no weights file configured
    assert report["data"]["fingerprint"]
    assert report["paper"]["dataset"] is None  # the sample is none of the paper's datasets
    assert set(report["histories"]) == MODELS
    assert report["config"]["models"]["convrec"]["hparams"]

    event = run["instance"].get_latest_materialization_event(dg.AssetKey("evaluation_report"))
    markdown = event.asset_materialization.metadata["report"].value
    assert "data:image/png;base64," in markdown and "sampled_100" in markdown


def test_paired_comparisons_and_report_tables(run):
    with _db(run["home"]) as conn:
        comparisons = conn.execute("SELECT * FROM evaluation_comparisons").df()
        per_user = conn.execute(
            "SELECT model, protocol, count(*) AS n FROM evaluation_user_metrics "
            "WHERE split = 'test' GROUP BY ALL"
        ).df()
        eval_users = conn.execute("SELECT count(*) FROM user_index WHERE is_eval").fetchone()[0]
    # ConvRec against each of the three others under both protocols, on every evaluated user
    assert set(zip(comparisons.baseline, comparisons.protocol)) == {
        (b, p) for b in ("popularity", "sasrec", "convrec_attention") for p in ("sampled_100", "full")
    }
    assert (comparisons.n_users == eval_users).all() and (per_user.n == eval_users).all()
    assert ((comparisons.p_value > 0) & (comparisons.p_value <= 1)).all()
    report = json.loads(
        (settings.artifacts_dir(run["home"]) / "reports" / "evaluation_report.json").read_text()
    )
    sasrec_lines = [f for f in report["findings"] if "SASRec" in f and f.startswith("sampled_100: ConvRec")]
    assert len(sasrec_lines) == 1 and ("p = " in sasrec_lines[0] or "p < " in sasrec_lines[0])
    training = {t["model"]: t for t in report["training"]}
    assert set(training) == MODELS
    assert training["convrec"]["parameters"] > 0 and training["convrec"]["best_epoch"] >= 1
    assert training["convrec"]["trained_in_run"] == run["result"].run_id
    assert report["data"]["ingest"]["reviews_kept"] > 0 and "quarantined" in report["data"]["ingest"]
    # the sample run logs the untrained-ResNet warning; the report lists it
    assert any("RANDOMLY INITIALISED" in w["message"] for w in report["warnings"])


def test_recommendations_table(run):
    with _db(run["home"]) as conn:
        rec = conn.execute("SELECT * FROM recommendations").df()
        users = conn.execute("SELECT count(*) FROM user_index").fetchone()[0]
        mapped = conn.execute(  # raw ids and indices name the same user and item
            "SELECT count(*) FROM recommendations r JOIN user_index u ON u.user_id = r.user_id AND u.user_idx = r.user_idx "
            "JOIN item_index i ON i.item_id = r.item_id AND i.item_idx = r.item_idx"
        ).fetchone()[0]
        seen = conn.execute(  # by raw ids, against the de-duplicated interactions
            "SELECT count(*) FROM recommendations r JOIN interactions x ON x.user_id = r.user_id AND x.item_id = r.item_id"
        ).fetchone()[0]
    report = json.loads(
        (settings.artifacts_dir(run["home"]) / "reports" / "evaluation_report.json").read_text()
    )
    assert len(rec) == 10 * users and rec.user_id.nunique() == users
    assert (rec.groupby("user_id")["rank"].apply(sorted).apply(lambda r: r == list(range(1, 11)))).all()
    assert not {"reviewer_id", "asin"} & set(rec.columns)  # user_id / item_id are the raw ids, no copies
    assert mapped == len(rec)
    assert seen == 0
    assert (rec.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    with _db(run["home"]) as conn:
        rows = read_metric_rows(conn)
    assert set(rec.model) == {choose_model(rows, MODELS)[0]}  # on validation
    assert report["best_model"] in MODELS
    assert (rec.run_id == run["result"].run_id).all()


def test_reevaluating_one_model_replaces_only_its_rows(run):
    result = dg.materialize(
        [a for a in ASSETS if dg.AssetKey("evaluation_metrics") in a.keys],
        resources=run["resources"],
        instance=run["instance"],
        run_config={
            "ops": {
                "evaluation_metrics": {
                    "config": {"models": ["popularity"], "protocols": ["sampled_100"], "splits": ["test"]}
                }
            }
        },
    )
    with _db(run["home"]) as conn:
        runs = dict(
            conn.execute("SELECT model, any_value(run_id) FROM evaluation_metrics GROUP BY model").fetchall()
        )
        n_popularity = conn.execute(
            "SELECT count(*) FROM evaluation_metrics WHERE model = 'popularity'"
        ).fetchone()[0]
    assert runs["popularity"] == result.run_id
    assert runs["convrec"] == run["result"].run_id
    assert n_popularity == 3 * 9


def test_recommendations_with_a_named_model_and_k(run):
    result = dg.materialize(
        [a for a in ASSETS if dg.AssetKey("recommendations") in a.keys],
        resources=run["resources"],
        instance=run["instance"],
        run_config={"ops": {"recommendations": {"config": {"model": "popularity", "k": 5}}}},
    )
    with _db(run["home"]) as conn:
        per_user = conn.execute("SELECT count(*) AS n FROM recommendations GROUP BY user_idx").df()
        models = {r[0] for r in conn.execute("SELECT DISTINCT model FROM recommendations").fetchall()}
    assert (per_user.n == 5).all() and models == {"popularity"}
    evaluations = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"recommendations_exclude_seen_items", "recommendations_k_per_user"}
    assert all(e.passed for e in evaluations.values())
    assert evaluations["recommendations_k_per_user"].metadata["k"].value == 5  # K from this run's config


def test_recommendations_with_k_above_a_users_unseen_items_list_every_unseen_item(run):
    """K as large as the catalogue allows: a user who has interacted with more items than the catalogue has
    left over gets every unseen item, and the blocking check accepts the shorter list."""
    with _db(run["home"]) as conn:
        n_items = conn.execute("SELECT count(*) FROM item_index").fetchone()[0]
    k = n_items - 1
    result = dg.materialize(
        [a for a in ASSETS if dg.AssetKey("recommendations") in a.keys],
        resources=run["resources"],
        instance=run["instance"],
        run_config={"ops": {"recommendations": {"config": {"model": "popularity", "k": k}}}},
    )
    with _db(run["home"]) as conn:
        lists = conn.execute(
            "SELECT r.user_idx, count(*) AS n, any_value(s.seen) AS seen FROM recommendations r JOIN "
            "(SELECT user_idx, count(DISTINCT item_idx) AS seen FROM sequences GROUP BY user_idx) s USING (user_idx) "
            "GROUP BY r.user_idx"
        ).df()
    assert (lists.n == (n_items - lists.seen).clip(upper=k)).all() and (lists.n < k).any()
    check = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}[
        "recommendations_k_per_user"
    ]
    assert (
        check.passed and check.metadata["users_with_fewer_unseen_items_than_k"].value == (lists.n < k).sum()
    )


def test_recommendation_model_is_chosen_on_validation_when_test_disagrees(run):
    """Validation says SASRec, test says ConvRec: `recommendations` must follow validation."""
    home = run["home"]
    with duckdb.connect(str(settings.duckdb_path(home))) as conn:
        saved = conn.execute("SELECT * FROM evaluation_metrics").df()
        conn.execute(
            "UPDATE evaluation_metrics SET value = CASE WHEN model = 'sasrec' THEN 0.9 ELSE 0.1 END "
            "WHERE split = 'valid' AND metric = 'NDCG' AND k = 10 AND user_group = 'all'"
        )
        conn.execute(
            "UPDATE evaluation_metrics SET value = CASE WHEN model = 'convrec' THEN 0.9 ELSE 0.1 END "
            "WHERE split = 'test' AND metric = 'NDCG' AND k = 10 AND user_group = 'all'"
        )
    try:
        result = dg.materialize(
            [a for a in ASSETS if dg.AssetKey("recommendations") in a.keys],
            resources=run["resources"],
            instance=run["instance"],
        )
        with _db(home) as conn:
            models = {r[0] for r in conn.execute("SELECT DISTINCT model FROM recommendations").fetchall()}
    finally:
        with duckdb.connect(str(settings.duckdb_path(home))) as conn:
            conn.execute("DELETE FROM evaluation_metrics")
            conn.register("saved", saved)
            conn.execute("INSERT INTO evaluation_metrics SELECT * FROM saved")
    assert models == {"sasrec"}
    selected_by = result.asset_materializations_for_node("recommendations")[0].metadata["selected_by"].value
    assert "validation" in selected_by and "0.9000" in selected_by


# --- failures and checks on hand-written tables (no pipeline run) ----------------------------------


def _bad_metrics_db(value: float, ci: tuple) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute(METRICS_DDL)
    conn.execute(
        "INSERT INTO evaluation_metrics VALUES ('convrec', 'full', 'test', 'HR', 10, 'all', ?, ?, ?, 'r', now()::TIMESTAMP, 5)",
        [value, *ci],
    )
    return conn


@pytest.mark.parametrize(
    "value, ci, passed",
    [
        (0.5, (0.4, 0.6), True),
        (1.2, (None, None), False),
        (0.5, (0.55, 0.6), False),
        (0.5, (0.4, 1.1), False),
        (float("nan"), (None, None), False),
    ],
)
def test_unit_interval_check(value, ci, passed):
    assert ev.evaluation_metrics_in_unit_interval(_bad_metrics_db(value, ci)).passed is passed


def test_coverage_check_wants_both_protocols():
    conn = _bad_metrics_db(0.5, (0.4, 0.6))  # convrec has 'full' rows only
    result = ev.evaluation_metrics_cover_trained_models(conn, ["convrec"])
    assert not result.passed and result.metadata["missing"] == ["convrec/sampled_100/test"]
    assert ev.evaluation_metrics_cover_trained_models(conn, ["convrec"], protocols=["full"]).passed
    assert not ev.evaluation_metrics_cover_trained_models(
        conn, []
    ).passed  # nothing trained: nothing to trust


def test_evaluation_without_trained_models_fails_clearly(make_resources):
    result = dg.materialize(
        [a for a in ASSETS if dg.AssetKey("evaluation_metrics") in a.keys],
        resources=make_resources(),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no trained model found" in failure.event_specific_data.error.message
