"""The training loop (pure torch): sampling, AdamW, early stopping, checkpoints, resume.

Two schemes (``TrainConfig.scheme``):

- ``one_cut`` (the paper's, ProxyRCA's): each epoch every training user contributes one example,
  a random cut of the training history whose last item is the positive and the up-to-L items
  before it the input. Each user is seen once per epoch, so it needs hundreds of epochs.
- ``all_cuts``: every training row but a user's first is a positive once per epoch. Models with
  ``positionwise = True`` (SASRec) do this in one causal pass over the last L + 1 training items
  (Kang & McAuley's scheme); the others take each cut as its own example.

Negatives: ``n_negatives`` per positive, drawn uniformly from the items the user never interacted
with in training (per position under ``all_cuts`` for position-wise models); where a per-row ``softmax`` asks for about
the whole catalogue (``n_negatives`` >= n_items - 1) every item the user never interacted with in training, once
each: the exact softmax such draws estimate, without their repeats (``exact_unseen_softmax``); none under ``loss="full_softmax"``,
which scores the positive against every item; under ``loss="shared_softmax"`` one uniform sample of
``n_negatives`` items per batch, shared by its rows (a full softmax's cheap stand-in on big catalogues).
1 % of input items are replaced by random items (``augment_prob``); ``crop_prob`` cuts that share of
rows to a random recent part of their history, and ``replace_before_last_prob`` replaces that share of the
items before each row's last by random items (rows of position-wise models are never cut or replaced so).
Adam(W) with ``adam_beta2``, optional linear warm-up and cosine decay. With ``ema_decay`` set (a decay, or ``"auto"``: about one
epoch of steps, ``auto_ema_decay``) an exponential moving average of the
weights (``torch.optim.swa_utils.AveragedModel``) is what validation scores and what the run keeps.
Validation NDCG@10 picks the best epoch: on the stored sampled-100 negatives, or with
``valid_protocol="full"`` over every item. Under ``"full"`` the sampled figures are validated too and pick
their own epoch: ``best_sampled_100.pt`` keeps the weights the sampled validation picks, from which the
sampled test figures are reported (each protocol's figures come from the epoch its own validation picked;
the full-ranking one, ``best.pt``, is the model that recommends). Training stops after ``patience`` epochs
in which no kept validation figure improved, at ``max_epochs``, or before an epoch that would end past
``time_budget_s`` (a hard cap: the next epoch is expected to take the mean epoch time so far).

``out_dir`` receives ``best.pt`` (the best model; ``best_sampled_100.pt`` beside it under "full"),
``resume.pt`` (model, optimizer, epoch, RNG states, history, best so far) and ``history.json``. A run
that finds a ``resume.pt`` with the same config hash and data fingerprint continues after its last
epoch; otherwise it starts over and says so. If that run had finished, nothing is trained: the
result's ``extra["reused"]`` names the run that trained the model (``run_id``), so the caller can say
it is reused. ``resume=False`` starts over.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import math
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.base import SequentialRecommender
from models.batching import (
    NegativeSampler,
    all_cuts,
    every_other_item,
    make_batch,
    random_cuts,
    training_users,
)
from models.calibration import calibrate
from models.data import RecData, resolved_features
from models.evaluate import autocast, rank_eval_users
from models.metrics import PROTOCOLS, per_user_metrics, summarize
from models.mutual import MutualPair
from models.registry import save_checkpoint


@dataclass
class TrainConfig:
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.1
    max_epochs: int = 1000
    patience: int = 20
    n_negatives: int = 100
    augment_prob: float = 0.01
    crop_prob: float = 0.0  # share of training rows whose history is cut to a random recent part
    replace_before_last_prob: float = 0.0  # share of history items but the last replaced by random items
    negative_power: float = 0.0  # shared_softmax: negatives drawn ∝ training count ** this (0: uniform)
    label_smoothing: float = 0.0  # softmax losses: 1 - this on the positive, this over all candidates
    # the embedding tables (item ids, attributes; SASRec's items and positions) learn at lr x this, with the
    # same decoupled weight decay per step (models.budgets.resolve_embedding_lr_scale)
    embedding_lr_scale: float = 1.0
    # the validation NDCG@10 that picks the best epoch and stops early: "sampled_100" (the stored 100
    # negatives) or "full" (every item; the sampled figures are logged beside it)
    valid_protocol: str = "sampled_100"
    # full-ranking validation scores every item for every validation user; above this many (user, item) scores
    # per validation it runs on a fixed random sample of the users (``validation_users``; 0: every user)
    max_validation_scores: int = 0
    # validate and keep an exponential moving average of the weights (0: off; "auto": auto_ema_decay)
    ema_decay: float | str = 0.0
    grad_clip: float = 1.0
    seed: int = 42
    eval_batch_size: int = 256
    resume: bool = True
    scheme: str = "one_cut"  # "one_cut" (paper) or "all_cuts"
    adam_beta2: float = 0.999
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs
    # "constant", "cosine" (to 0 at max_epochs, after warm-up) or "plateau" (x plateau_factor after each epoch
    # whose validation figure did not improve)
    lr_schedule: str = "constant"
    plateau_factor: float = 0.3
    time_budget_s: float = 0.0  # stop before an epoch that would end past it (0: no limit)
    # after training, rank by score - tau * log(1 + training count): "auto" fits tau on validation
    # (models.calibration), a number sets it; 0: the scores as trained
    popularity_adjustment: float | str = 0.0
    # > 0: deep mutual learning (models.mutual): a second copy of the model (``train``'s ``partner``) trains on the
    # same batches, each copy's loss adding this weight x KL(other || self); only the model is kept (0: off)
    mutual_learning: float = 0.0

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, not {self.scheme!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")
        if self.ema_decay != "auto" and not (
            isinstance(self.ema_decay, int | float) and 0.0 <= self.ema_decay < 1.0
        ):
            raise ValueError(f"ema_decay must be 'auto' or in [0, 1), not {self.ema_decay!r}")
        if self.valid_protocol not in PROTOCOLS:
            raise ValueError(f"valid_protocol must be one of {PROTOCOLS}, not {self.valid_protocol!r}")
        for name in ("augment_prob", "crop_prob", "replace_before_last_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), not {self.label_smoothing!r}")
        if self.max_validation_scores < 0:
            raise ValueError(f"max_validation_scores must be >= 0, not {self.max_validation_scores!r}")
        if not 0.0 < self.plateau_factor <= 1.0:
            raise ValueError(f"plateau_factor must be in (0, 1], not {self.plateau_factor!r}")
        if not self.embedding_lr_scale > 0:
            raise ValueError(f"embedding_lr_scale must be > 0, not {self.embedding_lr_scale!r}")
        if not self.mutual_learning >= 0:
            raise ValueError(f"mutual_learning must be >= 0 (0: off), not {self.mutual_learning!r}")
        if self.popularity_adjustment != "auto" and not (
            isinstance(self.popularity_adjustment, int | float) and self.popularity_adjustment >= 0
        ):
            raise ValueError(
                f"popularity_adjustment must be 'auto' or >= 0, not {self.popularity_adjustment!r}"
            )


SCHEMES = ("one_cut", "all_cuts")
PROGRESS_EVERY_S = 60.0  # a progress line inside an epoch at most this often
LR_SCHEDULES = ("constant", "cosine", "plateau")


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    best_metrics: dict
    epochs_run: int  # epochs trained by this call (not counting resumed ones)
    resumed_from: int | None  # the epoch a resumed run continued after
    wall_time_s: float
    peak_memory_bytes: int
    stopped_early: bool
    extra: dict = field(default_factory=dict)


# A finished model is reused when its config hash matches, whatever the code that trained it: a code change that
# alters what training produces for an unchanged config bumps this, so such models are trained again.
# 1: negatives and the exact softmax leave out only the user's training items, not their validation and test
# targets (stop 34).
TRAINING_REVISION = 1
_NOT_HASHED = ("resume", "eval_batch_size", "time_budget_s", "popularity_adjustment")  # fitted after training
# settings added after checkpoints were written: at their default they leave the hash as it was
_HASHED_WHEN_SET = {
    "crop_prob": 0.0, "negative_power": 0.0, "ema_decay": 0.0, "label_smoothing": 0.0,
    "valid_protocol": "sampled_100", "embedding_lr_scale": 1.0, "max_validation_scores": 0,
    "plateau_factor": 0.3, "replace_before_last_prob": 0.0, "mutual_learning": 0.0,
}  # fmt: skip


def config_hash(name: str, hparams: dict, config: TrainConfig) -> str:
    """Hash of everything that shapes the result (the resume flag, eval batch size and time budget do not),
    with the training code's ``TRAINING_REVISION``."""
    cfg = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in _NOT_HASHED and not (k in _HASHED_WHEN_SET and v == _HASHED_WHEN_SET[k])
    }
    shaped = {"model": name, "hparams": hparams, "train": cfg, "revision": TRAINING_REVISION}
    blob = json.dumps(shaped, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_resume_state(
    path: Path | None, config: TrainConfig, chash: str, fingerprint: str, log: Callable[[str], None]
) -> dict | None:
    """The state in ``path`` (``resume.pt``) when it was written for this config and data and
    ``config.resume`` is on, else None (and the log says why it is ignored)."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not config.resume:
        log(f"resume disabled: starting over (ignoring {path})")
        return None
    if state.get("config_hash") != chash or state.get("fingerprint") != fingerprint:
        log(
            f"not resuming {path}: it was written for config {state.get('config_hash')} / data "
            f"{state.get('fingerprint')!r}, this run is config {chash} / data {fingerprint!r}; starting over"
        )
        return None
    return state


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the kernel (glibc's ``malloc_trim``; elsewhere a no-op, False).

    Called after each epoch. An epoch frees tensors of every size. glibc keeps the freed pages of
    mid-size tensors in its heap, fragmented, and the process then grows epoch after epoch. Beauty's
    features rule grew to 4.0 GB after 4 epochs, against 2.9 GB with this call after 3 (BENCHMARKS.md,
    "Stop 41"). It takes milliseconds, once per epoch."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def peak_memory(device: torch.device) -> int:
    """CUDA: max_memory_allocated; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def validate(
    model: SequentialRecommender,
    data: RecData,
    device: torch.device,
    precision: str,
    batch_size: int,
    protocol: str = "sampled_100",
    users: np.ndarray | None = None,
) -> dict:
    """Validation HR@10 and NDCG@10 on the stored sampled-100 negatives; with ``protocol="full"`` also
    ``full_HR@10`` and ``full_NDCG@10`` over every item (history masked). ``users``: a subset of the
    evaluated users (default all)."""
    out = {}
    for name in ("sampled_100", "full") if protocol == "full" else ("sampled_100",):
        _, greater, equal = rank_eval_users(model, data, "valid", name, device, batch_size, precision, users)
        summary = summarize(per_user_metrics(greater, equal, ks=(10,)))
        prefix = "full_" if name == "full" else ""
        out |= {f"{prefix}HR@10": summary["HR@10"], f"{prefix}NDCG@10": summary["NDCG@10"]}
    return out


def validated_user_count(n_users: int, n_items: int, config: TrainConfig) -> int:
    """How many of ``n_users`` validation users each validation scores: all, unless a full-ranking
    validation of all would score more than ``max_validation_scores`` (user, item) pairs; then that many
    scores' worth, at least 1,000 users."""
    cap = config.max_validation_scores
    if config.valid_protocol != "full" or not cap or n_users * n_items <= cap:
        return n_users
    return min(max(cap // n_items, 1000), n_users)


def validation_users(data: RecData, config: TrainConfig) -> np.ndarray | None:
    """The users every validation of a run scores: None (all of them), or a fixed random sample of
    ``validated_user_count`` users, the same every epoch and across a resume."""
    users = data.eval_users()
    keep = validated_user_count(len(users), data.n_items, config)
    if keep == len(users):
        return None
    return np.sort(np.random.default_rng(config.seed).choice(users, keep, replace=False))


def validation_users_line(name: str, data: RecData, users: np.ndarray, config: TrainConfig) -> str:
    """The run log's line for a validation on a sample of the users."""
    n = len(data.eval_users())
    return (
        f"{name}: validating on a fixed random sample of {len(users):,} of {n:,} users: full ranking of all "
        f"of them would score {n * data.n_items:,} (user, item) pairs per epoch, over max_validation_scores "
        f"{config.max_validation_scores:,}"
    )


def validation_seconds(
    model: SequentialRecommender, data: RecData, device: torch.device, precision: str, config: TrainConfig
) -> float:
    """What one ``validate`` call under ``config`` costs, extrapolated from its first two batches of users."""
    users = validation_users(data, config)
    users = data.eval_users() if users is None else users
    sample = users[: 2 * config.eval_batch_size]
    if not len(sample):
        return 0.0
    started = time.perf_counter()
    validate(model, data, device, precision, config.eval_batch_size, config.valid_protocol, sample)
    return (time.perf_counter() - started) * len(users) / len(sample)


def no_best() -> dict:
    """Early stopping's state before the first epoch: no best epoch yet, every score beats it."""
    return {"epoch": -1, "metrics": {"NDCG@10": -math.inf, "full_NDCG@10": -math.inf}, "bad_epochs": 0}


# Under valid_protocol "full": the weights of the epoch the sampled-100 validation picks, beside best.pt.
SAMPLED_BEST = "best_sampled_100.pt"


def update_best(best: dict, metrics: dict, epoch: int, config: TrainConfig) -> tuple[bool, bool]:
    """Fold one epoch's validation into early stopping's state ``best`` (in place) and return
    (improved, sampled_improved): whether the epoch is the best so far under ``config.valid_protocol``,
    and, under ``"full"``, whether it is the best so far by the sampled-100 figure (``best["sampled"]``,
    the epoch the sampled test figures come from). Patience counts the epochs in which neither improved,
    so the run does not stop while the sampled figure still climbs."""
    improved = selection_score(metrics, config) > selection_score(best["metrics"], config)
    sampled_improved = False
    if config.valid_protocol == "full":
        kept = best.get("sampled") or {"metrics": {"NDCG@10": -math.inf}}
        sampled_improved = metrics["NDCG@10"] > kept["metrics"]["NDCG@10"]
        if sampled_improved:
            best["sampled"] = {"epoch": epoch, "metrics": metrics}
    if improved:
        best.update(epoch=epoch, metrics=metrics)
    best["bad_epochs"] = 0 if improved or sampled_improved else best["bad_epochs"] + 1
    return improved, sampled_improved


def sampled_best_summary(best: dict) -> dict:
    """``TrainResult.extra`` entry for the sampled-100 pick under "full" (empty without one)."""
    kept = best.get("sampled")
    return {"sampled_best": {"epoch": int(kept["epoch"]), "metrics": dict(kept["metrics"])}} if kept else {}


def save_picks(
    out: Path | None, model, name: str, hparams: dict, meta: dict, picks: tuple[bool, bool]
) -> None:
    """Write ``best.pt`` and, under "full", ``best_sampled_100.pt`` for the picks (``update_best``'s
    (improved, sampled_improved)) this epoch made."""
    if out is None:
        return
    for picked, file in zip(picks, ("best.pt", SAMPLED_BEST)):
        if picked:
            save_checkpoint(out / file, model, name, hparams, meta)


def selection_score(metrics: dict, config: TrainConfig) -> float:
    """The validation figure that picks the best epoch: NDCG@10 under ``config.valid_protocol``."""
    return metrics["full_NDCG@10" if config.valid_protocol == "full" else "NDCG@10"]


def _rng_state(rng: np.random.Generator, device: torch.device) -> dict:
    state = {"python": random.getstate(), "numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict, rng: np.random.Generator, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer ``step`` (0-based)."""
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if config.lr_schedule == "cosine":
        total = max(config.max_epochs * steps_per_epoch - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / total, 1.0)))
    return 1.0


def decay_on_plateau(optimizer, scheduler, factor: float) -> float:
    """``lr_schedule: "plateau"``: multiply every group's learning rate by ``factor`` from the next step on
    (the scheduler's base rates too, so warm-up's factor and a resumed run keep it); returns the new rate."""
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
    return optimizer.param_groups[0]["lr"]


def epoch_examples(model: SequentialRecommender, data: RecData, config: TrainConfig) -> int:
    """Rows per epoch (users under one_cut and for position-wise models, else every cut)."""
    users = training_users(data)
    if config.scheme == "all_cuts" and not model.positionwise:
        return len(all_cuts(data, users)[0])
    return len(users)


def negative_distribution(data: RecData, power: float) -> np.ndarray | None:
    """Probabilities of items 1..n for the ``shared_softmax`` sample: ∝ (training count + 1) ** ``power``;
    None (uniform) at power 0. Uncorrected, so popular items are pushed down more often than a full
    softmax would (word2vec's unigram ** .75 negatives; "mixed negative sampling", Yang et al. 2020)."""
    if not power:
        return None
    weights = (data.train_item_counts()[1:] + 1.0) ** power
    return weights / weights.sum()


def _shared_negatives(
    data: RecData, config: TrainConfig, rng: np.random.Generator, p: np.ndarray | None = None
) -> np.ndarray:
    """One batch's ``shared_softmax`` negatives: ``n_negatives`` distinct item ids (at most every
    item), uniform or drawn with probabilities ``p`` (``negative_distribution``)."""
    n = min(config.n_negatives, data.n_items)
    return rng.choice(data.n_items, size=n, replace=False, p=p).astype(np.int64) + 1


def _epoch_batches(model, data, sampler, rng, config: TrainConfig):
    """Yield (batch size, loss closure) over one epoch's shuffled examples."""
    users = training_users(data)
    full = model.loss == "full_softmax"
    shared = model.loss == "shared_softmax"
    neg_p = negative_distribution(data, config.negative_power) if shared else None
    if config.scheme == "all_cuts" and model.positionwise:
        users = users[rng.permutation(len(users))]
        window = model.max_len + 1  # input = the first L items, targets = the last L
        for start in range(0, len(users), config.batch_size):
            chunk = users[start : start + config.batch_size]
            ends = data.user_ptr[chunk + 1] - 2 * data.is_eval_user[chunk]  # one past the last training row
            dummy = np.zeros((len(chunk), 1), np.int64)
            seq = make_batch(
                data, chunk, ends, window, dummy, rng=rng, augment_prob=config.augment_prob
            ).items.numpy()
            targets = make_batch(data, chunk, ends, model.max_len, dummy).items.numpy()  # never augmented
            items = seq[:, :-1]
            targets = np.where(items > 0, targets, 0)
            negatives = None
            if shared:
                negatives = torch.from_numpy(_shared_negatives(data, config, rng, neg_p))
                negatives = negatives.expand(len(chunk), model.max_len, -1)
            elif not full:
                negatives = sampler.sample(np.repeat(chunk, model.max_len), config.n_negatives, rng)
                negatives = torch.from_numpy(negatives.reshape(len(chunk), model.max_len, -1))
            yield (
                len(chunk),
                (torch.from_numpy(np.ascontiguousarray(items)), torch.from_numpy(targets), negatives),
            )
        return
    if config.scheme == "all_cuts":
        users, targets = all_cuts(data, users)
    else:
        targets = random_cuts(data, users, rng)
    order = rng.permutation(len(users))
    users, targets = users[order], targets[order]
    exact = exact_unseen_softmax(model, data, config)
    for start in range(0, len(users), config.batch_size):
        sl = slice(start, start + config.batch_size)
        cands = data.items[targets[sl]][:, None]
        blocked = None
        if exact:
            others = every_other_item(cands[:, 0], data.n_items)
            blocked = np.concatenate([np.zeros_like(cands, bool), sampler.interacted(users[sl], others)], 1)
            cands = np.concatenate([cands, others], 1)
        elif shared:
            negatives = _shared_negatives(data, config, rng, neg_p)
            cands = np.concatenate([cands, np.broadcast_to(negatives, (len(cands), len(negatives)))], 1)
        elif not full:
            cands = np.concatenate([cands, sampler.sample(users[sl], config.n_negatives, rng)], 1)
        batch = make_batch(
            data,
            users[sl],
            targets[sl],
            model.max_len,
            cands,
            rng=rng,
            augment_prob=config.augment_prob,
            crop_prob=config.crop_prob,
            replace_before_last_prob=config.replace_before_last_prob,
        )
        batch.blocked = torch.from_numpy(blocked) if blocked is not None else None
        yield len(cands), batch


def exact_unseen_softmax(model, data: RecData, config: TrainConfig) -> bool:
    """Whether a per-row ``softmax`` scores every item the user never interacted with in training, once each, instead of
    ``n_negatives`` uniform draws from them: where the draws would be about the whole catalogue anyway
    (``n_negatives`` >= n_items - 1), the exact softmax they estimate costs no more and has no repeats."""
    return model.loss == "softmax" and config.n_negatives >= data.n_items - 1


EMA_MAX_STEPS = 1000


def auto_ema_decay(steps_per_epoch: int) -> float:
    """``ema_decay: "auto"``: an average over about the last epoch's steps, at most ``EMA_MAX_STEPS``
    (decay .999, measured on Video and Beauty, whose epochs are 1,000-1,500 steps). A fixed .999 on a
    small dataset would average over many epochs and lag far behind: on Magazine (10 steps per epoch)
    it held validation at half its level."""
    return 1.0 - 1.0 / min(max(steps_per_epoch, 2), EMA_MAX_STEPS)


def resolved_ema_decay(model: SequentialRecommender, data: RecData, config: TrainConfig) -> float:
    """``config.ema_decay`` as a number (``"auto"``: ``auto_ema_decay`` of this model's steps per epoch)."""
    if config.ema_decay == "auto":
        return auto_ema_decay(math.ceil(epoch_examples(model, data, config) / config.batch_size))
    return float(config.ema_decay)


def make_ema(model: SequentialRecommender, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """The exponential moving average of ``model``'s parameters that validation and checkpoints use when
    ``decay`` (``resolved_ema_decay``) is not 0 (Polyak averaging: w_ema <- decay * w_ema + (1 - decay) * w
    after every step). Buffers are not averaged: the models' buffers are lookup tables (proxy ids,
    attributes), not statistics."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def mutual_pair(
    model: SequentialRecommender, partner: SequentialRecommender | None, config: TrainConfig
) -> SequentialRecommender:
    """What trains: ``model``, or under ``config.mutual_learning`` the ``models.mutual.MutualPair`` of it and
    ``partner``."""
    if not config.mutual_learning or not model.trainable:
        if partner is not None:
            raise ValueError("a partner model trains only under mutual_learning > 0")
        return model
    if partner is None:
        raise ValueError(
            "mutual_learning needs the partner model: a second copy built with another initialisation"
        )
    return MutualPair(model, partner, config.mutual_learning)


def ranking_copy(trained: SequentialRecommender) -> SequentialRecommender:
    """The model that is validated and kept out of what trains (``mutual_pair``): a pair's first copy."""
    return trained.members[0] if isinstance(trained, MutualPair) else trained


def make_optimizer(model: SequentialRecommender, data: RecData, config: TrainConfig):
    """AdamW with ``adam_beta2`` and the per-step warm-up / decay schedule of ``lr_factor``."""
    groups: list[dict] = [{"params": list(model.parameters())}]
    if config.embedding_lr_scale != 1.0:
        tables = {
            id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag)
        }
        scale = config.embedding_lr_scale
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in tables]},
            {
                "params": [p for p in model.parameters() if id(p) in tables],
                "lr": config.lr * scale,
                "weight_decay": config.weight_decay / scale,  # AdamW decays by lr x weight_decay per step
            },
        ]
    optimizer = torch.optim.AdamW(
        groups, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, config.adam_beta2)
    )
    steps_per_epoch = math.ceil(epoch_examples(model, data, config) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, config)
    )
    return optimizer, scheduler


def epoch_record(
    config: TrainConfig,
    epoch: int,
    loss: float | None,
    metrics: dict,
    times: tuple[float, float, float],
    n_examples: int,
    picks: tuple[bool, bool],
    lr: float,
    bad_epochs: int,
    epochs_before: int,
) -> dict:
    """One epoch's history entry; its ``stop`` (patience, max_epochs, time_budget or None) says
    whether training ends. ``times``: (this epoch's seconds, its training seconds, seconds spent so far);
    ``picks``: ``update_best``'s (improved, sampled_improved)."""
    epoch_time, train_time, spent = times
    improved, sampled_improved = picks
    mean_epoch = spent / (epochs_before + 1)
    # a hard cap: the next epoch (expected to take the mean epoch so far) must end within the budget
    out_of_time = bool(config.time_budget_s) and spent + mean_epoch > config.time_budget_s
    stop = (
        "patience"
        if bad_epochs >= config.patience
        else "max_epochs"
        if epoch == config.max_epochs
        else "time_budget"
        if out_of_time
        else None
    )
    eta = 0.0 if stop else mean_epoch * (config.max_epochs - epoch)
    if config.time_budget_s and not stop:
        eta = min(eta, config.time_budget_s - spent)
    return {
        "epoch": epoch,
        "loss": loss,
        "valid_HR@10": metrics["HR@10"],
        "valid_NDCG@10": metrics["NDCG@10"],
        **{f"valid_{k}": v for k, v in metrics.items() if k.startswith("full_")},
        "epoch_time_s": epoch_time,
        "examples_per_s": n_examples / max(train_time, 1e-9),
        "best": improved,
        "lr": lr,
        "elapsed_s": spent,
        "eta_s": eta,
        "stop": stop,
        # under valid_protocol full: whether this is the epoch the sampled figures would come from
        **({"best_sampled_100": sampled_improved} if config.valid_protocol == "full" else {}),
    }


def train_epoch(
    model,
    optimizer,
    data,
    sampler,
    rng,
    config: TrainConfig,
    device,
    precision,
    scheduler=None,
    on_batch: Callable[[int, int], None] | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> tuple[float, int]:
    """One pass over the epoch's examples; returns (mean loss, examples).

    ``on_batch(done, total)`` is called after each optimizer step (progress and time estimates);
    ``ema`` (``make_ema``) is updated after each step.
    """
    model.train()
    n_batches = math.ceil(epoch_examples(model, data, config) / config.batch_size)
    total, n = 0.0, 0
    for i, (size, batch) in enumerate(_epoch_batches(model, data, sampler, rng, config)):
        with autocast(device, precision):
            if isinstance(batch, tuple):
                items, targets, negatives = (t.to(device) if t is not None else None for t in batch)
                loss = model.calculate_positionwise_loss(items, targets, negatives)
            else:
                loss = model.calculate_loss(batch.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += float(loss.detach()) * size
        n += size
        if on_batch is not None:
            on_batch(i + 1, n_batches)
    return total / max(n, 1), n


class _EnoughSteps(Exception):
    """Raised from ``train_epoch``'s ``on_batch`` by ``step_times`` to stop timing."""


def step_times(
    model: SequentialRecommender,
    optimizer,
    data: RecData,
    config: TrainConfig,
    device: torch.device,
    precision: str,
    enough: Callable[[int, float], bool],
    rng: np.random.Generator | None = None,
    scheduler=None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> list[float]:
    """``time.perf_counter()`` before ``train_epoch`` and after each of its optimizer steps, until
    ``enough(steps done, seconds so far)`` or the epoch's end: the training steps exactly as an epoch runs them
    (preflight's estimate, ``benchmarks.cpu_speed``)."""
    marks = [time.perf_counter()]

    def on_batch(done: int, total: int) -> None:
        marks.append(time.perf_counter())
        if enough(done, marks[-1] - marks[0]):
            raise _EnoughSteps

    rng = rng if rng is not None else np.random.default_rng(0)
    try:
        train_epoch(
            model,
            optimizer,
            data,
            NegativeSampler(data),
            rng,
            config,
            device,
            precision,
            scheduler,
            on_batch,
            ema,
        )
    except _EnoughSteps:
        pass
    return marks


def train(
    model: SequentialRecommender,
    data: RecData,
    name: str,
    hparams: dict,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    out_dir: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
    run_id: str | None = None,
    partner: SequentialRecommender | None = None,
) -> TrainResult:
    """Train ``model`` in place (it ends holding the best epoch's weights) and return the history.

    ``run_id`` (e.g. the Dagster run's) is stored in the checkpoints, so that a later call that
    reuses a finished model can say which run trained it (``result.extra["reused"]``). ``partner``: under
    ``config.mutual_learning`` the second copy of the model, built as ``model`` was with another initialisation;
    the two train together (``models.mutual.MutualPair``, in ``resume.pt``), and ``model`` alone is validated
    and kept in ``best.pt``."""
    device = torch.device(device)
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rng = seed_everything(config.seed)
    trained = mutual_pair(model, partner, config).to(device)  # ``model`` itself without mutual learning
    trained.label_smoothing = config.label_smoothing
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    chash, fingerprint = config_hash(name, hparams, config), str(data.info.get("fingerprint", ""))
    ckpt_meta = {
        "config_hash": chash,
        "fingerprint": fingerprint,
        "n_parameters": model.n_parameters(),
        "run_id": run_id,
        "data_features": resolved_features(data.info),  # what evaluation loads; never guessed
    }

    if not model.trainable:  # nothing to fit: evaluate once and keep the model
        metrics = validate(model, data, device, precision, config.eval_batch_size)
        history = [
            {
                "epoch": 0,
                "loss": None,
                "valid_HR@10": metrics["HR@10"],
                "valid_NDCG@10": metrics["NDCG@10"],
                "epoch_time_s": 0.0,
                "examples_per_s": None,
                "best": True,
            }
        ]
        if out is not None:
            save_checkpoint(
                out / "best.pt", model, name, hparams, {"epoch": 0, "valid": metrics, **ckpt_meta}
            )
            (out / SAMPLED_BEST).unlink(missing_ok=True)
            (out / "history.json").write_text(json.dumps(history, indent=1))
        if on_epoch:
            on_epoch(history[0])
        return TrainResult(
            history, 0, metrics, 0, None, time.perf_counter() - started, peak_memory(device), False
        )

    optimizer, scheduler = make_optimizer(trained, data, config)
    ema_decay = resolved_ema_decay(model, data, config)
    ema = make_ema(trained, ema_decay)
    if ema is not None:
        log(
            f"{name}: validating and keeping a moving average of the weights (decay {ema_decay:.4f}"
            + (
                ", ema_decay auto: about one epoch of steps, at most 1,000)"
                if config.ema_decay == "auto"
                else ")"
            )
        )
    evaluated = ranking_copy(ema.module if ema is not None else trained)  # the weights validated and kept
    sampler = NegativeSampler(data)
    valid_users = validation_users(data, config)
    if valid_users is not None:
        log(validation_users_line(name, data, valid_users, config))
    history: list[dict] = []
    best = no_best()
    start_epoch, resumed_from, finished, reused = 1, None, False, None
    resume_path = out / "resume.pt" if out is not None else None
    state = load_resume_state(resume_path, config, chash, fingerprint, log)
    if state is None and out is not None:
        (out / SAMPLED_BEST).unlink(missing_ok=True)  # an earlier run's pick: this run writes its own or none
    if state is not None:
        trained.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        _restore_rng(state["rng"], rng, device)
        history, best, finished = list(state["history"]), dict(state["best"]), bool(state["finished"])
        resumed_from = int(state["epoch"])
        start_epoch = resumed_from + 1
        if finished:  # the caller says so to the user; it knows the setting that trains again
            reused = {
                "run_id": state.get("run_id"),
                "epochs": resumed_from,
                "best_epoch": int(best["epoch"]),
                "valid_NDCG@10": float(best["metrics"]["NDCG@10"]),
            }
        else:
            log(
                f"resuming from epoch {resumed_from} of {resume_path} (best epoch {best['epoch']}): same config "
                "and data as the run that was stopped"
            )

    epochs_run = 0
    best_state = None
    spent = sum(h["epoch_time_s"] for h in history)  # training seconds, resumed runs included
    probe = {"done": False}

    def estimate(done: int, total: int) -> None:
        """Once, early in this call's first epoch: the expected time, from the batches measured so far;
        then, in epochs long enough to need it, progress every PROGRESS_EVERY_S seconds."""
        now = time.perf_counter()
        if probe["done"]:
            if (
                done < total
                and now - probe.get("last", t0) >= PROGRESS_EVERY_S
                and now - t0 >= PROGRESS_EVERY_S
            ):
                probe["last"] = now
                left = (now - t0) / done * (total - done)
                log(
                    f"{name}: epoch {epoch}, batch {done:,}/{total:,} ({done / total:.0%}), "
                    f"~{left / 60:.1f} min left in this epoch"
                )
            return
        if done < min(20, total) and done < total:
            return
        probe["done"] = True
        probe["last"] = now
        per_epoch = (time.perf_counter() - t0) / done * total
        valid_s = validation_seconds(evaluated, data, device, precision, config)
        epochs_left = config.max_epochs - start_epoch + 1
        expected = (per_epoch + valid_s) * epochs_left
        budget = f"; time budget {config.time_budget_s / 60:.0f} min" if config.time_budget_s else ""
        log(
            f"{name}: expected ~{per_epoch:.0f} s of training ({total} batches) and ~{valid_s:.0f} s of "
            f"validation ({config.valid_protocol}) per epoch; at most {epochs_left} more epochs = "
            f"{expected / 60:.1f} min"
            + (
                f", capped at {max(config.time_budget_s - spent, 0) / 60:.1f} min by the time budget"
                if config.time_budget_s and expected > config.time_budget_s - spent
                else ""
            )
            + budget
            + f"; early stopping after {config.patience} epochs without gain"
        )

    for epoch in range(start_epoch, config.max_epochs + 1):
        if finished:
            break
        t0 = time.perf_counter()
        loss, n_examples = train_epoch(
            trained, optimizer, data, sampler, rng, config, device, precision, scheduler, estimate, ema
        )
        train_time = time.perf_counter() - t0
        metrics = validate(
            evaluated, data, device, precision, config.eval_batch_size, config.valid_protocol, valid_users
        )
        picks = update_best(best, metrics, epoch, config)
        if picks[0]:
            best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
        save_picks(out, evaluated, name, hparams, {"epoch": epoch, "valid": metrics, **ckpt_meta}, picks)
        epoch_time = time.perf_counter() - t0
        spent += epoch_time
        record = epoch_record(
            config, epoch, loss, metrics, (epoch_time, train_time, spent), n_examples, picks,
            optimizer.param_groups[0]["lr"], best["bad_epochs"], len(history),
        )  # fmt: skip
        finished = record["stop"] is not None
        if config.lr_schedule == "plateau" and not picks[0] and not finished:
            lr = decay_on_plateau(optimizer, scheduler, config.plateau_factor)
            log(f"{name}: validation did not improve: learning rate x {config.plateau_factor} (now {lr:.2e})")
        history.append(record)
        epochs_run += 1
        if out is not None:
            torch.save(
                {
                    "model": {k: v.detach().cpu() for k, v in trained.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    "epoch": epoch,
                    "rng": _rng_state(rng, device),
                    "history": history,
                    "best": best,
                    "finished": finished,
                    **ckpt_meta,
                },
                out / "resume.pt.tmp",
            )
            os.replace(out / "resume.pt.tmp", out / "resume.pt")
            (out / "history.json").write_text(json.dumps(history, indent=1))
        release_free_memory()
        if on_epoch:
            on_epoch(record)
        if finished:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    elif out is not None and (out / "best.pt").exists():  # resumed: the best epoch may predate this call
        model.load_state_dict(
            torch.load(out / "best.pt", map_location=device, weights_only=True)["state_dict"]
        )
    adjustment = calibrate(
        model, data, config.popularity_adjustment, config.valid_protocol, out, SAMPLED_BEST, device,
        config.eval_batch_size, precision, valid_users, log, name,
    )  # fmt: skip
    stopped_early = bool(history) and best["bad_epochs"] >= config.patience
    return TrainResult(
        history,
        int(best["epoch"]),
        dict(best["metrics"]),
        epochs_run,
        resumed_from,
        time.perf_counter() - started,
        peak_memory(device),
        stopped_early,
        extra={
            **({"reused": reused} if reused else {}),
            **sampled_best_summary(best),
            "popularity_adjustment": adjustment,
        },
    )
