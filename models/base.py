"""The interface every recommender shares (RecBole's sequential-model interface, trimmed).

A model reads a :class:`models.batching.Batch` and offers

- ``forward(batch)``: the sequence vector ``(B, d)`` (models without one return ``None``);
- ``predict(batch)``: scores ``(B, C)`` for ``batch.candidates``;
- ``calculate_loss(batch)``: the training loss, where ``batch.candidates[:, 0]`` is the positive and
  the rest are negatives (``loss="full_softmax"``: the positive against every item; negatives unused;
  ``loss="shared_softmax"``: the rest are one uniform sample of items, the same for every row); the
  softmax losses smooth their target by ``label_smoothing`` (a training setting the loop sets);
- ``calculate_positionwise_loss(items, targets, negatives)``: models with ``positionwise = True``
  (SASRec) predict the next item at every position of ``items`` in one pass;
- ``full_sort_predict(batch)``: scores ``(B, n_items + 1)`` for every item (column 0, the padding,
  is ``-inf``), computed in item chunks so that 100k+ item catalogues fit in memory.

``predict`` and ``full_sort_predict`` subtract ``popularity_adjustment`` × log(1 + the item's training count)
from every score (0 unless set: ``set_popularity_adjustment``; ``models.calibration`` fits it on validation).

Final dot products run in fp32 even under bf16 autocast, so that bf16 does not manufacture ties.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.batching import Batch

LossName = Literal["bce", "softmax", "full_softmax", "shared_softmax"]
LOSSES = ("bce", "softmax", "full_softmax", "shared_softmax")


def softmax_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0, masked: bool = True
) -> torch.Tensor:
    """Mean cross-entropy of ``logits (N, C)`` against the classes ``targets (N,)``. With
    ``label_smoothing`` ε the target is (1 - ε) on the class and ε spread evenly over the row's finite
    logits: a masked (-inf) candidate is not a class of that row (``F.cross_entropy``'s own smoothing
    would put mass on it and return inf). ``masked=False`` promises every logit is finite: then it is
    ``F.cross_entropy``'s fused smoothing, the same loss at a quarter of the cost on a full softmax."""
    if not label_smoothing or not masked:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    log_p = logits.log_softmax(-1)
    finite = torch.isfinite(logits)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)
    spread = -log_p.masked_fill(~finite, 0.0).sum(1) / finite.sum(1)
    return ((1.0 - label_smoothing) * nll + label_smoothing * spread).mean()


def _first(rows: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(rows), dtype=torch.long, device=rows.device)


def candidate_loss(scores: torch.Tensor, loss: LossName, label_smoothing: float = 0.0) -> torch.Tensor:
    """Loss over ``scores (B, 1 + n_neg)`` whose column 0 is the positive.

    ``softmax``: cross-entropy over [positive + negatives] (the authors' code). ``bce``: binary
    cross-entropy, positive term plus the mean negative term (the paper's text), so one positive
    weighs as much as its negatives together.
    """
    scores = scores.float()
    if loss == "softmax":
        return softmax_cross_entropy(scores, _first(scores), label_smoothing)
    if loss == "bce":
        return (F.softplus(-scores[:, 0]) + F.softplus(scores[:, 1:]).mean(1)).mean()
    raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")


def full_softmax_logits(seq: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, n_items)`` of ``seq (N, d)`` over every item ``item_vectors (n_items + 1, d)`` (row 0, the
    padding, never competes: column j is item j + 1), in fp32 with autocast off."""
    with torch.autocast(seq.device.type, enabled=False):
        return seq.float() @ item_vectors[1:].float().T


def full_softmax_loss(
    seq: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of ``seq (N, d)`` against every item ``item_vectors (n_items + 1, d)``
    (``full_softmax_logits``); ``targets (N,)`` are item ids >= 1."""
    logits = full_softmax_logits(seq, item_vectors)
    return softmax_cross_entropy(logits, targets - 1, label_smoothing, masked=False)


def shared_softmax_loss(
    seq: torch.Tensor,
    vectors_of,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Sampled softmax: ``seq (N, d)`` against its positive ``targets (N,)`` and one uniform sample of
    items ``negatives (M,)`` shared by all rows. ``vectors_of(ids)`` gives item vectors; each distinct
    item is encoded once. A negative equal to a row's positive is masked out of that row. With a
    uniform sample the expected logits need no correction, and M of a few thousand costs a fraction of
    a full softmax over a large catalogue (the item encoder runs on M items instead of all)."""
    ids, inverse = torch.unique(torch.cat([targets, negatives]), return_inverse=True)
    vectors = vectors_of(ids)
    pos, neg = vectors[inverse[: len(targets)]], vectors[inverse[len(targets) :]]
    with torch.autocast(seq.device.type, enabled=False):
        seq = seq.float()
        logits = torch.cat([(seq * pos.float()).sum(-1, keepdim=True), seq @ neg.float().T], 1)
    logits[:, 1:] = logits[:, 1:].masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    return softmax_cross_entropy(logits, _first(seq), label_smoothing)


def attribute_prediction_loss(logits: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits (N, n_attrs)`` over attributes 1..n_attrs against an even split of the
    target item's attributes ``attrs (N, k)`` (0-padded; a row without any does not count)."""
    target = logits.new_zeros(len(attrs), logits.shape[1] + 1, dtype=torch.float32)
    target.scatter_(1, attrs, 1.0)
    target = target[:, 1:]
    count = target.sum(1)
    keep = count > 0
    if not keep.any():
        return logits.sum() * 0.0
    log_p = logits[keep].float().log_softmax(-1)
    return -((target[keep] / count[keep, None]) * log_p).sum(1).mean()


def dot_scores(cand: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """``cand (B, C, d)`` · ``seq (B, d)`` -> ``(B, C)`` in fp32, autocast off."""
    with torch.autocast(cand.device.type, enabled=False):
        return torch.einsum("bcd,bd->bc", cand.float(), seq.float())


class SequentialRecommender(nn.Module):
    """Base class: subclasses implement ``forward``, ``encode_candidates`` and ``all_item_vectors``."""

    name: str = "base"
    trainable: bool = True  # False: nothing to learn (popularity)
    positionwise: bool = False  # True: ``forward_all`` gives a vector per position
    label_smoothing: float = 0.0  # of the softmax losses; set by the training loop (TrainConfig)
    popularity_adjustment: float = 0.0  # tau of the ranking scores (set_popularity_adjustment)

    def __init__(self, n_items: int, max_len: int, loss: LossName = "softmax"):
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.loss = loss

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_candidates(self, batch: Batch, seq: torch.Tensor | None) -> torch.Tensor:
        """Candidate vectors ``(B, C, d)`` for ``batch.candidates``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def score_item_chunk(self, batch: Batch, seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, M)`` of the same item ids ``items (M,)`` for every row."""
        raise NotImplementedError  # pragma: no cover - abstract

    def item_vectors(self) -> torch.Tensor:
        """Every item's vector ``(n_items + 1, d)`` when candidates do not depend on the row."""
        raise ValueError(f"{self.name} has no row-independent item vectors: loss='full_softmax' needs them")

    def item_vectors_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Vectors ``(M, d)`` of the items ``ids (M,)`` when candidates do not depend on the row."""
        return self.item_vectors()[ids]

    @contextlib.contextmanager
    def item_table_for_eval(self) -> Iterator[None]:
        """Within it, an evaluation may reuse one table of every item's vector across its batches, where the
        model's item vectors cost more than a lookup and do not depend on the row (a no-op here)."""
        yield

    def forward_all(self, items: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{self.name} has no vector per position (positionwise is False)")

    def predict(self, batch: Batch) -> torch.Tensor:
        return self.adjusted_scores(self.sequence_and_scores(batch)[1], batch.candidates)

    def set_popularity_adjustment(self, tau: float, train_counts=None) -> None:
        """Rank by ``score - tau * log(1 + training count)`` from now on (0: the scores as trained).
        ``train_counts (n_items + 1,)``: the items' training interactions (``RecData.train_item_counts``);
        needed the first time ``tau`` is not 0."""
        if train_counts is not None:
            device = next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device
            counts = torch.as_tensor(train_counts, dtype=torch.float32, device=device)
            self.register_buffer("log_popularity", torch.log1p(counts), persistent=False)
        if tau and not hasattr(self, "log_popularity"):
            raise ValueError("a popularity adjustment needs the items' training counts (train_counts)")
        self.popularity_adjustment = float(tau)

    def adjusted_scores(self, scores: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """``scores`` of ``items (B, C)`` (None: every item, ``(B, n_items + 1)``) less the popularity
        adjustment; unchanged while it is 0."""
        if not self.popularity_adjustment:
            return scores
        offset = self.log_popularity if items is None else self.log_popularity[items]
        return scores - self.popularity_adjustment * offset

    def sequence_and_scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence vectors ``(B, d)`` and the scores ``(B, C)`` of ``batch.candidates``."""
        seq = self.forward(batch)
        return seq, dot_scores(self.encode_candidates(batch, seq), seq)

    def calculate_loss(self, batch: Batch) -> torch.Tensor:
        return self.next_item_loss(batch)[1]

    def next_item_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence vectors ``(B, d)`` and the next-item loss (``batch.candidates[:, 0]``: the targets)."""
        smooth = self.label_smoothing
        if self.loss == "full_softmax":
            seq = self.forward(batch)
            return seq, full_softmax_loss(seq, self.item_vectors(), batch.candidates[:, 0], smooth)
        if self.loss == "shared_softmax":
            seq = self.forward(batch)
            loss = shared_softmax_loss(
                seq, self.item_vectors_of, batch.candidates[:, 0], batch.candidates[0, 1:], smooth
            )
            return seq, loss
        seq, scores = self.sequence_and_scores(batch)
        if batch.blocked is not None:
            scores = scores.masked_fill(batch.blocked, float("-inf"))
        return seq, candidate_loss(scores, self.loss, smooth)

    def calculate_positionwise_loss(
        self, items: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None
    ) -> torch.Tensor:
        """Next-item loss at every position: ``items (B, L)`` input, ``targets (B, L)`` the next item
        (0: no target), ``negatives (B, L, n)`` per position (unused by ``full_softmax``; under
        ``shared_softmax`` the same ``n`` items at every position)."""
        keep, smooth = targets > 0, self.label_smoothing
        seq = self.forward_all(items)[keep]
        if self.loss == "full_softmax":
            return full_softmax_loss(seq, self.item_vectors(), targets[keep], smooth)
        if self.loss == "shared_softmax":
            return shared_softmax_loss(seq, self.item_vectors_of, targets[keep], negatives[0, 0], smooth)
        cands = torch.cat([targets[keep].unsqueeze(1), negatives[keep]], 1)
        return candidate_loss(dot_scores(self.item_vectors()[cands], seq), self.loss, smooth)

    @torch.no_grad()
    def full_sort_predict(self, batch: Batch, chunk_size: int = 8192) -> torch.Tensor:
        seq = self.forward(batch)
        device = batch.items.device
        out = torch.empty(len(batch.items), self.n_items + 1, device=device)
        out[:, 0] = float("-inf")
        for start in range(1, self.n_items + 1, chunk_size):
            items = torch.arange(start, min(start + chunk_size, self.n_items + 1), device=device)
            out[:, start : start + len(items)] = self.score_item_chunk(batch, seq, items).float()
        return self.adjusted_scores(out)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
