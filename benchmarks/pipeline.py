"""End-to-end ``full_pipeline`` wall time on the embedded sample dump, per executor, per step.

    python -m benchmarks.pipeline --out benchmarks/results/pipeline.json

Each executor runs the whole job from nothing: a fresh temporary ``CONVREC_HOME`` (the sample dump
is generated, ingested, featurized, split; four models trained; evaluated; report and
recommendations written) on a persistent temporary Dagster instance with the project's
``dagster.yaml`` (pools), ``CONVREC_RAW_DIR`` unset:

- ``in_process``: ``JobDefinition.execute_in_process`` (one process, steps one after the other);
- ``multiprocess``: ``dg.execute_job`` of the reconstructable job, i.e. the Definitions' default
  executor (one process per step, at most one DuckDB step at a time) -- what ``dagster job
  execute`` and the UI use.

Per-step durations come from the run's event log (STEP_START -> STEP_SUCCESS/FAILURE timestamps).
Target (issue 8): under 60 s on 2 cores. The JSON holds machine info; a bar plot goes beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, HelpFormatter, machine_info, write_json

TARGET_S = 60.0


def full_pipeline_job():
    """Module-level so each step process can rebuild the job (resources from CONVREC_HOME)."""
    from convrec_dagster.definitions import build_defs

    return build_defs().resolve_job_def("full_pipeline")


def step_durations(instance, run_id: str) -> dict[str, dict]:
    """{step_key: {"duration_s", "status"}} from the run's STEP_START / STEP_SUCCESS / STEP_FAILURE events."""
    import dagster as dg

    starts, out = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            began = starts.get(event.step_key)
            out[event.step_key] = {
                "duration_s": round(entry.timestamp - began, 3) if began is not None else None,
                "status": "success" if event.event_type == dg.DagsterEventType.STEP_SUCCESS else "failure",
            }
    return dict(sorted(out.items(), key=lambda kv: -(kv[1]["duration_s"] or 0)))


def run_once(executor: str, keep: Path | None) -> dict:
    import dagster as dg

    tmp = Path(tempfile.mkdtemp(prefix=f"convrec_pipeline_{executor}_"))
    home, dagster_home = tmp / "convrec_home", tmp / "dagster_home"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "convrec_dagster" / "dagster.yaml", dagster_home / "dagster.yaml")
    saved = {k: os.environ.get(k) for k in ("CONVREC_HOME", "CONVREC_RAW_DIR", "DAGSTER_HOME")}
    os.environ["CONVREC_HOME"], os.environ["DAGSTER_HOME"] = str(home), str(dagster_home)
    os.environ.pop("CONVREC_RAW_DIR", None)
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            started = time.perf_counter()
            if executor == "in_process":
                result = full_pipeline_job().execute_in_process(instance=instance, raise_on_error=False)
                run_id, success = result.run_id, result.success
            else:
                with dg.execute_job(
                    dg.reconstructable(full_pipeline_job), instance=instance, raise_on_error=False
                ) as result:
                    run_id, success = result.run_id, result.success
            wall = time.perf_counter() - started
            steps = step_durations(instance, run_id)
        import duckdb

        from convrec_dagster.data import settings

        with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
            sizes = {
                t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("reviews", "interactions", "sequences", "evaluation_metrics", "recommendations")
            }
        return {
            "executor": executor,
            "success": success,
            "wall_s": round(wall, 2),
            "run_id": run_id,
            "within_target": success and wall < TARGET_S,
            "steps": steps,
            "n_steps": len(steps),
            "sum_of_step_durations_s": round(sum(s["duration_s"] or 0 for s in steps.values()), 2),
            "table_rows": sizes,
        }
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.move(str(tmp), str(keep / tmp.name))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), dpi=100, squeeze=False)
    for ax, run in zip(axes[0], runs):
        steps = list(run["steps"].items())[::-1]
        ax.barh([k for k, _ in steps], [v["duration_s"] or 0 for _, v in steps], color="tab:blue")
        ax.set_xlabel("step duration (s)")
        ax.set_title(f"{run['executor']}: wall {run['wall_s']:.1f} s (target < {TARGET_S:.0f} s)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    m = result["machine"]
    fig.suptitle(
        f"full_pipeline on the embedded sample -- {m['cpu_count']} CPUs, load {m['load_average_1_5_15']}, "
        f"{m['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description="Wall time of the whole full_pipeline job on the embedded sample dump (fresh CONVREC_HOME "
        "each time), in process and with the default multiprocess executor, with per-step "
        "durations from the Dagster event log. Target: < 60 s on 2 cores. Writes JSON + PNG.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--executors", default="in_process,multiprocess", help="comma-separated: in_process, multiprocess"
    )
    parser.add_argument(
        "--keep", default="", help="keep each run's CONVREC_HOME / DAGSTER_HOME under this folder"
    )
    parser.add_argument(
        "--out", default=str(RESULTS_DIR / "pipeline.json"), help="JSON path; the PNG goes beside it"
    )
    args = parser.parse_args(argv)
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    bad = set(executors) - {"in_process", "multiprocess"}
    if bad:
        raise SystemExit(f"--executors: unknown {sorted(bad)}")
    keep = Path(args.keep).resolve() if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    runs = []
    for executor in executors:
        print(f"[pipeline] full_pipeline, {executor} executor ...", flush=True)
        run = run_once(executor, keep)
        runs.append(run)
        print(
            f"[pipeline]   success={run['success']} wall {run['wall_s']} s; slowest steps: "
            + ", ".join(f"{k} {v['duration_s']} s" for k, v in list(run["steps"].items())[:4]),
            flush=True,
        )
    result = {
        "benchmark": "pipeline",
        "command": "python -m benchmarks.pipeline " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("cpu"),
        "dataset": "embedded sample dump",
        "target_s": TARGET_S,
        "runs": runs,
    }
    out = write_json(result, args.out)
    plot(result, out.with_suffix(".png"))
    print(f"[pipeline] wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
