"""ConvRec: attribute-aware item encoder + convolution down-scaling (docs/CONVREC_SPEC.md §2-3).

Efficiency (docs/CONVREC_SPEC.md §7): the item encoder's cost is dominated by per-position work, so

- each *distinct* item of a batch (history + candidates) is encoded once (``torch.unique``) and
  gathered back; attributes are sparse ids in an ``EmbeddingBag(mode="sum")``, which equals a linear
  layer on the multi-hot row;
- the linear layer over ``[F ; C]`` is split into its part over F (per distinct item) and its part
  over C (per position, composed with C's own 6 -> d layer into one 6 -> width map); likewise the
  layer over ``[E_id ; A]``. Without dropout (evaluation) everything before the first non-linearity
  is per item + per position, so the wide layer never runs per position;
- only real (non-padding) history positions are encoded; padding vectors are zero by definition;
- a convolution whose kernel equals its stride is a reshape and one matrix product;
- evaluation without a time path encodes every item once and reads rows (``item_table_for_eval``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.base import LossName, SequentialRecommender, attribute_prediction_loss, dot_scores
from models.batching import Batch
from models.data import FEATURE_CHOICES, N_CONTEXT, RecData

# Δ as (years, months, days), the paper's units, or each part over its calendar range (years, months / 12,
# days / 31), the units of the 6 context features: raw day differences reach ±30 next to id vectors of
# size ~.02 and swamp the LayerNorm that follows (BENCHMARKS.md, "the time path").
INTERVAL_SCALES = {"raw": (1.0, 1.0, 1.0), "calendar": (1.0, 1 / 12, 1 / 31)}
# Where the side information (attributes, images, time context: the path A -> X) starts. "zero": the
# model starts as the id-only model and grows each side input only as far as it lowers the loss (the
# zero-init-residual idea); "zero_time": only the time context starts at zero.
SIDE_INITS = ("default", "zero", "zero_time")
EVAL_CHUNK = 8192  # items per chunk of the evaluation's item table and of its full-ranking scores


def resolve_features(data: RecData, features: str) -> tuple[bool, bool]:
    """(use attributes, use images) for a ``features`` choice; a requested absent part is an error."""
    if features not in FEATURE_CHOICES:
        raise ValueError(f"features must be one of {FEATURE_CHOICES}, not {features!r}")
    if features == "auto":
        return data.has_attributes, data.has_images
    want_attr, want_img = features in ("attributes", "both"), features in ("image", "both")
    if want_attr and not data.has_attributes:
        raise ValueError(
            f"features={features!r} needs item attributes, but this dataset has none; use 'auto'"
        )
    if want_img and not data.has_images:
        raise ValueError(f"features={features!r} needs image features, but this dataset has none; use 'auto'")
    return want_attr, want_img


def padded_attributes(data: RecData) -> torch.Tensor:
    """(n_items + 1, max attributes per item) attribute ids, 0-padded, from the CSR arrays."""
    counts = np.diff(data.attr_ptr[: data.n_items + 2])
    width = max(int(counts.max(initial=0)), 1)
    out = np.zeros((data.n_items + 1, width), dtype=np.int64)
    rows = np.repeat(np.arange(data.n_items + 1), counts)
    cols = np.arange(len(rows)) - np.repeat(data.attr_ptr[: data.n_items + 1], counts)
    out[rows, cols] = data.attr_ids[data.attr_ptr[0] : data.attr_ptr[data.n_items + 1]]
    return torch.from_numpy(out)


def standardized_images(features: np.ndarray) -> torch.Tensor:
    """Per-dimension z-scores over the items that have an image (raw ResNet activations reach the
    tens and swamp the other inputs); items without one, and the padding row, stay zero."""
    x = torch.as_tensor(features, dtype=torch.float32).clone()
    present = x.abs().sum(1) > 0
    if present.any():
        rows = x[present]
        x[present] = (rows - rows.mean(0)) / rows.std(0, unbiased=False).clamp(min=1e-6)
    return x


class ItemEncoder(nn.Module):
    """Interaction vectors z = GELU(W·LN(Dropout(GELU([X ; Δ])))) (docs/CONVREC_SPEC.md §2).

    X = Linear([E_proxy ; A]), A = Dropout(Linear([F ; C])), F = item features (attributes and/or
    image), C = Linear(6 time features). Parts the dataset lacks are absent, not faked.
    """

    def __init__(
        self,
        data: RecData,
        d: int = 256,
        hidden: int | None = None,
        dropout: float = 0.3,
        features: str = "auto",
        intervals: bool = True,
        emb_init_std: float | None = None,
        interval_scale: str = "raw",
        side_init: str = "default",
    ):
        super().__init__()
        if interval_scale not in INTERVAL_SCALES:
            raise ValueError(
                f"interval_scale must be one of {sorted(INTERVAL_SCALES)}, not {interval_scale!r}"
            )
        if side_init not in SIDE_INITS:
            raise ValueError(f"side_init must be one of {SIDE_INITS}, not {side_init!r}")
        hidden = hidden or 4 * d
        self.d = d
        self.use_attr, self.use_image = resolve_features(data, features)
        self.use_context = data.has_context
        self.use_intervals = intervals and data.ymd is not None
        self.register_buffer("proxy_ids", torch.as_tensor(data.proxy_ids, dtype=torch.long), persistent=False)
        self.proxy = nn.Embedding(data.n_proxy, d, padding_idx=0)
        self.has_a = self.use_attr or self.use_image or self.use_context
        self.has_features = self.use_attr or self.use_image
        if self.use_attr:
            self.register_buffer("item_attrs", padded_attributes(data), persistent=False)
            self.attr_bag = nn.EmbeddingBag(data.n_attrs + 1, hidden, mode="sum", padding_idx=0)
        if self.use_image:
            self.register_buffer("image_features", standardized_images(data.image_features), persistent=False)
            self.image = nn.Linear(data.image_features.shape[1], hidden, bias=not self.use_attr)
        if self.use_attr:
            self.attr_bias = nn.Parameter(torch.zeros(hidden))
        if emb_init_std is not None:  # None: PyTorch's N(0, 1), as the authors' code
            for table in [self.proxy] + ([self.attr_bag] if self.use_attr else []):
                nn.init.normal_(table.weight, std=emb_init_std)
                with torch.no_grad():
                    table.weight[0].zero_()
        if self.has_features:
            self.a_from_f = nn.Linear(hidden, hidden)  # [F ; C] -> A, the part over F (+ bias)
        if self.use_context:
            self.context = nn.Linear(N_CONTEXT, d)  # C
            self.a_from_c = nn.Linear(d, hidden, bias=not self.has_features)  # the part over C
            if side_init == "zero_time":
                nn.init.zeros_(self.a_from_c.weight)
        if self.has_a:
            self.x_from_id = nn.Linear(d, d)  # [E ; A] -> X, the part over E (+ bias)
            self.x_from_a = nn.Linear(hidden, d, bias=False)  # the part over A
            if side_init == "zero":
                nn.init.zeros_(self.x_from_a.weight)
        width = d + 3 if self.use_intervals else d
        self.register_buffer(
            "interval_scale", torch.tensor(INTERVAL_SCALES[interval_scale]), persistent=False
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d)

    def _features(self, items: torch.Tensor) -> torch.Tensor:
        """A's part over F for distinct items, with A's bias: (U, hidden).

        No non-linearity sits between the attribute bag and ``a_from_f``, so the two compose into one
        (n_attrs + 1, hidden) table: a hidden x hidden product per attribute instead of per distinct
        item (100 negatives per row make thousands of distinct items per batch).
        """
        if not self.use_attr:
            return self.a_from_f(self.image(self.image_features[items]))
        table = F.linear(self.attr_bag.weight, self.a_from_f.weight)  # row 0 (padding) stays 0
        f = F.embedding_bag(self.item_attrs[items], table, mode="sum", padding_idx=0)
        f = f + self.a_from_f(self.attr_bias)
        if self.use_image:
            f = f + F.linear(self.image(self.image_features[items]), self.a_from_f.weight)
        return f

    def _context_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The composed 6 -> hidden map (A's part over C after C's own layer)."""
        weight = self.a_from_c.weight @ self.context.weight
        bias = self.a_from_c.weight @ self.context.bias
        if self.a_from_c.bias is not None:
            bias = bias + self.a_from_c.bias
        return weight, bias

    def _item_x(self, items: torch.Tensor, fold_a: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per distinct item: X's item part (U, d), and A's item part (U, hidden) unless folded in."""
        e = self.proxy(self.proxy_ids[items])
        if not self.has_a:
            return e, None
        x = self.x_from_id(e)
        a = self._features(items) if self.has_features else None
        if fold_a and a is not None:
            return x + self.x_from_a(a), None
        return x, a

    def _finish(self, x: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
        if self.use_intervals:
            x = torch.cat([x, (delta * self.interval_scale).to(x.dtype)], -1)
        return F.gelu(self.out(self.norm(self.dropout(F.gelu(x)))))

    def forward(
        self, items: torch.Tensor, context: torch.Tensor | None, delta: torch.Tensor | None
    ) -> torch.Tensor:
        """Vectors (N, d) of interactions ``items (N,)`` (all > 0) with context (N, 6), Δ (N, 3)."""
        uniq, inv = torch.unique(items, return_inverse=True)
        per_position_dropout = self.training and self.dropout.p > 0
        x_item, a_item = self._item_x(uniq, fold_a=not per_position_dropout)
        x = x_item[inv]
        if per_position_dropout and self.has_a:
            a = a_item[inv] if a_item is not None else 0
            if self.use_context:
                a = a + F.linear(context, *self._context_map())
            x = x + self.x_from_a(self.dropout(a))
        elif self.use_context:
            weight, bias = self._context_map()
            x = x + F.linear(context, self.x_from_a.weight @ weight, self.x_from_a.weight @ bias)
        return self._finish(x, delta)

    def encode_grid(
        self, items: torch.Tensor, context: torch.Tensor | None, delta: torch.Tensor | None
    ) -> torch.Tensor:
        """Evaluation: the same items ``(M,)`` under every row's context (B, 6) and Δ (B, 3) -> (B, M, d)."""
        x_item, _ = self._item_x(items, fold_a=True)
        n_rows = len(context) if context is not None else len(delta) if delta is not None else 1
        x = x_item.unsqueeze(0).expand(n_rows, -1, -1)
        if self.use_context:
            weight, bias = self._context_map()
            x = x + F.linear(context, self.x_from_a.weight @ weight, self.x_from_a.weight @ bias).unsqueeze(1)
        if self.use_intervals:
            delta = delta.unsqueeze(1).expand(-1, x.shape[1], -1)
        return self._finish(x, delta)

    @property
    def row_dependent(self) -> bool:
        """Whether a candidate's vector depends on the row (its time context or interval)."""
        return self.use_context or self.use_intervals


def history_intervals(ymd: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Δ (B, L, 3): (year, month, day) minus the previous item's; 0 for each history's first item."""
    prev_valid = F.pad(mask[:, :-1], (1, 0))
    return (ymd - F.pad(ymd[:, :-1], (0, 0, 1, 0))) * prev_valid.unsqueeze(-1)


class EncodedSequenceModel(SequentialRecommender):
    """A model whose history and candidates go through one :class:`ItemEncoder`; subclasses mix."""

    def __init__(
        self,
        data: RecData,
        max_len: int,
        d: int,
        dropout: float,
        features: str,
        intervals: bool,
        hidden: int | None,
        loss: LossName,
        emb_init_std: float | None = None,
        interval_scale: str = "raw",
        side_init: str = "default",
    ):
        super().__init__(data.n_items, max_len, loss)
        self.d = d
        self.encoder = ItemEncoder(
            data, d, hidden, dropout, features, intervals, emb_init_std, interval_scale, side_init
        )
        self._item_table: torch.Tensor | None = None  # set by item_table_for_eval

    @contextlib.contextmanager
    def item_table_for_eval(self) -> Iterator[None]:
        """Evaluation without a time path: every item is encoded once, and each batch's history and
        candidate vectors are rows of that table. In eval mode (no dropout) an item's vector is then the
        same at every position of every row, so the scores are the same up to float rounding, while the
        encoder runs once per evaluation instead of over every batch's history and candidates (and, in
        full ranking, over the whole catalogue for every batch). A no-op in training or with a time path."""
        if self.training or self.encoder.row_dependent or self._item_table is not None:
            yield
            return
        device = self.encoder.proxy_ids.device
        with torch.no_grad():  # in chunks, so a large catalogue's encoder activations stay bounded
            chunks = [
                self.item_vectors_of(
                    torch.arange(start, min(start + EVAL_CHUNK, self.n_items + 1), device=device)
                )
                for start in range(1, self.n_items + 1, EVAL_CHUNK)
            ]
            self._item_table = torch.cat([chunks[0].new_zeros(1, self.d), *chunks])
        try:
            yield
        finally:
            self._item_table = None

    def mix(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """History vectors (B, L, d), zero at padding -> sequence vector (B, d)."""
        raise NotImplementedError

    def _candidate_inputs(self, batch: Batch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        delta = None
        if self.encoder.use_intervals:
            delta = batch.cand_ymd - batch.ymd[:, -1]
        return batch.cand_context, delta

    def encode(self, batch: Batch, with_candidates: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """History vectors (B, L, d) and candidate vectors (B, C, d), one encoder pass for both."""
        items, mask = batch.items[:, -self.max_len :], batch.mask[:, -self.max_len :]
        if self._item_table is not None:  # row 0, the padding, is zero
            return self._item_table[items], self._item_table[batch.candidates] if with_candidates else None
        rows, cols = mask.nonzero(as_tuple=True)
        enc = self.encoder
        hist_ctx = batch.context[:, -self.max_len :][rows, cols] if enc.use_context else None
        hist_delta = (
            history_intervals(batch.ymd[:, -self.max_len :], mask)[rows, cols] if enc.use_intervals else None
        )
        parts = [items[rows, cols]]
        ctx_parts, delta_parts = [hist_ctx], [hist_delta]
        n_hist = len(rows)
        if with_candidates:
            n_rows, n_cand = batch.candidates.shape
            parts.append(batch.candidates.reshape(-1))
            cand_ctx, cand_delta = self._candidate_inputs(batch)
            if enc.use_context:
                ctx_parts.append(cand_ctx.repeat_interleave(n_cand, 0))
            if enc.use_intervals:
                delta_parts.append(cand_delta.repeat_interleave(n_cand, 0))
        vectors = enc(
            torch.cat(parts),
            torch.cat(ctx_parts) if enc.use_context else None,
            torch.cat(delta_parts) if enc.use_intervals else None,
        )
        z = vectors.new_zeros(*items.shape, self.d)
        z[rows, cols] = vectors[:n_hist]
        cand = vectors[n_hist:].view(n_rows, n_cand, self.d) if with_candidates else None
        return z, cand

    def forward(self, batch: Batch) -> torch.Tensor:
        z, _ = self.encode(batch, with_candidates=False)
        return self.mix(z, batch.mask[:, -self.max_len :])

    def sequence_and_scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        z, cand = self.encode(batch)  # one encoder pass for the history and the candidates
        seq = self.mix(z, batch.mask[:, -self.max_len :])
        return seq, dot_scores(cand, seq)

    def item_vectors(self) -> torch.Tensor:
        items = torch.arange(1, self.n_items + 1, device=self.encoder.proxy_ids.device)
        vectors = self.item_vectors_of(items)
        return torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors])

    def item_vectors_of(self, ids: torch.Tensor) -> torch.Tensor:
        if self.encoder.row_dependent:
            raise ValueError(
                f"loss={self.loss!r} needs candidate vectors that do not depend on the row, but this dataset "
                "has time context or intervals: use loss='softmax' with more n_negatives, or intervals=False"
            )
        return self.encoder.encode_grid(ids, None, None)[0]

    def score_item_chunk(self, batch: Batch, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        ctx, delta = self._candidate_inputs(batch)
        if not self.encoder.row_dependent:
            table = self._item_table
            vectors = self.encoder.encode_grid(items, None, None)[0] if table is None else table[items]
            with torch.autocast(seq.device.type, enabled=False):
                return seq.float() @ vectors.float().T
        return dot_scores(self.encoder.encode_grid(items, ctx, delta), seq)

    @torch.no_grad()
    def full_sort_predict(self, batch: Batch, chunk_size: int | None = None) -> torch.Tensor:
        # row-dependent candidates cost B x chunk x d activations: keep that near 2^25 elements; rows of the
        # evaluation's item table cost only the B x chunk scores, which the output holds anyway
        if chunk_size is None and self._item_table is not None:
            chunk_size = EVAL_CHUNK
        chunk_size = chunk_size or max(64, 2**25 // (len(batch.items) * self.d))
        return super().full_sort_predict(batch, chunk_size)


def default_kernels(max_len: int, max_blocks: int = 3, max_prime: int = 7) -> list[int]:
    """Kernel = stride per block, product >= ``max_len`` (equal when L's prime factors are <= 7).

    L = 70 -> [2, 5, 7]; 50 -> [2, 5, 5]; 30 -> [2, 3, 5]; 1000 -> [10, 10, 10]. A length with a
    large prime factor is rounded up to the next 7-smooth number (101 -> 105 = 3 * 5 * 7); the
    per-block left padding absorbs the difference.
    """
    if max_len <= 1:
        return []
    target = max_len
    while True:
        n, primes = target, []
        for p in (2, 3, 5, 7):
            while n % p == 0:
                primes.append(p)
                n //= p
        if n == 1 and max(primes) <= max_prime:
            break
        target += 1
    bins = [1] * min(max_blocks, len(primes))
    for p in sorted(primes, reverse=True):  # largest first into the smallest bin balances products
        bins[bins.index(min(bins))] *= p
    return sorted(bins)


# How a block's two residuals are down-scaled to its output length: "avg", the paper's average pool of each
# window, or "last", each window's most recent position (the progressive residual then ends as the last
# item's vector, unblurred).
RESIDUAL_POOLS = ("avg", "last")


def _pool(x: torch.Tensor, kernel: int, stride: int, mode: str = "avg") -> torch.Tensor:
    """Down-scale channel-last x (B, L, d) by windows of ``kernel`` every ``stride``: mean or last."""
    if mode == "last":
        return x[:, kernel - 1 :: stride]
    if kernel == stride:
        return x.view(x.shape[0], -1, kernel, x.shape[2]).mean(2)
    return F.avg_pool1d(x.transpose(1, 2), kernel, stride).transpose(1, 2)


class ConvBlock(nn.Module):
    """Left pad, Conv1d (heads = groups), projection, GELU, dropout, LN(y + α·pool(x) + β·pool(r))."""

    def __init__(
        self,
        d: int,
        kernel: int,
        stride: int,
        heads: int,
        dropout: float,
        residual: bool,
        residual_pool: str = "avg",
    ):
        super().__init__()
        if residual_pool not in RESIDUAL_POOLS:
            raise ValueError(f"residual_pool must be one of {RESIDUAL_POOLS}, not {residual_pool!r}")
        if d % heads:
            raise ValueError(f"d={d} must be divisible by heads={heads}")
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(d, d, kernel, stride, groups=heads)
        self.proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)
        self.residual, self.residual_pool = residual, residual_pool
        if residual:
            self.alpha = nn.Parameter(torch.tensor(0.5))
            self.beta = nn.Parameter(torch.tensor(0.5))

    def left_pad(self, length: int) -> int:
        if length < self.kernel:
            return self.kernel - length
        return (-(length - self.kernel)) % self.stride

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == self.stride and self.conv.groups == 1:  # a reshape and one matmul
            b, length, d = x.shape
            weight = self.conv.weight.permute(0, 2, 1).reshape(d, self.kernel * d)
            return F.linear(x.reshape(b, length // self.kernel, self.kernel * d), weight, self.conv.bias)
        return self.conv(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, r: (B, L, d) block input and progressive residual -> both down-scaled."""
        same = x is r  # the first block: input and progressive residual are both z
        pad = self.left_pad(x.shape[1])
        if pad:
            x = F.pad(x, (0, 0, pad, 0))
            r = x if same else F.pad(r, (0, 0, pad, 0))
        y = self.dropout(F.gelu(self.proj(self._conv(x))))
        if not self.residual:
            return self.norm(y), r
        pooled_r = _pool(r, self.kernel, self.stride, self.residual_pool)
        pooled_x = pooled_r if same else _pool(x, self.kernel, self.stride, self.residual_pool)
        return self.norm(y + self.alpha * pooled_x + self.beta * pooled_r), pooled_r


class ConvRec(EncodedSequenceModel):
    """ConvRec with the paper's ablation switches.

    ``intervals=False``: no (year, month, day) intervals. ``residuals=False``: blocks without the two
    weighted residuals. ``single_conv=True``: one block with kernel = stride = L. ``avg_pool_only``:
    the sequence vector is the mean of the history's item vectors (no convolution at all).
    ``residual_pool="last"`` (not in the paper): the residuals keep each window's most recent position
    instead of its mean, so the last item reaches the sequence vector unblurred.
    ``attribute_loss`` > 0 (not in the paper; training only): the loss adds this weight times a
    cross-entropy that predicts the target item's attributes from the sequence vector, through a linear
    head that starts at zero (S3-Rec's associated-attribute prediction, as an auxiliary term). Ranking
    never reads the head. Without attributes in the data there is no head and no term.
    """

    name = "convrec"

    def __init__(
        self,
        data: RecData,
        max_len: int = 50,
        d: int = 256,
        dropout: float = 0.3,
        features: str = "auto",
        kernels: list[int] | None = None,
        strides: list[int] | None = None,
        heads: int = 1,
        intervals: bool = True,
        residuals: bool = True,
        single_conv: bool = False,
        avg_pool_only: bool = False,
        residual_pool: str = "avg",
        hidden: int | None = None,
        loss: LossName = "softmax",
        emb_init_std: float | None = None,
        interval_scale: str = "raw",
        side_init: str = "default",
        attribute_loss: float = 0.0,
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
        if attribute_loss < 0:
            raise ValueError(f"attribute_loss must be >= 0, not {attribute_loss!r}")
        self.attribute_loss = attribute_loss if self.encoder.use_attr else 0.0
        self.attribute_head = None
        if self.attribute_loss:
            # the head's own init draws nothing from the run's generator: the rest of the model and of the
            # run draw what they would without it
            with torch.random.fork_rng(devices=[]):
                self.attribute_head = nn.Linear(d, data.n_attrs)
            nn.init.zeros_(self.attribute_head.weight)
            nn.init.zeros_(self.attribute_head.bias)
        self.avg_pool_only = avg_pool_only
        if single_conv:
            kernels = strides = [max_len]
        elif kernels is None:
            kernels = default_kernels(max_len)
            strides = strides or kernels
        strides = strides or kernels
        if len(kernels) != len(strides) or any(k < s for k, s in zip(kernels, strides)):
            raise ValueError(f"kernels {kernels} and strides {strides} must pair up with kernel >= stride")
        if not avg_pool_only and math.prod(strides) < max_len and kernels == strides:
            raise ValueError(f"strides {strides} multiply to less than max_len={max_len}")
        self.kernels, self.strides = list(kernels), list(strides)
        blocks = (
            []
            if avg_pool_only
            else [
                ConvBlock(d, k, s, heads, dropout, residuals, residual_pool) for k, s in zip(kernels, strides)
            ]
        )
        self.blocks = nn.ModuleList(blocks)

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        seq, loss = self.next_item_loss(batch)
        if self.attribute_head is None:
            return loss
        attrs = self.encoder.item_attrs[batch.candidates[:, 0]]
        return loss + self.attribute_loss * attribute_prediction_loss(self.attribute_head(seq), attrs)

    def mix(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.avg_pool_only:
            return z.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(z.dtype)
        x = r = z
        for block in self.blocks:
            x, r = block(x, r)
        return x.mean(1)  # the adaptive average pool to length 1
