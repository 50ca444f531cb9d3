"""Popularity: every user gets the items with the most training interactions. Nothing to learn."""

from __future__ import annotations

import torch

from models.base import LossName, SequentialRecommender, candidate_loss
from models.batching import Batch
from models.data import RecData


class Popularity(SequentialRecommender):
    name = "popularity"
    trainable = False

    def __init__(self, data: RecData, max_len: int = 50, loss: LossName = "softmax"):
        super().__init__(data.n_items, max_len, loss)
        counts = torch.as_tensor(data.train_item_counts(), dtype=torch.float32)
        counts[0] = float("-inf")
        self.register_buffer("counts", counts)  # persistent: the fitted model is its counts

    def forward(self, batch: Batch) -> None:
        return None

    def predict(self, batch: Batch) -> torch.Tensor:
        return self.counts[batch.candidates]

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        return candidate_loss(torch.log1p(self.predict(batch).clamp(min=0)), self.loss)

    @torch.no_grad()
    def full_sort_predict(self, batch: Batch, chunk_size: int | None = None) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(batch.items), -1).clone()
