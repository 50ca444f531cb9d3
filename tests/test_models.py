"""ConvRec and baselines: shapes, padding, the convolution stack, ablations, memory, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.batching import make_batch
from models.convrec import ConvBlock, ConvRec, _pool, default_kernels
from models.registry import MODEL_NAMES, build_model, load_model, save_checkpoint
from models.synthetic import chain_data

HP = {"d": 16, "hidden": 32, "dropout": 0.1, "max_len": 12}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return chain_data(n_users=40, n_items=30, min_len=4, max_len=25, seed=1)


def eval_batch(data, users, max_len, n_cand=7):
    users = np.asarray(users)
    targets = data.user_ptr[users + 1] - 2
    cands = np.concatenate([data.items[targets][:, None], data.eval_negatives[users][:, : n_cand - 1]], 1)
    return make_batch(data, users, targets, max_len, cands)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes(data, name):
    torch.manual_seed(0)
    model = build_model(name, data, HP)
    batch = eval_batch(data, [1, 2, 3, 4, 5], HP["max_len"])
    model.eval()
    assert model.predict(batch).shape == (5, 7)
    assert model.full_sort_predict(batch).shape == (5, data.n_items + 1)
    seq = model(batch)
    if name != "popularity":
        assert seq.shape == (5, HP["d"])
        model.train()
        loss = model.calculate_loss(batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters()), "a parameter gets no gradient (dead)"
    else:
        assert seq is None and model.n_parameters() == 0


@pytest.mark.parametrize("name", ["convrec", "convrec_attention", "sasrec"])
def test_padding_and_batch_mates_do_not_change_the_sequence_vector(data, name):
    torch.manual_seed(0)
    model = build_model(name, data, HP).eval()
    lengths = np.diff(data.user_ptr[1:])
    short = int(np.flatnonzero(lengths == lengths.min())[0]) + 1
    alone = eval_batch(data, [short], HP["max_len"])
    assert (alone.items == 0).any(), "the test needs a padded history"
    junk = eval_batch(data, [short], HP["max_len"])
    pad = junk.items == 0
    if junk.context is not None:
        junk.context[pad] = 7.0
        junk.ymd[pad] = 3.0
    mixed = eval_batch(data, [int(np.argmax(lengths)) + 1, short, 3], HP["max_len"])
    with torch.no_grad():
        ref = model(alone)[0]
        torch.testing.assert_close(model(junk)[0], ref)
        torch.testing.assert_close(model(mixed)[1], ref, rtol=1e-5, atol=1e-5)


def test_default_kernels_follow_the_paper_and_cover_any_length():
    assert default_kernels(70) == [2, 5, 7]
    assert default_kernels(50) == [2, 5, 5]
    assert default_kernels(30) == [2, 3, 5]
    assert default_kernels(1000) == [10, 10, 10]
    for length in (7, 30, 50, 64, 70, 101, 997):
        assert np.prod(default_kernels(length)) >= length


@pytest.mark.parametrize("length", [7, 30, 50, 64, 70, 101])
def test_conv_stack_collapses_any_length_to_one_vector(length):
    data = chain_data(n_users=6, n_items=20, min_len=length + 3, max_len=length + 3, seed=2)
    torch.manual_seed(0)
    model = ConvRec(data, max_len=length, d=8, hidden=16).eval()
    batch = eval_batch(data, [1, 2], length)
    z, _ = model.encode(batch, with_candidates=False)
    x = r = z
    for block in model.blocks:
        x, r = block(x, r)
    assert x.shape == (2, 1, 8)
    assert model(batch).shape == (2, 8)


def test_kernel_equals_stride_fast_path_matches_conv1d():
    torch.manual_seed(0)
    block = ConvBlock(8, 5, 5, heads=1, dropout=0.0, residual=True)
    x = torch.randn(3, 20, 8)
    reference = block.conv(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(block._conv(x), reference, rtol=1e-5, atol=1e-5)
    grouped = ConvBlock(8, 4, 2, heads=2, dropout=0.0, residual=True)
    assert grouped.conv.groups == 2
    assert grouped(x, x)[0].shape == (3, 9, 8)  # (20 - 4) / 2 + 1 positions
    assert grouped(x[:, :7], x[:, :7])[0].shape == (3, 3, 8)  # 7 -> left pad 1 -> 8 -> 3


ABLATIONS = {
    "intervals": {"intervals": False},
    "residuals": {"residuals": False},
    "single_conv": {"single_conv": True},
    "avg_pool_only": {"avg_pool_only": True},
    "residual_pool": {"residual_pool": "last"},
}


@pytest.mark.parametrize("switch", sorted(ABLATIONS))
def test_each_ablation_switch_changes_the_computation(data, switch):
    torch.manual_seed(0)
    full = ConvRec(data, **HP).eval()
    torch.manual_seed(0)
    ablated = ConvRec(data, **HP, **ABLATIONS[switch]).eval()
    shared = {
        k: v
        for k, v in full.state_dict().items()
        if k in ablated.state_dict() and v.shape == ablated.state_dict()[k].shape
    }
    ablated.load_state_dict(shared, strict=False)
    batch = eval_batch(data, [1, 2, 3], HP["max_len"])
    with torch.no_grad():
        assert not torch.allclose(full.predict(batch), ablated.predict(batch))
    names = set(dict(ablated.named_parameters()))
    if switch == "intervals":
        assert ablated.encoder.norm.normalized_shape == (HP["d"],) and full.encoder.norm.normalized_shape == (
            HP["d"] + 3,
        )
    elif switch == "residuals":
        assert not any("alpha" in n or "beta" in n for n in names)
    elif switch == "single_conv":
        assert len(ablated.blocks) == 1 and ablated.blocks[0].kernel == HP["max_len"]
    elif switch == "residual_pool":
        assert names == set(dict(full.named_parameters()))  # the same weights, read differently
    else:
        assert len(ablated.blocks) == 0 and not any(n.startswith("blocks") for n in names)


def test_last_residual_pool_keeps_each_window_s_most_recent_position():
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    torch.testing.assert_close(_pool(x[:, 1:], 2, 2, "last"), x[:, [2, 4, 6]])
    torch.testing.assert_close(_pool(x, 3, 2, "last"), x[:, [2, 4, 6]])  # windows 0-2, 2-4, 4-6
    torch.testing.assert_close(_pool(x[:, 1:], 2, 2), (x[:, [1, 3, 5]] + x[:, [2, 4, 6]]) / 2)
    with pytest.raises(ValueError, match="residual_pool"):
        ConvBlock(8, 2, 2, heads=1, dropout=0.0, residual=True, residual_pool="max")


def test_with_last_residual_pool_the_last_item_reaches_the_sequence_vector_unblurred():
    """Blocks whose convolution path is silenced and whose input residual is off: the output is
    LayerNorm(β · progressive residual), which under "last" is the last item's vector alone."""
    torch.manual_seed(0)
    blocks = [ConvBlock(8, k, k, heads=1, dropout=0.0, residual=True, residual_pool="last") for k in (2, 5)]
    for b in blocks:
        torch.nn.init.zeros_(b.proj.weight)
        torch.nn.init.zeros_(b.proj.bias)
        b.alpha.data.zero_()
    z = torch.randn(2, 10, 8)
    x = r = z
    for b in blocks:
        x, r = b(x, r)
    torch.testing.assert_close(x[:, 0], F.layer_norm(z[:, -1], (8,)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r[:, 0], z[:, -1])


def test_residual_weights_start_at_one_half(data):
    model = ConvRec(data, **HP)
    assert all(b.alpha.item() == 0.5 and b.beta.item() == 0.5 for b in model.blocks)


def test_absent_dataset_parts_are_absent_from_the_model():
    bare = chain_data(n_users=10, n_items=12, with_time=False, with_attributes=False, seed=3)
    model = ConvRec(bare, **HP)
    names = set(dict(model.named_parameters()))
    assert not any(
        n.startswith(("encoder.context", "encoder.attr", "encoder.a_from", "encoder.x_from")) for n in names
    )
    with pytest.raises(ValueError, match="attributes"):
        ConvRec(bare, **HP, features="attributes")
    images = chain_data(n_users=10, n_items=12, with_attributes=False, image_dim=24, seed=3)
    assert ConvRec(images, **HP).encoder.image.in_features == 24


def _saved_activation_bytes(model, batch) -> int:
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.calculate_loss(batch)
    return sum(storages.values())


def test_activation_memory_grows_linearly_with_length_for_convrec_only():
    data = chain_data(n_users=8, n_items=60, min_len=260, max_len=260, seed=4)
    growth = {}
    for name in ("convrec", "convrec_attention"):
        saved = []
        for length in (64, 128, 256):
            torch.manual_seed(0)
            model = build_model(name, data, {**HP, "max_len": length}).train()
            saved.append(_saved_activation_bytes(model, eval_batch(data, np.arange(1, 9), length, n_cand=20)))
        # linear memory a + b*L: the increment from 128 to 256 is twice the one from 64 to 128
        growth[name] = (saved[2] - saved[1]) / (saved[1] - saved[0])
    assert 1.7 < growth["convrec"] < 2.25, growth
    assert growth["convrec_attention"] > 2.8, growth


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("with_time", [True, False])
def test_full_sort_predict_matches_predict(name, with_time):
    data = chain_data(n_users=12, n_items=25, with_time=with_time, seed=5)
    torch.manual_seed(0)
    model = build_model(name, data, HP).eval()
    batch = eval_batch(data, [1, 2, 3, 4], HP["max_len"], n_cand=10)
    with torch.no_grad():
        sampled = model.predict(batch)
        full = model.full_sort_predict(batch, chunk_size=7)
    torch.testing.assert_close(full.gather(1, batch.candidates), sampled, rtol=1e-4, atol=1e-4)
    assert torch.isneginf(full[:, 0]).all()


@pytest.mark.parametrize("with_time", [True, False])
def test_evaluation_item_table_gives_the_same_scores(with_time, monkeypatch):
    """Without a time path an evaluation reads history and candidate vectors from one table of every item
    (built in chunks): the same scores as encoding each batch; with a time path, or in training, no table."""
    import models.convrec
    from models.evaluate import rank_eval_users

    monkeypatch.setattr(models.convrec, "EVAL_CHUNK", 7)

    data = chain_data(n_users=12, n_items=25, with_time=with_time, seed=5)
    torch.manual_seed(0)
    model = build_model("convrec", data, HP).eval()
    batch = eval_batch(data, [1, 2, 3, 4], HP["max_len"], n_cand=10)
    with torch.no_grad():
        sampled, full = model.predict(batch), model.full_sort_predict(batch)
        with model.item_table_for_eval():
            assert (model._item_table is None) == with_time
            torch.testing.assert_close(model.predict(batch), sampled, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.full_sort_predict(batch), full, rtol=1e-5, atol=1e-5)
        assert model._item_table is None
        model.train()
        with model.item_table_for_eval():
            assert model._item_table is None  # dropout: a vector per position, no table
    model.eval()
    users = data.eval_users()
    with torch.no_grad():  # encoded per batch, as before the table
        scores = model.predict(
            eval_batch(data, users, HP["max_len"], n_cand=data.eval_negatives.shape[1] + 1)
        )
    _, greater, _ = rank_eval_users(model, data, "valid", "sampled_100", "cpu", 5)  # enters the table itself
    np.testing.assert_array_equal(greater, (scores[:, 1:] > scores[:, :1]).sum(1).numpy())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_checkpoint_round_trip_with_weights_only(data, tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, data, HP).eval()
    save_checkpoint(tmp_path / "best.pt", model, name, HP, {"epoch": 3, "valid": {"NDCG@10": 0.5}})
    raw = torch.load(tmp_path / "best.pt", weights_only=True)
    assert raw["model"] == name and raw["extra"]["epoch"] == 3
    loaded, checkpoint = load_model(tmp_path / "best.pt", data, "cpu")
    batch = eval_batch(data, [1, 2, 3], HP["max_len"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().predict(batch), model.predict(batch))
    assert not any(k.endswith(("proxy_ids", "item_attrs")) for k in raw["state_dict"]), (
        "data arrays in checkpoint"
    )


def test_zero_side_init_starts_as_the_id_model_and_then_learns_the_side_path(data):
    torch.manual_seed(0)
    model = ConvRec(data, **HP, side_init="zero").eval()
    batch = eval_batch(data, [1, 2, 3], HP["max_len"])
    shifted = eval_batch(data, [1, 2, 3], HP["max_len"])
    shifted.context = shifted.context + 0.5  # other times
    shifted.cand_context = shifted.cand_context + 0.5
    with torch.no_grad():
        model.encoder.attr_bag.weight.normal_()  # other attribute vectors
        torch.testing.assert_close(model.predict(batch), model.predict(shifted))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.calculate_loss(batch).backward()
    opt.step()
    assert model.encoder.x_from_a.weight.abs().sum() > 0, "the side path must learn from zero"
    with pytest.raises(ValueError, match="side_init"):
        ConvRec(data, **HP, side_init="small")


def test_calendar_intervals_scale_months_and_days(data):
    torch.manual_seed(0)
    raw = ConvRec(data, **HP).eval()
    calendar = ConvRec(data, **HP, interval_scale="calendar").eval()
    calendar.load_state_dict(raw.state_dict())
    assert calendar.encoder.interval_scale.tolist() == pytest.approx([1.0, 1 / 12, 1 / 31])
    batch = eval_batch(data, [1, 2, 3], HP["max_len"])
    with torch.no_grad():
        assert not torch.allclose(raw.predict(batch), calendar.predict(batch))
    with pytest.raises(ValueError, match="interval_scale"):
        ConvRec(data, **HP, interval_scale="weeks")


def test_attribute_prediction_loss_is_the_cross_entropy_against_the_target_s_attributes():
    from models.base import attribute_prediction_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [1.0, 2.0, 3.0]])
    attrs = torch.tensor([[1, 3], [0, 0], [2, 0]])  # ids 1..3, 0-padded; row 1 has none and does not count
    log_p = logits.log_softmax(-1)
    expected = (-(log_p[0, 0] + log_p[0, 2]) / 2 - log_p[2, 1]) / 2
    torch.testing.assert_close(attribute_prediction_loss(logits, attrs), expected)


def test_attribute_loss_adds_a_zero_started_head_that_ranking_never_reads(data, tmp_path):
    """``attribute_loss``: the head starts at zero (so the term starts at log n_attrs on every row and the
    rest of the model, built from the same seed, is the same), it learns, ranking does not read it, and
    checkpoints keep it; data without attributes gets no head."""
    hp = {**HP, "dropout": 0.0}
    torch.manual_seed(0)
    plain = build_model("convrec", data, hp)
    torch.manual_seed(0)
    model = build_model("convrec", data, {**hp, "attribute_loss": 0.5})
    assert plain.attribute_head is None and model.attribute_head is not None
    assert model.attribute_head.weight.abs().sum() == 0
    batch = eval_batch(data, [1, 2, 3, 4], HP["max_len"])
    assert (model.encoder.item_attrs[batch.candidates[:, 0]] > 0).any(1).all(), "every target has attributes"
    extra = model.calculate_loss(batch) - plain.calculate_loss(batch)
    torch.testing.assert_close(extra, torch.tensor(0.5 * np.log(data.n_attrs), dtype=extra.dtype))

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.calculate_loss(batch).backward()
    opt.step()
    assert model.attribute_head.weight.abs().sum() > 0
    model.eval()
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("attribute_head.")}
    plain.load_state_dict(shared)
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.predict(batch), plain.predict(batch))
        torch.testing.assert_close(model.full_sort_predict(batch), plain.full_sort_predict(batch))

    save_checkpoint(tmp_path / "best.pt", model, "convrec", {**hp, "attribute_loss": 0.5}, {})
    loaded, _ = load_model(tmp_path / "best.pt", data, "cpu")
    torch.testing.assert_close(loaded.attribute_head.weight, model.attribute_head.weight)

    ids_only = chain_data(n_users=12, n_items=25, with_attributes=False, seed=5)
    assert build_model("convrec", ids_only, {**hp, "attribute_loss": 0.5}).attribute_head is None
    with pytest.raises(ValueError, match="attribute_loss"):
        build_model("convrec", data, {**hp, "attribute_loss": -1.0})


def test_score_ensemble_ranks_by_the_mean_of_its_members_and_round_trips_through_one_checkpoint(tmp_path):
    """``models.ensemble.ScoreEnsemble``: sampled and full-ranking scores are the mean of the members' (inside
    the evaluation item table too), the popularity adjustment applies to the mean, and the checkpoint holds
    every member under one ``hparams`` (``extra["ensemble_size"]``)."""
    from models.ensemble import ScoreEnsemble
    from models.evaluate import rank_eval_users

    data = chain_data(n_users=12, n_items=25, with_time=False, seed=5)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(build_model("convrec", data, HP).eval())
    ensemble = ScoreEnsemble(members).eval()
    batch = eval_batch(data, [1, 2, 3, 4], HP["max_len"], n_cand=10)
    with torch.no_grad():
        mean = (members[0].predict(batch) + members[1].predict(batch)) / 2
        full = (members[0].full_sort_predict(batch) + members[1].full_sort_predict(batch)) / 2
        torch.testing.assert_close(ensemble.predict(batch), mean)
        torch.testing.assert_close(ensemble.full_sort_predict(batch, chunk_size=7), full)
        with ensemble.item_table_for_eval():
            assert all(m._item_table is not None for m in members)
            torch.testing.assert_close(ensemble.predict(batch), mean, rtol=1e-5, atol=1e-5)
        assert all(m._item_table is None for m in members)
        ensemble.set_popularity_adjustment(0.5, data.train_item_counts())
        offset = 0.5 * torch.log1p(torch.as_tensor(data.train_item_counts(), dtype=torch.float32))
        torch.testing.assert_close(ensemble.predict(batch), mean - offset[batch.candidates])
    assert ensemble.n_parameters() == 2 * members[0].n_parameters()

    save_checkpoint(
        tmp_path / "best.pt", ensemble, "convrec", HP, {"ensemble_size": 2, "popularity_adjustment": 0.5}
    )
    loaded, _ = load_model(tmp_path / "best.pt", data)
    assert isinstance(loaded, ScoreEnsemble) and len(loaded) == 2 and loaded.popularity_adjustment == 0.5
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().predict(batch), ensemble.predict(batch))
    ranks = [rank_eval_users(m, data, "valid", "full", "cpu")[1] for m in (ensemble, loaded)]
    np.testing.assert_array_equal(*ranks)
    with pytest.raises(TypeError, match="not trained as a whole"):
        ensemble.calculate_loss(batch)
    with pytest.raises(ValueError, match="same window"):
        ScoreEnsemble([members[0], build_model("convrec", data, {**HP, "max_len": 5})])
    members[0].set_popularity_adjustment(0.1, data.train_item_counts())
    with pytest.raises(ValueError, match="raw scores"), torch.no_grad():
        ensemble.predict(batch)
