"""Peak memory of the ``eval_negatives`` step at the 20M-line scale, each variant in a fresh process.

    python -m benchmarks.negatives_memory --users 2500000 --items 1000000 --rows 20000000 \
        --variants before=/tmp/old_checkout,one_block:users_per_block=2500000,blocks \
        --out benchmarks/results/negatives_memory.json

Writes a DuckDB file with the three tables the step reads (``sequences``: ``--rows`` uniform
(user, item) pairs; ``user_index``: every user evaluated; ``item_index``), then runs the real
``splits.build_eval_negatives`` on it once per variant, each in a new Python process with DuckDB at
``--memory-limit`` and ``--threads``, and records the kernel's high-water mark of that process's
resident memory (VmHWM), an RSS trace and the time. A variant is ``name[=CODE_ROOT][:key=value...]``:
``CODE_ROOT`` is another checkout whose ``convrec_dagster`` runs (e.g. the commit before a change: a
baseline in the same run), and the keys are keyword arguments of ``build_eval_negatives`` (ints).
Every variant writes the same table when the code draws the same negatives; the JSON records each
table's row count and a checksum so that can be read off. Writes the JSON and a PNG of the traces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO_ROOT,
    RESULTS_DIR,
    HelpFormatter,
    machine_info,
    run_with_rss_trace,
    write_json,
)

CHILD = """
import inspect, json, sys, time
from pathlib import Path
import duckdb
from convrec_dagster.data import splits
db, memory_limit, threads, kwargs = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
def hwm():
    return next(int(l.split()[1]) for l in Path('/proc/self/status').read_text().splitlines()
                if l.startswith('VmHWM:')) / 1024
with duckdb.connect(db) as conn:
    conn.execute(f"SET memory_limit = '{memory_limit}'")
    conn.execute(f"SET threads = {threads}")
    before = hwm()
    unknown = set(kwargs) - set(inspect.signature(splits.build_eval_negatives).parameters)
    if unknown:
        raise SystemExit(f'build_eval_negatives of {splits.__file__} takes no {sorted(unknown)}')
    t0 = time.perf_counter()
    summary = splits.build_eval_negatives(conn, **kwargs)
    seconds = time.perf_counter() - t0
    checksum = conn.execute(
        'SELECT sum(hash(user_idx, neg_no, item_idx)) % 1000000007 FROM eval_negatives').fetchall()[0][0]
print(json.dumps({'summary': summary, 'seconds': round(seconds, 1), 'peak_rss_mb': round(hwm(), 1),
                  'peak_rss_before_call_mb': round(before, 1), 'checksum': int(checksum),
                  'module': splits.__file__}))
"""


def write_tables(db: Path, users: int, items: int, rows: int, seed: int) -> None:
    """The tables ``build_eval_negatives`` reads, synthetic: every user evaluated and in the history."""
    import duckdb

    with duckdb.connect(str(db)) as conn:
        conn.execute(f"SELECT setseed({seed / 2**31})")
        conn.execute(
            f"CREATE TABLE user_index AS SELECT (range + 1)::INTEGER AS user_idx, true AS is_eval FROM range({users})"
        )
        conn.execute(
            f"CREATE TABLE item_index AS SELECT (range + 1)::INTEGER AS item_idx FROM range({items})"
        )
        conn.execute(
            "CREATE TABLE sequences AS SELECT (1 + range % $users)::INTEGER AS user_idx, "
            "(1 + hash(range, $seed) % $items)::INTEGER AS item_idx FROM range($rows) ORDER BY user_idx",
            {"users": users, "items": items, "rows": rows, "seed": seed},
        )


def parse_variant(text: str) -> tuple[str, Path, dict]:
    """``name[=CODE_ROOT][:key=value...]`` -> (name, code root, keyword arguments)."""
    head, *pairs = text.split(":")
    name, _, root = head.partition("=")
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"variant {text!r}: {pair!r} is not key=value")
        kwargs[key] = int(value)
    return name, Path(root).resolve() if root else REPO_ROOT, kwargs


def measure(db: Path, root: Path, kwargs: dict, memory_limit: str, threads: int) -> dict:
    """One run of the step in a fresh process, with an RSS trace sampled every 0.5 s."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-c", CHILD, str(db), memory_limit, str(threads), json.dumps(kwargs)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code, trace, wall = run_with_rss_trace(cmd, stdout=out, stderr=err, env=env, cwd=root)
        out.seek(0)
        err.seek(0)
        if code:
            raise SystemExit(f"variant at {root} failed:\n{err.read().decode(errors='replace')[-3000:]}")
        result = json.loads(out.read().decode().strip().splitlines()[-1])
    return {**result, "wall_s": round(wall, 1), "rss_trace_mb": trace}


def plot(runs: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, run in runs.items():
        t, rss = zip(*run["rss_trace_mb"]) if run["rss_trace_mb"] else ((), ())
        ax.plot(t, rss, label=f"{name} (peak {run['peak_rss_mb']:,.0f} MB, {run['seconds']:.0f} s)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.negatives_memory",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--users", type=int, default=2_500_000, help="evaluated users")
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue size")
    parser.add_argument("--rows", type=int, default=20_000_000, help="history rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic history")
    parser.add_argument(
        "--variants", default="current", help="comma-separated name[=CODE_ROOT][:key=value...]"
    )
    parser.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit, as the ingest runs")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    parser.add_argument("--out", default=str(RESULTS_DIR / "negatives_memory.json"), help="the JSON to write")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "negatives.duckdb"
        t0 = time.perf_counter()
        write_tables(db, args.users, args.items, args.rows, args.seed)
        setup_s = round(time.perf_counter() - t0, 1)
        runs = {}
        for name, root, kwargs in variants:
            runs[name] = {
                "code_root": str(root),
                "kwargs": kwargs,
                **measure(db, root, kwargs, args.memory_limit, args.threads),
            }
            print(f"{name}: peak {runs[name]['peak_rss_mb']:,.0f} MB, {runs[name]['seconds']} s", flush=True)
    result = {
        "benchmark": "negatives_memory",
        "command": "python -m benchmarks.negatives_memory "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "sizes": {"users": args.users, "items": args.items, "rows": args.rows},
        "duckdb": {"memory_limit": args.memory_limit, "threads": args.threads},
        "setup_s": setup_s,
        "runs": runs,
    }
    out = write_json(result, args.out)
    plot(runs, f"eval_negatives: {args.users:,} users, {args.rows:,} history rows", out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
