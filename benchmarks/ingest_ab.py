"""The `reviews` ingest before and after a change, back to back on the same dump.

    python -m benchmarks.ingest_ab --old-tree /tmp/old --lines 1000000 --repeats 2 \\
        --out benchmarks/results/ingest_ab.json

``--old-tree`` is a checkout of the code to compare with (e.g. ``git archive main | tar -x -C
/tmp/old``). One generated Amazon-2018 review dump (``benchmarks.ingest_scale.write_dump``), then
the real `reviews` asset through Dagster, each run a fresh process in a fresh home, DuckDB at
``--memory-limit`` / ``--threads``, old then new, repeated ``--repeats`` times, so that both see
the same machine load. On a shared machine
only the ratios mean much; the JSON holds every run's lines/s, CPU seconds, peak RSS and load
average.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.ingest_scale import dump_benchmark_parser, write_dump

HERE = Path(__file__).resolve().parents[1]


def run_once(tree: Path, raw_dir: Path, work: Path, tag: str, memory_limit: str, threads: int) -> dict:
    home = work / f"home_{tag}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    result = home / "_result.json"
    cmd = [sys.executable, "-m", "benchmarks.ingest_scale", "--stage", "reviews", "--home", str(home)]
    cmd += ["--raw", str(raw_dir), "--memory-limit", memory_limit, "--threads", str(threads)]
    cmd += ["--result", str(result)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    load = [round(x, 2) for x in os.getloadavg()]
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    out = json.loads(result.read_text()) if result.exists() else {"success": False}
    shutil.rmtree(home, ignore_errors=True)
    if not out.get("success"):
        raise SystemExit(f"{tag} failed: {out.get('error')}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    meta = out["metadata"]
    return {
        "variant": tag,
        "lines_per_s": meta["lines_per_second"],
        "asset_seconds": out["seconds"],
        "wall_s": round(wall, 2),
        # user + system CPU of the whole process (interpreter, Dagster, DuckDB's threads)
        "cpu_s": round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 2),
        "peak_rss_mb": out["peak_rss_mb"],
        "records_kept": meta["records_kept"],
        "fingerprint": meta.get("dataset_fingerprint"),
        "file_log": out.get("file_log"),
        "load_average_at_start": load,
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import machine_info, write_json

    parser = dump_benchmark_parser(
        "python -m benchmarks.ingest_ab", __doc__, 1_000_000, "benchmarks/results/ingest_ab.json"
    )
    parser.add_argument("--old-tree", type=Path, required=True)
    args = parser.parse_args(argv)
    before = machine_info()
    work = Path(tempfile.mkdtemp(prefix="ingest_ab_", dir=args.workdir))
    variants = [("old", args.old_tree.resolve()), ("new", HERE)]
    runs = []
    try:
        raw_dir = work / "dump"
        raw_dir.mkdir()
        dump = write_dump(raw_dir / "reviews_Scale_2018.json.gz", args.lines)
        for rep in range(args.repeats):
            for tag, tree in variants:
                run = run_once(tree, raw_dir, work, tag, args.memory_limit, args.threads)
                run["repeat"] = rep
                runs.append(run)
                print(
                    f"{tag} #{rep}: {run['lines_per_s']:,.0f} lines/s, peak {run['peak_rss_mb']:,.0f} MB, "
                    f"load {run['load_average_at_start']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {
        tag: statistics.median(r["lines_per_s"] for r in runs if r["variant"] == tag) for tag, _ in variants
    }
    results = {
        "benchmark": "ingest_ab",
        "dump": {**dump, "format": "amazon2018_reviews, one gzip file"},
        "memory_limit": args.memory_limit,
        "duckdb_threads": args.threads,
        "old_tree": str(args.old_tree),
        "median_lines_per_s": median,
        "ratio_new_over_old": round(median["new"] / median["old"], 3),
        "median_cpu_s": {
            tag: statistics.median(r["cpu_s"] for r in runs if r["variant"] == tag) for tag, _ in variants
        },
        # the fingerprint hashes the dump file's stats and every row of `reviews`
        "same_reviews_rows_in_every_run": len({r["fingerprint"] for r in runs}) == 1,
        "runs": runs,
        "machine_before": before,
        "machine_after": machine_info(),
    }
    if not results["same_reviews_rows_in_every_run"]:
        print("!!! the variants wrote different `reviews` rows (fingerprints differ): see runs[] !!!")
    write_json(results, args.out)
    print(json.dumps({k: results[k] for k in ("median_lines_per_s", "ratio_new_over_old")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
