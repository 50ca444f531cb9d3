"""SASRec (Kang & McAuley, 2018): causal self-attention over item-ID embeddings, nanoGPT-style.

Trained with the project's shared scheme (one cut per user per epoch, the last position's vector
scored against the positive and sampled negatives) so that every model sees the same examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import LossName, SequentialRecommender, dot_scores
from models.batching import Batch


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention + point-wise feed-forward."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(SequentialRecommender):
    name = "sasrec"

    def __init__(self, n_items: int, max_len: int = 50, d: int = 256, n_layers: int = 2, n_heads: int = 1,
                 dropout: float = 0.3, loss: LossName = "softmax"):
        super().__init__(n_items, max_len, loss)
        self.items = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.positions = nn.Embedding(max_len, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(d, n_heads, dropout) for _ in range(n_layers)])
        self.ln = nn.LayerNorm(d)
        self.d = d
        nn.init.normal_(self.items.weight, std=d**-0.5)  # unit-scale inputs after the sqrt(d) factor
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, batch: Batch) -> torch.Tensor:
        items = batch.items[:, -self.max_len :]
        mask = items > 0
        length = items.shape[1]
        x = (self.items(items) * self.d**0.5 + self.positions.weight[-length:]) * mask.unsqueeze(-1)
        x = self.drop(x)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=items.device)
        # a query sees earlier real items; padding queries see themselves (never an empty row)
        allowed = ((causal & mask[:, None, :]) | eye).unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln(x[:, -1])

    def encode_candidates(self, batch: Batch, seq: torch.Tensor | None) -> torch.Tensor:
        return self.items(batch.candidates)

    def score_item_chunk(self, batch: Batch, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        with torch.autocast(seq.device.type, enabled=False):
            return seq.float() @ self.items(items).float().T

    def predict(self, batch: Batch) -> torch.Tensor:
        return dot_scores(self.items(batch.candidates), self.forward(batch))
