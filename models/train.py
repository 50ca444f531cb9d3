"""The training loop (pure torch): sampling, AdamW, early stopping, checkpoints, resume.

Each epoch every training user contributes one example: a random cut of the training history
whose last item is the positive and the up-to-L items before it the input (ProxyRCA's scheme),
with ``n_negatives`` negatives drawn uniformly from the items the user never interacted with and
1 % of input items replaced by random items. Validation NDCG@10 (sampled_100) picks the best epoch;
training stops after ``patience`` epochs without improvement.

``out_dir`` receives ``best.pt`` (the best model), ``resume.pt`` (model, optimizer, epoch, RNG
states, history, best so far) and ``history.json``. A run that finds a ``resume.pt`` with the same
config hash and data fingerprint continues after its last epoch; otherwise it starts over and says so.
"""

from __future__ import annotations

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
from models.batching import NegativeSampler, make_batch, random_cuts, training_users
from models.data import RecData
from models.evaluate import autocast, rank_eval_users
from models.metrics import per_user_metrics, summarize
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
    grad_clip: float = 1.0
    seed: int = 42
    eval_batch_size: int = 256
    resume: bool = True


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


def config_hash(name: str, hparams: dict, config: TrainConfig) -> str:
    """Hash of everything that shapes the result (the resume flag and eval batch size do not)."""
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("resume", "eval_batch_size")}
    blob = json.dumps({"model": name, "hparams": hparams, "train": cfg}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def validate(model: SequentialRecommender, data: RecData, device: torch.device, precision: str, batch_size: int) -> dict:
    _, greater, equal = rank_eval_users(model, data, "valid", "sampled_100", device, batch_size, precision)
    summary = summarize(per_user_metrics(greater, equal, ks=(10,)))
    return {"HR@10": summary["HR@10"], "NDCG@10": summary["NDCG@10"]}


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


def train_epoch(model, optimizer, data, sampler, rng, config: TrainConfig, device, precision) -> tuple[float, int]:
    """One pass over the training users; returns (mean loss, examples)."""
    model.train()
    users = training_users(data)
    users = users[rng.permutation(len(users))]
    targets = random_cuts(data, users, rng)
    negatives = sampler.sample(users, config.n_negatives, rng)
    cands = np.concatenate([data.items[targets][:, None], negatives], 1)
    total, n = 0.0, 0
    for start in range(0, len(users), config.batch_size):
        sl = slice(start, start + config.batch_size)
        batch = make_batch(data, users[sl], targets[sl], model.max_len, cands[sl], rng=rng,
                           augment_prob=config.augment_prob).to(device)
        with autocast(device, precision):
            loss = model.calculate_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(batch.users)
        n += len(batch.users)
    return total / max(n, 1), n


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
) -> TrainResult:
    """Train ``model`` in place (it ends holding the best epoch's weights) and return the history."""
    device = torch.device(device)
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rng = seed_everything(config.seed)
    model.to(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    chash, fingerprint = config_hash(name, hparams, config), str(data.info.get("fingerprint", ""))
    ckpt_meta = {"config_hash": chash, "fingerprint": fingerprint}

    if not model.trainable:  # nothing to fit: evaluate once and keep the model
        metrics = validate(model, data, device, precision, config.eval_batch_size)
        history = [{"epoch": 0, "loss": None, "valid_HR@10": metrics["HR@10"], "valid_NDCG@10": metrics["NDCG@10"],
                    "epoch_time_s": 0.0, "examples_per_s": None, "best": True}]
        if out is not None:
            save_checkpoint(out / "best.pt", model, name, hparams, {"epoch": 0, "valid": metrics, **ckpt_meta})
            (out / "history.json").write_text(json.dumps(history, indent=1))
        if on_epoch:
            on_epoch(history[0])
        return TrainResult(history, 0, metrics, 0, None, time.perf_counter() - started, peak_memory(device), False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler = NegativeSampler(data)
    history: list[dict] = []
    best = {"epoch": -1, "metrics": {"NDCG@10": -math.inf}, "bad_epochs": 0}
    start_epoch, resumed_from, finished = 1, None, False
    resume_path = out / "resume.pt" if out is not None else None
    if resume_path is not None and resume_path.exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        if not config.resume:
            log(f"resume disabled: starting over (ignoring {resume_path})")
        elif state.get("config_hash") != chash or state.get("fingerprint") != fingerprint:
            log(f"not resuming {resume_path}: it was written for config {state.get('config_hash')} / data "
                f"{state.get('fingerprint')!r}, this run is config {chash} / data {fingerprint!r}; starting over")
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _restore_rng(state["rng"], rng, device)
            history, best, finished = list(state["history"]), dict(state["best"]), bool(state["finished"])
            resumed_from = int(state["epoch"])
            start_epoch = resumed_from + 1
            log(f"resuming from epoch {resumed_from} of {resume_path} (best epoch {best['epoch']})"
                + (": that run had finished" if finished else ""))

    epochs_run = 0
    best_state = None
    for epoch in range(start_epoch, config.max_epochs + 1):
        if finished:
            break
        t0 = time.perf_counter()
        loss, n_examples = train_epoch(model, optimizer, data, sampler, rng, config, device, precision)
        train_time = time.perf_counter() - t0
        metrics = validate(model, data, device, precision, config.eval_batch_size)
        improved = metrics["NDCG@10"] > best["metrics"]["NDCG@10"]
        if improved:
            best = {"epoch": epoch, "metrics": metrics, "bad_epochs": 0}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out is not None:
                save_checkpoint(out / "best.pt", model, name, hparams, {"epoch": epoch, "valid": metrics, **ckpt_meta})
        else:
            best["bad_epochs"] += 1
        finished = best["bad_epochs"] >= config.patience or epoch == config.max_epochs
        record = {"epoch": epoch, "loss": loss, "valid_HR@10": metrics["HR@10"], "valid_NDCG@10": metrics["NDCG@10"],
                  "epoch_time_s": time.perf_counter() - t0, "examples_per_s": n_examples / max(train_time, 1e-9),
                  "best": improved}
        history.append(record)
        epochs_run += 1
        if out is not None:
            torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                        "optimizer": optimizer.state_dict(), "epoch": epoch, "rng": _rng_state(rng, device),
                        "history": history, "best": best, "finished": finished, **ckpt_meta},
                       out / "resume.pt.tmp")
            os.replace(out / "resume.pt.tmp", out / "resume.pt")
            (out / "history.json").write_text(json.dumps(history, indent=1))
        if on_epoch:
            on_epoch(record)
        if finished:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    elif out is not None and (out / "best.pt").exists():  # resumed: the best epoch may predate this call
        model.load_state_dict(torch.load(out / "best.pt", map_location=device, weights_only=True)["state_dict"])
    stopped_early = bool(history) and best["bad_epochs"] >= config.patience
    return TrainResult(history, int(best["epoch"]), dict(best["metrics"]), epochs_run, resumed_from,
                       time.perf_counter() - started, peak_memory(device), stopped_early)
