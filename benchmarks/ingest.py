"""Ingestion throughput: strict-JSON review lines/s and Python-literal metadata lines/s.

    python -m benchmarks.ingest --reviews 1000000 --out benchmarks/results/ingest.json

Writes a generated Amazon-2014-format dump (gzip) to a temporary folder, then times the same
helpers the `reviews` / `items` assets use (``convrec_dagster.data.rawdata``) on a DuckDB database:

- ``reviews_fast``: a clean strict-JSON review file (DuckDB's reader + JSON functions);
- ``reviews_fallback``: the same file with one malformed line, which sends it down the exact
  Python line reader (then the same SQL) -- what a damaged file costs;
- ``meta_literal``: Python-literal metadata lines (``ast.literal_eval``);
- ``reviews_long_lines``: a review file with a few 5 MB lines (``--long-line-mb``) among normal ones,
  read with the default ``max_line_bytes`` (1 MB): peak RSS above the baseline (kernel high-water
  mark, ``benchmarks.common.PeakRSS``), also for 10x longer lines, and once with the bound lifted
  (``max_line_bytes`` = 256 MB, lines parsed whole) for comparison.

The JSON result holds machine info (platform, CPUs, load average, torch/duckdb versions, date);
a bar plot goes next to it (same name, ``.png``). Target: >= 200,000 review lines/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from pathlib import Path

import duckdb
import numpy as np

from benchmarks.common import machine_info
from convrec_dagster.data import rawdata

WORDS = (
    "great works nice smell value price love broke returning gentle daily fresh skin hair "
    "soft bottle pump smaller bigger expected quality would buy again recommend"
).split()


def _gzip_write(path: Path, lines, level: int = 1) -> int:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    n = 0
    with open(path, "wb") as fh:
        buf = []
        for line in lines:
            buf.append(line)
            n += 1
            if len(buf) >= 50_000:
                fh.write(comp.compress(("\n".join(buf) + "\n").encode()))
                buf = []
        if buf:
            fh.write(comp.compress(("\n".join(buf) + "\n").encode()))
        fh.write(comp.flush())
    return n


def review_lines(n: int, n_users: int, n_items: int, seed: int = 0, broken_at: int | None = None):
    """Realistic 2014 review lines (about 330 bytes each), fast."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, size=n)
    items = rng.integers(0, n_items, size=n)
    ts = rng.integers(1_000_000_000, 1_405_000_000, size=n) // 86_400 * 86_400
    ratings = rng.integers(1, 6, size=n)
    words = rng.integers(0, len(WORDS), size=(n, 12))
    for k in range(n):
        text = " ".join(WORDS[w] for w in words[k])
        line = (
            f'{{"reviewerID": "A{users[k]:013d}", "asin": "B{items[k]:09d}", "reviewerName": "Reviewer '
            f'{users[k] % 997}", "helpful": [0, {k % 5}], "reviewText": "{text}. {text}", "overall": '
            f'{ratings[k]}.0, "summary": "{WORDS[words[k][0]]} {WORDS[words[k][1]]}", "unixReviewTime": '
            f'{ts[k]}, "reviewTime": "01 1, 2013"}}'
        )
        yield line[: len(line) // 2] if k == broken_at else line


def meta_lines(n: int, seed: int = 1):
    """2014 metadata lines as Python literals (single quotes)."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        yield str(
            {
                "asin": f"B{k:09d}",
                "title": f"Product {k} {WORDS[k % len(WORDS)]}",
                "price": round(float(rng.uniform(1, 80)), 2),
                "imUrl": f"http://ecx.images-amazon.com/images/I/{k:010d}.jpg",
                "related": {"also_bought": [f"B{(k + j) % n:09d}" for j in range(1, 6)]},
                "salesRank": {"Beauty": int(k * 3 + 1)},
                "brand": f"Brand {k % 300}",
                "categories": [["Beauty", "Hair Care", "Shampoo"], ["Beauty", "Skin"]],
            }
        )


def _long_line_case(path: str, bound: int, queue) -> None:
    """One long-line case in a fresh process (DuckDB keeps its buffers, so cases must not share one)."""
    from benchmarks.common import PeakRSS

    conn = duckdb.connect(str(Path(path).with_suffix(".duckdb")))
    rawdata.create_staging(conn)
    peak = PeakRSS().start()
    t0 = time.perf_counter()
    ff = rawdata.sniff(Path(path), bound)
    stats = rawdata.load_reviews(conn, ff, 0, 0, 2_000_000_000)
    secs = time.perf_counter() - t0
    rss = peak.stop()
    queue.put(
        {
            "lines": stats.lines,
            "kept": stats.kept,
            "quarantined_by_reason": dict(stats.quarantined),
            "parser": stats.parser,
            "seconds": round(secs, 3),
            "baseline_rss_mb": round(peak.baseline / 1e6, 1),
            "peak_rss_above_baseline_mb": round(rss / 1e6, 1),
            "rss_method": peak.method,
        }
    )


def _write_long_line_file(path: Path, n_normal: int, n_long: int, long_mb: float) -> None:
    """Normal review lines with ``n_long`` review lines of ``long_mb`` MB spread among them (the
    long text is written in 1 MB pieces, so no huge string is built here)."""
    every = max(1, n_normal // n_long)
    piece = "x" * (1 << 20)
    with open(path, "w") as fh:
        for k, line in enumerate(
            review_lines(n_normal, max(10, n_normal // 8), max(10, n_normal // 20), seed=3)
        ):
            fh.write(line + "\n")
            if k % every == 0 and k // every < n_long:
                fh.write(
                    f'{{"reviewerID": "L{k}", "asin": "B000000001", "overall": 5.0, '
                    f'"unixReviewTime": 1300000000, "reviewText": "'
                )
                left = int(long_mb * 1e6)
                while left > 0:
                    fh.write(piece[: min(left, len(piece))])
                    left -= len(piece)
                fh.write('"}\n')


def long_line_runs(work: Path, n_normal: int, n_long: int, long_mb: float) -> dict:
    """Peak RSS while sniffing and loading a review file with ``n_long`` lines of ``long_mb`` MB
    among ``n_normal`` normal ones, then with 10x longer lines, then one 1.5 GB line, each with the
    default ``max_line_bytes``; and the first file with the bound lifted. Each case in a fresh process."""
    import multiprocessing as mp

    out = {}
    cases = [
        ("bounded", n_long, long_mb, rawdata.DEFAULT_MAX_LINE_BYTES),
        ("bounded_10x_longer", n_long, long_mb * 10, rawdata.DEFAULT_MAX_LINE_BYTES),
        ("bounded_one_1500mb_line", 1, 1500.0, rawdata.DEFAULT_MAX_LINE_BYTES),
        ("unbounded", n_long, long_mb, 256 << 20),
    ]
    for name, count, mb, bound in cases:
        path = work / f"reviews_Long_{name}.json"
        _write_long_line_file(path, n_normal, count, mb)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_long_line_case, args=(str(path), bound, queue))
        proc.start()
        result = queue.get()
        proc.join()
        out[name] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "long_lines": count,
            "long_line_mb": mb,
            "normal_lines": n_normal,
            "max_line_bytes": bound,
            **result,
        }
        print(
            f"long lines {name}: {count} x {mb:g} MB lines, bound {bound:,} B: peak RSS "
            f"+{result['peak_rss_above_baseline_mb']:,.1f} MB, {result['kept']:,} kept, quarantined "
            f"{result['quarantined_by_reason']} ({result['parser']}, {result['seconds']:.2f} s)"
        )
        path.unlink()
        Path(path).with_suffix(".duckdb").unlink(missing_ok=True)
    return out


def _time_load(fn, *args) -> tuple[rawdata.FileStats, float]:
    t0 = time.perf_counter()
    stats = fn(*args)
    return stats, time.perf_counter() - t0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["runs"])
    rates = [results["runs"][n]["lines_per_s"] for n in names]
    long_lines = results.get("long_lines") or {}
    fig, axes = plt.subplots(
        1, 2 if long_lines else 1, figsize=(11 if long_lines else 6, 3), dpi=100, squeeze=False
    )
    ax = axes[0][0]
    if long_lines:
        lax = axes[0][1]
        labels = [
            f"{v['long_lines']} x {v['long_line_mb']:g} MB\n"
            + ("1 MB bound" if v["max_line_bytes"] <= 1 << 20 else "no bound")
            for v in long_lines.values()
        ]
        peaks = [v["peak_rss_above_baseline_mb"] for v in long_lines.values()]
        lbars = lax.bar(labels, peaks, color="#8172b2")
        for b, r in zip(lbars, peaks):
            lax.text(b.get_x() + b.get_width() / 2, r, f"{r:,.0f}", ha="center", va="bottom", fontsize=8)
        lax.set_ylabel("peak RSS above baseline (MB)")
        lax.set_title("a review file with huge lines", fontsize=9)
        lax.tick_params(axis="x", labelsize=7)
    bars = ax.bar(names, rates, color=["#4c72b0", "#dd8452", "#55a868"][: len(names)])
    ax.axhline(200_000, color="grey", linestyle="--", linewidth=1, label="target 200k lines/s")
    for b, r in zip(bars, rates):
        ax.text(b.get_x() + b.get_width() / 2, r, f"{r:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("lines / s")
    ax.set_title(f"ingest throughput ({results['machine']['cpu_count']} CPUs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reviews", type=int, default=1_000_000, help="review lines to generate (default 1,000,000)"
    )
    parser.add_argument("--meta", type=int, default=0, help="metadata lines (default: reviews / 10)")
    parser.add_argument(
        "--fallback-reviews",
        type=int,
        default=0,
        help="review lines for the Python fallback run (default: reviews / 5)",
    )
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads (default: all CPUs)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/ingest.json, ingest_scale.json with --scale)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the dump goes (default: a temp dir)"
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=0,
        metavar="LINES",
        help="instead: a 2018-format dump of LINES review lines through reviews, interactions, "
        "sequences and eval_negatives with bounded DuckDB memory (benchmarks.ingest_scale)",
    )
    parser.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit for --scale (default 1GB)")
    parser.add_argument(
        "--long-lines", type=int, default=4, help="huge lines in the long-line case (0: skip it)"
    )
    parser.add_argument(
        "--long-line-mb", type=float, default=5.0, help="size of each huge line in MB (default 5)"
    )
    args = parser.parse_args(argv)
    if args.scale:
        from benchmarks.ingest_scale import scale_main

        return scale_main(
            args.scale,
            args.memory_limit,
            args.threads or 2,
            args.out or Path("benchmarks/results/ingest_scale.json"),
            args.workdir,
        )
    args.out = args.out or Path("benchmarks/results/ingest.json")
    n_meta = args.meta or max(1, args.reviews // 10)
    n_fallback = args.fallback_reviews or max(1, args.reviews // 5)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        n_users, n_items = max(10, args.reviews // 8), max(10, args.reviews // 20)
        _gzip_write(work / "reviews_Bench.json.gz", review_lines(args.reviews, n_users, n_items))
        _gzip_write(
            work / "reviews_Broken.json.gz",
            review_lines(n_fallback, n_users, n_items, seed=2, broken_at=n_fallback // 2),
        )
        _gzip_write(work / "meta_Bench.json.gz", meta_lines(n_meta))
        gen_s = time.perf_counter() - t0
        print(f"generated in {gen_s:.1f} s: {args.reviews:,} + {n_fallback:,} reviews, {n_meta:,} meta lines")

        conn = duckdb.connect(str(work / "bench.duckdb"))
        if args.threads:
            conn.execute(f"SET threads = {int(args.threads)}")
        threads = conn.execute("SELECT current_setting('threads')").fetchall()[0][0]
        rawdata.create_staging(conn)
        runs = {}
        for name, file, kind in [
            ("reviews_fast", "reviews_Bench.json.gz", "reviews"),
            ("reviews_fallback", "reviews_Broken.json.gz", "reviews"),
            ("meta_literal", "meta_Bench.json.gz", "meta"),
        ]:
            path = work / file
            ff = rawdata.sniff(path)
            if kind == "reviews":
                stats, secs = _time_load(rawdata.load_reviews, conn, ff, 0, 0, 2_000_000_000)
            else:
                stats, secs = _time_load(rawdata.load_meta, conn, ff, 0)
            runs[name] = {
                "file": file,
                "format": ff.format,
                "lines": stats.lines,
                "kept": stats.kept,
                "quarantined": stats.n_quarantined,
                "parser": stats.parser,
                "bytes_gz": path.stat().st_size,
                "seconds": round(secs, 3),
                "lines_per_s": round(stats.lines / secs, 1),
            }
            print(
                f"{name}: {stats.lines:,} lines in {secs:.2f} s = {stats.lines / secs:,.0f} lines/s "
                f"({stats.parser})"
            )
        long_lines = (
            long_line_runs(work, 10_000, args.long_lines, args.long_line_mb) if args.long_lines else {}
        )
        conn.close()

    results = {
        "benchmark": "ingest",
        "target_review_lines_per_s": 200_000,
        "duckdb_threads": threads,
        "generation_seconds": round(gen_s, 1),
        "machine": machine_info("cpu", duckdb=duckdb.__version__),
        "runs": runs,
        "long_lines": long_lines,
        "note": "the machine may be shared with other jobs; see machine.load_average_1_5_15",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
