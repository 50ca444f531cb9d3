"""The in-memory dataset every model trains and is evaluated on (pure NumPy).

Built from DuckDB by ``convrec_dagster.data.dataset.load_rec_data``; tests build it by hand.

Indices: users 1..n_users and items 1..n_items (0 = padding everywhere). Each user's interactions
are one contiguous, time-ordered slice ``items[user_ptr[u]:user_ptr[u + 1]]``. Leave-one-out:
for an evaluated user (>= 3 interactions) the last item is the test target, the one before it the
validation target, and the rest is training; other users only train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

# Which item features a model reads: ``auto`` (whatever the dataset has), attributes, image, both, none.
FeatureChoice = Literal["auto", "attributes", "image", "both", "none"]
FEATURE_CHOICES: tuple[str, ...] = get_args(FeatureChoice)


def resolved_features(info: dict) -> str | None:
    """The explicit feature choice (never ``auto``) that loads the item features a dataset was
    loaded with (``RecData.info["features"]``: ``none``, ``attributes``, ``image`` or
    ``attributes+image``); None when the dataset does not say. Checkpoints keep it
    (``extra["data_features"]``), so evaluation loads the same data without trying choices."""
    features = info.get("features")
    if features is None:
        return None
    return "both" if features == "attributes+image" else str(features)


N_CONTEXT = 6  # year (min-max scaled), month/12, day/31, day-of-week/7, day-of-year/365, week/53


@dataclass
class RecData:
    n_users: int
    n_items: int
    user_ptr: np.ndarray  # int64 (n_users + 2,): CSR offsets; user_ptr[0] = user_ptr[1] = 0
    items: np.ndarray  # int64 (n_interactions,): item index per interaction
    is_eval_user: np.ndarray  # bool (n_users + 1,): has validation and test targets
    eval_negatives: np.ndarray  # int64 (n_users + 1, 100): stored negatives; zeros for train-only
    proxy_ids: np.ndarray  # int64 (n_items + 1,): proxy id per item; 0 for padding
    n_proxy: int  # proxy ids 0..n_proxy-1 (0 padding, n_proxy-1 the shared rare-item id)
    context: np.ndarray | None = None  # float32 (n_interactions, 6); None: no timestamps
    ymd: np.ndarray | None = None  # float32 (n_interactions, 3): year, month, day for intervals
    attr_ptr: np.ndarray | None = None  # int64 (n_items + 2,): CSR offsets into attr_ids per item
    attr_ids: np.ndarray | None = None  # int64: attribute ids 1..n_attrs (0 = padding)
    n_attrs: int = 0
    image_features: np.ndarray | None = None  # float32 (n_items + 1, dim); row 0 zeros
    item_names: np.ndarray | None = None  # object (n_items + 1,): raw item ids (ASINs)
    user_names: np.ndarray | None = None  # object (n_users + 1,): raw user ids
    info: dict = field(default_factory=dict)  # provenance: dataset name, fingerprint, ...

    @property
    def has_context(self) -> bool:
        return self.context is not None

    @property
    def has_attributes(self) -> bool:
        return self.attr_ids is not None and self.n_attrs > 0

    @property
    def has_images(self) -> bool:
        return self.image_features is not None

    def user_slice(self, user: int) -> slice:
        return slice(int(self.user_ptr[user]), int(self.user_ptr[user + 1]))

    def n_train(self, user: int) -> int:
        """Number of training interactions of ``user`` (all of them for train-only users)."""
        n = int(self.user_ptr[user + 1] - self.user_ptr[user])
        return n - 2 if self.is_eval_user[user] else n

    def eval_users(self) -> np.ndarray:
        return np.flatnonzero(self.is_eval_user).astype(np.int64)

    def target_position(self, user: int, split: str) -> int:
        """Global row of the target interaction of ``split`` ('valid' or 'test') for ``user``."""
        end = int(self.user_ptr[user + 1])
        return end - 2 if split == "valid" else end - 1

    def train_mask(self) -> np.ndarray:
        """bool (n_interactions,): True for training rows (not a validation or test target)."""
        mask = np.ones(len(self.items), dtype=bool)
        ends = self.user_ptr[2:][self.is_eval_user[1:]]
        mask[ends - 1] = False
        mask[ends - 2] = False
        return mask

    def train_item_counts(self) -> np.ndarray:
        """Interactions per item over training rows only (int64, length n_items + 1)."""
        return np.bincount(self.items[self.train_mask()], minlength=self.n_items + 1).astype(np.int64)
