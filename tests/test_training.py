"""The training loop: sampling, learning, early stopping, checkpoints and resume; evaluation helpers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models.batching import NegativeSampler, random_cuts, training_users
from models.evaluate import rank_eval_users, recommend_top_k
from models.metrics import per_user_metrics, summarize
from models.popularity import Popularity
from models.registry import build_model
from models.synthetic import chain_data
from models.train import TrainConfig, auto_ema_decay, config_hash, resolved_ema_decay, train, validate

HP = {"d": 32, "hidden": 64, "dropout": 0.1, "max_len": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return chain_data(n_users=240, n_items=50, min_len=6, max_len=18, seed=0)


def test_negatives_avoid_the_users_training_items_but_not_their_held_out_targets(data):
    sampler = NegativeSampler(data)
    users = training_users(data)
    negatives = sampler.sample(users, 100, np.random.default_rng(0))
    drawn_held_out = 0
    for u, row in zip(users, negatives):
        items = data.items[data.user_slice(u)]
        training = set(items[: data.n_train(u)].tolist())
        assert not training & set(row.tolist())
        drawn_held_out += len((set(items[data.n_train(u) :].tolist()) - training) & set(row.tolist()))
    assert drawn_held_out > 0  # validation and test targets are not the model's to know
    assert negatives.min() >= 1 and negatives.max() <= data.n_items


def test_random_cuts_stay_inside_training_rows(data):
    users = training_users(data)
    cuts = random_cuts(data, users, np.random.default_rng(1))
    starts, ends = data.user_ptr[users], data.user_ptr[users + 1]
    assert ((cuts > starts) & (cuts < ends - 2 * data.is_eval_user[users])).all()
    assert data.train_mask()[cuts].all()


def test_convrec_beats_popularity_on_sequential_data(data):
    config = TrainConfig(batch_size=64, lr=3e-3, weight_decay=0.0, max_epochs=15, patience=5, seed=0)
    pop = train(Popularity(data), data, "popularity", {}, config)
    torch.manual_seed(0)
    convrec = train(build_model("convrec", data, HP), data, "convrec", HP, config, log=lambda m: None)
    assert convrec.best_metrics["NDCG@10"] > pop.best_metrics["NDCG@10"] + 0.15, (
        convrec.best_metrics,
        pop.best_metrics,
    )
    losses = [h["loss"] for h in convrec.history]
    assert losses[-1] < losses[0]


class Interrupted(Exception):
    pass


def test_killed_run_resumes_from_the_saved_epoch_and_matches_an_uninterrupted_one(data, tmp_path):
    config = TrainConfig(batch_size=64, lr=3e-3, max_epochs=4, patience=10, seed=3)

    def run(out, on_epoch=None, messages=None):
        torch.manual_seed(0)
        model = build_model("convrec", data, HP)
        return train(
            model,
            data,
            "convrec",
            HP,
            config,
            out_dir=out,
            on_epoch=on_epoch,
            log=(messages.append if messages is not None else lambda m: None),
        )

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(tmp_path / "a", on_epoch=kill_after_two)
    messages: list[str] = []
    resumed = run(tmp_path / "a", messages=messages)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert any("resuming from epoch 2" in m for m in messages)
    straight = run(tmp_path / "b")
    np.testing.assert_allclose(
        [h["loss"] for h in resumed.history], [h["loss"] for h in straight.history], rtol=1e-5
    )
    assert json.loads((tmp_path / "a" / "history.json").read_text())[-1]["epoch"] == 4
    assert torch.load(tmp_path / "a" / "resume.pt", weights_only=True)["epoch"] == 4


def test_ema_weights_are_validated_kept_and_resumed(data, tmp_path):
    """With ``ema_decay`` the averaged weights are what validation scores and what the run keeps;
    a killed run resumes the average too (same per-epoch validation as an uninterrupted run)."""
    config = TrainConfig(batch_size=64, lr=3e-3, max_epochs=3, patience=10, seed=3, ema_decay=0.9)

    def run(out, on_epoch=None, ema_config=config):
        torch.manual_seed(0)
        model = build_model("convrec", data, HP)
        result = train(
            model, data, "convrec", HP, ema_config, out_dir=out, on_epoch=on_epoch, log=lambda m: None
        )
        return model, result

    def kill_after_one(record):
        if record["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(tmp_path / "a", on_epoch=kill_after_one)
    model, resumed = run(tmp_path / "a")
    _, straight = run(tmp_path / "b")
    valid = [h["valid_NDCG@10"] for h in resumed.history]
    np.testing.assert_allclose(valid, [h["valid_NDCG@10"] for h in straight.history], rtol=1e-6)
    assert resumed.best_epoch == int(np.argmax(valid)) + 1
    assert validate(model, data, torch.device("cpu"), "fp32", 256) == pytest.approx(resumed.best_metrics)
    kept = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["state_dict"]
    torch.testing.assert_close(kept, model.state_dict())
    _, plain = run(tmp_path / "c", ema_config=dataclasses.replace(config, ema_decay=0.0))
    assert [h["valid_NDCG@10"] for h in plain.history] != valid  # the average, not the last step, was scored
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_auto_ema_decay_averages_about_one_epoch_and_at_most_a_thousand_steps(data):
    assert auto_ema_decay(1518) == pytest.approx(0.999) and auto_ema_decay(1027) == pytest.approx(0.999)
    assert auto_ema_decay(10) == pytest.approx(0.9)  # a small set: not 100 epochs behind
    config = TrainConfig(batch_size=64, lr=3e-3, max_epochs=2, patience=10, seed=3, ema_decay="auto")
    model = build_model("convrec", data, HP)
    steps = -(-len(training_users(data)) // 64)  # one cut per user: ceil(users / batch) steps per epoch
    assert resolved_ema_decay(model, data, config) == pytest.approx(1 - 1 / steps)
    messages: list[str] = []
    train(model, data, "convrec", HP, config, log=messages.append)
    assert any(f"decay {1 - 1 / steps:.4f}" in m and "ema_decay auto" in m for m in messages)


def test_a_checkpoint_for_other_data_or_config_is_not_resumed(data, tmp_path):
    config = TrainConfig(batch_size=64, lr=3e-3, max_epochs=1, patience=10)
    train(build_model("convrec", data, HP), data, "convrec", HP, config, out_dir=tmp_path, log=lambda m: None)
    messages: list[str] = []
    other = {**HP, "dropout": 0.2}
    result = train(
        build_model("convrec", data, other),
        data,
        "convrec",
        other,
        config,
        out_dir=tmp_path,
        log=messages.append,
    )
    assert result.resumed_from is None and result.epochs_run == 1
    assert any("not resuming" in m and "starting over" in m for m in messages)


def test_full_validation_picks_the_best_epoch_by_full_ranking(data):
    """``valid_protocol="full"``: every epoch logs both protocols, the best epoch is the one with the
    highest full-ranking NDCG@10, and the kept weights score exactly that."""
    config = TrainConfig(batch_size=64, lr=3e-3, max_epochs=4, patience=10, seed=1, valid_protocol="full")
    torch.manual_seed(0)
    model = build_model("convrec", data, HP)
    messages: list[str] = []
    result = train(model, data, "convrec", HP, config, log=messages.append)
    # the time estimate counts both validations, measured on the first users
    assert any("expected ~" in m and "s of validation (full) per epoch" in m for m in messages)
    full = [h["valid_full_NDCG@10"] for h in result.history]
    sampled = [h["valid_NDCG@10"] for h in result.history]
    assert len(full) == 4 and full != sampled
    assert result.best_epoch == int(np.argmax(full)) + 1
    kept = validate(model, data, torch.device("cpu"), "fp32", 256, protocol="full")
    assert kept["full_NDCG@10"] == pytest.approx(max(full))
    _, greater, equal = rank_eval_users(model, data, "valid", "full", "cpu")
    assert kept["full_NDCG@10"] == pytest.approx(
        summarize(per_user_metrics(greater, equal, ks=(10,)))["NDCG@10"]
    )
    some = data.eval_users()[3:9]  # a subset of users ranks exactly as it does among all of them
    sub_users, sub_greater, sub_equal = rank_eval_users(model, data, "valid", "full", "cpu", users=some)
    assert sub_users.tolist() == some.tolist()
    assert sub_greater.tolist() == greater[3:9].tolist() and sub_equal.tolist() == equal[3:9].tolist()
    default = dataclasses.replace(config, valid_protocol="sampled_100")
    assert config_hash("convrec", HP, default) != config_hash("convrec", HP, config)  # no resume across them
    with pytest.raises(ValueError, match="valid_protocol"):
        TrainConfig(valid_protocol="sampled")


def test_full_validation_keeps_the_sampled_pick_beside_it(tmp_path):
    """Under ``valid_protocol="full"`` the sampled-100 validation picks its own epoch: ``best_sampled_100.pt``
    holds that epoch's weights (the sampled figures are reported from it), ``best.pt`` the full-ranking
    pick; a later run under the sampled protocol in the same folder leaves no stale pick behind."""
    from models.registry import load_model
    from models.train import SAMPLED_BEST

    data = chain_data(
        n_users=240, n_items=400, min_len=6, max_len=18, seed=0
    )  # more items than 100 negatives
    config = TrainConfig(batch_size=64, lr=1e-2, max_epochs=6, patience=10, seed=6, valid_protocol="full")
    torch.manual_seed(0)
    result = train(
        build_model("convrec", data, HP), data, "convrec", HP, config, out_dir=tmp_path, log=lambda m: None
    )
    sampled = [h["valid_NDCG@10"] for h in result.history]
    picked = result.extra["sampled_best"]
    assert picked["epoch"] == int(np.argmax(sampled)) + 1
    assert picked["epoch"] != result.best_epoch  # this run's two validations pick different epochs
    flagged = [h["epoch"] for h in result.history if h["best_sampled_100"]]
    assert (
        flagged[-1] == picked["epoch"]
        and [h["epoch"] for h in result.history if h["best"]][-1] == result.best_epoch
    )
    model, checkpoint = load_model(tmp_path / SAMPLED_BEST, data)
    assert checkpoint["extra"]["epoch"] == picked["epoch"]
    kept = validate(model, data, torch.device("cpu"), "fp32", 256)
    assert kept["NDCG@10"] == pytest.approx(max(sampled))
    full_pick = torch.load(tmp_path / "best.pt", weights_only=True)["extra"]["epoch"]
    assert full_pick == result.best_epoch
    again = dataclasses.replace(config, valid_protocol="sampled_100", max_epochs=1)
    result = train(
        build_model("convrec", data, HP), data, "convrec", HP, again, out_dir=tmp_path, log=lambda m: None
    )
    assert not (tmp_path / SAMPLED_BEST).exists() and "sampled_best" not in result.extra


def test_patience_waits_for_either_protocol():
    """Under "full" an epoch that improves only the sampled figure is not a bad epoch (the sampled pick
    may still come); under "sampled_100" the full figure plays no part."""
    from models.train import no_best, update_best

    full = TrainConfig(valid_protocol="full")
    best = no_best()
    epochs = [(0.30, 0.05), (0.32, 0.04), (0.31, 0.06), (0.29, 0.05)]  # (sampled, full) NDCG@10
    flags = [
        update_best(best, {"NDCG@10": s, "full_NDCG@10": f}, e, full) for e, (s, f) in enumerate(epochs, 1)
    ]
    assert flags == [(True, True), (False, True), (True, False), (False, False)]
    assert best["epoch"] == 3 and best["sampled"]["epoch"] == 2 and best["bad_epochs"] == 1
    best = no_best()
    for e, (s, f) in enumerate(epochs, 1):
        update_best(best, {"NDCG@10": s, "full_NDCG@10": f}, e, TrainConfig())
    assert best["epoch"] == 2 and "sampled" not in best and best["bad_epochs"] == 2


def test_early_stopping_counts_epochs_without_improvement(data):
    config = TrainConfig(batch_size=64, lr=0.0, max_epochs=30, patience=3)  # lr 0: nothing improves
    result = train(build_model("sasrec", data, HP), data, "sasrec", HP, config, log=lambda m: None)
    assert result.stopped_early and len(result.history) == 4 and result.best_epoch == 1


def test_full_protocol_masks_history_but_not_the_target(data):
    model = Popularity(data)
    users, greater, equal = rank_eval_users(model, data, "test", "full", "cpu")
    counts = data.train_item_counts().astype(float)
    for i, u in enumerate(users[:20]):
        target_row = data.target_position(u, "test")
        target = data.items[target_row]
        others = set(data.items[data.user_ptr[u] : target_row].tolist()) - {target}
        pool = np.array([j for j in range(1, data.n_items + 1) if j not in others and j != target])
        assert greater[i] == (counts[pool] > counts[target]).sum()
        assert equal[i] == (counts[pool] == counts[target]).sum()
    _, g_sampled, e_sampled = rank_eval_users(model, data, "valid", "sampled_100", "cpu")
    assert len(g_sampled) == len(users) and (g_sampled + e_sampled <= 100).all()
    assert 0 < summarize(per_user_metrics(g_sampled, e_sampled))["NDCG@10"] < 1


def test_recommendations_exclude_every_item_of_the_user(data):
    torch.manual_seed(0)
    model = build_model("convrec", data, HP)
    users, items, scores = recommend_top_k(model, data, 5, "cpu")
    assert items.shape == (len(users), 5) and (np.diff(scores, axis=1) <= 0).all()
    for u, row in zip(users, items):
        assert not set(row.tolist()) & set(data.items[data.user_slice(u)].tolist())


def test_rank_counts_count_nan_scores_against_the_model():
    from models.evaluate import _compare

    cand = torch.tensor([[0.5, float("nan"), 2.0]])
    above, tied = _compare(cand, torch.tensor([[1.0]]))
    assert above.tolist() == [[False, True, True]] and not tied.any()
    above, tied = _compare(cand, torch.tensor([[float("nan")]]))
    assert above.all() and not tied.any()


def test_window_search_keeps_the_window_whose_short_run_validates_best(data):
    """Each trial is an ordinary training run: training the chosen window alone, with the same
    settings, reproduces its trial's validation figure to the last digit."""
    from models.config import ConvRecConfig
    from models.window_search import search_max_len

    config = ConvRecConfig.from_hparams(HP)
    train_config = TrainConfig(batch_size=64, lr=3e-3, max_epochs=9, patience=9, seed=1)
    messages: list[str] = []
    chosen, trials = search_max_len("convrec", data, config, train_config, [2, 6], 2, log=messages.append)
    assert [t["max_len"] for t in trials] == [2, 6] and len(messages) == 2
    assert chosen == max(trials, key=lambda t: t["valid_NDCG@10"])["max_len"]
    torch.manual_seed(train_config.seed)
    alone = build_model("convrec", data, dataclasses.replace(config, max_len=chosen))
    short = dataclasses.replace(train_config, max_epochs=2, patience=2)
    result = train(alone, data, "convrec", {**HP, "max_len": chosen}, short, log=lambda m: None)
    best = next(t for t in trials if t["max_len"] == chosen)
    assert round(result.best_metrics["NDCG@10"], 4) == best["valid_NDCG@10"]
    with pytest.raises(ValueError, match="choices"):
        search_max_len("convrec", data, config, train_config, [], 1)


def test_training_hands_the_heap_s_free_pages_back_after_every_epoch(data, monkeypatch):
    """``release_free_memory`` (glibc's ``malloc_trim``) runs once per epoch; on glibc it reports success."""
    import platform

    import models.train

    calls = []
    real = models.train.release_free_memory
    monkeypatch.setattr(models.train, "release_free_memory", lambda: calls.append(1) or real())
    torch.manual_seed(0)
    hp = {"d": 16, "hidden": 32, "dropout": 0.0, "max_len": 8}
    model = build_model("convrec", data, hp)
    result = train(
        model, data, "convrec", hp, TrainConfig(batch_size=64, max_epochs=3, patience=10), log=print
    )
    assert len(calls) == len(result.history) == 3
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert real() is True
