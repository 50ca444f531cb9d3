"""A popularity adjustment of the ranking scores, fitted on validation after training.

A model trained on the training rows learns how popular each item was over the training period, and
ranks with it. The validation and test targets come later in each user's timeline, when the catalogue's
popularity has moved on: a model that leans on past popularity ranks them too low. Logit adjustment
(Menon et al., "Long-tail learning via logit adjustment", ICLR 2021) corrects the scores after training:

    score'(u, i) = score(u, i) - tau * log(1 + training count of i)

``tau`` is chosen from ``TAU_GRID`` by the validation NDCG@10 of the protocol that picked the checkpoint;
0 (the scores as trained) is in the grid, so validation can always decline. The grid holds no negative
value: a boost to popular items would game the sampled protocol's uniform negatives. The weights are not
touched; a checkpoint keeps its ``tau`` in ``extra["popularity_adjustment"]`` and
``models.registry.load_model`` applies it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from models.base import SequentialRecommender
from models.data import RecData
from models.evaluate import rank_counts, scored_eval_batches
from models.metrics import per_user_metrics
from models.registry import load_model, write_checkpoint

TAU_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
EXTRA_KEY = "popularity_adjustment"


@contextlib.contextmanager
def raw_scores(model: SequentialRecommender) -> Iterator[None]:
    """Within it, ``model`` scores as trained, whatever adjustment it holds."""
    tau = model.popularity_adjustment
    model.popularity_adjustment = 0.0
    try:
        yield
    finally:
        model.popularity_adjustment = tau


@torch.no_grad()
def validation_by_tau(
    model: SequentialRecommender,
    data: RecData,
    protocol: str,
    device: torch.device | str = "cpu",
    taus: Sequence[float] = TAU_GRID,
    batch_size: int = 256,
    precision: str = "fp32",
    users: np.ndarray | None = None,
    split: str = "valid",
) -> dict[float, float]:
    """NDCG@10 of ``split`` under ``protocol`` for every ``tau``, from one pass of scoring."""
    device = torch.device(device)
    log_count = torch.log1p(torch.as_tensor(data.train_item_counts(), dtype=torch.float32, device=device))
    counts: dict[float, tuple[list, list]] = {tau: ([], []) for tau in taus}
    was_training = model.training
    model.eval()
    try:
        batches = scored_eval_batches(model, data, split, protocol, device, batch_size, precision, users)
        with raw_scores(model), model.item_table_for_eval():
            for scores, items, not_counted in batches:
                offset = log_count[None, :] if not_counted is not None else log_count[items]
                for tau in taus:
                    above, tied = rank_counts(scores - tau * offset, items, not_counted)
                    counts[tau][0].append(above.cpu())
                    counts[tau][1].append(tied.cpu())
    finally:
        model.train(was_training)
    return {
        tau: float(per_user_metrics(torch.cat(g).numpy(), torch.cat(e).numpy(), ks=(10,))["NDCG@10"].mean())
        for tau, (g, e) in counts.items()
    }


def pick_tau(by_tau: dict[float, float]) -> float:
    """The tau with the best figure; among equals the smallest (the least change)."""
    return min(by_tau, key=lambda tau: (-by_tau[tau], tau))


def fit(
    model: SequentialRecommender,
    data: RecData,
    setting: float | str,
    protocol: str,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    precision: str = "fp32",
    users: np.ndarray | None = None,
) -> dict:
    """Set ``model``'s adjustment from ``setting`` ("auto": the grid's best on validation; a number: that
    tau) and return ``{"tau", "protocol", "valid_NDCG@10_by_tau"}`` (the figures only under "auto")."""
    by_tau: dict[float, float] = {}
    if setting == "auto":
        by_tau = validation_by_tau(model, data, protocol, device, TAU_GRID, batch_size, precision, users)
        tau = pick_tau(by_tau)
    else:
        tau = float(setting)
    model.set_popularity_adjustment(tau, data.train_item_counts())
    return {"tau": tau, "protocol": protocol, "valid_NDCG@10_by_tau": {str(t): v for t, v in by_tau.items()}}


def stored_tau(path: Path) -> float:
    """The tau the checkpoint at ``path`` holds (0: none)."""
    return torch.load(path, map_location="cpu", weights_only=True)["extra"].get(EXTRA_KEY, 0.0)


def write_tau(path: Path, tau: float) -> None:
    """Record ``tau`` in the checkpoint at ``path`` (its weights unchanged)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["extra"][EXTRA_KEY] = tau
    write_checkpoint(path, checkpoint)


def calibrate(
    model: SequentialRecommender,
    data: RecData,
    setting: float | str,
    valid_protocol: str,
    out: Path | None,
    sampled_best: str,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    precision: str = "fp32",
    users: np.ndarray | None = None,
    log: Callable[[str], None] = print,
    name: str = "",
) -> dict:
    """After training: fit ``model`` (the best epoch's weights) on ``valid_protocol``, and the checkpoint of
    the sampled pick (``out / sampled_best``, when there is one) on ``sampled_100``; write each tau into
    its checkpoint. Returns ``{protocol: fit(...)}`` (nothing when the setting is 0: off); ``model`` ends
    holding its own tau."""
    if not model.trainable:
        return {}
    best_path, sampled_path = (out / "best.pt", out / sampled_best) if out is not None else (None, None)
    if setting != "auto" and float(setting) == 0.0:  # off: undo a tau an earlier run left in these files
        for path in (best_path, sampled_path):
            if path is not None and path.exists() and stored_tau(path):
                write_tau(path, 0.0)
        model.set_popularity_adjustment(0.0)
        return {}
    fits = {valid_protocol: fit(model, data, setting, valid_protocol, device, batch_size, precision, users)}
    if best_path is not None and best_path.exists():
        write_tau(best_path, fits[valid_protocol]["tau"])
    if sampled_path is not None and sampled_path.exists() and valid_protocol != "sampled_100":
        sampled_pick = load_model(sampled_path, data, map_location=device)[0]
        fits["sampled_100"] = fit(sampled_pick, data, setting, "sampled_100", device, batch_size, precision)
        write_tau(sampled_path, fits["sampled_100"]["tau"])
    for protocol, result in fits.items():
        figures = result["valid_NDCG@10_by_tau"]
        gain = (
            f": validation NDCG@10 {figures['0.0']:.4f} -> {figures[str(result['tau'])]:.4f}"
            if figures
            else ""
        )
        log(f"{name}: popularity adjustment tau {result['tau']:g} for the {protocol} pick{gain}")
    return fits
