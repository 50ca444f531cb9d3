"""What the store safeguards cost on a Beauty-sized store: the full-scan check a run does before its
first write, the copy of the last good store after a successful run, and a restore.

    python -m benchmarks.store_check --home /tmp/store_beauty --out benchmarks/results/store_check.json

Prepares ``--home`` once with the pipeline's own ingest, features and splits assets on
``../shared/data/benchmarks/s3rec_beauty`` (as ``benchmarks.convergence`` does; skipped when the home
is already prepared), then times, ``--repeats`` times each:

- ``open``: ``duckdb.connect`` of the store (what every step does);
- ``scan``: ``convrec_dagster.store.scan_tables`` -- every column of every table read once, so
  DuckDB verifies every block's checksum (what a run's first DuckDB step does);
- ``snapshot``: ``store.snapshot`` -- CHECKPOINT, copy to ``last_good/``, full scan of the copy;
- ``restore``: ``store.restore`` -- move the store aside, copy the last good one back, full scan.

Writes JSON (machine, versions, date, commit) and a bar plot beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, machine_info, write_json


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(round(time.perf_counter() - t0, 4))
    return times, result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["seconds_median"])
    values = [results["seconds_median"][n] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    bars = ax.bar(names, values, color="#4c72b0")
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f} s", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds (median)")
    ax.set_title(
        f"store safeguards, {results['store_mb']:.0f} MB store, {results['total_rows']:,} rows", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.store_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--home", type=Path, required=True, help="CONVREC_HOME to prepare (kept for reruns)")
    parser.add_argument("--dataset", default="beauty", help="benchmarks.convergence dataset (default beauty)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "store_check.json")
    args = parser.parse_args(argv)

    from benchmarks.convergence import DATA_DIRS, prepare

    home = args.home.expanduser().resolve()
    t0 = time.perf_counter()
    prepare(args.dataset, home, DATA_DIRS[args.dataset], {})
    prepare_s = time.perf_counter() - t0

    import duckdb

    from convrec_dagster import store
    from convrec_dagster.data import settings

    database = settings.duckdb_path(home)
    open_s, _ = _timed(lambda: duckdb.connect(str(database)).close(), args.repeats)

    def scan():
        conn = duckdb.connect(str(database))
        try:
            return store.scan_tables(conn, database, home)
        finally:
            conn.close()

    scan_s, tables = _timed(scan, args.repeats)
    snap_s, info = _timed(lambda: store.snapshot(database, home, "benchmark", "store_check"), args.repeats)
    restore_s, _ = _timed(lambda: store.restore(home), args.repeats)
    for leftover in home.glob(f"{settings.DUCKDB_FILENAME}.replaced-*"):
        leftover.unlink()  # the restores' moved-aside copies

    seconds = {"open": open_s, "scan": scan_s, "snapshot": snap_s, "restore": restore_s}
    results = {
        "benchmark": "store_check",
        "dataset": args.dataset,
        "home": str(home),
        "store_mb": round(database.stat().st_size / 1e6, 1),
        "tables": tables,
        "total_rows": sum(tables.values()),
        "repeats": args.repeats,
        "prepare_seconds": round(prepare_s, 1),
        "seconds": seconds,
        "seconds_median": {k: round(statistics.median(v), 4) for k, v in seconds.items()},
        "snapshot_info": {k: v for k, v in info.items() if k != "tables"},
        "machine": machine_info(),
        "note": "the machine may be shared with other jobs; see load_average_1_5_15",
    }
    out = write_json(results, args.out)
    plot(results, out.with_suffix(".png"))
    print(
        f"store {results['store_mb']} MB, {len(tables)} tables, {results['total_rows']:,} rows; medians "
        f"{results['seconds_median']}; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
