"""Train an ensemble of seeds (``ensemble_size`` > 1): the same model trained ``size`` times, ranked by the
mean of their scores (``models.ensemble.ScoreEnsemble``). No Dagster.

Member ``i`` is an ordinary training run (``models.train.train``) with seed ``seed + i`` in
``out_dir/member_<i>/``, with its own ``best.pt``, ``resume.pt`` and ``history.json``: a killed ensemble
resumes member by member, a finished member is reused, and member 0 is exactly the one-model run of the same
settings. On a CPU the members train side by side in their own processes (``spawn``), the threads split
between them: on 2 cores, one thread each, a Beauty member's epoch took 170 s, where one model took 180 s at one
thread beside another run (BENCHMARKS.md, "Stop 46"). On a GPU, or with fewer threads than members, they train
one after another in this process.

Then the members are joined: ``out_dir/best.pt`` holds the ensemble of their picked epochs (and, under
``valid_protocol: full``, ``best_sampled_100.pt`` the ensemble of their sampled picks), validated as a whole;
the popularity adjustment is fitted on the ensemble's scores (``models.calibration``); ``out_dir/history.json``
is member 0's history, and each member's summary sits in the checkpoint's ``extra["members"]``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from convrec_dagster.data.training_setup import mutual_partner
from models.calibration import calibrate
from models.config import ModelConfig
from models.data import RecData, resolved_features
from models.ensemble import ScoreEnsemble
from models.registry import build_model, load_model, save_checkpoint
from models.train import (
    SAMPLED_BEST,
    TrainConfig,
    TrainResult,
    config_hash,
    peak_memory,
    train,
    validate,
    validation_users,
)

MEMBER_DIR = "member_{}"
POLL_S = 0.5  # how often the parent looks at its members' events and processes


@dataclasses.dataclass(frozen=True)
class MemberJob:
    """One member's training run: everything a spawned process needs besides the data."""

    index: int
    name: str
    model_config: ModelConfig
    train_config: TrainConfig  # the member's seed; no popularity adjustment (fitted on the ensemble)
    out_dir: Path
    device: str
    precision: str
    threads: int  # 0: leave torch's setting
    compile_mixer: bool
    run_id: str | None


def member_dir(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / MEMBER_DIR.format(index)


def member_jobs(
    name: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    size: int,
    out_dir: Path,
    device,
    precision: str,
    threads: int,
    compile_mixer: bool = False,
    run_id: str | None = None,
) -> list[MemberJob]:
    """The ``size`` members' jobs: seeds ``train_config.seed + i``, raw scores (no popularity adjustment)."""
    return [
        MemberJob(
            i,
            name,
            model_config,
            dataclasses.replace(train_config, seed=train_config.seed + i, popularity_adjustment=0.0),
            member_dir(out_dir, i),
            str(device),
            precision,
            threads,
            compile_mixer,
            run_id,
        )
        for i in range(size)
    ]


def train_member(job: MemberJob, data: RecData, log: Callable[[str], None], on_epoch) -> TrainResult:
    """Train one member (in this process); its checkpoints go to ``job.out_dir``."""
    if job.threads:
        torch.set_num_threads(job.threads)
    torch.manual_seed(job.train_config.seed)
    model = build_model(job.name, data, job.model_config)
    partner = mutual_partner(job.name, data, job.model_config, job.train_config, log)
    if job.compile_mixer and hasattr(model, "mix"):
        model.mix = torch.compile(model.mix)
    hparams = job.model_config.to_hparams()
    return train(
        model, data, job.name, hparams, job.train_config, job.device, job.precision, job.out_dir,
        on_epoch, log, run_id=job.run_id, partner=partner,
    )  # fmt: skip


def _member_process(job: MemberJob, data: RecData, events) -> None:
    """A spawned member's entry point: train, and report log lines, epochs and the outcome on ``events``."""
    try:
        result = train_member(
            job, data, lambda line: events.put(("log", job.index, line)),
            lambda record: events.put(("epoch", job.index, record)),
        )  # fmt: skip
        events.put(("done", job.index, result))
    except BaseException:  # noqa: BLE001 - the parent re-raises it with the member's traceback
        events.put(("error", job.index, traceback.format_exc()))


def train_members_in_processes(
    jobs: list[MemberJob], data: RecData, log: Callable[[str], None], on_epoch: Callable[[int, dict], None]
) -> list[TrainResult]:
    """Train ``jobs`` side by side, one spawned process each; forward their log lines and epochs as they come.
    A member that fails (or dies) stops the others and raises with its traceback; finished epochs stay in
    each member's ``resume.pt``."""
    context = mp.get_context("spawn")  # fork would copy the parent's torch threads and locks
    events = context.Queue()
    # not daemonic: a member may start processes of its own (torch.compile's workers); the finally below stops them
    processes = [
        context.Process(target=_member_process, args=(job, data, events), name=f"member-{job.index}")
        for job in jobs
    ]
    for process in processes:
        process.start()
    results: dict[int, TrainResult] = {}
    try:
        while len(results) < len(jobs):
            try:
                kind, index, payload = events.get(timeout=POLL_S)
            except queue.Empty:
                dead = [
                    j.index for j, p in zip(jobs, processes) if j.index not in results and not p.is_alive()
                ]
                if dead and events.empty():
                    code = processes[dead[0]].exitcode
                    raise RuntimeError(
                        f"ensemble member {dead[0]} exited with code {code} before it finished (killed for "
                        "memory?); its finished epochs are in its resume.pt: run again to resume"
                    ) from None
                continue
            if kind == "log":
                log(f"[member {index}] {payload}")
            elif kind == "epoch":
                on_epoch(index, payload)
            elif kind == "done":
                results[index] = payload
            else:
                raise RuntimeError(f"ensemble member {index} failed:\n{payload}")
    finally:
        stop_members(processes, unfinished=len(results) < len(jobs))
        events.close()
    return [results[j.index] for j in jobs]


def stop_members(processes: list, unfinished: bool, grace_s: float = 10.0) -> None:
    """Wait for the member processes; where the ensemble did not finish, stop those still running: SIGTERM,
    then SIGKILL after ``grace_s`` (a process started where SIGTERM is ignored, e.g. under ``nohup`` or by a
    parent that ignores it, inherits that; and a member blocked writing to a queue nobody reads never exits)."""
    if unfinished:
        for process in processes:
            if process.is_alive():
                process.terminate()
    for process in processes:
        process.join(timeout=grace_s if unfinished else 6 * grace_s)
        if process.is_alive():
            process.kill()
            process.join()


def member_threads(size: int, device, threads: int) -> tuple[bool, int]:
    """(side by side in processes, threads per member) for ``size`` members on ``device`` with ``threads``
    CPU threads in all (0: torch's current count)."""
    total = threads or torch.get_num_threads()
    if torch.device(device).type != "cpu" or total < size:
        return False, threads
    return True, total // size


def train_ensemble(
    name: str,
    data: RecData,
    model_config: ModelConfig,
    train_config: TrainConfig,
    size: int,
    device,
    precision: str,
    out_dir: Path,
    log: Callable[[str], None],
    on_epoch: Callable[[dict], None] | None = None,
    threads: int = 0,
    compile_mixer: bool = False,
    run_id: str | None = None,
) -> tuple[ScoreEnsemble, TrainResult]:
    """Train ``size`` members of ``name`` and join them (the module's docstring). Returns the ensemble (with
    its popularity adjustment) and a ``TrainResult`` whose history is member 0's, whose best metrics are the
    ensemble's validation, and whose ``extra["members"]`` summarises each member."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "resume.pt").unlink(missing_ok=True)  # a one-model run's: best.pt is now the ensemble's
    parallel, per_member = member_threads(size, device, threads)
    jobs = member_jobs(
        name, model_config, train_config, size, out_dir, device, precision, per_member, compile_mixer, run_id
    )
    seeds = ", ".join(str(j.train_config.seed) for j in jobs)
    log(
        f"{name}: an ensemble of {size} (seeds {seeds}), ranked by the mean of their scores; "
        + (
            f"the members train side by side, one process each with {per_member} thread(s)"
            if parallel
            else "the members train one after another"
        )
    )

    def member_epoch(index: int, record: dict) -> None:
        if on_epoch:
            on_epoch({**record, "member": index})

    if parallel:
        results = train_members_in_processes(jobs, data, log, member_epoch)
    else:
        results = [
            train_member(job, data, lambda line, i=job.index: log(f"[member {i}] {line}"),
                         lambda record, i=job.index: member_epoch(i, record))
            for job in jobs
        ]  # fmt: skip
    members = members_summary(jobs, results)
    valid_users = validation_users(data, train_config)
    joined = join_members(
        name, data, model_config, train_config, jobs, results, device, precision, out_dir, members, valid_users,
        parallel,
    )  # fmt: skip
    ensemble, metrics, _ = joined["best.pt"]
    adjustment = calibrate(
        ensemble, data, train_config.popularity_adjustment, train_config.valid_protocol, out_dir, SAMPLED_BEST,
        device, train_config.eval_batch_size, precision, valid_users, log, name,
    )  # fmt: skip
    first = results[0]
    (out_dir / "history.json").write_text(json.dumps(first.history, indent=1))
    reused = [r.extra.get("reused") for r in results]
    sampled = (
        {"sampled_best": {"epoch": joined[SAMPLED_BEST][2][0], "metrics": joined[SAMPLED_BEST][1]}}
        if SAMPLED_BEST in joined
        else {}
    )
    log(
        f"{name}: the ensemble's validation NDCG@10 {metrics['NDCG@10']:.4f}"
        + (f", full ranking {metrics['full_NDCG@10']:.4f}" if "full_NDCG@10" in metrics else "")
        + "; alone: "
        + ", ".join(_member_figure(r, train_config) for r in results)
    )
    return ensemble, TrainResult(
        first.history,
        first.best_epoch,
        metrics,
        sum(r.epochs_run for r in results),
        first.resumed_from,
        time.perf_counter() - started,
        max([r.peak_memory_bytes for r in results] + [peak_memory(torch.device(device))]),
        all(r.stopped_early for r in results),
        extra={
            **({"reused": reused[0]} if all(reused) else {}),
            **sampled,
            "popularity_adjustment": adjustment,
            "members": members,
            "side_by_side": parallel,
        },
    )


def join_members(
    name: str,
    data: RecData,
    model_config: ModelConfig,
    train_config: TrainConfig,
    jobs: list[MemberJob],
    results: list[TrainResult],
    device,
    precision: str,
    out_dir: Path,
    members: list[dict],
    valid_users,
    side_by_side: bool = False,
) -> dict[str, tuple[ScoreEnsemble, dict, list[int]]]:
    """Write ``out_dir/best.pt`` (and ``best_sampled_100.pt`` where every member has one) as the ensemble of
    the members' picks, validated as a whole. Returns, per file written, (the ensemble, its validation, each
    member's picked epoch). ``members``: ``members_summary``, kept in each checkpoint; ``valid_users``: the
    users each validation scores (``models.train.validation_users``; None: all)."""
    hparams = model_config.to_hparams()
    meta = {
        "config_hash": config_hash(name, hparams, train_config),
        "fingerprint": str(data.info.get("fingerprint", "")),
        "run_id": jobs[0].run_id,
        "data_features": resolved_features(data.info),
        "ensemble_size": len(jobs),
        "members": members,
        "side_by_side": side_by_side,
    }
    picks = [("best.pt", train_config.valid_protocol, [r.best_epoch for r in results])]
    if train_config.valid_protocol == "full" and all("sampled_best" in r.extra for r in results):
        picks.append((SAMPLED_BEST, "sampled_100", [r.extra["sampled_best"]["epoch"] for r in results]))
    else:
        (out_dir / SAMPLED_BEST).unlink(missing_ok=True)
    joined = {}
    for file, protocol, epochs in picks:
        members_at_pick = [load_model(job.out_dir / file, data, map_location=device)[0] for job in jobs]
        ensemble = ScoreEnsemble(members_at_pick).to(device)
        metrics = validate(
            ensemble,
            data,
            torch.device(device),
            precision,
            train_config.eval_batch_size,
            protocol,
            valid_users,
        )
        extra = {**meta, "epoch": epochs[0], "member_epochs": epochs, "valid": metrics}
        save_checkpoint(
            out_dir / file, ensemble, name, hparams, {**extra, "n_parameters": ensemble.n_parameters()}
        )
        joined[file] = (ensemble, metrics, epochs)
    return joined


def members_summary(jobs: list[MemberJob], results: list[TrainResult]) -> list[dict]:
    """Per member: seed, folder, best epoch, epochs, its own validation figures, whether it was reused."""
    return [
        {
            "member": job.index,
            "seed": job.train_config.seed,
            "dir": str(job.out_dir),
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),
            "valid": {k: float(v) for k, v in result.best_metrics.items()},
            "train_time_s": round(sum(float(h.get("epoch_time_s") or 0) for h in result.history), 1),
            "reused": bool(result.extra.get("reused")),
        }
        for job, result in zip(jobs, results)
    ]


def _member_figure(result: TrainResult, config: TrainConfig) -> str:
    key = "full_NDCG@10" if config.valid_protocol == "full" else "NDCG@10"
    return f"{result.best_metrics.get(key, result.best_metrics['NDCG@10']):.4f}"


def ensemble_markdown(members: list[dict], ensemble_metrics: dict) -> str:
    """Each member's validation beside the ensemble's, as a Markdown table (asset metadata)."""
    full = "full_NDCG@10" in ensemble_metrics

    def cells(valid: dict) -> str:
        return f"{valid['NDCG@10']:.4f} |" + (f" {valid['full_NDCG@10']:.4f} |" if full else "")

    head = "| member | seed | best epoch (of) | train min | valid NDCG@10 (sampled 100) |" + (
        " valid full NDCG@10 |" if full else ""
    )
    rows = [
        f"| {m['member']}{' (reused)' if m['reused'] else ''} | {m['seed']} | {m['best_epoch']} ({m['epochs']}) | "
        f"{m['train_time_s'] / 60:.1f} | " + cells(m["valid"])
        for m in members
    ]
    rows.append("| **ensemble** (mean score) | | | | " + cells(ensemble_metrics))
    return "\n".join([head, "|---" * (head.count("|") - 1) + "|", *rows])
