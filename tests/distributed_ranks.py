"""The ranks of tests/test_distributed.py, started by ``torch.multiprocessing.spawn``.

A module of its own, importing only torch and models/, so each spawned rank starts quickly (the
test module imports Dagster, which a rank does not need).
"""

from __future__ import annotations

import json
import os
import signal
import socket

import torch
import torch.multiprocessing as mp

from models.distributed import DistEnv
from models.registry import build_model
from models.synthetic import chain_data
from models.train import TrainConfig

HP = {"d": 16, "hidden": 32, "dropout": 0.0, "max_len": 8, "loss": "softmax"}
# (model, scheme, ema_decay, valid_protocol): ConvRec validates a moving average of its weights, kept on
# rank 0; SASRec's best epoch is picked by full-ranking validation
JOBS = {
    "convrec_one_cut": ("convrec", "one_cut", 0.8, "sampled_100"),
    "sasrec_all_cuts": ("sasrec", "all_cuts", 0.0, "full"),
}
MAX_EPOCHS = 4


def data():
    return chain_data(n_users=100, n_items=30, min_len=5, max_len=12, seed=1)


def config(
    scheme: str, seed: int = 5, ema_decay: float = 0.0, valid_protocol: str = "sampled_100"
) -> TrainConfig:
    # 100 training users in global batches of 33: the last batch has one row, so rank 1 has none there
    return TrainConfig(
        batch_size=33,
        lr=3e-3,
        max_epochs=MAX_EPOCHS,
        patience=10,
        seed=seed,
        scheme=scheme,
        ema_decay=ema_decay,
        valid_protocol=valid_protocol,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(
    rank: int,
    world: int,
    port: int,
    jobs: list[str],
    out_root: str | None,
    kill_at_epoch: int,
    results: str,
    device_kind: str = "cpu",
) -> None:
    """One rank: train each job, rank 0 writes the results; ``kill_at_epoch``: rank 0 SIGKILLs itself
    right after that epoch (its checkpoint is written by then). ``device_kind`` cuda: one GPU per rank
    (nccl)."""
    from models.distributed import init_process_group, leave_process_group, rank_device, train_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    env = DistEnv(rank, rank, world)
    device = rank_device(device_kind, env)
    init_process_group(env, device, timeout_min=2)
    out = {}
    for key in jobs:
        name, scheme, ema_decay, protocol = JOBS[key]
        rec = data()
        torch.manual_seed(0)
        model = build_model(name, rec, HP)
        messages: list[str] = []

        def on_epoch(record: dict) -> None:
            if record["epoch"] == kill_at_epoch:
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill, not an exception

        result = train_distributed(
            model,
            rec,
            name,
            HP,
            config(scheme, ema_decay=ema_decay, valid_protocol=protocol),
            env,
            device,
            out_dir=os.path.join(out_root, key) if out_root else None,
            on_epoch=on_epoch,
            log=messages.append,
        )
        out[key] = {
            "loss": [h["loss"] for h in result.history],
            "best": result.best_metrics["NDCG@10"],
            "valid": [h["valid_NDCG@10"] for h in result.history],
            "valid_full": [h.get("valid_full_NDCG@10") for h in result.history],
            "best_epoch": result.best_epoch,
            "rows_per_rank": result.extra["rows_per_rank"],
            "backend": result.extra["backend"],
            "resumed_from": result.resumed_from,
            "epochs_run": result.epochs_run,
            "messages": messages,
        }
    if rank == 0:
        with open(results, "w") as fh:
            json.dump(out, fh)
    leave_process_group()


def spawn(
    folder, jobs: list[str], out_root=None, kill_at_epoch: int = -1, world: int = 2, device_kind: str = "cpu"
) -> dict:
    """Run ``jobs`` on ``world`` ranks (2 CPU ranks with gloo by default); rank 0's results."""
    results = folder / "results.json"
    out = str(out_root) if out_root else None
    mp.spawn(
        rank_main,
        args=(world, _free_port(), jobs, out, kill_at_epoch, str(results), device_kind),
        nprocs=world,
    )
    return json.loads(results.read_text())
