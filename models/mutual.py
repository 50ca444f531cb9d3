"""Deep mutual learning (Zhang et al., CVPR 2018): two copies of one model trained together on the same
batches, each also matching the other's predicted next-item distribution.

Each copy's loss is its own cross-entropy plus ``weight`` x KL(other || self), with the other's
distribution held fixed (detached), so a copy learns from the other's soft ranking of every item, the way
an ensemble's members would agree. Only the first copy is kept and ranks: the second is a training aid,
and the model that ranks is one model at one model's scoring cost.

Only ``loss="full_softmax"`` (the distribution over every item) is supported. The training loop builds the pair
(``TrainConfig.mutual_learning``, ``models.train.train``'s ``partner``); ``benchmarks.convergence --mutual-learning``
uses it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from models.base import SequentialRecommender, full_softmax_logits, softmax_cross_entropy
from models.batching import Batch


class MutualPair(SequentialRecommender):
    """``first`` and ``second`` trained with mutual learning; ``first`` ranks."""

    def __init__(self, first: SequentialRecommender, second: SequentialRecommender, weight: float = 1.0):
        if first.positionwise:
            raise ValueError(f"mutual learning scores one row per cut: {first.name} trains position-wise")
        if first.loss != "full_softmax" or second.loss != "full_softmax":
            raise ValueError(
                "mutual learning matches the copies' distributions over every item, so it needs "
                f"loss='full_softmax' (candidate vectors that do not depend on the row), not {first.loss!r}"
            )
        if getattr(first, "attribute_loss", 0.0):
            raise ValueError("mutual learning trains the next-item loss alone: set attribute_loss to 0")
        super().__init__(first.n_items, first.max_len, first.loss)
        self.members = nn.ModuleList([first, second])
        self.weight = float(weight)
        self.name = first.name

    @property
    def label_smoothing(self) -> float:  # type: ignore[override]
        return self.members[0].label_smoothing

    @label_smoothing.setter
    def label_smoothing(self, value: float) -> None:
        for member in self.members:
            member.label_smoothing = value

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.members[0](batch)

    def predict(self, batch: Batch) -> torch.Tensor:
        return self.members[0].predict(batch)

    @torch.no_grad()
    def full_sort_predict(self, batch: Batch, chunk_size: int = 8192) -> torch.Tensor:
        return self.members[0].full_sort_predict(batch, chunk_size)

    @contextlib.contextmanager
    def item_table_for_eval(self) -> Iterator[None]:
        with self.members[0].item_table_for_eval():
            yield

    def item_vectors(self) -> torch.Tensor:
        return self.members[0].item_vectors()

    def set_popularity_adjustment(self, tau: float, train_counts=None) -> None:
        self.members[0].set_popularity_adjustment(tau, train_counts)

    def cross_entropies(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The sum of the copies' cross-entropies over every item, and each copy's log-probabilities."""
        targets = batch.candidates[:, 0] - 1
        log_probs, total = [], 0.0
        for member in self.members:
            logits = full_softmax_logits(member(batch), member.item_vectors())
            total = total + softmax_cross_entropy(logits, targets, member.label_smoothing, masked=False)
            log_probs.append(logits.log_softmax(-1))
        return total, log_probs

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        """Both copies' cross-entropies plus ``weight`` x the symmetric KL (what the run log's loss reports)."""
        total, log_probs = self.cross_entropies(batch)
        if self.weight:
            a, b = log_probs
            kl = F.kl_div(a, b.detach(), log_target=True, reduction="batchmean")
            kl = kl + F.kl_div(b, a.detach(), log_target=True, reduction="batchmean")
            total = total + self.weight * kl
        return total
