"""Synthetic :class:`RecData` for tests and benchmarks (no files, no network).

``chain_data``: users walk item chains (the next item is usually the successor of the current one),
the structure a sequential model must find and popularity cannot. ``games_like_data``: the sizes of
the Games dataset (23,715 items, 506 attributes at about 5 per item) for efficiency measurements.
"""

from __future__ import annotations

import numpy as np

from models.data import RecData


def _time_columns(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dates = np.datetime64("2012-01-01") + days.astype("timedelta64[D]")
    years = dates.astype("datetime64[Y]").astype(int) + 1970
    months = dates.astype("datetime64[M]").astype(int) % 12 + 1
    day = (dates - dates.astype("datetime64[M]")).astype(int) + 1
    doy = (dates - dates.astype("datetime64[Y]")).astype(int) + 1
    dow = (days + 6) % 7  # 2012-01-01 was a Sunday
    span = max(int(years.max() - years.min()), 1)
    context = np.stack(
        [(years - years.min()) / span, months / 12, day / 31, dow / 7, doy / 365, ((doy - 1) // 7 + 1) / 53],
        1,
    ).astype(np.float32)
    return context, np.stack([years, months, day], 1).astype(np.float32)


def build_rec_data(
    sequences: list[np.ndarray],
    n_items: int,
    rng: np.random.Generator,
    days: list[np.ndarray] | None = None,
    item_attrs: list[np.ndarray] | None = None,
    n_attrs: int = 0,
    image_dim: int = 0,
    n_proxy_items: int | None = None,
) -> RecData:
    """RecData from per-user item sequences (users 1..U), with stored negatives and proxy ids."""
    n_users = len(sequences)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    user_ptr = np.concatenate([[0, 0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate(sequences).astype(np.int64)
    is_eval = np.concatenate([[False], lengths >= 3])
    data = RecData(
        n_users,
        n_items,
        user_ptr,
        items,
        is_eval,
        np.zeros((n_users + 1, 100), np.int64),
        np.zeros(n_items + 1, np.int64),
        2,
        info={"fingerprint": "synthetic"},
    )
    counts = data.train_item_counts()
    order = np.argsort(-counts[1:], kind="stable") + 1
    k = n_items if n_proxy_items is None else n_proxy_items
    proxy = np.full(n_items + 1, k + 1, dtype=np.int64)
    proxy[order[:k]] = np.arange(1, k + 1)
    proxy[0] = 0
    data.proxy_ids, data.n_proxy = proxy, k + 2
    for u in np.flatnonzero(is_eval):
        seen = set(sequences[u - 1].tolist())
        pool = np.setdiff1d(np.arange(1, n_items + 1), np.fromiter(seen, np.int64))
        pool = pool if len(pool) else np.arange(1, n_items + 1)  # a user who saw every item
        data.eval_negatives[u] = rng.choice(pool, 100, replace=len(pool) < 100)
    if days is not None:
        data.context, data.ymd = _time_columns(np.concatenate(days))
    if item_attrs is not None:
        counts_a = np.array([len(a) for a in item_attrs], dtype=np.int64)
        data.attr_ptr = np.concatenate([[0], np.cumsum(counts_a)]).astype(np.int64)
        data.attr_ids = np.concatenate(item_attrs).astype(np.int64)
        data.n_attrs = n_attrs
    if image_dim:
        data.image_features = rng.standard_normal((n_items + 1, image_dim)).astype(np.float32)
        data.image_features[0] = 0
    return data


def chain_data(
    n_users: int = 300,
    n_items: int = 60,
    min_len: int = 6,
    max_len: int = 20,
    follow: float = 0.85,
    seed: int = 0,
    with_time: bool = True,
    with_attributes: bool = True,
    image_dim: int = 0,
) -> RecData:
    """Users follow ``next = current + 1 (mod n_items)`` with probability ``follow``, else jump to an
    item drawn from a skewed popularity distribution."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    sequences, days = [], []
    for _ in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        seq = [int(rng.choice(n_items, p=popularity)) + 1]
        for _ in range(length - 1):
            seq.append(
                seq[-1] % n_items + 1 if rng.random() < follow else int(rng.choice(n_items, p=popularity)) + 1
            )
        sequences.append(np.array(seq))
        days.append(np.cumsum(rng.integers(0, 40, length)) + int(rng.integers(0, 700)))
    attrs = None
    if with_attributes:  # one attribute names the item's block of 5, one its parity: weakly informative
        attrs = [np.array([1 + (i - 1) // 5, 1 + n_items // 5 + 1 + (i % 2)]) for i in range(n_items + 1)]
        attrs[0] = np.array([], dtype=np.int64)
    return build_rec_data(
        sequences,
        n_items,
        rng,
        days if with_time else None,
        attrs,
        n_items // 5 + 3 if with_attributes else 0,
        image_dim,
    )


def games_like_data(
    n_users: int = 2000,
    n_items: int = 23715,
    n_attrs: int = 506,
    attrs_per_item: int = 5,
    seq_len: int = 60,
    seed: int = 0,
    with_time: bool = True,
) -> RecData:
    """Games-sized catalogue and attributes, users with ``seq_len`` uniform random interactions."""
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(1, n_items + 1, seq_len) for _ in range(n_users)]
    days = [np.sort(rng.integers(0, 3000, seq_len)) for _ in range(n_users)] if with_time else None
    attrs = [np.array([], np.int64)] + [
        np.unique(rng.integers(1, n_attrs + 1, attrs_per_item)) for _ in range(n_items)
    ]
    return build_rec_data(sequences, n_items, rng, days, attrs, n_attrs, n_proxy_items=n_items // 10)
