"""SASRec (Kang & McAuley, ICDM 2018), as their code and the PyTorch port (pmixer/SASRec.pytorch) build it.

Faithful in the details that decide whether it trains at all:

- item embeddings scaled by sqrt(d), learned positions, embedding dropout, padding re-zeroed;
- each block: ``Q = LN(x)``; ``x = Q + MHA(Q, x, x)`` (keys and values from the un-normalised
  input, causal); ``x = LN(x)``; ``x = x + FFN(x)`` (Linear, dropout, ReLU, Linear, dropout);
  padding re-zeroed after every block; a final LayerNorm;
- xavier-normal initialisation of every matrix.

``forward_all`` gives a vector per position, so that training predicts the next item at every
position of a user's sequence (``scheme="all_cuts"`` in :mod:`models.train`): BCE with one
sampled negative per position (the paper's loss), or cross-entropy over all items
(``loss="full_softmax"``, which converges in a few epochs). ``forward`` is the last position's
vector, so SASRec also trains with ConvRec's one-cut scheme and is evaluated like every model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import LossName, SequentialRecommender
from models.batching import Batch


class Block(nn.Module):
    """One SASRec block (see the module docstring for the exact order)."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d={d} must be divisible by n_heads={n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.attn_norm, self.ffn_norm = nn.LayerNorm(d, eps=1e-8), nn.LayerNorm(d, eps=1e-8)
        self.q, self.kv, self.proj = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ffn = nn.Sequential(
            nn.Linear(d, d), nn.Dropout(dropout), nn.ReLU(), nn.Linear(d, d), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        heads = lambda t: t.view(b, length, -1, d // self.n_heads).transpose(1, 2)  # noqa: E731
        q = self.attn_norm(x)
        k, v = self.kv(x).chunk(2, -1)
        att = F.scaled_dot_product_attention(
            heads(self.q(q)),
            heads(k),
            heads(v),
            attn_mask=allowed,
            dropout_p=self.dropout if self.training else 0.0,
        )
        x = self.ffn_norm(q + self.proj(att.transpose(1, 2).reshape(b, length, d)))
        return (x + self.ffn(x)) * keep


class SASRec(SequentialRecommender):
    name = "sasrec"
    positionwise = True  # forward_all: one vector per position (all-positions training)

    def __init__(
        self,
        n_items: int,
        max_len: int = 50,
        d: int = 50,
        n_layers: int = 2,
        n_heads: int = 1,
        dropout: float = 0.5,
        loss: LossName = "bce",
    ):
        super().__init__(n_items, max_len, loss)
        self.items = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.positions = nn.Embedding(max_len, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(d, n_heads, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d, eps=1e-8)
        self.d = d
        for param in self.parameters():
            if param.dim() >= 2:
                nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward_all(self, items: torch.Tensor) -> torch.Tensor:
        """Left-padded ``items (B, L)`` -> a vector per position (B, L, d), zero at padding."""
        items = items[:, -self.max_len :]
        length = items.shape[1]
        keep = (items > 0).unsqueeze(-1).to(self.items.weight.dtype)
        x = self.drop((self.items(items) * self.d**0.5 + self.positions.weight[-length:]) * keep) * keep
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=items.device)
        # a query sees itself and earlier real items; a padding query sees only itself (no empty row)
        allowed = ((causal & (items > 0)[:, None, :]) | eye).unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.norm(x)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.forward_all(batch.items)[:, -1]

    def item_vectors(self) -> torch.Tensor:
        return self.items.weight

    def encode_candidates(self, batch: Batch, seq: torch.Tensor | None) -> torch.Tensor:
        return self.items(batch.candidates)

    def score_item_chunk(self, batch: Batch, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        with torch.autocast(seq.device.type, enabled=False):
            return seq.float() @ self.items(items).float().T
