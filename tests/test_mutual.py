"""Deep mutual learning (``models.mutual.MutualPair``): the loss, who ranks, and that both copies learn."""

import numpy as np
import pytest
import torch

from models.batching import make_batch
from models.mutual import MutualPair
from models.registry import build_model
from models.synthetic import chain_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HP = {"d": 16, "hidden": 16, "max_len": 8, "dropout": 0.0, "loss": "full_softmax"}


@pytest.fixture(scope="module")
def data():
    data = chain_data(
        n_users=30, n_items=25, min_len=5, max_len=12, seed=3, with_time=False, with_attributes=False
    )
    data.proxy_ids = np.arange(data.n_items + 1)
    data.n_proxy = data.n_items + 2
    return data


def _pair(data, weight: float) -> MutualPair:
    torch.manual_seed(0)
    return MutualPair(build_model("convrec", data, HP), build_model("convrec", data, HP), weight)


def _batch(data):
    users = np.arange(1, 9)
    targets = data.user_ptr[users + 1] - 3  # each user's last training row
    return make_batch(data, users, targets, HP["max_len"], data.items[targets][:, None])


@torch.no_grad()
def test_the_loss_is_both_cross_entropies_plus_the_weighted_symmetric_kl(data):
    batch = _batch(data)
    plain = _pair(data, 0.0)
    own = sum(float(member.calculate_loss(batch)) for member in plain.members)
    assert float(plain.calculate_loss(batch)) == pytest.approx(own, rel=1e-5)
    mutual = _pair(data, 2.0)  # the same two initialisations: only the KL term differs
    assert float(mutual.calculate_loss(batch)) > own + 1e-4
    mutual.members[1].load_state_dict(mutual.members[0].state_dict())  # identical copies agree: KL 0
    same = 2 * float(mutual.members[0].calculate_loss(batch))
    assert float(mutual.calculate_loss(batch)) == pytest.approx(same, rel=1e-5)


def test_the_first_copy_ranks_and_one_step_trains_both(data):
    pair = _pair(data, 1.0)
    batch = _batch(data)
    pair.eval()
    assert torch.equal(pair.full_sort_predict(batch), pair.members[0].full_sort_predict(batch))
    assert torch.equal(pair.predict(batch), pair.members[0].predict(batch))
    pair.label_smoothing = 0.1
    assert [m.label_smoothing for m in pair.members] == [0.1, 0.1]
    pair.train()
    before = [[p.detach().clone() for p in m.parameters()] for m in pair.members]
    optimizer = torch.optim.Adam(pair.parameters(), lr=1e-2)
    pair.calculate_loss(batch).backward()
    optimizer.step()
    for member, old in zip(pair.members, before, strict=True):
        assert any(not torch.equal(p, q) for p, q in zip(member.parameters(), old, strict=True))


def test_mutual_learning_needs_the_distribution_over_every_item(data):
    sampled = {**HP, "loss": "softmax"}
    with pytest.raises(ValueError, match="full_softmax"):
        MutualPair(build_model("convrec", data, sampled), build_model("convrec", data, sampled))
    sasrec = {"d": 16, "max_len": 8, "n_layers": 1, "loss": "full_softmax"}
    with pytest.raises(ValueError, match="position-wise"):
        MutualPair(build_model("sasrec", data, sasrec), build_model("sasrec", data, sasrec))


def test_train_keeps_the_model_alone_and_resumes_the_pair(data, tmp_path):
    from models.registry import load_model
    from models.train import TrainConfig, config_hash, train

    config = TrainConfig(
        scheme="all_cuts", batch_size=32, lr=3e-3, max_epochs=2, patience=2, mutual_learning=1.0
    )
    assert config_hash("convrec", HP, config) != config_hash(
        "convrec", HP, TrainConfig(**{**config.__dict__, "mutual_learning": 0.0})
    )
    torch.manual_seed(0)
    model, partner = build_model("convrec", data, HP), build_model("convrec", data, HP)
    result = train(model, data, "convrec", HP, config, out_dir=tmp_path, log=lambda _: None, partner=partner)
    assert [h["epoch"] for h in result.history] == [1, 2]
    kept = torch.load(tmp_path / "best.pt", weights_only=True)["state_dict"]
    assert kept.keys() == model.state_dict().keys()  # the model alone, as one-model runs keep it
    resume = torch.load(tmp_path / "resume.pt", weights_only=True)["model"]
    assert {k.split(".")[1] for k in resume} == {"0", "1"}  # both copies, to carry the pair across a restart
    loaded, _ = load_model(tmp_path / "best.pt", data)
    batch = _batch(data)
    model.eval()
    assert torch.allclose(loaded.full_sort_predict(batch), model.full_sort_predict(batch))
    with pytest.raises(ValueError, match="partner"):
        train(build_model("convrec", data, HP), data, "convrec", HP, config, log=lambda _: None)
    with pytest.raises(ValueError, match="mutual_learning > 0"):
        one = TrainConfig(**{**config.__dict__, "mutual_learning": 0.0})
        train(build_model("convrec", data, HP), data, "convrec", HP, one, log=lambda _: None, partner=partner)
    with pytest.raises(ValueError, match="mutual_learning must be >= 0"):
        TrainConfig(mutual_learning=-1.0)
