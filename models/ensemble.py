"""Several trained copies of one model that rank by the mean of their scores.

Members share the model, its config and its window L, and differ only in the seed they were trained with
(``convrec_dagster.data.ensemble_training``). Seeds give different minima whose errors partly cancel: on
Beauty two ConvRecs trained side by side in the 2-core hour rank +.003 full NDCG@10 above either alone,
more than any single-model change measured there (BENCHMARKS.md, "Stop 45").

The ensemble is a ``SequentialRecommender`` for everything that ranks (``predict``, ``full_sort_predict``,
``item_table_for_eval``, the popularity adjustment), so evaluation, calibration and recommendations use it
unchanged. It is not trained as a whole: each member is trained on its own. Its state dict is the members'
under ``members.<i>.``; ``models.registry`` saves and loads it as one checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from models.base import SequentialRecommender
from models.batching import Batch


class ScoreEnsemble(SequentialRecommender):
    """The mean of ``members``' scores (each member's popularity adjustment is ignored; the ensemble
    holds its own, applied to the mean)."""

    def __init__(self, members: Sequence[SequentialRecommender]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, not {len(members)}")
        first = members[0]
        if any(type(m) is not type(first) or m.max_len != first.max_len for m in members):
            raise ValueError("ensemble members must be the same model with the same window L")
        super().__init__(first.n_items, first.max_len, first.loss)
        self.members = nn.ModuleList(members)
        self.name = first.name
        self.trainable = first.trainable

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, batch: Batch) -> torch.Tensor:
        raise TypeError(
            "an ensemble has no single sequence vector: it ranks with predict / full_sort_predict"
        )

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        raise TypeError("an ensemble is not trained as a whole: train each member (ensemble_training)")

    def predict(self, batch: Batch) -> torch.Tensor:
        scores = torch.stack([member.predict(batch).float() for member in self._raw_members()]).mean(0)
        return self.adjusted_scores(scores, batch.candidates)

    @torch.no_grad()
    def full_sort_predict(self, batch: Batch, chunk_size: int = 8192) -> torch.Tensor:
        total = None
        for member in self._raw_members():
            scores = member.full_sort_predict(batch, chunk_size).float()
            total = scores if total is None else total.add_(scores)
        return self.adjusted_scores(total / len(self.members))

    @contextlib.contextmanager
    def item_table_for_eval(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for member in self.members:
                stack.enter_context(member.item_table_for_eval())
            yield

    def _raw_members(self) -> Iterator[SequentialRecommender]:
        for member in self.members:
            if member.popularity_adjustment:
                raise ValueError(
                    "ensemble members rank by their raw scores: set the adjustment on the ensemble"
                )
            yield member
