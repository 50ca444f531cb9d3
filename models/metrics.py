"""Ranking metrics from per-user rank counts (pure NumPy).

A user's ranking is summarised by two counts: ``n_greater``, the candidates scored strictly above
the positive, and ``n_equal``, the candidates scored exactly like it. Ties are never resolved in the
model's favour:

- ``ties="expected"`` (default): the positive's rank is uniform over its tie group, and each metric
  is its expectation over that order. A model that scores everything equal gets HR@10 = 10/101 on
  the sampled protocol, which is what random guessing earns.
- ``ties="pessimistic"``: the positive ranks after every tied candidate (HR@10 = 0 for that model).

Ranks are 0-based: rank 0 is the top of the list.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)
# The evaluation protocols (models.evaluate.rank_eval_users) and the evaluated splits, in report order.
PROTOCOLS = ("sampled_100", "full")
SPLITS = ("test", "valid")
Ties = Literal["expected", "pessimistic"]


def rank_counts(pos_scores: np.ndarray, cand_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of candidates strictly above and equal to the positive, per row.

    ``pos_scores``: (N,), ``cand_scores``: (N, C) excluding the positive itself. A NaN score never
    helps the model: a NaN positive ranks below every candidate, and a NaN candidate above the
    positive (plain comparisons would rank a NaN positive first).
    """
    pos = np.asarray(pos_scores)[:, None]
    cand = np.asarray(cand_scores)
    above = (cand > pos) | np.isnan(cand) | np.isnan(pos)
    equal = (cand == pos) & ~above
    return above.sum(axis=1).astype(np.int64), equal.sum(axis=1).astype(np.int64)


def _expected_over_ties(prefix: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: np.ndarray) -> np.ndarray:
    # mean of f(r) for r in [lo, lo + n), where prefix[m] = sum_{r < m} f(r) and f(r) = 0 for r >= hi
    top = np.minimum(lo + n, hi)
    start = np.minimum(lo, hi)
    return (prefix[top] - prefix[start]) / n


def per_user_metrics(
    n_greater: np.ndarray,
    n_equal: np.ndarray | None = None,
    ks: tuple[int, ...] = DEFAULT_KS,
    ties: Ties = "expected",
) -> dict[str, np.ndarray]:
    """HR@k, NDCG@k (one relevant item) and MRR for every user, as float64 arrays."""
    n_greater = np.asarray(n_greater, dtype=np.int64)
    n_equal = np.zeros_like(n_greater) if n_equal is None else np.asarray(n_equal, dtype=np.int64)
    if ties == "pessimistic":
        n_greater, n_equal = n_greater + n_equal, np.zeros_like(n_equal)
    elif ties != "expected":
        raise ValueError(f"ties must be 'expected' or 'pessimistic', not {ties!r}")
    group = n_equal + 1  # positions the positive may take
    max_rank = int((n_greater + group).max(initial=1)) + 1
    ranks = np.arange(max_rank, dtype=np.float64)
    hit_prefix = np.arange(max_rank + 1, dtype=np.float64)
    dcg_prefix = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(ranks + 2.0))])
    rr_prefix = np.concatenate([[0.0], np.cumsum(1.0 / (ranks + 1.0))])
    no_cap = np.full_like(n_greater, max_rank)

    out: dict[str, np.ndarray] = {}
    for k in ks:
        cap = np.full_like(n_greater, k)
        out[f"HR@{k}"] = _expected_over_ties(hit_prefix, n_greater, cap, group)
        out[f"NDCG@{k}"] = _expected_over_ties(dcg_prefix, n_greater, cap, group)
    out["MRR"] = _expected_over_ties(rr_prefix, n_greater, no_cap, group)
    return out


def summarize(per_user: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean of every per-user metric, over the users selected by ``mask`` (all when None)."""
    return {
        name: float(values[mask].mean() if mask is not None else values.mean())
        if len(values)
        else float("nan")
        for name, values in per_user.items()
    }


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling users with replacement.

    Resampling n users with replacement is a multinomial draw over the distinct values, weighted by
    how many users hold each; drawing that directly costs O(n_boot x distinct values) instead of
    O(n_boot x users), and per-user HR/NDCG take only a handful of distinct values.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    distinct, counts = np.unique(values, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(values), counts / len(values), size=n_boot)
    means = draws @ distinct / len(values)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # the quantiles of a mean of values in [a, b] stay in [a, b]; clip float rounding at the edges
    return float(np.clip(low, distinct[0], distinct[-1])), float(np.clip(high, distinct[0], distinct[-1]))


def long_history_mask(history_lengths: np.ndarray, top_share: float = 0.2) -> np.ndarray:
    """True for the ``top_share`` of users with the longest histories (paper, Appendix B)."""
    lengths = np.asarray(history_lengths)
    n_top = int(round(len(lengths) * top_share))
    mask = np.zeros(len(lengths), dtype=bool)
    if n_top:
        mask[np.argsort(-lengths, kind="stable")[:n_top]] = True
    return mask


USER_GROUPS = ("all", "top20_longest", "bottom80")
CI_METRICS = (("HR", 10), ("NDCG", 10))


def user_group_masks(history_lengths: np.ndarray, top_share: float = 0.2) -> dict[str, np.ndarray]:
    """Masks of the paper's user groups: everyone, the longest ``top_share`` and the rest."""
    top = long_history_mask(history_lengths, top_share)
    return {"all": np.ones_like(top), "top20_longest": top, "bottom80": ~top}


def grouped_summary(
    n_greater: np.ndarray,
    n_equal: np.ndarray | None,
    history_lengths: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    ties: Ties = "expected",
    ci_metrics: tuple[tuple[str, int], ...] = CI_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """One record per (metric, k, user group): mean over users and, for ``ci_metrics``, a 95 % CI.

    Users are the rows of the rank counts; ``history_lengths`` (same order) defines the groups. An
    empty group (too few users) gets no records.

    Records hold ``metric`` ("HR", "NDCG", "MRR"), ``k`` (None for MRR), ``user_group``, ``value``,
    ``ci_low``, ``ci_high`` (None where no interval is computed) and ``n_users``.
    """
    per_user = per_user_metrics(n_greater, n_equal, ks=ks, ties=ties)
    if len(history_lengths) != len(per_user["MRR"]):
        raise ValueError(
            f"history_lengths has {len(history_lengths)} entries but there are {len(per_user['MRR'])} users"
        )
    records = []
    for group, mask in user_group_masks(history_lengths).items():
        if not mask.any():  # e.g. top20_longest of four users: no mean to report
            continue
        for name, values in per_user.items():
            metric, _, k_text = name.partition("@")
            k = int(k_text) if k_text else None
            selected = values[mask]
            low = high = None
            if (metric, k) in ci_metrics:
                low, high = bootstrap_ci(selected, n_boot=n_boot, seed=seed)
            records.append(
                {
                    "metric": metric,
                    "k": k,
                    "user_group": group,
                    "value": float(selected.mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "n_users": int(mask.sum()),
                }
            )
    return records
