"""One rank of a distributed training run: started by ``torchrun``, reporting to Dagster over Pipes.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m convrec_dagster.torchrun_entry --job CONVREC_HOME/artifacts/models/<model>/torchrun_job.json

The training assets write the job file (``convrec_dagster.pipes_training``) and start this under
``dg.PipesSubprocessClient`` (or ``PipesK8sClient``, see docs/deploy/kubernetes.md). The job names
the model, its resolved settings, the Parquet folder to read (``load_rec_data_from_parquet``: no
DuckDB file, no writer lock), the checkpoint folder, the device kind and the precision.

Every rank loads the data, builds the model and trains with
:func:`models.distributed.train_distributed`. Rank 0 alone talks to Dagster: its log lines, one
custom message per epoch (``{"epoch": record}``) and, at the end, the asset materialization's
metadata. Outside a Pipes session (run by hand, other nodes of a multi-node run) rank 0 prints
them. Imports ``dagster_pipes`` (which ships with dagster and has no dependencies), never dagster.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path


class Reporter:
    """Rank 0's channel back to the orchestrator: Pipes when launched by Dagster, else stdout."""

    def __init__(self, pipes=None):
        self.pipes = pipes

    def log(self, message: str) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)
        else:
            print(message, flush=True)

    def epoch(self, record: dict) -> None:
        if self.pipes is not None:
            self.pipes.report_custom_message({"epoch": record})

    def done(self, metadata: dict) -> None:
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=metadata)
        else:
            print(json.dumps({"materialization": metadata}, default=str), flush=True)


def _json(value) -> dict:
    return {"raw_value": value, "type": "json"}


def run_job(job: dict, reporter: Reporter | None) -> dict | None:
    """Train ``job`` on this rank; rank 0 returns the materialization metadata, others None."""
    import torch
    import torch.distributed as dist

    from convrec_dagster.data.dataset import load_rec_data_from_parquet
    from convrec_dagster.data.training_setup import (
        data_features,
        epoch_line,
        prepare_training,
        validation_metadata,
    )
    from models.distributed import (
        DistEnv,
        init_process_group,
        leave_process_group,
        rank_device,
        train_distributed,
    )
    from models.registry import build_model

    env = DistEnv.from_env()
    say = reporter.log if reporter is not None else (lambda message: None)
    name, s = job["model"], dict(job["settings"])
    device = rank_device(job["device"], env)
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        torch.set_num_threads(int(s.get("num_threads") or max(1, (os.cpu_count() or 1) // local_world)))
    init_process_group(env, device)
    finished = False
    try:
        data = load_rec_data_from_parquet(Path(job["parquet_dir"]), features=data_features(name, s))
        say(
            f"{name}: rank 0 of {env.world_size} ({dist.get_backend()}, {device}): {data.n_users} users, "
            f"{data.n_items} items, {len(data.items)} interactions from {job['parquet_dir']} "
            f"(fingerprint {data.info.get('fingerprint')})"
        )
        model_config, config = prepare_training(name, s, data, say)
        hparams = model_config.to_hparams()
        torch.manual_seed(config.seed)
        model = build_model(name, data, model_config)
        if job.get("compile") and hasattr(model, "mix"):
            model.mix = torch.compile(model.mix)
        out_dir = Path(job["out_dir"])

        def on_epoch(record: dict) -> None:
            say(epoch_line(name, record))
            reporter.epoch(record)

        result = train_distributed(
            model,
            data,
            name,
            hparams,
            config,
            env,
            device,
            job["precision"],
            out_dir,
            on_epoch if reporter is not None else None,
            say,
        )
        finished = True
    finally:
        leave_process_group(finished)
    if not env.is_main:
        return None
    gpu = (
        f" ({torch.cuda.get_device_name(device)})"
        if device.type == "cuda"
        else f" ({torch.get_num_threads()} threads each)"
    )
    epoch_times = [h["epoch_time_s"] for h in result.history if h["loss"] is not None]
    last = result.history[-1]["epoch"] if result.history else None
    return {
        "best_epoch": result.best_epoch,
        "best_valid_HR@10": float(result.best_metrics["HR@10"]),
        "best_valid_NDCG@10": float(result.best_metrics["NDCG@10"]),
        **validation_metadata(result.best_metrics, config, result.extra),
        "epochs_run": result.epochs_run,
        "epochs_total": len(result.history),
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from if result.resumed_from is not None else "no",
        "parameters": model.n_parameters(),
        "device": f"{env.world_size} x {device.type}{gpu}, {result.extra['backend']}",
        "precision": job["precision"],
        "peak_memory_mb": round(result.peak_memory_bytes / 2**20, 1),
        "peak_memory_kind": ("cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS")
        + ", the largest rank",
        "mean_epoch_time_s": round(sum(epoch_times) / len(epoch_times), 3) if epoch_times else 0.0,
        "still_improving_at_end": bool(result.history)
        and result.best_epoch == last
        and len(result.history) > 1
        and not result.stopped_early,
        "hparams": _json(hparams),
        "train_config": _json(dataclasses.asdict(config)),
        "data_fingerprint": str(data.info.get("fingerprint", "")),
        "data_features": str(data.info.get("features", "")),
        "checkpoint": {"raw_value": str(out_dir / "best.pt"), "type": "path"},
        "world_size": env.world_size,
        "nnodes": int(os.environ.get("GROUP_WORLD_SIZE", 1)),
        "backend": result.extra["backend"],
        "rows_per_rank": _json(result.extra["rows_per_rank"]),
        "train_wall_time_s": round(result.wall_time_s, 2),
        "train_time_s": round(sum(float(h.get("epoch_time_s") or 0) for h in result.history), 1),
        # a finished run's resume.pt: nothing trained (the ranks' checkpoints do not name that run)
        "reused_from_run": "an earlier finished run"
        if result.resumed_from is not None and result.epochs_run == 0
        else "no",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convrec_dagster.torchrun_entry", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--job", type=Path, required=True, help="the job file the training asset wrote")
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text())
    if int(os.environ.get("RANK", 0)) != 0:
        run_job(job, None)
        return 0
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        reporter = Reporter()
        reporter.done(run_job(job, reporter))
        return 0
    started = time.perf_counter()
    with open_dagster_pipes() as pipes:  # on an exception, Dagster receives it before the process exits
        reporter = Reporter(pipes)
        metadata = run_job(job, reporter)
        metadata["rank0_wall_time_s"] = round(time.perf_counter() - started, 2)
        reporter.done(metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
