"""The training assets through Dagster on a tiny generated dump: checkpoints, metadata, resume."""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from assets import features, ingest, splits, training
from convrec_dagster.data import settings
from convrec_dagster.data.evaluation import model_configs
from convrec_dagster.data.report import training_table
from models.calibration import TAU_GRID
from models.synthetic import chain_data
from models.train import SAMPLED_BEST

UPSTREAM = dg.load_assets_from_modules([ingest, features, splits])
MODELS = ("popularity", "sasrec", "convrec_attention", "convrec")
TINY = {
    "d": 16,
    "hidden": 32,
    "max_len": 8,
    "max_epochs": 2,
    "batch_size": 32,
    "lr": 3e-3,
    "budget": "sample",
    "ensemble_size": 1,  # one model: the sample budget's ConvRec pair has tests of its own below
}


def _materialize(resources, names, overrides, instance=None):
    assets = [getattr(training, f"{n}_model") for n in names]
    run_config = dg.RunConfig(ops={f"{n}_model": training.TrainingConfig(**overrides) for n in names})
    return dg.materialize(assets, resources=resources, run_config=run_config, instance=instance)


def write_split_tables(db_path, data) -> None:
    """The splits/features stages' output tables (ARCHITECTURE.md contract), written by hand."""
    users = np.repeat(np.arange(1, data.n_users + 1), np.diff(data.user_ptr[1:]))
    position = np.arange(len(data.items)) - data.user_ptr[users]
    split = np.where(data.train_mask(), "train", "valid")
    split[data.user_ptr[2:][data.is_eval_user[1:]] - 1] = "test"
    ymd = data.ymd.astype(int)
    sequences = pd.DataFrame({
        "user_idx": users, "position": position, "item_idx": data.items, "split": split,
        "ts": 1_300_000_000 + position * 86_400, "year": ymd[:, 0], "month": ymd[:, 1], "day": ymd[:, 2],
        **{c: data.context[:, i] for i, c in enumerate(["t_year", "t_month", "t_day", "t_dow", "t_doy", "t_week"])},
    })  # fmt: skip
    user_index = pd.DataFrame(
        {
            "user_idx": np.arange(1, data.n_users + 1),
            "user_id": [f"U{u}" for u in range(1, data.n_users + 1)],
            "n_interactions": np.diff(data.user_ptr[1:]),
            "is_eval": data.is_eval_user[1:],
        }
    )
    counts = data.train_item_counts()
    item_index = pd.DataFrame(
        {
            "item_idx": np.arange(1, data.n_items + 1),
            "item_id": [f"I{i}" for i in range(1, data.n_items + 1)],
            "train_count": counts[1:],
        }
    )
    eval_users = data.eval_users()
    negatives = pd.DataFrame(
        {
            "user_idx": np.repeat(eval_users, 100),
            "neg_no": np.tile(np.arange(100), len(eval_users)),
            "item_idx": data.eval_negatives[eval_users].ravel(),
        }
    )
    proxy = pd.DataFrame(
        {
            "item_idx": np.arange(1, data.n_items + 1),
            "proxy_id": data.proxy_ids[1:],
            "train_count": counts[1:],
        }
    )
    attr_item = np.repeat(np.arange(data.n_items + 1), np.diff(data.attr_ptr))
    item_attributes = pd.DataFrame({"item_id": [f"I{i}" for i in attr_item], "attribute_id": data.attr_ids})
    vocab = pd.DataFrame(
        {
            "attribute_id": np.arange(1, data.n_attrs + 1),
            "kind": "category",
            "name": [f"a{a}" for a in range(1, data.n_attrs + 1)],
            "item_count": 1,
        }
    )
    with duckdb.connect(str(db_path)) as conn:
        for name, frame in [
            ("sequences", sequences),
            ("user_index", user_index),
            ("item_index", item_index),
            ("eval_negatives", negatives),
            ("proxy_ids", proxy),
            ("item_attributes", item_attributes),
            ("attribute_vocab", vocab),
        ]:
            conn.register("frame", frame)
            conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM frame")
            conn.unregister("frame")


@pytest.fixture
def prepared(make_resources, convrec_home, tmp_path):
    (tmp_path / "dump").mkdir()  # a configured raw dir: not the embedded sample
    resources = make_resources(tmp_path / "dump")
    write_split_tables(
        settings.duckdb_path(convrec_home), chain_data(n_users=60, n_items=40, max_len=14, seed=2)
    )
    return resources


def test_training_assets_write_checkpoints_and_metadata_then_resume(prepared):
    result = _materialize(prepared, MODELS, TINY)
    assert result.success
    paths = prepared["paths"]
    for name in MODELS:
        meta = result.asset_materializations_for_node(f"{name}_model")[0].metadata
        for key in (
            "best_epoch",
            "best_valid_NDCG@10",
            "parameters",
            "device",
            "peak_memory_mb",
            "wall_time_s",
            "curves",
        ):
            assert key in meta, (name, key)
        assert "data:image/png;base64," in meta["curves"].value
        folder = paths.model_path(name)
        checkpoint = torch.load(folder / "best.pt", weights_only=True)
        assert checkpoint["model"] == name and checkpoint["extra"]["fingerprint"]
        # the features its data was loaded with, so evaluation loads the same data without trying
        expected = meta["data_features"].value.replace("attributes+image", "both")
        assert checkpoint["extra"]["data_features"] == expected
        assert (expected == "none") == (name in ("popularity", "sasrec"))
        history = json.loads((folder / "history.json").read_text())
        assert len(history) == (1 if name == "popularity" else 2)
        assert (meta["parameters"].value == 0) == (name == "popularity")
    assert (paths.artifacts_path("models", "convrec") / "resume.pt").exists()

    # same config and data: the finished run is picked up, not retrained; a longer one continues
    again = _materialize(prepared, ["convrec"], {**TINY, "max_epochs": 3})
    meta = again.asset_materializations_for_node("convrec_model")[0].metadata
    assert (
        meta["resumed_from_epoch"].value == "no" and meta["epochs_run"].value == 3
    )  # max_epochs is in the config hash
    rerun = _materialize(prepared, ["convrec"], {**TINY, "max_epochs": 3})
    meta = rerun.asset_materializations_for_node("convrec_model")[0].metadata
    assert meta["resumed_from_epoch"].value == 3 and meta["epochs_run"].value == 0
    assert meta["epochs_total"].value == 3


def test_full_ranking_validation_picks_the_epoch_and_is_reported(prepared):
    """``valid_protocol: full``: each epoch's log line and the curves carry the full-ranking figure,
    and the metadata names the protocol and the best epoch's full-ranking figures."""
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(prepared, ["convrec"], {**TINY, "valid_protocol": "full"}, instance)
    meta = result.asset_materializations_for_node("convrec_model")[0].metadata
    assert meta["valid_protocol"].value == "full" and meta["train_config"].value["valid_protocol"] == "full"
    assert 0 < meta["best_valid_full_NDCG@10"].value <= meta["best_valid_full_HR@10"].value <= 1
    history = json.loads((prepared["paths"].model_path("convrec") / "history.json").read_text())
    best = max(history, key=lambda h: h["valid_full_NDCG@10"])
    assert meta["best_epoch"].value == best["epoch"]
    assert meta["best_valid_full_NDCG@10"].value == pytest.approx(best["valid_full_NDCG@10"])
    text = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "full-ranking NDCG@10" in text and "which picked the epoch" in text
    # the sampled figures come from the epoch the sampled validation picked (here the same epoch as the
    # full one: the tiny catalogue has fewer items than 100 negatives); the report names both epochs
    sampled_best = max(history, key=lambda h: h["valid_NDCG@10"])
    assert meta["sampled_100_best_epoch"].value == sampled_best["epoch"]
    assert f"NDCG@10 {sampled_best['valid_NDCG@10']:.4f} (best), full-ranking NDCG@10" in text
    home = prepared["paths"].model_path("convrec").parents[2]
    training = training_table({}, model_configs(home, ["convrec"]))[0]
    assert (training["best_epoch"], training["sampled_100_epoch"]) == (best["epoch"], sampled_best["epoch"])
    # evaluation scores the sampled protocol with best_sampled_100.pt and the full one with best.pt:
    # with other weights in the sampled pick, only the sampled figure follows them
    folder = prepared["paths"].model_path("convrec")
    picked = torch.load(folder / SAMPLED_BEST, weights_only=True)
    picked["state_dict"] = {k: v.flip(0) if v.ndim == 2 else v for k, v in picked["state_dict"].items()}
    torch.save(picked, folder / SAMPLED_BEST)
    scores = _evaluate_valid(home)
    assert scores["full"] == pytest.approx(best["valid_full_NDCG@10"], abs=1e-6)
    assert scores["sampled_100"] == pytest.approx(scores["direct_sampled_100"], abs=1e-6)
    assert abs(scores["sampled_100"] - sampled_best["valid_NDCG@10"]) > 1e-3
    sampled = _materialize(prepared, ["convrec"], TINY).asset_materializations_for_node("convrec_model")[0]
    assert sampled.metadata["valid_protocol"].value == "sampled_100"  # the sample budget's
    assert "best_valid_full_NDCG@10" not in sampled.metadata


def _evaluate_valid(home) -> dict[str, float]:
    """ConvRec's validation NDCG@10 per protocol as the evaluation stage scores its checkpoints, and
    (``direct_sampled_100``) the sampled figure of best_sampled_100.pt's weights scored directly."""
    from datetime import datetime

    from convrec_dagster.data.evaluation import DataCache, evaluate_checkpoints, trained_models
    from models.evaluate import EvalSettings
    from models.registry import load_model
    from models.train import validate

    cache = DataCache(lambda: duckdb.connect(str(settings.duckdb_path(home)), read_only=True))
    best = trained_models(home)["convrec"]
    rows, _, _ = evaluate_checkpoints(
        cache,
        {"convrec": best},
        EvalSettings(splits=("valid",), ks=(10,), n_boot=10),
        "cpu",
        "r",
        datetime.now(),
    )
    out = {
        r["protocol"]: r["value"]
        for r in rows
        if r["metric"] == "NDCG" and r["k"] == 10 and r["user_group"] == "all"
    }
    data = cache.for_checkpoint("convrec", best)
    model, _ = load_model(best.with_name(SAMPLED_BEST), data)
    return out | {"direct_sampled_100": validate(model, data, torch.device("cpu"), "fp32", 256)["NDCG@10"]}


def test_convrec_window_is_chosen_by_validation_unless_the_user_sets_it(prepared):
    """``max_len_choices``: a short run per window, the best validation figure's window trains, and the
    metadata shows the search; an explicit ``max_len`` is not searched (the other tests' TINY)."""
    instance = dg.DagsterInstance.ephemeral()
    search = {k: v for k, v in TINY.items() if k != "max_len"}
    search |= {"max_len_choices": [2, 8], "max_len_search_epochs": 1}
    result = _materialize(prepared, ["convrec"], search, instance)
    meta = result.asset_materializations_for_node("convrec_model")[0].metadata
    table = meta["window_search"].value
    scores = {int(row.split("|")[1].split()[0]): float(row.split("|")[2]) for row in table.splitlines()[2:]}
    assert set(scores) == {2, 8}
    chosen = meta["hparams"].value["max_len"]
    assert scores[chosen] == max(scores.values()) and f"| {chosen} (chosen) |" in table
    text = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "window search, L 2" in text and f"convrec: L {chosen} (the best validation figure" in text
    # the same settings and data again: the kept search stands, nothing is trained for it
    again = _materialize(prepared, ["convrec"], search, instance)
    meta = again.asset_materializations_for_node("convrec_model")[0].metadata
    assert meta["window_search"].value == table and meta["hparams"].value["max_len"] == chosen
    text = "\n".join(e.user_message for e in instance.all_logs(again.run_id))
    assert "its choice stands" in text and "window search, L 2" not in text
    fixed = _materialize(prepared, ["convrec"], {**TINY, "max_len_choices": None})
    meta = fixed.asset_materializations_for_node("convrec_model")[0].metadata
    assert "window_search" not in meta and meta["hparams"].value["max_len"] == TINY["max_len"]


def test_cpu_budget_trains_every_cut_over_all_items_with_a_window_from_the_data(prepared):
    """The cpu budget on ids with time context: ConvRec falls back to a sampled softmax (its candidate
    vectors depend on the row's time), SASRec keeps the softmax over all items; max_len comes from
    the data, and so does the id init; the log states the expected time and every epoch an ETA."""
    overrides = {"budget": "cpu", "max_epochs": 2, "d": 16, "hidden": 32, "n_negatives": 20}
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(prepared, ["sasrec", "convrec"], overrides, instance)
    assert result.success
    conv = result.asset_materializations_for_node("convrec_model")[0].metadata
    sas = result.asset_materializations_for_node("sasrec_model")[0].metadata
    assert conv["budget"].value == sas["budget"].value == "cpu"
    assert conv["train_config"].value["scheme"] == "all_cuts" and conv["hparams"].value["loss"] == "softmax"
    assert sas["hparams"].value["loss"] == "full_softmax" and sas["hparams"].value["max_len"] == 50
    # with a time path the ids keep PyTorch's N(0, 1) init (budgets.CPU_ENCODER's emb_init_std_with_time)
    assert conv["hparams"].value["max_len"] == 20 and conv["hparams"].value["emb_init_std"] is None
    assert conv["train_config"].value["time_budget_s"] == 3600
    # after training each model's scores get the popularity adjustment validation picks (tau 0 included)
    for meta in (conv, sas):
        fits = meta["popularity_adjustment"].value
        assert meta["popularity_adjustment_tau"].value == fits["sampled_100"]["tau"]
        assert set(fits["sampled_100"]["valid_NDCG@10_by_tau"]) == {str(t) for t in TAU_GRID}
    text = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert (
        "convrec: expected ~" in text and "ETA" in text and "max_len 20 from the data" in text
    )  # histories of 4-12 training rows
    assert "convrec: popularity adjustment tau" in text and "sasrec: popularity adjustment tau" in text


@pytest.mark.slow
def test_convrec_beats_popularity_on_the_embedded_sample(make_resources):
    """The default profile on the embedded sample dump (generated on first use)."""
    resources = make_resources()
    assert resources["paths"].is_embedded_sample()
    assert dg.materialize(UPSTREAM, resources=resources).success
    result = _materialize(resources, ["popularity", "convrec"], {})
    ndcg = {
        n: result.asset_materializations_for_node(f"{n}_model")[0].metadata["best_valid_NDCG@10"].value
        for n in ("popularity", "convrec")
    }
    assert ndcg["convrec"] > ndcg["popularity"] + 0.1, ndcg


def test_an_ensemble_of_seeds_trains_side_by_side_and_ranks_by_the_mean_score(prepared):
    """``ensemble_size`` 2 on a CPU with 2 threads: two member processes (seeds 42 and 43, one thread each,
    each resumable in its own folder; member 0 is the one-model run of the same settings), joined into one
    checkpoint that evaluation loads as a ``ScoreEnsemble`` ranking by the mean of the members' scores; a rerun
    reuses both members."""
    from models.ensemble import ScoreEnsemble
    from models.registry import load_model

    instance = dg.DagsterInstance.ephemeral()
    overrides = {**TINY, "valid_protocol": "full", "ensemble_size": 2, "num_threads": 2}
    result = _materialize(prepared, ["convrec"], overrides, instance)
    meta = result.asset_materializations_for_node("convrec_model")[0].metadata
    folder = prepared["paths"].model_path("convrec")
    text = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "an ensemble of 2 (seeds 42, 43)" in text and "one process each with 1 thread(s)" in text
    assert "convrec member 1 epoch 2:" in text and "[member 0]" in text
    assert meta["ensemble_size"].value == 2 and "**ensemble** (mean score)" in meta["ensemble_members"].value
    checkpoint = torch.load(folder / "best.pt", weights_only=True)
    assert checkpoint["extra"]["ensemble_size"] == 2 and not (folder / "resume.pt").exists()
    assert [m["seed"] for m in checkpoint["extra"]["members"]] == [42, 43]
    assert {k.split(".")[1] for k in checkpoint["state_dict"]} == {"0", "1"}
    assert meta["best_valid_full_NDCG@10"].value == pytest.approx(
        checkpoint["extra"]["valid"]["full_NDCG@10"]
    )

    # the joined checkpoint ranks by the mean of the members' own checkpoints' scores
    home = folder.parents[2]
    row = training_table({}, model_configs(home, ["convrec"]))[0]
    assert row["ensemble_size"] == 2 and row["member_epochs"] == checkpoint["extra"]["member_epochs"]
    assert len(row["member_epochs"]) == 2
    from convrec_dagster.data.evaluation import DataCache

    cache = DataCache(lambda: duckdb.connect(str(settings.duckdb_path(home)), read_only=True))
    data = cache.for_checkpoint("convrec", folder / "best.pt")
    ensemble, _ = load_model(folder / "best.pt", data)
    members = [load_model(folder / f"member_{i}" / "best.pt", data)[0] for i in (0, 1)]
    assert isinstance(ensemble, ScoreEnsemble) and len(ensemble) == 2
    from models.batching import make_batch

    users = data.eval_users()[:8]
    targets = data.user_ptr[users + 1] - 1
    cands = np.concatenate([data.items[targets][:, None], data.eval_negatives[users]], 1)
    batch = make_batch(data, users, targets, ensemble.max_len, cands)
    with torch.no_grad():
        mean = (members[0].eval().predict(batch) + members[1].eval().predict(batch)) / 2
        assert torch.allclose(ensemble.eval().predict(batch), mean, atol=1e-5)
        assert not torch.allclose(members[0].predict(batch), members[1].predict(batch))
    # evaluation scores it as validation did, and recommendations rank with it
    scores = _evaluate_valid(home)
    assert scores["full"] == pytest.approx(checkpoint["extra"]["valid"]["full_NDCG@10"], abs=1e-6)
    from convrec_dagster.recommend import Recommender

    recommender = Recommender.load(home, model="convrec")
    assert isinstance(recommender.model, ScoreEnsemble) and len(recommender.recommend(["I1", "I2"], k=5)) == 5

    # member 0 is the one-model run with the same settings (one thread, as it had)
    single = json.loads((folder / "member_0" / "history.json").read_text())
    assert json.loads((folder / "history.json").read_text()) == single
    again = _materialize(prepared, ["convrec"], overrides, instance)
    meta = again.asset_materializations_for_node("convrec_model")[0].metadata
    assert meta["reused_from_run"].value == result.run_id and meta["epochs_run"].value == 0
    one = _materialize(prepared, ["convrec"], {**overrides, "ensemble_size": 1, "num_threads": 1}, instance)
    history = json.loads((folder / "history.json").read_text())
    assert one.success and "ensemble_size" not in torch.load(folder / "best.pt", weights_only=True)["extra"]
    assert [h["valid_full_NDCG@10"] for h in history] == [h["valid_full_NDCG@10"] for h in single]


def test_mutual_learning_is_refused_with_what_to_do_where_it_cannot_train(prepared):
    """Mutual learning matches two copies' distributions over every item: on data with a time path (a per-row
    softmax) the run says it needs ``full_softmax``; under torchrun it says it does not combine."""

    def failure(overrides: dict) -> str:
        result = dg.materialize(
            [training.convrec_model],
            resources=prepared,
            run_config=dg.RunConfig(ops={"convrec_model": training.TrainingConfig(**overrides)}),
            raise_on_error=False,
        )
        assert not result.success
        return str(result.get_step_failure_events()[0].step_failure_data.error)

    refused = failure(
        {**TINY, "mutual_learning": 1.0, "ensemble_size": 2, "num_threads": 2}
    )  # before members start
    assert "needs loss='full_softmax'" in refused and "depend on each row's time" in refused
    assert "What to do: set mutual_learning to 0" in refused
    assert "does not combine with torchrun" in failure({**TINY, "mutual_learning": 1.0, "nproc_per_node": 2})


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"label_smoothing": 1.5}, "label_smoothing must be in [0, 1)"),  # models.train.TrainConfig
        ({"ensemble_size": 0}, "ensemble_size must be 1 (one model) or more"),  # the data layer's setup
    ],
)
def test_a_setting_the_model_cannot_take_fails_once_without_retries(prepared, overrides, says):
    """The training assets retry what can pass (a device error), never a setting that fails the same way again:
    one step failure that names the setting, no retry and no 15 s backoff."""
    result = dg.materialize(
        [training.convrec_model],
        resources=prepared,
        run_config=dg.RunConfig(ops={"convrec_model": training.TrainingConfig(**{**TINY, **overrides})}),
        raise_on_error=False,
    )
    assert not result.success
    failures = result.get_step_failure_events()
    assert len(failures) == 1 and says in str(failures[0].step_failure_data.error)
    assert not any(e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED") for e in result.all_events)
