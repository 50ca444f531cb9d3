"""Ranking metrics against hand-computed rankings, ties, the constant-score model and bootstrap CIs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from models.metrics import (
    bootstrap_ci,
    grouped_summary,
    long_history_mask,
    per_user_metrics,
    rank_counts,
    summarize,
    user_group_masks,
)


def _brute_force(n_greater: int, n_equal: int, k: int) -> tuple[float, float, float]:
    """HR@k, NDCG@k, MRR averaged over every order of the tie group (positive = item 0)."""
    hr = ndcg = rr = 0.0
    orders = list(itertools.permutations(range(n_equal + 1)))
    for order in orders:
        rank = n_greater + order.index(0)
        hr += rank < k
        ndcg += (1 / math.log2(rank + 2)) if rank < k else 0.0
        rr += 1 / (rank + 1)
    return hr / len(orders), ndcg / len(orders), rr / len(orders)


def test_hand_computed_ranks_without_ties():
    m = per_user_metrics(np.array([0, 3, 12]))
    np.testing.assert_allclose(m["HR@1"], [1, 0, 0])
    np.testing.assert_allclose(m["HR@5"], [1, 1, 0])
    np.testing.assert_allclose(m["HR@10"], [1, 1, 0])
    np.testing.assert_allclose(m["HR@20"], [1, 1, 1])
    np.testing.assert_allclose(m["NDCG@1"], [1, 0, 0])
    np.testing.assert_allclose(m["NDCG@10"], [1, 1 / math.log2(5), 0])
    np.testing.assert_allclose(m["NDCG@20"], [1, 1 / math.log2(5), 1 / math.log2(14)])
    np.testing.assert_allclose(m["MRR"], [1, 1 / 4, 1 / 13])


def test_rank_counts_from_scores():
    pos = np.array([0.9, 0.2, 0.5])
    cand = np.array([[0.1, 0.3, 0.2], [0.5, 0.4, 0.2], [0.5, 0.5, 0.7]])
    n_greater, n_equal = rank_counts(pos, cand)
    assert n_greater.tolist() == [0, 2, 1]
    assert n_equal.tolist() == [0, 1, 2]


def test_ties_expected_is_the_mean_over_tie_orders():
    m = per_user_metrics(np.array([2]), np.array([2]), ks=(3, 5))
    # the positive sits at rank 2, 3 or 4 with probability 1/3 each
    assert m["HR@3"][0] == pytest.approx(1 / 3)
    assert m["NDCG@5"][0] == pytest.approx((1 / math.log2(4) + 1 / math.log2(5) + 1 / math.log2(6)) / 3)
    assert m["MRR"][0] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3)

    rng = np.random.default_rng(1)
    n_greater = rng.integers(0, 8, 40)
    n_equal = rng.integers(0, 5, 40)
    m = per_user_metrics(n_greater, n_equal, ks=(1, 3, 6))
    for i in range(40):
        for k in (1, 3, 6):
            hr, ndcg, rr = _brute_force(int(n_greater[i]), int(n_equal[i]), k)
            assert m[f"HR@{k}"][i] == pytest.approx(hr)
            assert m[f"NDCG@{k}"][i] == pytest.approx(ndcg)
        assert m["MRR"][i] == pytest.approx(rr)


def test_ties_pessimistic_ranks_after_every_tie():
    m = per_user_metrics(np.array([2]), np.array([2]), ks=(3, 5), ties="pessimistic")
    assert m["HR@3"][0] == 0.0
    assert m["NDCG@5"][0] == pytest.approx(1 / math.log2(6))
    assert m["MRR"][0] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="ties"):
        per_user_metrics(np.array([0]), ties="optimistic")


def test_constant_score_model_on_sampled_100():
    n_users = 7
    pos = np.zeros(n_users)
    cand = np.zeros((n_users, 100))  # the 100 stored negatives, all scored like the positive
    n_greater, n_equal = rank_counts(pos, cand)
    m = summarize(per_user_metrics(n_greater, n_equal))
    assert m["HR@10"] == pytest.approx(10 / 101)
    assert m["HR@1"] == pytest.approx(1 / 101)
    assert m["HR@20"] == pytest.approx(20 / 101)
    assert m["NDCG@10"] == pytest.approx(sum(1 / math.log2(r + 2) for r in range(10)) / 101)
    assert m["MRR"] == pytest.approx(sum(1 / r for r in range(1, 102)) / 101)

    worst = summarize(per_user_metrics(n_greater, n_equal, ties="pessimistic"))
    assert worst["HR@10"] == 0.0 and worst["HR@20"] == 0.0 and worst["NDCG@10"] == 0.0
    assert worst["MRR"] == pytest.approx(1 / 101)


def test_nan_scores_never_help_the_model():
    n_greater, n_equal = rank_counts(np.array([np.nan, 1.0]), np.array([[0.0, 0.0], [np.nan, 0.5]]))
    assert n_greater.tolist() == [2, 1]
    assert n_equal.tolist() == [0, 0]
    assert per_user_metrics(n_greater, n_equal, ks=(1,))["HR@1"].tolist() == [0.0, 0.0]


def test_metrics_lie_in_unit_interval_and_grow_with_k():
    rng = np.random.default_rng(0)
    m = per_user_metrics(rng.integers(0, 200, 500), rng.integers(0, 30, 500))
    for values in m.values():
        assert values.min() >= 0.0 and values.max() <= 1.0
    assert (
        np.all(m["HR@1"] <= m["HR@5"])
        and np.all(m["HR@5"] <= m["HR@10"])
        and np.all(m["HR@10"] <= m["HR@20"])
    )
    assert np.all(m["NDCG@10"] <= m["HR@10"] + 1e-12)


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_users():
    rng = np.random.default_rng(3)
    small = (rng.random(100) < 0.3).astype(float)
    large = (rng.random(10_000) < 0.3).astype(float)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s
    assert lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # width shrinks like 1/sqrt(n): 10x here
    # a Bernoulli(0.3) mean over 10k users has a standard error of 0.0046: 95 % CI width ~0.018
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 * math.sqrt(0.3 * 0.7 / 10_000), rel=0.15)
    assert bootstrap_ci(small, seed=5) == bootstrap_ci(small, seed=5)


def test_bootstrap_ci_matches_naive_resampling_of_users():
    rng = np.random.default_rng(4)
    values = per_user_metrics(rng.integers(0, 40, 400))["NDCG@10"]
    lo, hi = bootstrap_ci(values, n_boot=2000)
    boot = np.random.default_rng(9)
    means = [values[boot.integers(0, len(values), len(values))].mean() for _ in range(2000)]
    naive_lo, naive_hi = np.quantile(means, [0.025, 0.975])
    assert lo == pytest.approx(naive_lo, abs=0.01)
    assert hi == pytest.approx(naive_hi, abs=0.01)


def test_bootstrap_ci_degenerate_inputs():
    assert bootstrap_ci(np.ones(50)) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([])))


def test_long_history_mask_takes_the_top_fifth():
    lengths = np.array([3, 50, 7, 9, 4, 40, 5, 6, 8, 3])
    mask = long_history_mask(lengths)
    assert mask.sum() == 2
    assert sorted(np.flatnonzero(mask).tolist()) == [1, 5]
    # equal lengths at the boundary: the earlier user wins, deterministically
    assert np.flatnonzero(long_history_mask(np.array([5, 9, 9, 9, 1]))).tolist() == [1]
    groups = user_group_masks(lengths)
    assert groups["all"].all()
    assert not (groups["top20_longest"] & groups["bottom80"]).any()
    assert (groups["top20_longest"] | groups["bottom80"]).all()


def test_grouped_summary_by_user_group():
    # users 0 and 1 have the longest histories and hit at rank 0; the other 8 miss (rank 50)
    n_greater = np.array([0, 0] + [50] * 8)
    lengths = np.array([30, 25] + [4] * 8)
    records = grouped_summary(n_greater, None, lengths, n_boot=200)
    by_key = {(r["metric"], r["k"], r["user_group"]): r for r in records}
    assert by_key[("HR", 10, "top20_longest")]["value"] == 1.0
    assert by_key[("HR", 10, "bottom80")]["value"] == 0.0
    assert by_key[("HR", 10, "all")]["value"] == pytest.approx(0.2)
    assert by_key[("MRR", None, "bottom80")]["value"] == pytest.approx(1 / 51)
    assert by_key[("HR", 10, "all")]["n_users"] == 10
    assert by_key[("HR", 10, "top20_longest")]["n_users"] == 2
    assert by_key[("HR", 10, "bottom80")]["n_users"] == 8
    # intervals only for HR@10 and NDCG@10, and they hold the mean
    with_ci = {(r["metric"], r["k"]) for r in records if r["ci_low"] is not None}
    assert with_ci == {("HR", 10), ("NDCG", 10)}
    all_hr = by_key[("HR", 10, "all")]
    assert all_hr["ci_low"] <= all_hr["value"] <= all_hr["ci_high"]
    assert len(records) == 3 * 9  # 3 groups x (HR, NDCG at 4 ks + MRR)

    with pytest.raises(ValueError, match="history_lengths"):
        grouped_summary(n_greater, None, lengths[:5])


def test_grouped_summary_skips_empty_groups():
    records = grouped_summary(np.array([0, 4]), None, np.array([3, 5]), n_boot=50)
    assert {r["user_group"] for r in records} == {"all", "bottom80"}
