"""Distributed training from a training asset: ``torchrun`` as a Dagster Pipes subprocess.

A training setting ``nproc_per_node`` above 1 (or ``nnodes`` above 1) makes the asset

1. refresh the Parquet handoff ``CONVREC_HOME/export/`` from DuckDB (``export_parquet``: the files
   of the ``training_data_parquet`` asset) and let go of the DuckDB file: the ranks read Parquet;
2. write the job (model, resolved settings, folders, device kind, precision) to
   ``artifacts/models/<model>/torchrun_job.json``;
3. run :func:`torchrun_command` through the ``pipes_subprocess_client`` resource
   (``dg.PipesSubprocessClient``); rank 0 (``convrec_dagster.torchrun_entry``) streams its log lines,
   one line and one custom message per epoch, and the final metadata back to the asset;
4. hand that metadata back, with the history for the asset's learning curves.

A failed or killed run fails the step (the retry policy retries it); the next attempt resumes from
``resume.pt``. With ``nnodes`` > 1 this step runs node 0 and logs the command each other node runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import dagster as dg

import convrec_dagster
from convrec_dagster.resources import ConvRecPaths, TorchDevice

PROJECT_ROOT = Path(convrec_dagster.__file__).resolve().parents[1]
ENTRY_MODULE = "convrec_dagster.torchrun_entry"


def torchrun_command(
    job_path: str | Path,
    nproc_per_node: int,
    nnodes: int = 1,
    rdzv_endpoint: str = "",
    node_rank: int = 0,
    python: str = sys.executable,
) -> list[str]:
    """``torchrun`` (as ``python -m torch.distributed.run``) starting ``nproc_per_node`` ranks of
    the entry point: ``--standalone`` on one node; across ``nnodes`` nodes a static rendezvous at
    ``rdzv_endpoint`` (host:port of node 0), so that global rank 0, the one that reports to
    Dagster, is on node 0 (each node runs the command with its own ``node_rank``)."""
    command = [python, "-m", "torch.distributed.run", f"--nproc_per_node={int(nproc_per_node)}"]
    if nnodes > 1:
        host, _, port = rdzv_endpoint.rpartition(":")
        command += [
            f"--nnodes={int(nnodes)}",
            f"--node_rank={int(node_rank)}",
            f"--master_addr={host}",
            f"--master_port={port}",
        ]
    else:
        command += ["--standalone", "--nnodes=1"]
    return command + ["-m", ENTRY_MODULE, "--job", str(job_path)]


def check_layout(settings: dict, device_type: str) -> None:
    """Fail before any work when the requested layout cannot run here."""
    nproc, nnodes = int(settings["nproc_per_node"]), int(settings["nnodes"])
    if nproc < 1 or nnodes < 1:
        raise dg.Failure(
            f"nproc_per_node ({nproc}) and nnodes ({nnodes}) must be at least 1.", allow_retries=False
        )
    endpoint = str(settings.get("rdzv_endpoint") or "")
    if nnodes > 1 and not (endpoint.rpartition(":")[0] and endpoint.rpartition(":")[2].isdigit()):
        raise dg.Failure(
            f"nnodes={nnodes} needs rdzv_endpoint as host:port of node 0 (this machine, reachable from "
            f"every node), not {endpoint!r}; the other nodes start the logged commands.",
            allow_retries=False,
        )
    if device_type == "cuda":
        import torch

        if nproc > torch.cuda.device_count():
            raise dg.Failure(
                f"nproc_per_node={nproc} but this node has {torch.cuda.device_count()} CUDA devices: "
                "use at most one process per GPU.",
                allow_retries=False,
            )


def training_job(
    name: str, settings: dict, paths: ConvRecPaths, device: str, precision: str, compile: bool = False
) -> dict:
    """What ``convrec_dagster.torchrun_entry`` trains: the model, its resolved settings
    (``convrec_dagster.data.training_setup.resolve_settings``), the Parquet handoff to read, where checkpoints go."""
    return {
        "model": name,
        "settings": settings,
        "parquet_dir": str(paths.home_path() / "export"),
        "out_dir": str(paths.artifacts_path("models", name)),
        "device": device,
        "precision": precision,
        "compile": compile,
    }


def write_job(path: Path, job: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=1, default=str))
    os.replace(tmp, path)
    return path


def run_distributed_training(
    name: str,
    context: dg.AssetExecutionContext,
    pipes_client: dg.PipesSubprocessClient,
    duckdb,
    paths: ConvRecPaths,
    torch_device: TorchDevice,
    settings: dict,
) -> tuple[dict, list[dict], int]:
    """Train ``name`` on ``torchrun`` ranks; return (the metadata rank 0 reported, the full history,
    the number of per-epoch messages received)."""
    from convrec_dagster.data.dataset import export_parquet

    device_type = torch_device.torch_device.type
    check_layout(settings, device_type)
    export_dir = paths.home_path() / "export"
    with duckdb.get_connection() as conn:
        written = export_parquet(conn, export_dir)
    context.log.info(
        f"{name}: refreshed the Parquet handoff {export_dir} ({', '.join(written)}); the ranks read it"
    )
    out_dir = paths.artifacts_path("models", name)
    job = training_job(
        name, settings, paths, device_type, torch_device.effective_precision(), torch_device.compile
    )
    job_path = write_job(out_dir / "torchrun_job.json", job)
    nproc, nnodes = int(settings["nproc_per_node"]), int(settings["nnodes"])
    command = torchrun_command(job_path, nproc, nnodes, settings.get("rdzv_endpoint", ""))
    context.log.info(
        f"{name}: {nnodes} node(s) x {nproc} process(es), backend "
        f"{'nccl' if device_type == 'cuda' else 'gloo'}: {' '.join(command)}"
    )
    for rank in range(1, nnodes):
        other = torchrun_command(
            job_path, nproc, nnodes, settings["rdzv_endpoint"], node_rank=rank, python="python"
        )
        context.log.info(
            f"{name}: on node {rank} (CONVREC_HOME on the shared file system), run: {' '.join(other)}"
        )
    python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    invocation = pipes_client.run(command=command, context=context, env={"PYTHONPATH": python_path})
    reported = invocation.get_materialize_result()
    epochs_streamed = sum(1 for m in invocation.get_custom_messages() if isinstance(m, dict) and "epoch" in m)
    history = (
        json.loads((out_dir / "history.json").read_text()) if (out_dir / "history.json").exists() else []
    )
    return dict(reported.metadata), history, epochs_streamed
