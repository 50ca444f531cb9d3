"""ConvRec's attention counterpart: the same item encoder, a Transformer encoder instead of the
convolution stack, so that a comparison isolates convolution versus attention."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from models.base import LossName
from models.convrec import EncodedSequenceModel
from models.data import RecData

FFN_MULT = 1  # the feed-forward width, in multiples of d


class ConvRecAttention(EncodedSequenceModel):
    """Item encoder -> + learned positions -> ``nn.TransformerEncoder`` (bidirectional, padding
    keys masked) -> the last position's vector (or the mean over real positions)."""

    name = "convrec_attention"

    def __init__(
        self,
        data: RecData,
        max_len: int = 50,
        d: int = 256,
        dropout: float = 0.3,
        features: str = "auto",
        n_layers: int = 2,
        n_heads: int = 2,
        pooling: Literal["last", "mean"] = "last",
        intervals: bool = True,
        hidden: int | None = None,
        loss: LossName = "softmax",
        emb_init_std: float | None = None,
        interval_scale: str = "raw",
        side_init: str = "default",
    ):
        super().__init__(
            data,
            max_len,
            d,
            dropout,
            features,
            intervals,
            hidden,
            loss,
            emb_init_std,
            interval_scale,
            side_init,
        )
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', not {pooling!r}")
        self.pooling = pooling
        self.positions = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(
            d, n_heads, FFN_MULT * d, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(
            layer, n_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )

    def mix(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = z.shape[1]
        z = z + self.positions.weight[-length:] * mask.unsqueeze(-1).to(z.dtype)
        h = self.transformer(z, src_key_padding_mask=~mask)
        if self.pooling == "last":
            return h[:, -1]
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
