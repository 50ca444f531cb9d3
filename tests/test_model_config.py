"""Typed config from end to end: one dataclass per model, explicit construction, old checkpoints."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from convrec_dagster.data.training_setup import prepare_training, train_config
from models.budgets import PAPER_PRESETS, budget_settings, dataset_preset
from models.config import ConvRecAttentionConfig, ConvRecConfig, SASRecConfig
from models.convrec import ConvRec
from models.registry import MODELS, build_model, load_model, model_config, save_checkpoint
from models.synthetic import chain_data
from models.train import TrainConfig, config_hash

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return chain_data(n_users=30, n_items=20, min_len=4, max_len=12, seed=2)


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_a_config_holds_exactly_its_model_constructor_arguments_with_the_same_defaults(spec):
    params = inspect.signature(spec.model_class().__init__).parameters
    arguments = {k: p.default for k, p in params.items() if k not in ("self", "data", "n_items")}
    fields = {f.name: f.default for f in dataclasses.fields(spec.config)}
    assert fields == arguments
    assert spec.config.model == spec.name


def _settings(model: str, **overrides) -> dict:
    """What resolve_settings hands prepare_training on the sample budget."""
    from assets.training import TrainingConfig
    from convrec_dagster.data.dataset_info import configured_dataset
    from convrec_dagster.data.training_setup import resolve_settings

    config = TrainingConfig(budget="sample", features="none", **overrides)
    budget, _, settings = resolve_settings(
        config.model_dump(), configured_dataset(None, True), model, cuda=False
    )
    assert budget == "sample"
    return settings


def test_settings_become_typed_configs_and_the_config_hash_changes_only_with_what_shapes_the_result(
    data, monkeypatch
):
    # dropout .2, 3 epochs, no weight average, 100 negatives, tables at lr x 1, batch 128 at lr 3e-3, no weight
    # decay: the sample budget's values when the hash below was pinned (since then it trains ConvRec without
    # dropout, with the average, over 10 epochs and 256 negatives, its N(0, 1) tables at lr x 50, and in batches
    # of 32 at lr 1e-3 with weight decay .1, crops half its rows and replaces the items before the last)
    pinned = {
        "crop_prob": 0.0,
        "replace_before_last_prob": 0.0,
        "batch_size": 128,
        "lr": 3e-3,
        "weight_decay": 0.0,
        "dropout": 0.2,
        "max_epochs": 3,
        "ema_decay": 0.0,
        "n_negatives": 100,
        "embedding_lr_scale": 1.0,
    }
    config, train = prepare_training("convrec", _settings("convrec", **pinned), data, lambda m: None)
    assert isinstance(config, ConvRecConfig) and isinstance(train, TrainConfig)
    assert (config.d, config.hidden, config.max_len, config.features) == (64, 128, 20, "none")
    assert (train.lr, train.batch_size, train.scheme, train.eval_batch_size) == (3e-3, 128, "all_cuts", 256)
    # The hash that decides whether a finished model is reused: pinned, so a refactor cannot change it unnoticed
    # (a613b78a63cd7661 from typed configs to stop 33; TRAINING_REVISION 1 since stop 34)
    assert config_hash("convrec", config.to_hparams(), train) == "1151ab0f8915b0a6"
    monkeypatch.setattr("models.train.TRAINING_REVISION", 2)  # training code that changes results: retrain
    assert config_hash("convrec", config.to_hparams(), train) != "1151ab0f8915b0a6"
    monkeypatch.undo()
    # settings added later (crop_prob, negative_power, ema_decay, label_smoothing, valid_protocol,
    # embedding_lr_scale) leave the
    # hash alone at their default, and change it when set
    assert train.valid_protocol == "sampled_100"
    for later in (
        {"crop_prob": 0.5},
        {"negative_power": 0.5},
        {"ema_decay": 0.999},
        {"label_smoothing": 0.1},
        {"valid_protocol": "full"},
        {"embedding_lr_scale": 50.0},
        {"replace_before_last_prob": 0.3},
    ):
        assert (
            config_hash("convrec", config.to_hparams(), dataclasses.replace(train, **later))
            != "1151ab0f8915b0a6"
        )
    last = dataclasses.replace(config, residual_pool="last")
    assert config_hash("convrec", last.to_hparams(), train) != "1151ab0f8915b0a6"
    assert ConvRecConfig.from_hparams(last.to_hparams()).residual_pool == "last"
    assert ConvRecConfig.from_hparams(config.to_hparams()).residual_pool == "avg"
    attention, _ = prepare_training("convrec_attention", _settings("convrec_attention"), data, lambda m: None)
    assert isinstance(attention, ConvRecAttentionConfig) and attention.n_layers == 2
    sasrec, _ = prepare_training("sasrec", _settings("sasrec"), data, lambda m: None)
    assert isinstance(sasrec, SASRecConfig) and "hidden" not in sasrec.to_hparams()


@pytest.mark.parametrize("budget", ["sample", "cpu", "paper"])
def test_residual_pool_auto_is_the_papers_average_with_a_time_path_and_a_users_choice_wins(data, budget):
    """``data`` has time context; without it the ``cpu`` budget keeps the last position
    (``test_cpu_budget_trains_convrec_without_dropout_on_shared_negatives_only_without_a_time_path``)."""
    assert data.has_context
    from assets.training import TrainingConfig
    from convrec_dagster.data.dataset_info import configured_dataset
    from convrec_dagster.data.training_setup import resolve_settings

    def built(**user) -> ConvRec:
        config = TrainingConfig(budget=budget, features="none", d=16, hidden=32, max_len=10, **user)
        _, _, s = resolve_settings(
            config.model_dump(), configured_dataset(None, budget == "sample"), "convrec", cuda=False
        )
        model_config, _ = prepare_training("convrec", s, data, lambda m: None)
        return build_model("convrec", data, model_config.to_hparams())

    assert {b.residual_pool for b in built().blocks} == {"avg"}
    assert {b.residual_pool for b in built(residual_pool="last").blocks} == {"last"}


def test_the_sample_budget_crops_convrec_rows_and_a_users_crop_wins():
    assert (_settings("convrec")["crop_prob"], _settings("sasrec")["crop_prob"]) == (0.5, 0.0)
    assert (
        _settings("convrec", crop_prob=0.0)["crop_prob"],
        _settings("sasrec", crop_prob=0.2)["crop_prob"],
    ) == (0.0, 0.2)


def test_a_missing_setting_fails_loudly_instead_of_falling_back():
    s = _settings("convrec")
    del s["lr"]
    with pytest.raises(KeyError, match="lr"):
        train_config(s)
    del s["heads"]
    with pytest.raises(KeyError, match="heads"):
        ConvRecConfig.from_settings(s)


def test_a_config_of_another_model_is_refused():
    with pytest.raises(TypeError, match="SASRecConfig"):
        model_config("sasrec", ConvRecConfig())


def test_an_old_checkpoint_with_fewer_hparams_still_loads_with_weights_only(data, tmp_path):
    torch.manual_seed(0)
    model = build_model("convrec", data, ConvRecConfig(d=16, hidden=32, max_len=8, dropout=0.1))
    old = {"d": 16, "hidden": 32, "max_len": 8, "dropout": 0.1, "features": "auto", "loss": "softmax"}
    save_checkpoint(tmp_path / "best.pt", model, "convrec", old, {"epoch": 1})
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert raw["hparams"] == old
    loaded, checkpoint = load_model(tmp_path / "best.pt", data)
    assert checkpoint["hparams"] == old and loaded.kernels == model.kernels
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)


def test_paper_presets_are_one_typed_table_that_also_names_the_datasets():
    assert budget_settings("paper", "convrec", "men")["max_len"] == PAPER_PRESETS["men"].max_len == 30
    assert budget_settings("paper", "convrec", "beauty")["lr"] == 4e-5
    assert dataset_preset("Clothing_Shoes_and_Jewelry") == "fashion"
    assert dataset_preset("Video_Games") == "games"
    assert dataset_preset("Beauty_5") == "beauty"
    assert dataset_preset("Men_Clothing") == "fashion"  # table order: clothing before men
    assert dataset_preset("Amazon_Men") == "men"
    assert dataset_preset("embedded sample") == dataset_preset("") == "games"


def test_evaluation_loads_the_features_a_checkpoint_names_and_searches_only_for_old_ones():
    from convrec_dagster.data.dataset import data_for_checkpoint

    class Loaded:
        def __init__(self, features):
            self.info = {"fingerprint": "fp-" + features}

    asked: list[str] = []

    def load(features):
        asked.append(features)
        if features == "image":
            raise ValueError("no image features stored")
        return Loaded(features)

    new = {"hparams": {"features": "auto"}, "extra": {"fingerprint": "fp-both", "data_features": "both"}}
    assert data_for_checkpoint(load, new).info["fingerprint"] == "fp-both" and asked == ["both"]
    asked.clear()
    stale = {"hparams": {}, "extra": {"fingerprint": "fp-other", "data_features": "none"}}
    assert data_for_checkpoint(load, stale) is None and asked == ["none"]
    asked.clear()
    old = {"hparams": {"features": "auto"}, "extra": {"fingerprint": "fp-both"}}  # before data_features
    assert data_for_checkpoint(load, old).info["fingerprint"] == "fp-both"
    assert asked == ["auto", "attributes", "image", "both"]
