"""The `reviews` ingest after the parse, step by step: the copy route the code takes against a
zero-copy route (issue 16), and ways to count users/items/pairs.

    python -m benchmarks.ingest_publish_steps --lines 2000000 --threads 2 --repeats 2 \\
        --out benchmarks/results/ingest_publish_steps.json

One generated Amazon-2018 dump (``benchmarks.ingest_scale.write_dump``), then in this process, each
run on a fresh DuckDB file at ``--memory-limit`` / ``--threads``, the two routes alternating:

- ``copy`` (the code): ``rawdata.load_reviews`` parses the file into a temp table, then inside a
  transaction ``ingest.publish_reviews`` copies the rows into `reviews` and counts them.
- ``rename`` (a prototype, not in the code): the parse writes a table of the main database in the
  exact shape of `reviews` plus ``blank, reason, raw``; its unusable rows are quarantined and
  deleted, the three extra columns dropped, and the table renamed to `reviews` (no copy).

Then the counts of `reviews` three ways. Wall and process CPU seconds per step; a hash over every
row shows that both routes wrote the same rows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from benchmarks.ingest_scale import dump_benchmark_parser, write_dump
from convrec_dagster.data import ingest as ingest_data
from convrec_dagster.data import rawdata

MIN_TS, MAX_TS = 0, 2_000_000_000
COUNTS = {
    # what publish_reviews ran until stop 22 (it no longer counts the pairs: `interactions` does)
    "distinct_each": "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*), min(ts), max(ts), "
    "count(ts), count(DISTINCT (user_id, item_id)) FROM reviews",
    # group the pairs first, then count users and items over the pair groups
    "pairs_first": "SELECT count(DISTINCT user_id), count(DISTINCT item_id), coalesce(sum(n), 0)::BIGINT, "
    "min(lo), max(hi), coalesce(sum(c), 0)::BIGINT, count(*) FROM (SELECT user_id, item_id, count(*) AS n, "
    "min(ts) AS lo, max(ts) AS hi, count(ts) AS c FROM reviews GROUP BY ALL)",
    # what publish_reviews runs
    "without_pairs": "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*), min(ts), max(ts), "
    "count(ts) FROM reviews",
}


class Steps:
    def __init__(self, conn: duckdb.DuckDBPyConnection):
        self.conn, self.times = conn, {}

    def run(self, name: str, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self.times[name] = {
            "wall_s": round(time.perf_counter() - t0, 3),
            "cpu_s": round(time.process_time() - c0, 3),
        }
        return out

    def sql(self, name: str, query: str):
        return self.run(name, lambda: self.conn.execute(query).fetchall())


def copy_route(conn, ff: rawdata.FileFormat, s: Steps) -> None:
    rawdata.create_staging(conn)
    s.run("parse_and_stage", lambda: rawdata.load_reviews(conn, ff, 0, MIN_TS, MAX_TS))
    conn.execute("BEGIN")
    s.run("publish_copy_and_counts", lambda: ingest_data.publish_reviews(conn))
    s.sql("commit", "COMMIT")


def rename_route(conn, ff: rawdata.FileFormat, s: Steps) -> None:
    rawdata.create_staging(conn)
    name, table = ff.path.name, "_stage_reviews_p0"
    sql = rawdata._parse_reviews_sql(
        rawdata._fast_source(ff.path, ff.compression, ff.max_line_bytes), ff.format, MIN_TS, MAX_TS, False
    ).replace(
        "CREATE OR REPLACE TEMP TABLE _parsed AS",
        f"CREATE TABLE {table} AS SELECT trim(user_id) AS user_id, trim(item_id) AS item_id, rating, ts, "
        f"CAST(line_no AS BIGINT) AS seq_no, {rawdata._sql_str(name)} AS source_file, CAST(line_no AS BIGINT) "
        f"AS line_no, {rawdata._sql_str(ff.format)} AS source_format, blank, reason, raw FROM (",
    )
    with rawdata.memory_cap(conn):
        s.sql("parse_into_main_db", sql + ")")
    s.sql("counts_of_lines", f"SELECT blank, reason, count(*), max(line_no) FROM {table} GROUP BY ALL")
    s.sql(
        "quarantine",
        f"INSERT INTO _stage_quarantine SELECT {rawdata._sql_str(name)}, line_no, reason, raw FROM {table} "
        "WHERE reason IS NOT NULL ORDER BY line_no",
    )
    s.sql("delete_unusable", f"DELETE FROM {table} WHERE blank OR reason IS NOT NULL")
    s.sql(
        "drop_columns", ";".join(f"ALTER TABLE {table} DROP COLUMN {c}" for c in ("raw", "reason", "blank"))
    )
    conn.execute("BEGIN")
    s.sql("rename", f"DROP TABLE IF EXISTS reviews; ALTER TABLE {table} RENAME TO reviews")
    s.sql("counts", COUNTS["distinct_each"])
    s.sql("commit", "COMMIT")


def one_run(ff, route: str, db: Path, memory_limit: str, threads: int, spill: Path) -> dict:
    for p in (db, Path(f"{db}.wal")):
        p.unlink(missing_ok=True)
    conn = duckdb.connect(
        str(db), config={"threads": threads, "memory_limit": memory_limit, "temp_directory": str(spill)}
    )
    load = [round(x, 2) for x in os.getloadavg()]
    s = Steps(conn)
    t0, c0 = time.perf_counter(), time.process_time()
    (copy_route if route == "copy" else rename_route)(conn, ff, s)
    total = {"wall_s": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)}
    columns = [tuple(r[:2]) for r in conn.execute("DESCRIBE reviews").fetchall()]
    content = conn.execute(
        "SELECT count(*), bit_xor(hash(user_id, item_id, rating, ts, seq_no, source_file, line_no, "
        "source_format)) FROM reviews"
    ).fetchall()[0]
    quarantine = conn.execute(
        "SELECT count(*), bit_xor(hash(line_no, reason, raw)) FROM _stage_quarantine"
    ).fetchall()[0]
    counts = {}
    for variant, query in COUNTS.items():
        s.sql(f"counts_{variant}", query)
        counts[variant] = list(conn.execute(query).fetchall()[0])
    conn.execute("SET threads = 1")
    s.sql("counts_distinct_each_threads1", COUNTS["distinct_each"])
    conn.close()
    return {
        "route": route,
        "total": total,
        "steps": s.times,
        "rows_hash": [int(x) for x in content],
        "quarantine_hash": [int(x or 0) for x in quarantine],
        "columns": columns,
        "counts": counts,
        "load_average_at_start": load,
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import machine_info, write_json

    parser = dump_benchmark_parser(
        "python -m benchmarks.ingest_publish_steps",
        __doc__,
        2_000_000,
        "benchmarks/results/ingest_publish_steps.json",
    )
    args = parser.parse_args(argv)
    before = machine_info()
    work = Path(tempfile.mkdtemp(prefix="ingest_steps_", dir=args.workdir))
    runs = []
    try:
        (work / "raw").mkdir()
        dump = write_dump(work / "raw" / "reviews_Scale_2018.json.gz", args.lines)
        ff = rawdata.sniff(work / "raw" / "reviews_Scale_2018.json.gz")
        for rep in range(args.repeats):
            for route in ("copy", "rename"):
                run = one_run(
                    ff, route, work / f"{route}.duckdb", args.memory_limit, args.threads, work / "spill"
                )
                run["repeat"] = rep
                runs.append(run)
                print(f"{route} #{rep}: {run['total']} load {run['load_average_at_start']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "benchmark": "ingest_publish_steps",
        "dump": {**dump, "format": "amazon2018_reviews, one gzip file"},
        "memory_limit": args.memory_limit,
        "duckdb_threads": args.threads,
        "same_rows_and_columns_in_every_run": len(
            {(tuple(r["rows_hash"]), tuple(r["quarantine_hash"]), tuple(r["columns"])) for r in runs}
        )
        == 1,
        "runs": runs,
        "machine_before": before,
        "machine_after": machine_info(),
    }
    write_json(results, args.out)
    print(json.dumps({r["route"]: r["total"] for r in runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
