"""Data-parallel training across processes: ``torch.distributed`` + ``DistributedDataParallel``.

Started once per device by ``torchrun`` (which sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the
rendezvous address) or by ``torch.multiprocessing.spawn`` in tests. Backend ``nccl`` on CUDA,
``gloo`` on CPU. Pure torch: no Dagster, no DuckDB.

How an N-rank run relates to the one-process run of :func:`models.train.train`:

- every rank draws the epoch's examples from the same seeded NumPy generator, so every rank sees
  the very global batches of the one-process run (same permutation, cuts, negatives, augmentation);
- rank ``r`` keeps its contiguous share of each global batch (sizes differ by at most one, like
  ``DistributedSampler`` without padding: no row is seen twice) and weighs its mean loss by its
  share of the batch's rows (of its target positions for position-wise models) times the world
  size, so DDP's gradient *average* equals the gradient of the one-process *mean* loss;
- gradient clipping, AdamW and the learning-rate schedule then act on the same gradient on every
  rank, so the replicas stay identical; rank 0 validates, writes ``best.pt`` / ``resume.pt`` /
  ``history.json`` and broadcasts the stop decision.

What differs from one process: floating-point summation order (the all-reduce adds per-rank
partial gradients), and dropout, which draws from each rank's own torch generator (seed + rank).
Building the global batch is cheap index arithmetic and is repeated on every rank; only the rank's
share is moved to its device and run forward and backward.

``resume.pt`` keeps the one-process layout plus every rank's torch RNG state, so a killed run
resumes on any number of ranks (the same number restores dropout's streams exactly).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.base import SequentialRecommender
from models.batching import Batch, NegativeSampler
from models.calibration import calibrate
from models.data import RecData, resolved_features
from models.evaluate import autocast
from models.train import (
    SAMPLED_BEST,
    TrainConfig,
    TrainResult,
    _epoch_batches,
    _restore_rng,
    _rng_state,
    config_hash,
    decay_on_plateau,
    epoch_examples,
    epoch_record,
    load_resume_state,
    make_ema,
    make_optimizer,
    no_best,
    peak_memory,
    release_free_memory,
    resolved_ema_decay,
    sampled_best_summary,
    save_picks,
    seed_everything,
    update_best,
    validate,
    validation_seconds,
    validation_users,
    validation_users_line,
)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, rank on its node, number of processes in all."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> DistEnv:
        """From torchrun's variables (one process without them)."""
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(kind: str, env: DistEnv) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` on CUDA (one process per GPU), else the CPU."""
    if torch.device(kind).type == "cuda":
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device, timeout_min: float | None = None) -> None:
    """Join the process group (rendezvous from the environment). The timeout covers rank 0's
    validation, during which the others wait; ``CONVREC_DIST_TIMEOUT_MIN`` overrides 120 minutes."""
    minutes = (
        timeout_min if timeout_min is not None else float(os.environ.get("CONVREC_DIST_TIMEOUT_MIN", 120))
    )
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend_for(device),
        rank=env.rank,
        world_size=env.world_size,
        timeout=dt.timedelta(minutes=minutes),
        **kwargs,
    )


def leave_process_group(finished: bool = True) -> None:
    """Destroy the process group. After a finished run every rank first meets the others at a
    barrier, so no rank tears its connections down while a peer's last collective or DDP's final
    all-reduce is still in flight: a rank that left early could abort the other at teardown (gloo,
    SIGABRT "terminate called without an active exception"). After a failure the peers may never
    arrive, so there is no barrier then."""
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous share of ``n`` rows; shares differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _take(batch, start: int, stop: int):
    if isinstance(batch, tuple):
        return tuple(t[start:stop] if t is not None else None for t in batch)
    return Batch(**{k: (v[start:stop] if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()})


def _weight_units(batch) -> torch.Tensor:
    """What the model's loss averages over: rows, or target positions for position-wise batches."""
    if isinstance(batch, tuple):
        return (batch[1] > 0).sum()
    return torch.tensor(len(batch.items))


def local_share(batch, env: DistEnv) -> tuple[object, float]:
    """(this rank's rows of the global ``batch``, the factor its mean loss is multiplied by).

    The factor is ``share of the averaged units x world size``, so that DDP's average of the
    ranks' gradients is the gradient of the global batch's mean loss. A rank left without rows
    (a last batch smaller than the world) runs the batch's first row with factor 0: every rank
    must still take part in each gradient all-reduce.
    """
    size = len(batch[0]) if isinstance(batch, tuple) else len(batch.items)
    start, stop = shard_bounds(size, env.rank, env.world_size)
    if start == stop:
        return _take(batch, 0, 1), 0.0
    mine = _take(batch, start, stop)
    return mine, float(_weight_units(mine)) / float(_weight_units(batch)) * env.world_size


class _Loss(nn.Module):
    """DDP wraps a module's ``forward``; this one's forward is the model's training loss."""

    def __init__(self, model: SequentialRecommender):
        super().__init__()
        self.model = model

    def forward(self, batch):
        if isinstance(batch, tuple):
            return self.model.calculate_positionwise_loss(*batch)
        return self.model.calculate_loss(batch)


def _to(batch, device: torch.device):
    if isinstance(batch, tuple):
        return tuple(t.to(device) if t is not None else None for t in batch)
    return batch.to(device)


def _train_epoch(
    ddp,
    model,
    optimizer,
    data,
    sampler,
    rng,
    config: TrainConfig,
    device,
    precision,
    scheduler,
    env: DistEnv,
    on_batch: Callable[[int, int], None] | None,
    ema=None,
) -> tuple[float, int, int]:
    """One epoch of this rank's shares; returns (the global mean loss, the global examples, the
    rows this rank ran). ``ema`` (rank 0's ``make_ema``) follows every step: after DDP's all-reduce
    every rank holds the same weights."""
    model.train()
    n_batches = math.ceil(epoch_examples(model, data, config) / config.batch_size)
    weighted = torch.zeros((), dtype=torch.float64, device=device)  # sum over batches of size x share x loss
    n = mine_rows = 0
    for i, (size, batch) in enumerate(_epoch_batches(model, data, sampler, rng, config)):
        mine, factor = local_share(batch, env)
        if factor:
            mine_rows += len(mine[0]) if isinstance(mine, tuple) else len(mine.items)
        with autocast(device, precision):
            loss = ddp(_to(mine, device))
        optimizer.zero_grad(set_to_none=True)
        (loss * factor).backward()  # DDP averages the ranks' gradients during backward
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        weighted += loss.detach().double() * (size * factor / env.world_size)
        n += size
        if on_batch is not None:
            on_batch(i + 1, n_batches)
    dist.all_reduce(weighted)
    return float(weighted) / max(n, 1), n, mine_rows


def _broadcast(obj, env: DistEnv):
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _torch_rng(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def train_distributed(
    model: SequentialRecommender,
    data: RecData,
    name: str,
    hparams: dict,
    config: TrainConfig,
    env: DistEnv,
    device: torch.device,
    precision: str = "fp32",
    out_dir: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """:func:`models.train.train` across the process group (already initialised); same checkpoints,
    history records and result. ``on_epoch`` and ``log`` are called on rank 0 only; every rank
    returns the same result, and rank 0's model ends holding the best epoch's weights."""
    if not model.trainable:
        raise ValueError(f"{name} has nothing to train: run it in one process (models.train.train)")
    started = time.perf_counter()
    say = log if env.is_main else (lambda message: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rng = seed_everything(config.seed)  # the same NumPy stream on every rank: the same global batches
    torch.manual_seed(config.seed + env.rank)  # dropout: each rank its own stream
    model.to(device)
    model.label_smoothing = config.label_smoothing
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    meta = {
        "config_hash": config_hash(name, hparams, config),
        "fingerprint": str(data.info.get("fingerprint", "")),
        "data_features": resolved_features(data.info),  # what evaluation loads; never guessed
    }

    resume_path = out / "resume.pt" if out is not None else None
    state = (
        load_resume_state(resume_path, config, meta["config_hash"], meta["fingerprint"], say)
        if env.is_main
        else None
    )
    ema_state = None
    if state is None and env.is_main and out is not None:
        (out / SAMPLED_BEST).unlink(missing_ok=True)  # an earlier run's pick: this run writes its own or none
    if state is not None:
        model.load_state_dict(state["model"])  # DDP below broadcasts rank 0's weights
        ema_state = state.get("ema")
    state = _broadcast(
        {k: v for k, v in state.items() if k not in ("model", "ema")} if state is not None else None, env
    )

    # static_graph: every step runs the same graph, so DDP learns once which parameters (if any) get
    # no gradient, instead of find_unused_parameters' graph traversal at every step
    ddp = DistributedDataParallel(
        _Loss(model), device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
    )
    optimizer, scheduler = make_optimizer(model, data, config)
    # validation runs on rank 0, so the average lives there
    ema = make_ema(model, resolved_ema_decay(model, data, config)) if env.is_main else None
    if ema is not None and ema_state is not None:
        ema.load_state_dict(ema_state)
    evaluated = ema.module if ema is not None else model
    sampler = NegativeSampler(data)
    valid_users = validation_users(data, config)
    if valid_users is not None:
        say(validation_users_line(name, data, valid_users, config))
    history: list[dict] = []
    best = no_best()
    start_epoch, resumed_from, finished = 1, None, False
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], rng, torch.device("cpu"))  # python + numpy: shared by every rank
        ranks = state.get("rank_rng") or []
        if len(ranks) == env.world_size:
            torch.set_rng_state(ranks[env.rank]["torch"])
            if device.type == "cuda" and "cuda" in ranks[env.rank]:
                torch.cuda.set_rng_state(ranks[env.rank]["cuda"], device)
        else:  # written by another world size: fresh dropout streams, deterministic per epoch and rank
            torch.manual_seed(config.seed + env.rank + 7919 * int(state["epoch"]))
        history, best, finished = list(state["history"]), dict(state["best"]), bool(state["finished"])
        resumed_from = int(state["epoch"])
        start_epoch = resumed_from + 1
        say(
            f"resuming from epoch {resumed_from} of {resume_path} (best epoch {best['epoch']}; written by "
            f"{state.get('world_size', 1)} rank(s), now {env.world_size})"
            + (
                ": that run had finished, so nothing is trained and its best model is reused"
                if finished
                else ""
            )
        )

    epochs_run, best_state, rows_run = 0, None, 0
    spent = sum(h["epoch_time_s"] for h in history)
    probe = {"done": False, "t0": 0.0}

    def estimate(done: int, total: int) -> None:
        if probe["done"] or (done < min(20, total) and done < total):
            return
        probe["done"] = True
        per_epoch = (time.perf_counter() - probe["t0"]) / done * total
        if not env.is_main:  # rank 0 validates, so it alone measures what that costs
            return
        valid_s = validation_seconds(evaluated, data, device, precision, config)
        epochs_left = config.max_epochs - start_epoch + 1
        say(
            f"{name}: expected ~{per_epoch:.0f} s of training on {env.world_size} ranks ({total} global batches "
            f"of {config.batch_size}) and ~{valid_s:.0f} s of validation ({config.valid_protocol}) on rank 0 per "
            f"epoch; at most {epochs_left} more epochs = {(per_epoch + valid_s) * epochs_left / 60:.1f} min; "
            f"early stopping after {config.patience} epochs without gain"
        )

    for epoch in range(start_epoch, config.max_epochs + 1):
        if finished:
            break
        t0 = probe["t0"] = time.perf_counter()
        loss, n_examples, mine_rows = _train_epoch(
            ddp, model, optimizer, data, sampler, rng, config, device, precision, scheduler, env, estimate,
            ema,
        )  # fmt: skip
        train_time = time.perf_counter() - t0
        rows_run += mine_rows
        decision = None
        if env.is_main:
            metrics = validate(
                evaluated, data, device, precision, config.eval_batch_size, config.valid_protocol, valid_users
            )
            picks = update_best(best, metrics, epoch, config)
            if picks[0]:
                best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
            ckpt_meta = {"epoch": epoch, "valid": metrics, "world_size": env.world_size, **meta}
            save_picks(out, evaluated, name, hparams, ckpt_meta, picks)
            epoch_time = time.perf_counter() - t0
            spent += epoch_time
            record = epoch_record(
                config, epoch, loss, metrics, (epoch_time, train_time, spent), n_examples, picks,
                optimizer.param_groups[0]["lr"], best["bad_epochs"], len(history),
            )  # fmt: skip
            history.append(record)
            decision = (record["stop"] is not None, config.lr_schedule == "plateau" and not picks[0])
        finished, cut_lr = _broadcast(decision, env)
        if cut_lr and not finished:  # every rank steps its own optimizer: each cuts its rate
            lr = decay_on_plateau(optimizer, scheduler, config.plateau_factor)
            say(f"{name}: validation did not improve: learning rate x {config.plateau_factor} (now {lr:.2e})")
        rank_rng = [None] * env.world_size
        dist.all_gather_object(rank_rng, _torch_rng(device))
        epochs_run += 1
        if env.is_main and out is not None:
            torch.save(
                {
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    "epoch": epoch,
                    "rng": _rng_state(rng, torch.device("cpu")),
                    "rank_rng": rank_rng,
                    "world_size": env.world_size,
                    "history": history,
                    "best": best,
                    "finished": finished,
                    **meta,
                },
                out / "resume.pt.tmp",
            )
            os.replace(out / "resume.pt.tmp", out / "resume.pt")
            (out / "history.json").write_text(json.dumps(history, indent=1))
        release_free_memory()
        if env.is_main and on_epoch:
            on_epoch(history[-1])
        if finished:
            break

    if env.is_main:
        if best_state is not None:
            model.load_state_dict(best_state)
        elif out is not None and (out / "best.pt").exists():  # resumed: the best epoch may predate this call
            model.load_state_dict(
                torch.load(out / "best.pt", map_location=device, weights_only=True)["state_dict"]
            )
        adjustment = calibrate(
            model, data, config.popularity_adjustment, config.valid_protocol, out, SAMPLED_BEST, device,
            config.eval_batch_size, precision, valid_users, say, name,
        )  # fmt: skip
    peak = torch.tensor([peak_memory(device)], dtype=torch.float64, device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    rows_per_rank = [None] * env.world_size
    dist.all_gather_object(rows_per_rank, rows_run)
    summary = _broadcast(
        {"history": history, "best": best, "adjustment": adjustment if env.is_main else None}, env
    )
    history, best = summary["history"], summary["best"]
    stopped_early = bool(history) and best["bad_epochs"] >= config.patience
    return TrainResult(
        history,
        int(best["epoch"]),
        dict(best["metrics"]),
        epochs_run,
        resumed_from,
        time.perf_counter() - started,
        int(peak.item()),
        stopped_early,
        extra={
            "world_size": env.world_size,
            "backend": dist.get_backend(),
            "rows_per_rank": rows_per_rank,
            **sampled_best_summary(best),
            "popularity_adjustment": summary["adjustment"],
        },
    )
