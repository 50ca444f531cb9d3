"""Is one model better than another on the same users? A paired permutation test (pure NumPy).

Both models are scored on the same evaluation users, so the question is whether the mean of the
per-user differences ``a - b`` is larger than chance would make it. Under the null hypothesis (no
difference) each user's difference is as likely to have the opposite sign, so the test flips the
signs at random (``n_perm`` times) and counts how often the flipped mean is at least as far from 0
as the observed one: a two-sided p-value, ``(count + 1) / (n_perm + 1)``, that makes no assumption
about the distribution of the metric (NDCG@10 per user is mostly 0 and a few discrete values).

Users with the same value under both models (a zero difference) do not change any flipped mean, so
only the others are flipped: on the full-ranking protocol that is usually a small share of users.
"""

from __future__ import annotations

import numpy as np

from models.metrics import bootstrap_ci

ALPHA = 0.05


def paired_permutation_test(
    a: np.ndarray,
    b: np.ndarray,
    n_perm: int = 10_000,
    seed: int = 0,
    max_cells: int = 4_000_000,
    max_work: float = 1e8,
) -> dict:
    """Two-sided sign-flip test of ``mean(a - b)`` for paired per-user values ``a`` and ``b``.

    Returns ``{"n_users", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "n_perm"}``;
    ``ci_low``/``ci_high`` are a 95 % bootstrap interval of the mean difference (resampling users).
    ``max_cells`` bounds the memory of one block of flips (flips x users); ``max_work`` bounds the
    flips x users in all, so that 50,000 users cost seconds: fewer flips (never under 2,000, enough
    to resolve p = 0.05 well) where many users differ. ``n_perm`` in the result is the number used.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired values must be two 1-d arrays of the same length, not {a.shape} and {b.shape}"
        )
    n = len(a)
    if n == 0:
        nan = float("nan")
        return {
            "n_users": 0,
            "mean_a": nan,
            "mean_b": nan,
            "diff": nan,
            "ci_low": nan,
            "ci_high": nan,
            "p_value": nan,
            "n_perm": n_perm,
        }
    diff = a - b
    observed = float(diff.mean())
    nonzero = diff[diff != 0]
    if len(nonzero) == 0:
        p_value = 1.0
    else:
        rng = np.random.default_rng(seed)
        n_perm = int(min(n_perm, max(2_000, max_work // len(nonzero))))
        # float32 flips below: a tolerance far above their rounding error, far below any real gap
        threshold = abs(nonzero.sum()) - 1e-6 * float(np.abs(nonzero).sum())
        block = max(1, min(n_perm, max_cells // len(nonzero)))
        weights, total = nonzero.astype(np.float32), float(nonzero.sum())
        extreme, done = 0, 0
        while done < n_perm:
            m = min(block, n_perm - done)
            # a flipped sum is sum(s * d) = 2 * (kept @ d) - sum(d), kept = the users whose sign stays
            bits = np.frombuffer(rng.bytes(m * ((len(nonzero) + 7) // 8)), dtype=np.uint8).reshape(m, -1)
            kept = np.unpackbits(bits, axis=1, count=len(nonzero))
            sums = 2.0 * (kept.astype(np.float32) @ weights) - total
            extreme += int((np.abs(sums) >= threshold).sum())
            done += m
        p_value = (extreme + 1) / (n_perm + 1)
    low, high = bootstrap_ci(diff, seed=seed)
    return {
        "n_users": int(n),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "diff": observed,
        "ci_low": low,
        "ci_high": high,
        "p_value": float(p_value),
        "n_perm": int(n_perm),
    }


def verdict(p_value: float | None, diff: float | None, alpha: float = ALPHA) -> str:
    """``better``, ``worse`` (significant at ``alpha``), or ``no significant difference``."""
    if p_value is None or diff is None or not np.isfinite(p_value) or p_value >= alpha or diff == 0:
        return "no significant difference"
    return "better" if diff > 0 else "worse"


def format_p(p_value: float | None, n_perm: int | None = None) -> str:
    """``p = 0.012``, or ``p < 0.0001`` when no flip reached the observed difference."""
    if p_value is None or not np.isfinite(p_value):
        return "p unknown"
    if n_perm and p_value <= 1 / (n_perm + 1) + 1e-15:  # no flip reached the observed difference
        return f"p < {1 / n_perm:.2g}"
    return f"p = {p_value:.4f}" if p_value < 0.001 else f"p = {p_value:.3f}"
