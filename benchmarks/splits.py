"""Time the splits stage on a generated interactions table of a chosen size (default: Beauty).

    python -m benchmarks.splits --users 52204 --items 57289 --interactions 394908 \
        --out benchmarks/results/splits.json

Generates ``interactions`` in a fresh DuckDB file (every user >= 5 interactions as after the 5-core
filter, heavy-tailed history lengths, Zipf item popularity, random timestamps 2000-2014 in time
order), then times each step: indices + splits + time context (``build_sequences``), negatives,
proxy ids, and ``load_rec_data``. Writes JSON with machine info and a PNG bar plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from benchmarks.common import machine_info
from convrec_dagster.data import splits
from convrec_dagster.data.dataset import load_rec_data

MIN_PER_USER = 5


def generate_interactions(
    conn, n_users: int, n_items: int, n_interactions: int, seed: int, zipf_a: float
) -> None:
    """Write a synthetic ``interactions`` table of exactly ``n_interactions`` rows."""
    if n_interactions < MIN_PER_USER * n_users:
        raise SystemExit(f"--interactions must be >= {MIN_PER_USER} x --users")
    rng = np.random.default_rng(seed)
    extra_weights = rng.pareto(2.0, size=n_users) + 1e-3
    lengths = MIN_PER_USER + rng.multinomial(
        n_interactions - MIN_PER_USER * n_users, extra_weights / extra_weights.sum()
    )
    users = np.repeat(np.arange(n_users), lengths)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf_a
    items = rng.choice(n_items, size=n_interactions, p=popularity / popularity.sum())
    if n_interactions >= n_items:  # every item occurs at least once, as after a k-core filter
        items[rng.choice(n_interactions, size=n_items, replace=False)] = np.arange(n_items)
    items = rng.permutation(n_items)[items]  # popularity unrelated to the id
    ts = rng.integers(946_684_800, 1_406_764_800, size=n_interactions)  # 2000-01-01 .. 2014-07-31
    order = np.lexsort((ts, users))
    users, items, ts = users[order], items[order], ts[order]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    position = np.arange(n_interactions) - np.repeat(starts, lengths)
    table = pa.table(
        {
            "user_id": pa.array([f"U{u:07d}" for u in users.tolist()]),
            "item_id": pa.array([f"B{i:09d}" for i in items.tolist()]),
            "ts": pa.array(ts.astype(np.int64)),
            "rating": pa.array(np.full(n_interactions, 5.0)),
            "position": pa.array(position.astype(np.int32)),
        }
    )
    conn.register("_generated", table)
    conn.execute("CREATE OR REPLACE TABLE interactions AS SELECT * FROM _generated")
    conn.unregister("_generated")


def plot(timings: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    names = list(timings)
    ax.barh(names, [timings[n] for n in names], color="#4C72B0")
    for y, n in enumerate(names):
        ax.text(timings[n], y, f" {timings[n]:.2f} s", va="center")
    ax.invert_yaxis()
    ax.set_xlim(0, max(timings.values()) * 1.25)
    ax.set_xlabel("seconds")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=52_204)
    parser.add_argument("--items", type=int, default=57_289)
    parser.add_argument("--interactions", type=int, default=394_908)
    parser.add_argument("--n-negatives", type=int, default=100)
    parser.add_argument("--proxy-fraction", type=float, default=0.1)
    parser.add_argument("--zipf", type=float, default=0.9, help="exponent of item popularity")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (the target is 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/splits.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        conn = duckdb.connect(str(Path(tmp) / "bench.duckdb"))
        conn.execute(f"SET threads = {args.threads}")
        t0 = time.perf_counter()
        generate_interactions(conn, args.users, args.items, args.interactions, args.seed, args.zipf)
        generate_s = time.perf_counter() - t0

        timings = {}
        t0 = time.perf_counter()
        seq = splits.build_sequences(conn)
        timings["indices + splits + time context"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        neg = splits.build_eval_negatives(conn, n_negatives=args.n_negatives, seed=args.seed)
        timings["eval negatives"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        proxy = splits.build_proxy_ids(conn, top_fraction=args.proxy_fraction)
        timings["proxy ids"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        checks = {
            f.__name__: f(conn).passed
            for f in (splits.check_no_leakage, splits.check_split_sizes, splits.check_negatives_disjoint)
        }
        checks["check_negative_counts"] = splits.check_negative_counts(conn, args.n_negatives).passed
        checks["check_proxy_counts"] = splits.check_proxy_counts(conn).passed
        timings["asset checks"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = load_rec_data(conn, "none")
        timings["load_rec_data"] = time.perf_counter() - t0
        conn.close()

    splits_and_negatives = sum(
        timings[k] for k in ("indices + splits + time context", "eval negatives", "proxy ids")
    )
    result = {
        "benchmark": "splits",
        "machine": machine_info(
            "cpu",
            duckdb_threads=args.threads,
            duckdb_version=duckdb.__version__,
            numpy_version=np.__version__,
        ),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "generate_s": round(generate_s, 3),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "splits_and_negatives_s": round(splits_and_negatives, 3),
        "target_s": 30.0,
        "within_target": splits_and_negatives < 30.0,
        "checks_passed": checks,
        "sequences": seq,
        "negatives": neg,
        "proxy": proxy,
        "rec_data_fingerprint": data.info["fingerprint"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plot(
        timings,
        f"splits stage: {args.users:,} users, {args.items:,} items, {args.interactions:,} interactions\n"
        f"DuckDB threads {args.threads}, {os.cpu_count()} CPUs",
        png,
    )
    print(
        json.dumps(
            {"timings_s": result["timings_s"], "splits_and_negatives_s": result["splits_and_negatives_s"]}
        )
    )
    print(f"wrote {args.out} and {png}")
    return result


if __name__ == "__main__":
    main()
