"""A first hour that goes right: preflight, the console's summary, reuse said out loud, the paired
test, and the model choice on validation. Fast: no whole-pipeline run here (see test_cli_run.py)."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml

from convrec_dagster import run_summary
from convrec_dagster.recommend import choose_model
from models.significance import format_p, paired_permutation_test, verdict

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "docs" / "run_config.example.yaml"


@pytest.fixture
def full_pipeline(convrec_home, monkeypatch):
    """`full_pipeline` of the module's Definitions, on a temporary home and the embedded sample."""
    monkeypatch.setenv("CONVREC_HOME", str(convrec_home))
    from convrec_dagster.definitions import build_defs
    from convrec_dagster.resources import build_resources

    return build_defs(build_resources(home=convrec_home, device="cpu")).resolve_job_def("full_pipeline")


def _preflight_only(job: dg.JobDefinition, run_config: dict) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(
        run_config=run_config,
        asset_selection=[dg.AssetKey("preflight")],
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


# --- preflight -------------------------------------------------------------------------------------


def test_readme_config_example_passes_preflight(full_pipeline, one_torch_thread):
    """docs/run_config.example.yaml, as the README runs it: it loads, and preflight passes (with its
    training-time estimate, no training)."""
    run_config = yaml.safe_load(EXAMPLE.read_text())
    result = _preflight_only(full_pipeline, run_config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    metadata = result.asset_materializations_for_node("preflight")[0].metadata
    estimates = metadata["training_estimate"].value
    assert {e["model"] for e in estimates} == {"sasrec", "convrec_attention", "convrec"}
    assert all(e["budget"] == "sample" and e["seconds_per_epoch"] > 0 for e in estimates)
    assert all(0 < e["validation_seconds_per_epoch"] < e["seconds_per_epoch"] for e in estimates)
    assert metadata["expected_training_s"].value == pytest.approx(
        sum(e["expected_s"] for e in estimates), abs=0.5
    )


def test_missing_weights_path_fails_fast_with_what_to_do(full_pipeline, capfd):
    missing = "/data/weights/resnet50-11ad3fa6.pth"
    started = time.perf_counter()
    result = _preflight_only(
        full_pipeline, {"ops": {"item_image_features": {"config": {"weights_path": missing}}}}
    )
    seconds = time.perf_counter() - started
    assert not result.success
    assert seconds < 10, f"preflight took {seconds:.1f} s to fail"
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert missing in message and "What to do:" in message
    # the console ends with the summary: the message once, with what to do, and no traceback at INFO
    err = capfd.readouterr().err
    tail = err[err.rindex("convrec: full_pipeline FAILED") :]
    assert "failed step: preflight" in tail and tail.count(missing) == 1 and "What to do:" in tail
    assert "Traceback" not in err and "Stack Trace" not in err


def test_preflight_names_every_problem(full_pipeline, tmp_path):
    not_torch = tmp_path / "weights.pth"
    not_torch.write_text("not a checkpoint")
    result = _preflight_only(
        full_pipeline,
        {
            "resources": {"paths": {"config": {"raw_dir": str(tmp_path / "no_such_dump")}}},
            "ops": {"item_image_features": {"config": {"weights_path": str(not_torch)}}},
        },
    )
    assert not result.success
    problems = (
        next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        .step_failure_data.user_failure_data.metadata["problems"]
        .value
    )
    assert len(problems) == 2 and all(p["what_to_do"] for p in problems)
    assert "torch.save" in problems[0]["what"] and "does not exist" in problems[1]["what"]


def test_preflight_refuses_mutual_learning_where_the_model_scores_per_row(full_pipeline, one_torch_thread):
    """The embedded sample has a time path: ConvRec's candidate vectors depend on the row, so two copies'
    distributions over every item cannot be matched; preflight says so before anything trains."""
    result = _preflight_only(full_pipeline, {"ops": {"convrec_model": {"config": {"mutual_learning": 1.0}}}})
    assert not result.success
    problems = (
        next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        .step_failure_data.user_failure_data.metadata["problems"]
        .value
    )
    assert [p["what"].split(" ")[0] for p in problems] == ["convrec_model"]
    assert "do not depend on the row" in problems[0]["what"] and problems[0]["what_to_do"]


def test_estimate_advises_a_quicker_result_over_an_hour_on_cpu():
    from convrec_dagster.data.preflight import DataSize, estimate_lines

    slow = [
        {
            "model": "convrec",
            "budget": "cpu",
            "max_epochs": 40,
            "patience": 3,
            "batches_per_epoch": 1_000,
            "seconds_per_batch": 0.2,
            "seconds_per_epoch": 200.0,
            "expected_s": 3_600.0,
            "capped_by_time_budget": True,
        }
    ] * 2
    size = DataSize(20_000, 12_000, 150_000, True, True, "a test")
    lines, advice, total = estimate_lines(slow, size, "cpu")
    assert total == 7_200 and "at most 2.0 h" in lines[-1] and "(capped by the time budget)" in lines[1]
    assert len(advice) == 1 and "budget: sample" in advice[0]
    assert estimate_lines(slow, size, "cuda")[1] == []
    with_valid = [{**slow[0], "validation_seconds_per_epoch": 40.0, "valid_protocol": "full"}]
    assert "+ 40 s of full validation) = 60 min" in estimate_lines(with_valid, size, "cpu")[0][1]


def test_estimate_times_an_ensemble_at_its_members_threads_and_doubles_it_when_they_take_turns():
    """ConvRec under ``cpu`` on data with attributes and no time path is the budget's ensemble of two seeds:
    side by side on 2+ threads (each timed at its share, the same wall-clock cap), in turn on one (twice the cap)."""
    import torch

    from assets.preflight import estimate_settings
    from assets.training import TrainingConfig
    from convrec_dagster.data.dataset_info import DatasetInfo
    from convrec_dagster.data.preflight import DataSize, estimate_lines, estimate_model

    size = DataSize(300, 120, 3_000, False, True, "a test", lengths=np.full(300, 10))
    budget, s = estimate_settings("convrec", TrainingConfig(budget="cpu"), DatasetInfo("beauty"), size, False)
    assert budget == "cpu" and s["ensemble_size"] == 2
    s |= {"d": 16, "hidden": 16, "time_budget_s": 0.1}  # small and quick; 40 epochs pass the cap
    threads = torch.get_num_threads()
    side = estimate_model("convrec", budget, {**s, "num_threads": 2}, size, "cpu", "fp32")
    turns = estimate_model("convrec", budget, {**s, "num_threads": 1}, size, "cpu", "fp32")
    assert (side["ensemble_size"], side["ensemble_side_by_side"], turns["ensemble_side_by_side"]) == (
        2,
        True,
        False,
    )
    assert (side["expected_s"], turns["expected_s"]) == (0.1, 0.2) and side["capped_by_time_budget"]
    assert "an ensemble of 2 seeds, side by side" in estimate_lines([side], size, "cpu")[0][1]
    assert "an ensemble of 2 seeds, in turn" in estimate_lines([turns], size, "cpu")[0][1]
    single = estimate_model("convrec", budget, {**s, "ensemble_size": 1}, size, "cpu", "fp32")
    assert single["ensemble_size"] == 1 and "ensemble" not in estimate_lines([single], size, "cpu")[0][1]
    assert torch.get_num_threads() == threads  # restored after timing at the members' share


# --- reuse said out loud ---------------------------------------------------------------------------


def test_a_finished_model_is_reused_and_names_the_run_that_trained_it(tmp_path, one_torch_thread):
    from models.registry import build_model
    from models.synthetic import chain_data
    from models.train import TrainConfig, train

    data = chain_data(n_users=60, n_items=20, seed=1)
    config = TrainConfig(batch_size=64, lr=1e-2, max_epochs=2, patience=2, n_negatives=5)

    def run(run_id: str, resume: bool = True):
        model = build_model("sasrec", data, {"d": 16, "max_len": 8, "n_layers": 1, "n_heads": 1})
        return train(
            model,
            data,
            "sasrec",
            {"d": 16},
            TrainConfig(**{**config.__dict__, "resume": resume}),
            out_dir=tmp_path,
            log=lambda _: None,
            run_id=run_id,
        )

    first = run("run-A")
    assert first.epochs_run == 2 and "reused" not in first.extra
    again = run("run-B")
    assert again.epochs_run == 0 and again.extra["reused"]["run_id"] == "run-A"
    assert again.extra["reused"]["valid_NDCG@10"] == pytest.approx(first.best_metrics["NDCG@10"])
    retrained = run("run-C", resume=False)  # what `retrain: true` asks for
    assert retrained.epochs_run == 2 and "reused" not in retrained.extra


def test_long_epochs_report_progress(monkeypatch, one_torch_thread):
    import models.train as T
    from models.registry import build_model
    from models.synthetic import chain_data

    monkeypatch.setattr(T, "PROGRESS_EVERY_S", 0.0)  # every batch after the estimate, instead of every minute
    data = chain_data(n_users=60, n_items=20, seed=1)
    lines: list[str] = []
    model = build_model("sasrec", data, {"d": 8, "max_len": 6, "n_layers": 1, "n_heads": 1})
    T.train(
        model, data, "sasrec", {}, T.TrainConfig(batch_size=2, max_epochs=1, n_negatives=3), log=lines.append
    )
    assert any("expected ~" in line for line in lines)
    progress = [line for line in lines if "batch " in line and "min left in this epoch" in line]
    assert progress and progress[0].startswith("sasrec: epoch 1, batch 21/30 (70%)")


# --- the model behind the recommendations ----------------------------------------------------------


def _row(model: str, split: str, value: float, protocol: str = "sampled_100") -> dict:
    return {
        "model": model,
        "protocol": protocol,
        "split": split,
        "metric": "NDCG",
        "k": 10,
        "user_group": "all",
        "value": value,
    }


def test_recommendation_model_is_picked_on_validation_not_test():
    rows = [
        _row("convrec", "test", 0.50),
        _row("sasrec", "test", 0.40),  # test says ConvRec
        _row("convrec", "valid", 0.30),
        _row("sasrec", "valid", 0.35),
    ]  # validation says SASRec
    name, why = choose_model(rows, {"convrec", "sasrec"})
    assert name == "sasrec" and "validation" in why and "0.3500" in why
    # a model without a checkpoint is never chosen; without validation rows, the checkpoints' scores
    assert choose_model(rows, {"convrec"})[0] == "convrec"
    test_only = [r for r in rows if r["split"] == "test"]
    assert choose_model(test_only, {"convrec", "sasrec"}, {"convrec": 0.2, "sasrec": 0.3})[0] == "sasrec"
    assert choose_model(test_only, {"convrec", "sasrec"})[0] is None


# --- the paired test -------------------------------------------------------------------------------


def test_paired_permutation_test():
    rng = np.random.default_rng(0)
    base = rng.random(400) * (rng.random(400) < 0.5)
    better = base + np.where(rng.random(400) < 0.3, 0.2, 0.0)
    result = paired_permutation_test(better, base)
    assert (
        result["diff"] > 0
        and result["p_value"] < 0.001
        and verdict(result["p_value"], result["diff"]) == "better"
    )
    assert verdict(*[paired_permutation_test(base, better)[k] for k in ("p_value", "diff")]) == "worse"
    same = paired_permutation_test(base, base.copy())
    assert same["p_value"] == 1.0 and verdict(same["p_value"], same["diff"]) == "no significant difference"
    noise = base + rng.normal(0, 0.05, 400)
    assert paired_permutation_test(noise, base)["p_value"] > 0.05
    assert format_p(1 / 10_001, 10_000) == "p < 0.0001" and format_p(0.0123, 10_000) == "p = 0.012"


# --- the summary block -----------------------------------------------------------------------------


def test_summary_block_from_notes():
    notes = [
        {"kind": "start", "t": 0.0},
        {
            "kind": "materialization",
            "asset": "reviews",
            "metadata": {
                "records_read": 100,
                "records_kept": 98,
                "quarantined": 2,
                "quarantined_by_reason": {"malformed_json": 2},
            },
        },
        {
            "kind": "materialization",
            "asset": "evaluation_metrics",
            "metadata": {
                "test_metrics": {
                    "convrec": {
                        "sampled_100": {"HR@10": 0.7, "NDCG@10": 0.45},
                        "full": {"HR@10": 0.5, "NDCG@10": 0.29},
                    },
                    "sasrec": {
                        "sampled_100": {"HR@10": 0.8, "NDCG@10": 0.66},
                        "full": {"HR@10": 0.7, "NDCG@10": 0.6},
                    },
                },
                "comparisons": [
                    {
                        "protocol": "sampled_100",
                        "baseline": "sasrec",
                        "value_model": 0.45,
                        "value_baseline": 0.66,
                        "p_value": 1 / 10_001,
                        "n_perm": 10_000,
                        "verdict": "worse",
                    }
                ],
            },
        },
        {
            "kind": "materialization",
            "asset": "recommendations",
            "metadata": {"model": "sasrec", "k": 10, "selected_by": "best validation NDCG@10"},
        },
        {"kind": "materialization", "asset": "evaluation_report", "metadata": {"html": "/h/report.html"}},
        {"kind": "warning", "step": "items", "message": "7 reviewed items have no metadata"},
        {
            "kind": "materialization",
            "asset": "convrec_model",
            "metadata": {
                "best_epoch": 9,
                "epochs_total": 10,
                "train_time_s": 24.0,
                "ensemble_size": 2,
                "ensemble_side_by_side": True,
            },
        },
    ]
    text = run_summary.summary_text(notes, status="SUCCESS", job="full_pipeline", run_id="r1", wall_s=95)
    assert "convrec: full_pipeline SUCCEEDED in 1 min 35 s (run r1)" in text
    assert "ConvRec" in text and "0.4500" in text and "0.6000" in text
    assert "ConvRec vs SASRec: worse (0.4500 vs 0.6600, p < 0.0001)" in text
    assert "recommendations: SASRec, 10 per user (best validation NDCG@10)" in text
    assert "report: /h/report.html" in text and "2 quarantined (malformed_json: 2)" in text
    assert "warnings (1):" in text and "7 reviewed items have no metadata" in text
    assert "ConvRec: an ensemble of 2 seeds trained side by side; member 0: best epoch 9 of 10, 24 s" in text
    failed = run_summary.summary_text(
        [
            {"kind": "failure", "step": "reviews", "message": "boom", "traceback": "Traceback: x"},
            {"kind": "skipped", "step": "items"},
        ],
        status="FAILURE",
        job="full_pipeline",
        run_id="r2",
        wall_s=3,
    )
    assert "failed step: reviews" in failed and "What to do:" in failed and "Traceback" not in failed
    assert "1 step(s) after it did not run" in failed
    assert "Traceback: x" in run_summary.summary_text(
        [{"kind": "failure", "step": "reviews", "message": "boom", "traceback": "Traceback: x"}],
        status="FAILURE",
        job="j",
        run_id="r3",
        wall_s=3,
        debug=True,
    )


def test_recommend_cli_refuses_a_k_below_one_with_a_usage_message(capsys, tmp_path):
    from convrec_dagster import recommend

    with pytest.raises(SystemExit) as exc:
        recommend.main(["--home", str(tmp_path), "--items", "A,B", "--k", "0"])
    assert exc.value.code == 2 and "--k must be at least 1, not 0" in capsys.readouterr().err
