"""The popularity adjustment fitted after training (models.calibration)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.batching import eval_targets, make_batch
from models.budgets import resolve_popularity_adjustment
from models.calibration import TAU_GRID, calibrate, pick_tau, raw_scores, validation_by_tau, write_tau
from models.evaluate import rank_eval_users
from models.metrics import per_user_metrics
from models.registry import build_model, load_model
from models.synthetic import chain_data
from models.train import SAMPLED_BEST, TrainConfig, train

HP = {"d": 32, "hidden": 64, "dropout": 0.1, "max_len": 16}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return chain_data(n_users=240, n_items=150, min_len=6, max_len=18, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    model = build_model("convrec", data, HP)
    config = TrainConfig(batch_size=64, lr=3e-3, weight_decay=0.0, max_epochs=3, patience=3, seed=0)
    train(model, data, "convrec", HP, config, log=lambda m: None)
    return model.eval()


def _batch(data, protocol: str):
    users = data.eval_users()[:32]
    targets = eval_targets(data, users, "valid")
    cands = np.concatenate([data.items[targets][:, None], data.eval_negatives[users]], 1)
    return make_batch(data, users, targets, 16, cands if protocol == "sampled_100" else cands[:, :1])


@pytest.mark.parametrize("name", ["convrec", "sasrec"])
def test_the_adjustment_subtracts_tau_times_log_count_from_every_score(data, name):
    torch.manual_seed(0)
    model = build_model(name, data, HP if name == "convrec" else {"max_len": 16}).eval()
    keys = set(model.state_dict())
    sampled, full = _batch(data, "sampled_100"), _batch(data, "full")
    with torch.no_grad():
        raw_sampled, raw_full = model.predict(sampled), model.full_sort_predict(full)
        model.set_popularity_adjustment(0.4, data.train_item_counts())
        log_count = torch.log1p(torch.as_tensor(data.train_item_counts(), dtype=torch.float32))
        torch.testing.assert_close(model.predict(sampled), raw_sampled - 0.4 * log_count[sampled.candidates])
        adjusted = model.full_sort_predict(full)
        torch.testing.assert_close(adjusted[:, 1:], raw_full[:, 1:] - 0.4 * log_count[1:])
        assert torch.isneginf(adjusted[:, 0]).all()  # the padding never ranks
        with raw_scores(model):
            torch.testing.assert_close(model.full_sort_predict(full), raw_full)
        assert model.popularity_adjustment == 0.4
    assert set(model.state_dict()) == keys  # a checkpoint's weights are the same with or without it


def test_a_nonzero_tau_needs_the_training_counts(data):
    model = build_model("convrec", data, HP)
    with pytest.raises(ValueError, match="training counts"):
        model.set_popularity_adjustment(0.3)
    model.set_popularity_adjustment(0.0)  # off needs nothing


@pytest.mark.parametrize("protocol", ["sampled_100", "full"])
def test_one_pass_over_validation_gives_each_tau_s_own_ranking(data, trained, protocol):
    """The figure for each tau from the shared pass equals a plain evaluation of the model holding that tau."""
    by_tau = validation_by_tau(trained, data, protocol, taus=(0.0, 0.5, 2.0))
    for tau, figure in by_tau.items():
        trained.set_popularity_adjustment(tau, data.train_item_counts())
        _, greater, equal = rank_eval_users(trained, data, "valid", protocol, "cpu")
        assert figure == pytest.approx(per_user_metrics(greater, equal, ks=(10,))["NDCG@10"].mean())
    trained.set_popularity_adjustment(0.0)
    assert len(set(by_tau.values())) > 1  # the adjustment moves the ranking


def test_the_smallest_of_equally_good_taus_is_picked():
    assert pick_tau({0.0: 0.5, 0.1: 0.6, 0.3: 0.6, 1.0: 0.2}) == 0.1
    assert pick_tau({0.0: 0.5, 0.2: 0.5}) == 0.0
    assert 0.0 in TAU_GRID and min(TAU_GRID) == 0.0  # validation can decline; never a popularity boost


def test_auto_fits_tau_on_validation_writes_it_and_loading_applies_it(tmp_path):
    """Training with ``auto`` ends with the grid's best tau on the protocol that picked each checkpoint,
    stored in that checkpoint; ``load_model`` restores it, so the loaded model scores as the trained one."""
    data = chain_data(n_users=240, n_items=400, min_len=6, max_len=18, seed=0)
    config = TrainConfig(
        batch_size=64, lr=1e-2, max_epochs=3, patience=10, seed=6, valid_protocol="full",
        popularity_adjustment="auto",
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model("convrec", data, HP)
    lines: list[str] = []
    result = train(model, data, "convrec", HP, config, out_dir=tmp_path, log=lines.append)
    fits = result.extra["popularity_adjustment"]
    assert set(fits) == {"full", "sampled_100"}
    for protocol, path in (("full", tmp_path / "best.pt"), ("sampled_100", tmp_path / SAMPLED_BEST)):
        figures = {float(t): v for t, v in fits[protocol]["valid_NDCG@10_by_tau"].items()}
        assert set(figures) == set(TAU_GRID)
        assert fits[protocol]["tau"] == pick_tau(figures)
        loaded, checkpoint = load_model(path, data)
        assert checkpoint["extra"]["popularity_adjustment"] == fits[protocol]["tau"]
        assert loaded.popularity_adjustment == fits[protocol]["tau"]
        _, greater, equal = rank_eval_users(loaded, data, "valid", protocol, "cpu")
        assert per_user_metrics(greater, equal, ks=(10,))["NDCG@10"].mean() == pytest.approx(
            figures[fits[protocol]["tau"]]
        )
    assert model.popularity_adjustment == fits["full"]["tau"]
    assert any("popularity adjustment tau" in line for line in lines)
    for path in (
        tmp_path / "best.pt",
        tmp_path / SAMPLED_BEST,
    ):  # whatever validation chose, as a stale value
        write_tau(path, 0.7)
    off = dataclasses.replace(config, popularity_adjustment=0.0)  # the finished run is reused, then left at 0
    result = train(
        build_model("convrec", data, HP), data, "convrec", HP, off, out_dir=tmp_path, log=lines.append
    )
    assert "reused" in result.extra and result.extra["popularity_adjustment"] == {}
    for path in (tmp_path / "best.pt", tmp_path / SAMPLED_BEST):
        assert load_model(path, data)[0].popularity_adjustment == 0.0


def test_a_set_tau_is_used_as_given_and_the_trained_weights_are_not_touched(data, tmp_path):
    torch.manual_seed(0)
    model = build_model("convrec", data, HP)
    config = TrainConfig(batch_size=64, lr=3e-3, max_epochs=1, seed=0, popularity_adjustment=0.25)
    train(model, data, "convrec", HP, config, out_dir=tmp_path, log=lambda m: None)
    before = torch.load(tmp_path / "best.pt", weights_only=True)
    fits = calibrate(model, data, 0.25, "sampled_100", tmp_path, SAMPLED_BEST, log=lambda m: None)
    assert fits["sampled_100"] == {"tau": 0.25, "protocol": "sampled_100", "valid_NDCG@10_by_tau": {}}
    after = torch.load(tmp_path / "best.pt", weights_only=True)
    assert after["extra"]["popularity_adjustment"] == 0.25
    for key, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key])


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("0", 0.0), ("0.3", 0.3), (0.5, 0.5)])
def test_the_setting_reads_auto_or_a_nonnegative_tau(value, expected):
    assert resolve_popularity_adjustment(value) == expected


@pytest.mark.parametrize("value", ["-0.1", "popular", None])
def test_any_other_setting_is_refused_with_what_to_write(value):
    with pytest.raises(ValueError, match="'auto' or a number >= 0"):
        resolve_popularity_adjustment(value)
    with pytest.raises(ValueError, match="popularity_adjustment"):
        TrainConfig(popularity_adjustment=-1.0)


def test_the_cpu_budget_fits_tau_for_every_model_and_the_paper_and_sample_budgets_do_not():
    from models.budgets import budget_settings

    for model in ("convrec", "sasrec", "convrec_attention"):
        assert budget_settings("cpu", model, "beauty")["popularity_adjustment"] == "auto"
        assert budget_settings("paper", model, "beauty")["popularity_adjustment"] == 0.0
        assert budget_settings("sample", model, "beauty")["popularity_adjustment"] == 0.0
