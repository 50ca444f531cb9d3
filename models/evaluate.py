"""Ranking evaluation and top-k recommendation for any :class:`SequentialRecommender`.

``rank_eval_users`` returns per-user rank counts for :func:`models.metrics.per_user_metrics`:

- ``sampled_100``: the positive against the stored ``data.eval_negatives`` (the paper's tables);
- ``full``: against every item; the user's other items (training history, and for the test split
  the validation item too) are masked, the padding column excluded.

The validation input is the training history; the test input also includes the validation item.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.base import SequentialRecommender
from models.batching import eval_targets, make_batch
from models.data import RecData
from models.metrics import DEFAULT_KS, PROTOCOLS, SPLITS, Ties, grouped_summary


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked (CUDA, or CPU autocast); a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seen_items_mask(data: RecData, users: np.ndarray, ends: np.ndarray, device: torch.device) -> torch.Tensor:
    """bool (B, n_items + 1): items among each user's rows before ``ends``, plus the padding column."""
    starts = data.user_ptr[users]
    lengths = ends - starts
    rows = np.repeat(np.arange(len(users)), lengths)
    flat = (
        np.concatenate([data.items[s:e] for s, e in zip(starts, ends)])
        if len(users)
        else np.zeros(0, np.int64)
    )
    mask = torch.zeros(len(users), data.n_items + 1, dtype=torch.bool, device=device)
    mask[torch.from_numpy(rows).to(device), torch.from_numpy(flat).to(device)] = True
    mask[:, 0] = True
    return mask


@torch.no_grad()
def scored_eval_batches(
    model: SequentialRecommender,
    data: RecData,
    split: Literal["valid", "test"],
    protocol: Literal["sampled_100", "full"],
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
    users: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Per batch of evaluated users: ``(scores, items, not_counted)``. ``sampled_100``: the scores of
    ``items (B, 101)``, the positive first, and None. ``full``: the scores of every item, the positives
    ``items (B, 1)``, and the items the rank does not count (the user's others, the positive, padding).
    ``users``: every evaluated user when None."""
    users = data.eval_users() if users is None else np.asarray(users, dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch_users = users[start : start + batch_size]
        targets = eval_targets(data, batch_users, split)
        positives = data.items[targets]
        if protocol == "sampled_100":
            cands = np.concatenate([positives[:, None], data.eval_negatives[batch_users]], 1)
        else:
            cands = positives[:, None]
        batch = make_batch(data, batch_users, targets, model.max_len, cands).to(device)
        with autocast(device, precision):
            if protocol == "sampled_100":
                yield model.predict(batch).float(), batch.candidates, None
                continue
            scores = model.full_sort_predict(batch).float()
        pos_idx = torch.from_numpy(positives).to(device).unsqueeze(1)
        masked = seen_items_mask(data, batch_users, targets, device)
        masked.scatter_(1, pos_idx, True)  # the positive is compared, not counted against itself
        yield scores, pos_idx, masked


def rank_counts(
    scores: torch.Tensor, items: torch.Tensor, not_counted: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidates above the positive, tied with it) per row of one ``scored_eval_batches`` batch."""
    if not_counted is None:
        above, tied = _compare(scores[:, 1:], scores[:, :1])
        return above.sum(1), tied.sum(1)
    above, tied = _compare(scores, scores.gather(1, items))
    return (above & ~not_counted).sum(1), (tied & ~not_counted).sum(1)


@torch.no_grad()
def rank_eval_users(
    model: SequentialRecommender,
    data: RecData,
    split: Literal["valid", "test"],
    protocol: Literal["sampled_100", "full"],
    device: torch.device | str,
    batch_size: int = 256,
    precision: str = "fp32",
    users: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, n_greater, n_equal) over every evaluated user (or the evaluated ``users`` given);
    ties are left to the metrics."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    users = data.eval_users() if users is None else np.asarray(users, dtype=np.int64)
    greater, equal = [], []
    try:
        batches = scored_eval_batches(model, data, split, protocol, device, batch_size, precision, users)
        with model.item_table_for_eval():
            for batch in batches:
                above, tied = rank_counts(*batch)
                greater.append(above.cpu())
                equal.append(tied.cpu())
    finally:
        model.train(was_training)
    cat = lambda xs: torch.cat(xs).numpy().astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
    return users, cat(greater), cat(equal)


def _compare(cand: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidates above the positive, candidates tied with it); a NaN never helps the model,
    as in ``models.metrics.rank_counts``."""
    above = (cand > pos) | cand.isnan() | pos.isnan()
    return above, (cand == pos) & ~above


@torch.no_grad()
def recommend_top_k(
    model: SequentialRecommender, data: RecData, k: int, device: torch.device | str, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` unseen items per user from the whole history (candidates take the last item's time).

    Returns users (N,), items (N, k) and scores (N, k) for every user with at least one interaction.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    counts = np.diff(data.user_ptr[1 : data.n_users + 2])
    users = np.flatnonzero(counts > 0).astype(np.int64) + 1
    k = min(k, data.n_items)
    out_items, out_scores = [], []
    try:
        with model.item_table_for_eval():
            for start in range(0, len(users), batch_size):
                batch_users = users[start : start + batch_size]
                ends = data.user_ptr[batch_users + 1]
                dummy = np.ones((len(batch_users), 1), dtype=np.int64)
                batch = make_batch(data, batch_users, ends, model.max_len, dummy, time_rows=ends - 1).to(
                    device
                )
                scores = model.full_sort_predict(batch).float()
                scores = scores.masked_fill(seen_items_mask(data, batch_users, ends, device), float("-inf"))
                top = scores.topk(k, dim=1)
                out_items.append(top.indices.cpu())
                out_scores.append(top.values.cpu())
    finally:
        model.train(was_training)
    if not out_items:
        return users, np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return users, torch.cat(out_items).numpy().astype(np.int64), torch.cat(out_scores).numpy()


@dataclass(frozen=True)
class EvalSettings:
    """How :func:`evaluate_model` scores: protocols and splits, cut-offs, bootstrap, ties, batching."""

    protocols: tuple[str, ...] = PROTOCOLS
    splits: tuple[str, ...] = SPLITS
    ks: tuple[int, ...] = DEFAULT_KS
    batch_size: int = 256
    precision: str = "fp32"
    n_boot: int = 1000
    seed: int = 0
    ties: Ties = "expected"


def evaluate_model(
    model: SequentialRecommender,
    data: RecData,
    settings: EvalSettings,
    device: torch.device | str,
    log: Callable[[str], None] | None = None,
    per_user: dict | None = None,
) -> list[dict]:
    """Metric records (``models.metrics.grouped_summary`` rows plus protocol and split) of one model
    on every protocol and split of ``settings``. ``per_user``, when given, receives
    ``{(protocol, split): (users, HR@10, NDCG@10)}`` per user, for paired tests between models."""
    from models.metrics import per_user_metrics

    records = []
    for protocol in settings.protocols:
        for split in settings.splits:
            started = time.perf_counter()
            users, n_greater, n_equal = rank_eval_users(
                model,
                data,
                split,
                protocol,
                device,
                batch_size=settings.batch_size,
                precision=settings.precision,
            )
            users = np.asarray(users, dtype=np.int64)
            lengths = data.user_ptr[users + 1] - data.user_ptr[users]
            found = grouped_summary(
                np.asarray(n_greater),
                np.asarray(n_equal),
                lengths,
                ks=tuple(settings.ks),
                ties=settings.ties,
                n_boot=settings.n_boot,
                seed=settings.seed,
            )
            records += [{"protocol": protocol, "split": split, **r} for r in found]
            if per_user is not None:
                values = per_user_metrics(
                    np.asarray(n_greater), np.asarray(n_equal), ks=(10,), ties=settings.ties
                )
                per_user[(protocol, split)] = (users, values["HR@10"], values["NDCG@10"])
            if log is not None:
                ndcg = float("nan")
                if 10 in settings.ks:
                    ndcg = next(
                        r["value"]
                        for r in found
                        if r["metric"] == "NDCG" and r["k"] == 10 and r["user_group"] == "all"
                    )
                log(
                    f"  {protocol}/{split}: {len(users):,} users, NDCG@10 {ndcg:.4f} "
                    f"({time.perf_counter() - started:.1f} s)"
                )
    return records
