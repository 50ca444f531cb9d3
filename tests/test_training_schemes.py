"""Training schemes that converge fast: all cuts per epoch, SASRec's all-positions pass, the softmax
over all items, learning-rate warm-up and decay, the time budget; the budgets that pick them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.batching import NegativeSampler, all_cuts, make_batch, training_users
from models.budgets import budget_settings, resolve_budget, resolve_loss
from models.popularity import Popularity
from models.registry import build_model
from models.synthetic import chain_data
from models.train import TrainConfig, _epoch_batches, epoch_examples, lr_factor, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def ids_only():
    """Item ids only (no time, no attributes): candidate vectors do not depend on the row."""
    data = chain_data(
        n_users=240, n_items=50, min_len=6, max_len=18, seed=0, with_time=False, with_attributes=False
    )
    data.proxy_ids = np.arange(data.n_items + 1)  # every item its own id
    data.n_proxy = data.n_items + 2
    return data


def test_all_cuts_lists_every_training_row_but_each_users_first(ids_only):
    data = ids_only
    users = training_users(data)
    owners, rows = all_cuts(data, users)
    n_train = np.array([data.n_train(u) for u in users])
    assert len(rows) == (n_train - 1).sum()
    assert data.train_mask()[rows].all()
    assert not np.isin(data.user_ptr[users], rows).any()  # a first row has nothing before it
    assert (rows >= data.user_ptr[owners] + 1).all() and (rows < data.user_ptr[owners + 1]).all()


def _every_cut(data):
    """(owners, target rows, one dummy candidate per row, the un-augmented L-12 histories) of every cut."""
    owners, rows = all_cuts(data, training_users(data))
    cands = np.zeros((len(rows), 1), np.int64)
    return owners, rows, cands, make_batch(data, owners, rows, 12, cands).items.numpy()


def test_crop_keeps_a_random_recent_part_of_each_history(ids_only):
    data = ids_only
    owners, rows, cands, full = _every_cut(data)
    rng = np.random.default_rng(0)
    assert (make_batch(data, owners, rows, 12, cands, rng=rng, crop_prob=0.0).items.numpy() == full).all()
    cropped = make_batch(data, owners, rows, 12, cands, rng=rng, crop_prob=0.5).items.numpy()
    length, kept = (full > 0).sum(1), (cropped > 0).sum(1)
    assert (kept >= 1).all() and (kept <= length).all()
    # what is kept is the most recent part, untouched, and the rest is padding
    assert ((cropped == full) | (cropped == 0)).all()
    assert all((cropped[i, 12 - kept[i] :] > 0).all() for i in range(len(rows)))
    shorter = (
        kept < length
    ).mean()  # about half the rows are cut, and a cut row loses items unless k = length
    assert 0.2 < shorter < 0.5


def test_replace_before_last_keeps_the_last_item_and_the_padding(ids_only):
    data = ids_only
    owners, rows, cands, full = _every_cut(data)
    rng = np.random.default_rng(0)
    same = make_batch(data, owners, rows, 12, cands, rng=rng, replace_before_last_prob=0.0).items.numpy()
    assert (same == full).all()
    mixed = make_batch(data, owners, rows, 12, cands, rng=rng, replace_before_last_prob=0.5).items.numpy()
    assert (mixed[:, -1] == full[:, -1]).all()  # the most recent item is never replaced
    assert ((mixed > 0) == (full > 0)).all()  # padding stays padding, items stay items
    before = full[:, :-1] > 0
    changed = (mixed[:, :-1] != full[:, :-1])[before].mean()  # a random item may equal the one it replaces
    assert 0.4 < changed < 0.5
    with pytest.raises(ValueError, match="replace_before_last_prob"):
        TrainConfig(replace_before_last_prob=1.5)


def test_sasrec_positionwise_batches_shift_targets_by_one(ids_only):
    data = ids_only
    model = build_model("sasrec", data, {"d": 16, "max_len": 8, "loss": "bce"})
    config = TrainConfig(scheme="all_cuts", batch_size=400, n_negatives=1, augment_prob=0.0)
    size, (items, targets, negatives) = next(
        _epoch_batches(model, data, NegativeSampler(data), np.random.default_rng(0), config)
    )
    assert size == len(training_users(data)) and negatives.shape == (*items.shape, 1)
    users = training_users(data)
    order = np.random.default_rng(0).permutation(len(users))
    u = users[order[0]]  # the same permutation the epoch drew
    train_items = data.items[data.user_ptr[u] : data.user_ptr[u] + data.n_train(u)]
    row_items, row_targets = items[0].numpy(), targets[0].numpy()
    real = row_items > 0
    np.testing.assert_array_equal(row_targets[real], train_items[-real.sum() :])
    np.testing.assert_array_equal(row_items[real], train_items[-real.sum() - 1 : -1])
    assert (row_targets[~real] == 0).all()


@pytest.mark.parametrize("loss", ["bce", "full_softmax"])
def test_sasrec_trained_its_own_way_beats_popularity(ids_only, loss):
    data = ids_only
    config = TrainConfig(
        scheme="all_cuts",
        batch_size=32,
        lr=3e-3,
        weight_decay=0.0,
        max_epochs=12,
        patience=4,
        n_negatives=1,
        adam_beta2=0.98,
        augment_prob=0.0,
        seed=0,
    )
    pop = train(Popularity(data), data, "popularity", {}, config, **QUIET)
    torch.manual_seed(0)
    hp = {"d": 32, "max_len": 16, "dropout": 0.2, "loss": loss}
    result = train(build_model("sasrec", data, hp), data, "sasrec", hp, config, **QUIET)
    assert result.best_metrics["NDCG@10"] > pop.best_metrics["NDCG@10"] + 0.15, (
        result.best_metrics,
        pop.best_metrics,
    )
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_convrec_all_cuts_with_full_softmax_learns_faster_than_one_cut(ids_only):
    """Same epochs, same everything else: all cuts + softmax over every item ends far ahead."""
    data = ids_only
    hp = {"d": 32, "hidden": 64, "dropout": 0.1, "max_len": 16}
    scores = {}
    for scheme, loss in (("one_cut", "softmax"), ("all_cuts", "full_softmax")):
        torch.manual_seed(0)
        config = TrainConfig(
            scheme=scheme, batch_size=64, lr=3e-3, weight_decay=0.0, max_epochs=3, patience=3, seed=0
        )
        result = train(
            build_model("convrec", data, {**hp, "loss": loss}),
            data,
            "convrec",
            {**hp, "loss": loss},
            config,
            **QUIET,
        )
        scores[scheme] = result.best_metrics["NDCG@10"]
        assert result.history[0]["examples_per_s"] > 0
    assert epoch_examples(build_model("convrec", data, hp), data, TrainConfig(scheme="all_cuts")) > len(
        training_users(data)
    )
    assert scores["all_cuts"] > scores["one_cut"] + 0.1, scores


def test_full_softmax_needs_row_independent_candidates():
    data = chain_data(n_users=30, n_items=20, seed=1, with_time=True)
    model = build_model("convrec", data, {"d": 16, "hidden": 16, "max_len": 8, "loss": "full_softmax"})
    with pytest.raises(ValueError, match="do not depend on the row"):
        model.item_vectors()
    assert resolve_loss("full_softmax", 256, row_dependent=True) == ("softmax", 256)
    assert resolve_loss("full_softmax", 256, row_dependent=False) == ("full_softmax", 256)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("name", ["convrec", "sasrec"])
def test_shared_softmax_over_every_item_equals_the_full_softmax(ids_only, name, smoothing):
    """A shared sample that holds every item (in any order) is the full softmax, term for term, also
    with label smoothing (the positive's own copy among the negatives is masked, not a class)."""
    data = ids_only
    torch.manual_seed(0)
    hp = (
        {"d": 16, "hidden": 16, "max_len": 8, "dropout": 0.0}
        if name == "convrec"
        else {"d": 16, "max_len": 8}
    )
    model = build_model(name, data, {**hp, "loss": "shared_softmax"}).eval()
    model.label_smoothing = smoothing
    config = TrainConfig(scheme="all_cuts", batch_size=32, n_negatives=10_000, augment_prob=0.0)
    _, batch = next(_epoch_batches(model, data, NegativeSampler(data), np.random.default_rng(0), config))
    if isinstance(batch, tuple):  # SASRec's position-wise batch: (items, targets, negatives)
        items, targets, negatives = batch
        assert negatives.shape[-1] == data.n_items and (negatives == negatives[0, 0]).all()
        shared = model.calculate_positionwise_loss(items, targets, negatives)
        model.loss = "full_softmax"
        full = model.calculate_positionwise_loss(items, targets, None)
    else:
        negatives = batch.candidates[:, 1:]
        assert negatives.shape[1] == data.n_items and (negatives == negatives[0]).all()
        assert sorted(negatives[0].tolist()) == list(range(1, data.n_items + 1))
        shared = model.calculate_loss(batch)
        model.loss = "full_softmax"
        full = model.calculate_loss(batch)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(shared)


def test_label_smoothing_spreads_over_the_finite_candidates_only():
    """``softmax_cross_entropy`` is ``F.cross_entropy``'s label smoothing where every logit is finite,
    and leaves a masked (-inf) candidate out of the row's classes instead of returning inf."""
    import torch.nn.functional as F

    from models.base import softmax_cross_entropy

    torch.manual_seed(0)
    logits, targets = torch.randn(6, 9), torch.randint(0, 9, (6,))
    for eps in (0.0, 0.1, 0.3):
        torch.testing.assert_close(
            softmax_cross_entropy(logits, targets, eps), F.cross_entropy(logits, targets, label_smoothing=eps)
        )
        fused = logits.clone().requires_grad_()
        spread = logits.clone().requires_grad_()
        softmax_cross_entropy(fused, targets, eps, masked=False).backward()
        softmax_cross_entropy(spread, targets, eps).backward()
        torch.testing.assert_close(fused.grad, spread.grad)  # the full softmax's fused path: the same loss
    masked = torch.cat([logits[:1], torch.full((1, 1), float("-inf"))], 1)  # one row, a 10th masked class
    target = targets[:1]
    assert torch.isinf(F.cross_entropy(masked, target, label_smoothing=0.1))
    torch.testing.assert_close(
        softmax_cross_entropy(masked, target, 0.1), F.cross_entropy(logits[:1], target, label_smoothing=0.1)
    )
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)


def test_convrec_learns_with_a_shared_sample_of_negatives(ids_only):
    """ConvRec with 20 shared negatives of 50 items ends well above popularity."""
    data = ids_only
    config = TrainConfig(
        scheme="all_cuts", batch_size=64, lr=3e-3, weight_decay=0.0, max_epochs=3, patience=3, seed=0,
        n_negatives=20, augment_prob=0.0,
    )  # fmt: skip
    pop = train(Popularity(data), data, "popularity", {}, config, **QUIET)
    torch.manual_seed(0)
    hp = {"d": 32, "hidden": 64, "dropout": 0.0, "max_len": 16, "loss": "shared_softmax"}
    result = train(build_model("convrec", data, hp), data, "convrec", hp, config, **QUIET)
    assert result.best_metrics["NDCG@10"] > pop.best_metrics["NDCG@10"] + 0.1, (
        result.best_metrics,
        pop.best_metrics,
    )
    assert resolve_loss("shared_softmax", 100, row_dependent=True) == ("softmax", 100)
    # a shared sample's size per row would encode B times as many candidates: capped
    assert resolve_loss("shared_softmax", 2048, row_dependent=True) == ("softmax", 256)
    assert resolve_loss("full_softmax", 2048, row_dependent=True) == ("softmax", 2048)
    assert resolve_loss("shared_softmax", 2048, row_dependent=False) == ("shared_softmax", 2048)


def test_lr_warmup_then_cosine_decay():
    config = TrainConfig(lr=1.0, max_epochs=10, warmup_epochs=2, lr_schedule="cosine")
    factors = [lr_factor(step, 5, config) for step in range(50)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))  # rising during warm-up
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then decaying
    assert factors[-1] < 0.01
    assert lr_factor(7, 5, TrainConfig()) == 1.0
    with pytest.raises(ValueError, match="scheme"):
        TrainConfig(scheme="every_other")


def test_plateau_schedule_cuts_the_learning_rate_after_each_epoch_without_gain(ids_only, tmp_path):
    """``lr_schedule: plateau``: an epoch whose validation did not improve sends the next epoch in at
    ``plateau_factor`` x the rate; a resumed run keeps the cut rate (it lives in the scheduler's state)."""
    hp = {"d": 16, "max_len": 8, "loss": "full_softmax"}
    config = TrainConfig(
        scheme="all_cuts",
        batch_size=64,
        lr=1e-9,
        max_epochs=4,
        patience=6,
        lr_schedule="plateau",
        plateau_factor=0.5,
    )  # steps of 1e-9 leave float32 weights as they are: no epoch after the first improves
    torch.manual_seed(0)
    messages = []
    result = train(
        build_model("sasrec", ids_only, hp),
        ids_only,
        "sasrec",
        hp,
        config,
        out_dir=tmp_path,
        log=messages.append,
    )
    lrs = [h["lr"] for h in result.history]
    assert [h["best"] for h in result.history] == [True, False, False, False]
    for before, lr_before, lr_after in zip(result.history, lrs, lrs[1:]):
        assert lr_after == pytest.approx(lr_before * (1.0 if before["best"] else 0.5))
    cuts = sum(not h["best"] for h in result.history[:-1])  # the last epoch ends the run: no cut after it
    assert sum("learning rate x 0.5" in m for m in messages) == cuts
    state = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert state["scheduler"]["base_lrs"][0] == pytest.approx(1e-9 * 0.5**cuts)
    with pytest.raises(ValueError, match="plateau_factor"):
        TrainConfig(plateau_factor=0.0)


def test_time_budget_stops_training_and_says_so(ids_only):
    config = TrainConfig(
        scheme="all_cuts", batch_size=64, lr=1e-3, max_epochs=50, patience=50, time_budget_s=1e-6
    )
    hp = {"d": 16, "max_len": 8, "loss": "full_softmax"}
    result = train(build_model("sasrec", ids_only, hp), ids_only, "sasrec", hp, config, **QUIET)
    assert len(result.history) == 1 and result.history[0]["stop"] == "time_budget"
    assert result.history[0]["eta_s"] == 0.0 and result.history[0]["elapsed_s"] > 0


def test_time_budget_is_a_hard_cap_that_never_starts_an_epoch_it_cannot_finish():
    """Beauty's 14th epoch began at 58.8 of 60 minutes and ended at 63.4 (stop 38): the budget now stops
    before an epoch expected (at the mean epoch time so far) to end past it."""
    from models.train import epoch_record

    config = TrainConfig(max_epochs=50, patience=50, time_budget_s=100.0)
    metrics = {"HR@10": 0.5, "NDCG@10": 0.3}

    def stop(epoch: int, spent: float) -> str | None:
        times = (spent / epoch, spent / epoch, spent)
        return epoch_record(config, epoch, 1.0, metrics, times, 10, (True, False), 1e-3, 0, epoch - 1)["stop"]

    assert stop(2, 60.0) is None  # 60 + 30 <= 100: the third epoch fits
    assert stop(2, 70.0) == "time_budget"  # 70 + 35 > 100: it would overrun, though 30 s are left
    assert stop(3, 99.0) == "time_budget"
    assert stop(1, 40.0) is None and stop(1, 51.0) == "time_budget"


def test_training_logs_an_estimate_before_the_first_epoch_ends(ids_only):
    lines: list[str] = []
    config = TrainConfig(scheme="all_cuts", batch_size=8, max_epochs=2, patience=2)
    hp = {"d": 16, "max_len": 8, "loss": "full_softmax"}
    train(build_model("sasrec", ids_only, hp), ids_only, "sasrec", hp, config, log=lines.append)
    estimate = [line for line in lines if "expected" in line]
    assert len(estimate) == 1 and "per epoch" in estimate[0] and "min" in estimate[0]


def test_budgets_auto_and_per_model_settings():
    assert resolve_budget("auto", embedded_sample=True, cuda=True) == "sample"
    assert resolve_budget("auto", embedded_sample=False, cuda=False) == "cpu"
    assert resolve_budget("auto", embedded_sample=False, cuda=True) == "paper"
    with pytest.raises(ValueError, match="budget"):
        resolve_budget("weekend", False, False)
    sasrec = budget_settings("cpu", "sasrec", "games")
    assert (sasrec["d"], sasrec["dropout"], sasrec["lr"], sasrec["adam_beta2"]) == (50, 0.5, 1e-3, 0.98)
    assert sasrec["scheme"] == "all_cuts" and sasrec["time_budget_min"] == 60
    sample = {m: budget_settings("sample", m, "games") for m in ("convrec", "convrec_attention", "sasrec")}
    assert (sample["convrec"]["ema_decay"], sample["convrec"]["max_epochs"]) == ("auto", 10)
    assert (sample["convrec_attention"]["ema_decay"], sample["convrec_attention"]["max_epochs"]) == (0.0, 3)
    # ConvRec trains in SASRec's batches there (stop 36), its attention counterpart keeps the budget's
    assert (sample["convrec"]["batch_size"], sample["convrec"]["lr"], sample["convrec"]["weight_decay"]) == (
        32,
        1e-3,
        0.1,
    )
    assert sample["convrec"]["batch_size"] == sample["sasrec"]["batch_size"]
    # ConvRec alone crops half its rows there (stop 37); no other budget or model crops
    assert [sample[m]["crop_prob"] for m in ("convrec", "convrec_attention", "sasrec")] == [0.5, 0.0, 0.0]
    assert all(budget_settings(b, m, "games")["crop_prob"] == 0.0 for b in ("cpu", "paper") for m in sample)
    # ConvRec alone replaces the items before the last there (stop 44); no other budget or model does
    assert [sample[m]["replace_before_last_prob"] for m in ("convrec", "convrec_attention", "sasrec")] == [
        0.6,
        0.0,
        0.0,
    ]
    # ConvRec alone trains as a pair of seeds there, side by side on the two threads (stop 47)
    assert [(sample[m]["ensemble_size"], sample[m]["num_threads"]) for m in sample] == [
        (2, 2),
        (1, 1),
        (1, 1),
    ]
    assert all(
        budget_settings(b, m, "games")["replace_before_last_prob"] == 0.0
        for b in ("cpu", "paper")
        for m in sample
    )
    assert (sample["convrec_attention"]["batch_size"], sample["convrec_attention"]["lr"]) == (128, 3e-3)
    # only ConvRec's window is searched, and only under the sample budget
    assert sample["convrec"]["max_len_choices"] == [2, 5, 10, 20]
    assert sample["convrec_attention"]["max_len_choices"] == sample["sasrec"]["max_len_choices"] == []
    assert all(budget_settings(b, "convrec", "games")["max_len_choices"] == [] for b in ("cpu", "paper"))
    assert sample["sasrec"]["max_epochs"] == 15 and sample["sasrec"]["ema_decay"] == 0.0
    paper = budget_settings("paper", "convrec", "beauty")
    assert (paper["scheme"], paper["lr"], paper["max_len"]) == ("one_cut", 4e-5, 70)
    assert budget_settings("paper", "sasrec", "beauty")["loss"] == "bce"
    assert (
        math.isclose(budget_settings("cpu", "convrec", "games")["lr"], 1e-3)
        and budget_settings("cpu", "convrec", "games")["max_len"] == 0
    )


def test_the_id_init_depends_on_whether_the_encoder_has_a_time_path():
    from models.budgets import CPU_ENCODER, resolve_emb_init

    budget, with_time = CPU_ENCODER["emb_init_std"], CPU_ENCODER["emb_init_std_with_time"]
    assert resolve_emb_init(None, budget, with_time, has_time=False) == 0.02
    assert resolve_emb_init(None, budget, with_time, has_time=True) is None  # PyTorch's N(0, 1)
    assert resolve_emb_init(0.05, budget, with_time, has_time=True) == 0.05  # the user's choice wins
    assert resolve_emb_init(0.0, budget, with_time, has_time=False) is None


def test_unit_init_embedding_tables_learn_faster_by_the_ratio_of_init_scales(ids_only):
    from models.budgets import EMB_REFERENCE_STD, resolve_embedding_lr_scale
    from models.train import make_optimizer

    assert resolve_embedding_lr_scale("auto", None, item_features=True) == 1 / EMB_REFERENCE_STD == 50
    assert resolve_embedding_lr_scale("auto", 0.02, item_features=True) == 1.0  # small tables: as they are
    assert (
        resolve_embedding_lr_scale("auto", None, item_features=False) == 1.0
    )  # SASRec keeps Kang & McAuley's
    assert resolve_embedding_lr_scale(3, None, item_features=True) == 3.0  # the user's value wins
    assert budget_settings("sample", "convrec", "games")["embedding_lr_scale"] == "auto"
    assert budget_settings("paper", "convrec", "games")["embedding_lr_scale"] == 1.0

    model = build_model("convrec", ids_only, {"d": 16, "max_len": 8, "loss": "full_softmax"})
    config = TrainConfig(lr=2e-3, weight_decay=0.1, embedding_lr_scale=50)
    groups = make_optimizer(model, ids_only, config)[0].param_groups
    table = model.encoder.proxy.weight
    (fast,) = [g for g in groups if any(p is table for p in g["params"])]
    (rest,) = [g for g in groups if g is not fast]
    assert fast["lr"] == pytest.approx(0.1) and rest["lr"] == pytest.approx(2e-3)
    assert fast["lr"] * fast["weight_decay"] == pytest.approx(
        rest["lr"] * rest["weight_decay"]
    )  # same decay/step
    assert len(fast["params"]) == 1 and len(rest["params"]) == len(list(model.parameters())) - 1
    assert len(make_optimizer(model, ids_only, TrainConfig())[0].param_groups) == 1
    with pytest.raises(ValueError, match="embedding_lr_scale"):
        TrainConfig(embedding_lr_scale=0)


@pytest.mark.parametrize("with_time", [False, True])
def test_cpu_budget_trains_convrec_on_every_item_with_both_picks_only_without_a_time_path(with_time):
    """``budgets.CPU_CONVREC_WITHOUT_TIME`` applies where no candidate vector depends on the row, and
    never over a value the user set."""
    from assets.training import TrainingConfig
    from convrec_dagster.data.dataset_info import DatasetInfo
    from convrec_dagster.data.training_setup import prepare_training, resolve_settings
    from models.budgets import (
        CPU_CONVREC,
        CPU_CONVREC_IDS_ONLY,
        CPU_CONVREC_WITH_FEATURES,
        CPU_CONVREC_WITHOUT_TIME,
        CPU_ENCODER,
    )

    data = chain_data(n_users=30, n_items=20, seed=1, with_time=with_time, with_attributes=False)
    info = DatasetInfo(name="Video", format="sasrec_sequences", has_time=with_time)

    def resolved(model: str, on=data, **user) -> tuple[dict, list[str]]:
        lines: list[str] = []
        _, _, s = resolve_settings(TrainingConfig(budget="cpu", **user).model_dump(), info, model, cuda=False)
        model_config, train = prepare_training(model, s, on, lines.append)
        return {
            **model_config.to_hparams(),
            "loss": s["loss"],
            "ensemble_size": s["ensemble_size"],
            **vars(train),
        }, lines

    conv, lines = resolved("convrec")
    assert conv["ensemble_size"] == 1  # with a time path, and on ids only, one model
    if with_time:  # a per-row softmax over sampled negatives, dropout .2
        assert (conv["dropout"], conv["augment_prob"], conv["loss"]) == (0.2, 0.0, "softmax")
        assert (conv["ema_decay"], conv["lr"]) == (CPU_CONVREC["ema_decay"], CPU_ENCODER["lr"])
        assert (conv["weight_decay"], conv["batch_size"]) == (0.0, CPU_ENCODER["batch_size"])
        assert conv.get("residual_pool", "avg") == "avg"  # the paper's residuals where time enters
        assert not any("no time path" in line for line in lines)
        assert (conv["d"], conv["warmup_epochs"], conv["label_smoothing"]) == (CPU_ENCODER["d"], 0.0, 0.0)
        assert conv["valid_protocol"] == "sampled_100"  # full ranking per row with time costs too much
    else:
        # ids only: item replacement .2 and lr 2e-3 (stops 23, 32)
        assert (
            (conv["dropout"], conv["augment_prob"])
            == (0.0, CPU_CONVREC_IDS_ONLY["augment_prob"])
            == (0.0, 0.2)
        )
        # the residuals keep each window's last position (stop 31), unless the user chose
        assert conv["residual_pool"] == CPU_CONVREC_WITHOUT_TIME["residual_pool"] == "last"
        assert resolved("convrec", residual_pool="avg")[0].get("residual_pool", "avg") == "avg"
        # weight decay .5 (stop 29) and each protocol's figures from its own pick (stop 32)
        assert conv["weight_decay"] == CPU_CONVREC_WITHOUT_TIME["weight_decay"] == 0.5
        assert conv["valid_protocol"] == CPU_CONVREC_WITHOUT_TIME["valid_protocol"] == "full"
        assert resolved("convrec", valid_protocol="sampled_100")[0]["valid_protocol"] == "sampled_100"
        assert conv["ema_decay"] == CPU_CONVREC["ema_decay"] == "auto"
        assert any("no time path" in line and "dropout 0.0" in line for line in lines)
        # the softmax over every item at batch 1,024 (stop 28)
        assert (conv["loss"], conv["batch_size"], conv["lr"]) == ("full_softmax", 1024, 2e-3)
        assert conv["lr"] == CPU_CONVREC_IDS_ONLY["lr"] and any("item ids only" in line for line in lines)
        mine, _ = resolved("convrec", dropout=0.3, loss="shared_softmax", ema_decay=0.0, lr=5e-4, batch_size=64,
                           weight_decay=0.0, augment_prob=0.1)  # fmt: skip
        assert (mine["dropout"], mine["loss"], mine["augment_prob"]) == (0.3, "shared_softmax", 0.1)
        assert (mine["batch_size"], mine["weight_decay"]) == (64, 0.0)
        assert (mine["ema_decay"], mine["lr"]) == (0.0, 5e-4)
        assert (conv["d"], conv["warmup_epochs"], conv["label_smoothing"]) == (CPU_ENCODER["d"], 0.0, 0.0)
        assert conv["ensemble_size"] == 1  # one model on ids only
        # the ids-only rule needs ids only: with item attributes no item replacement (it cost Beauty .005 of
        # full-ranking NDCG@10, stop 31), and instead the features rule: twice the width with dropout .2,
        # a one-epoch warm-up to lr 2e-3 and label smoothing .1 (stops 37-38), as an ensemble of two seeds (stop 46)
        with_attributes = chain_data(n_users=30, n_items=20, seed=1, with_time=False, with_attributes=True)
        attrs, lines = resolved("convrec", on=with_attributes)
        assert attrs["ema_decay"] == conv["ema_decay"]
        assert (attrs["loss"], attrs["batch_size"], attrs["weight_decay"]) == ("full_softmax", 1024, 0.5)
        assert (attrs["augment_prob"], attrs["valid_protocol"]) == (0.0, "full")
        features = {k: attrs[k] for k in CPU_CONVREC_WITH_FEATURES}
        assert features == CPU_CONVREC_WITH_FEATURES == {
            "d": 256, "hidden": 512, "dropout": 0.2, "warmup_epochs": 1.0, "lr": 2e-3, "label_smoothing": 0.1,
            "ensemble_size": 2,
        }  # fmt: skip
        assert any("with item features" in line and "d 256" in line for line in lines)
        assert not any("item ids only" in line for line in lines)
        users = {"d": 64, "dropout": 0.0, "label_smoothing": 0.0, "warmup_epochs": 0.0, "ensemble_size": 1}
        mine, _ = resolved("convrec", on=with_attributes, **users)
        assert {k: mine[k] for k in users} == users
        assert (mine["hidden"], mine["lr"]) == (512, 2e-3)  # the rule's keys the user left unset
    attention, _ = resolved("convrec_attention")  # measured on ConvRec only: its counterpart keeps .2
    assert (attention["dropout"], attention["ema_decay"], attention["weight_decay"]) == (0.2, 0.0, 0.0)


@pytest.mark.parametrize("with_time", [False, True])
def test_the_cpu_budget_samples_the_softmax_only_on_a_large_catalogue(with_time, monkeypatch):
    """Over ``LARGE_CATALOGUE_ITEMS`` items the cpu budget's softmax over every item becomes a shared sample
    (with a time path: the per-row softmax it falls back to, as before), for every model; never over a loss
    the user set."""
    import models.budgets as budgets
    from assets.training import TrainingConfig
    from convrec_dagster.data.dataset_info import DatasetInfo
    from convrec_dagster.data.training_setup import prepare_training, resolve_settings

    data = chain_data(n_users=30, n_items=20, seed=1, with_time=with_time, with_attributes=False)
    info = DatasetInfo(name="Video", format="sasrec_sequences", has_time=with_time)

    def resolved(model: str, **user) -> tuple[tuple[str, int], list[str]]:
        lines: list[str] = []
        _, _, s = resolve_settings(TrainingConfig(budget="cpu", **user).model_dump(), info, model, cuda=False)
        prepare_training(model, s, data, lines.append)
        return (s["loss"], s["n_negatives"]), lines

    small = {model: resolved(model)[0] for model in ("convrec", "sasrec")}
    assert small["sasrec"] == ("full_softmax", 256)
    assert small["convrec"] == (("softmax", 256) if with_time else ("full_softmax", 256))
    monkeypatch.setattr(budgets, "LARGE_CATALOGUE_ITEMS", data.n_items - 1)
    (sasrec, lines) = resolved("sasrec")
    assert sasrec == ("shared_softmax", 4096) and any("items x rows" in line for line in lines)
    assert resolved("convrec")[0] == (("softmax", 256) if with_time else ("shared_softmax", 4096))
    assert not any("items x rows" in line for line in resolved("popularity")[1])  # nothing to train
    assert resolved("sasrec", loss="full_softmax")[0] == ("full_softmax", 256)  # the user's choice
    assert resolved("sasrec", n_negatives=1000)[0] == ("shared_softmax", 1000)
    _, _, paper = resolve_settings(TrainingConfig(budget="paper").model_dump(), info, "convrec", cuda=False)
    assert budgets.apply_large_catalogue(paper, 10**6) == {}  # the paper budget samples 100 already


@pytest.mark.parametrize(
    "has_context,has_attributes,has_images,d",
    [
        (False, True, False, 256),
        (False, False, False, 128),
        (True, True, False, 128),
        (False, False, True, 256),
    ],
)
def test_preflight_times_the_width_the_features_rule_will_train(has_context, has_attributes, has_images, d):
    """Preflight's time estimate resolves the same data-dependent rules as training: ConvRec with item
    features (attributes or pretrained image vectors) and no time path is timed at the features rule's
    d 256 (about 3x the step of d 128), on synthetic data that carries those features."""
    from assets.preflight import estimate_settings
    from assets.training import TrainingConfig
    from convrec_dagster.data import preflight as pf
    from convrec_dagster.data.dataset_info import DatasetInfo

    size = pf.DataSize(users=100, items=50, train_rows=1_000, has_context=has_context,
                       has_attributes=has_attributes, source="test", has_images=has_images)  # fmt: skip
    budget, s = estimate_settings(
        "convrec", TrainingConfig(budget="cpu"), DatasetInfo(name="Beauty"), size, False
    )
    assert budget == "cpu" and s["d"] == d and s["hidden"] == 2 * d
    synthetic = pf._synthetic(size, 4)
    assert synthetic.has_images == has_images and synthetic.has_attributes == has_attributes
    if has_images:
        assert synthetic.image_features.shape == (51, pf.IMAGE_DIM) and not synthetic.image_features[0].any()
        per_batch, per_user = pf.time_batches("convrec", {**s, "batch_size": 8}, size, "cpu")
        assert per_batch > 0 and per_user > 0
    _, sasrec = estimate_settings(
        "sasrec", TrainingConfig(budget="cpu"), DatasetInfo(name="Beauty"), size, False
    )
    assert sasrec["d"] == 50  # SASRec keeps Kang & McAuley's width whatever the data


def test_full_ranking_validation_runs_on_a_fixed_user_sample_only_over_the_score_cap():
    """``max_validation_scores``: Video's size (30,901 users x 23,715 items) keeps every user under the cpu
    budget's cap; the paper's Fashion size does not. The sample is the same every call (epochs, resumes)."""
    from models.budgets import MAX_VALIDATION_SCORES
    from models.train import validated_user_count, validation_users

    full = TrainConfig(valid_protocol="full", max_validation_scores=MAX_VALIDATION_SCORES)
    assert validated_user_count(30_901, 23_715, full) == 30_901
    assert validated_user_count(332_000, 166_270, full) == MAX_VALIDATION_SCORES // 166_270 == 6_014
    assert validated_user_count(332_000, 166_270, TrainConfig(valid_protocol="full")) == 332_000  # 0: off
    sampled = TrainConfig(valid_protocol="sampled_100", max_validation_scores=MAX_VALIDATION_SCORES)
    assert validated_user_count(332_000, 166_270, sampled) == 332_000  # 101 candidates per user: cheap
    assert validated_user_count(5_000, 10**9, full) == 1_000  # never fewer than 1,000 users
    with pytest.raises(ValueError, match="max_validation_scores"):
        TrainConfig(max_validation_scores=-1)

    data = chain_data(n_users=1_500, n_items=20, seed=3)
    capped = TrainConfig(valid_protocol="full", max_validation_scores=1_200 * data.n_items)
    users = validation_users(data, capped)
    assert len(users) == 1_200 and np.all(np.diff(users) > 0) and np.isin(users, data.eval_users()).all()
    assert np.array_equal(users, validation_users(data, capped))
    assert validation_users(data, TrainConfig(valid_protocol="full")) is None


def test_training_validates_on_the_user_sample_and_says_so():
    data = chain_data(n_users=1_500, n_items=20, seed=3)
    model = build_model("sasrec", data, {"d": 8, "max_len": 5, "n_layers": 1, "loss": "full_softmax"})
    config = TrainConfig(
        scheme="all_cuts",
        batch_size=256,
        max_epochs=1,
        valid_protocol="full",
        max_validation_scores=1_100 * 20,
    )
    lines: list[str] = []
    result = train(model, data, "sasrec", {}, config, log=lines.append)
    assert any("sample of 1,100 of 1,500 users" in line for line in lines)
    from models.train import validate, validation_users

    on_sample = validate(
        model, data, torch.device("cpu"), "fp32", 256, "full", validation_users(data, config)
    )
    on_all = validate(model, data, torch.device("cpu"), "fp32", 256, "full")
    assert result.best_metrics["full_NDCG@10"] == pytest.approx(on_sample["full_NDCG@10"])
    assert on_sample["full_NDCG@10"] != on_all["full_NDCG@10"]


def test_shared_negatives_follow_the_training_counts_to_the_chosen_power(ids_only):
    from models.train import _shared_negatives, negative_distribution

    data = ids_only
    assert negative_distribution(data, 0.0) is None  # uniform
    counts = np.bincount(data.items[data.train_mask()], minlength=data.n_items + 1)[1:]
    p = negative_distribution(data, 1.0)
    assert np.isclose(p.sum(), 1.0) and np.allclose(p / p[0], (counts + 1.0) / (counts[0] + 1.0))
    config, rng = TrainConfig(n_negatives=5), np.random.default_rng(0)
    drawn = {
        power: np.bincount(
            np.concatenate(
                [_shared_negatives(data, config, rng, negative_distribution(data, power)) for _ in range(400)]
            ),
            minlength=data.n_items + 1,
        )[1:]
        for power in (0.0, 1.0)
    }
    popular, rare = np.argsort(counts)[-5:], np.argsort(counts)[:5]
    assert drawn[1.0][popular].sum() > 2 * drawn[1.0][rare].sum()
    assert drawn[0.0][popular].sum() < 1.5 * drawn[0.0][rare].sum()
    batch = _shared_negatives(data, config, rng, p)
    assert len(set(batch.tolist())) == 5 and batch.min() >= 1 and batch.max() <= data.n_items


def test_a_per_row_softmax_over_about_the_whole_catalogue_scores_every_unseen_item_once(ids_only):
    """``n_negatives`` >= n_items - 1: the candidates are the positive and every other item once, and the
    user's own training items do not compete (the exact softmax the uniform draws from the unseen items
    estimate); the validation and test targets do, so the loss does not reveal them."""
    data = ids_only
    model = build_model("convrec", data, {"d": 16, "max_len": 8, "loss": "softmax"}).eval()  # no dropout
    config = TrainConfig(scheme="all_cuts", batch_size=32, n_negatives=256, augment_prob=0.0)
    sampler = NegativeSampler(data)
    _, batch = next(_epoch_batches(model, data, sampler, np.random.default_rng(0), config))
    cands, blocked = batch.candidates.numpy(), batch.blocked.numpy()
    assert cands.shape == (32, data.n_items) and not blocked[:, 0].any()
    held_out_only = (
        0  # items of a batch user's validation or test target that are not among their training items
    )
    for row, user, row_blocked in zip(cands, batch.users.numpy(), blocked):
        assert sorted(row) == list(range(1, data.n_items + 1))  # every item once, the positive first
        items = data.items[data.user_slice(user)]
        training = set(items[: data.n_train(user)].tolist())
        assert set(row[row_blocked].tolist()) == training - {row[0]}
        held_out_only += len(set(items[data.n_train(user) :].tolist()) - training)
    assert held_out_only > 0  # so the assertion above tells the two rules apart
    scores = model.predict(batch)
    expected = torch.nn.functional.cross_entropy(
        scores.masked_fill(batch.blocked, float("-inf")), torch.zeros(32).long()
    )
    assert model.calculate_loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    # fewer negatives than that: uniform draws from the unseen items, as before
    _, sampled = next(
        _epoch_batches(
            model,
            data,
            sampler,
            np.random.default_rng(0),
            TrainConfig(scheme="all_cuts", batch_size=32, n_negatives=10),
        )
    )
    assert sampled.candidates.shape == (32, 11) and sampled.blocked is None


@pytest.mark.parametrize("pretrained", [True, False])
def test_preflight_counts_image_vectors_only_where_training_would_read_them(pretrained):
    """ConvRec's ``features: auto`` reads image vectors only from a pretrained ResNet-50, so preflight's
    size has images only then: from an earlier run's DuckDB (its `image_encoder` row) or from the raw
    files with a weights file configured."""
    import duckdb

    from convrec_dagster.data import preflight as pf

    raw = pf.RawSize(interactions=1_000, items=50, users=100, has_timestamps=False, has_metadata=True)
    assert pf.size_from_raw(raw, pretrained_weights=pretrained).has_images == pretrained
    assert not pf.size_from_raw(pf.RawSize(1_000, 50, 100), pretrained_weights=True).has_images  # no metadata
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE user_index AS SELECT range + 1 AS user_idx FROM range(3)")
        conn.execute("CREATE TABLE item_index AS SELECT range + 1 AS item_idx FROM range(4)")
        conn.execute(
            "CREATE TABLE sequences AS SELECT range % 3 + 1 AS user_idx, 'train' AS split, NULL::BIGINT AS ts "
            "FROM range(9)"
        )
        conn.execute(
            "CREATE TABLE item_image_features AS SELECT range + 1 AS item_idx, true AS has_image, "
            "[0.5, 1.0]::FLOAT[] AS feature FROM range(4)"
        )
        conn.execute(f"CREATE TABLE image_encoder AS SELECT {pretrained} AS pretrained")
        size = pf.size_from_duckdb(conn)
    assert size is not None and size.has_images == pretrained and not size.has_attributes
