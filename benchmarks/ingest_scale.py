"""Ingest at scale in bounded memory: a large 2018-format review dump through the real assets.

    python -m benchmarks.ingest --scale 20000000 --memory-limit 1GB --out benchmarks/results/ingest_scale.json

(``benchmarks/ingest.py`` hands ``--scale`` here.) Generates one gzipped Amazon-2018 review file
(``reviewerID``/``asin``/``overall``/``unixReviewTime``/``verified``/``vote``/``style`` ..., 440
bytes a line, built as a byte matrix; users and items drawn uniformly, so most pass the 5-core filter), then materializes
``reviews`` (the ingest), ``interactions`` (dedupe + 5-core), ``sequences`` (the splits) and
``eval_negatives`` through Dagster with the real resources, DuckDB bounded by ``memory_limit``,
``threads`` and a ``temp_directory`` to spill to; the ingest runs a second time with DuckDB
``threads=1`` (``reviews_threads1``) to show what the second thread buys. Each stage runs in a fresh
process: its peak RSS
is the kernel's high-water mark of that process (interpreter and Dagster
included; read from ``VmHWM`` in that process at its end), and the parent samples its RSS every
0.5 s for the plot. Targets: the ingest's peak RSS
under 2 GB with ``memory_limit=1GB``, and >= 300,000 lines/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from benchmarks.common import run_with_rss_trace

STAGES = ("reviews", "reviews_threads1", "interactions", "sequences", "eval_negatives")
TARGET_RSS_BYTES = 2 * 1024**3
TARGET_LINES_PER_S = 300_000
WORDS = (
    "great works nice smell value price love broke returning gentle daily fresh skin hair "
    "soft bottle pump smaller bigger expected quality would buy again recommend"
).split()


def _texts(rng: np.random.Generator, count: int, width: int) -> np.ndarray:
    """``count`` word salads of exactly ``width`` bytes (uint8 rows)."""
    out = np.empty((count, width), np.uint8)
    for k in range(count):
        words = " ".join(WORDS[w] for w in rng.integers(0, len(WORDS), width // 3))
        out[k] = np.frombuffer((words + " " * width)[:width].encode(), np.uint8)
    return out


_FIELDS = {"R": 1, "M": 2, "D": 2, "Y": 4, "U": 13, "I": 9, "N": 3, "T": 10, "V": 2}
TEXT_WIDTH, SUMMARY_WIDTH = 180, 24
TEMPLATE = (
    '{"overall": R.0, "verified": true, "reviewTime": "MM DD, YYYY", "reviewerID": "AUUUUUUUUUUUUU", '
    '"asin": "BIIIIIIIII", "style": {"Format:": " Paperback"}, "reviewerName": "Reviewer NNN", '
    '"reviewText": "' + "x" * TEXT_WIDTH + '", "summary": "' + "s" * SUMMARY_WIDTH + '", '
    '"unixReviewTime": TTTTTTTTTT, "vote": "VV"}\n'
)


def review_block_2018(
    rng: np.random.Generator, m: int, n_users: int, n_items: int, texts: np.ndarray, summaries: np.ndarray
) -> bytes:
    """``m`` Amazon-2018 review lines of one fixed width, built as a byte matrix (fast: no Python
    string per line). Fields vary per line: ids, rating, date, text, summary, vote."""
    ts = rng.integers(1_000_080_000, 1_538_352_000, m) // 86_400 * 86_400  # 2001-09 .. 2018-10: 10 digits
    dates = np.datetime64("1970-01-01") + (ts // 86_400).astype("timedelta64[D]")
    users = rng.integers(0, n_users, m)
    values = {
        "R": rng.integers(1, 6, m),
        "Y": dates.astype("datetime64[Y]").astype(np.int64) + 1970,
        "M": dates.astype("datetime64[M]").astype(np.int64) % 12 + 1,
        "D": (dates - dates.astype("datetime64[M]")).astype(np.int64) + 1,
        "U": users,
        "I": rng.integers(0, n_items, m),
        "N": users % 997,
        "T": ts,
        "V": rng.integers(0, 30, m),
    }
    template = TEMPLATE.encode()
    out = np.empty((m, len(template)), np.uint8)
    out[:] = np.frombuffer(template, np.uint8)
    for key, width in _FIELDS.items():
        at = template.index(key.encode() * width)
        powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        out[:, at : at + width] = (values[key][:, None] // powers % 10 + 48).astype(np.uint8)
    at = template.index(b"x" * TEXT_WIDTH)
    out[:, at : at + TEXT_WIDTH] = texts[rng.integers(0, len(texts), m)]
    at = template.index(b"s" * SUMMARY_WIDTH)
    out[:, at : at + SUMMARY_WIDTH] = summaries[rng.integers(0, len(summaries), m)]
    return out.tobytes()


def dump_benchmark_parser(prog: str, doc: str, lines: int, out: str) -> argparse.ArgumentParser:
    """The options the same-dump ingest benchmarks share: dump size, repeats, DuckDB limits, folders."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=lines)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def write_dump(path: Path, n: int, seed: int = 0) -> dict:
    """The gzipped dump (level 1); users n/8 and items n/20, so a user has ~8 reviews on average."""
    n_users, n_items = max(10, n // 8), max(10, n // 20)
    rng = np.random.default_rng(seed)
    texts, summaries = _texts(rng, 512, TEXT_WIDTH), _texts(rng, 64, SUMMARY_WIDTH)
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    raw = 0
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for start in range(0, n, 200_000):
            block = review_block_2018(rng, min(200_000, n - start), n_users, n_items, texts, summaries)
            raw += len(block)
            fh.write(comp.compress(block))
        fh.write(comp.flush())
    return {
        "lines": n,
        "users_drawn_from": n_users,
        "items_drawn_from": n_items,
        "bytes_raw": raw,
        "bytes_gz": path.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 1),
    }


# --------------------------------------------------------------------------- one stage, in a child


def _vm_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _is_image(value: object) -> bool:
    """A markdown image with the PNG inline (the interactions' history plot): not kept in the JSON."""
    return isinstance(value, str) and value.startswith("![") and "data:image" in value


def run_stage(stage: str, home: Path, raw_dir: Path, memory_limit: str, threads: int, result: Path) -> None:
    """Materialize one asset with bounded DuckDB; write its metadata and time to ``result``."""
    import dagster as dg

    from assets import ingest, splits
    from convrec_dagster.data import settings
    from convrec_dagster.resources import ConvRecDuckDB, build_resources

    resources = build_resources(home=home, raw_dir=raw_dir, device="cpu")
    resources["duckdb"] = ConvRecDuckDB(
        database=str(settings.duckdb_path(home)),
        memory_limit=memory_limit,
        threads=1 if stage == "reviews_threads1" else threads,
        temp_directory=str(home / "duckdb_tmp"),
    )
    asset = {
        "reviews": ingest.reviews,
        "reviews_threads1": ingest.reviews,
        "interactions": ingest.interactions,
        "sequences": splits.sequences,
        "eval_negatives": splits.eval_negatives,
    }[stage]
    rss_before_kb = _vm_kb("VmHWM")
    instance = dg.DagsterInstance.ephemeral()
    t0 = time.perf_counter()
    out = dg.materialize([asset], resources=resources, instance=instance, raise_on_error=False)
    seconds = time.perf_counter() - t0
    meta = out.asset_materializations_for_node(asset.key.path[-1])[0].metadata if out.success else {}
    keep = {
        k: v.value
        for k, v in meta.items()
        if isinstance(getattr(v, "value", None), (int, float, str, bool)) and not _is_image(v.value)
    }
    logs = [e.user_message for e in instance.all_logs(out.run_id) if e.user_message]
    file_rates = [m for m in logs if "lines/s" in m]  # the reviews asset's per-file line (load_reviews only)
    result.write_text(
        json.dumps(
            {
                "success": out.success,
                "seconds": round(seconds, 2),
                "peak_rss_after_imports_mb": round(rss_before_kb / 1024, 1),
                # this process's own high-water mark (exec gave it a fresh address space; wait4's ru_maxrss
                # would also count the parent's RSS at fork time)
                "peak_rss_mb": round(_vm_kb("VmHWM") / 1024, 1),
                "metadata": keep,
                "file_log": file_rates,
                "error": None if out.success else next((m for m in reversed(logs) if "rror" in m), "failed"),
            }
        )
    )


def _measure(stage: str, home: Path, raw_dir: Path, memory_limit: str, threads: int) -> dict:
    """Run ``stage`` in a fresh process; its result plus the kernel's peak RSS and an RSS trace."""
    result = home / f"_{stage}.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.ingest_scale",
        "--stage",
        stage,
        "--home",
        str(home),
        "--raw",
        str(raw_dir),
        "--memory-limit",
        memory_limit,
        "--threads",
        str(threads),
        "--result",
        str(result),
    ]
    load_start = [round(x, 2) for x in os.getloadavg()]
    with open(home / f"_{stage}.log", "wb") as log:
        exit_code, trace, wall_s = run_with_rss_trace(cmd, stdout=log, stderr=subprocess.STDOUT)
    out = (
        json.loads(result.read_text())
        if result.exists()
        else {
            "success": False,
            "peak_rss_mb": max((y for _, y in trace), default=0.0),
            "error": (home / f"_{stage}.log").read_text(errors="replace")[-2000:],
        }
    )
    out.update(
        {
            "exit_code": exit_code,
            "wall_s": wall_s,
            "load_average_1_5_15_at_start": load_start,
            "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
            "peak_rss_sampled_mb": max((y for _, y in trace), default=0.0),
            "rss_trace_mb": trace,
        }
    )
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100)
    offset = 0.0
    for stage in STAGES:
        run = results["stages"].get(stage)
        if not run or not run.get("rss_trace_mb"):
            continue
        t = [offset + x for x, _ in run["rss_trace_mb"]]
        left.plot(
            t, [y for _, y in run["rss_trace_mb"]], label=f"{stage} (peak {run['peak_rss_mb']:,.0f} MB)"
        )
        offset = t[-1] + 1
    left.axhline(TARGET_RSS_BYTES / 2**20, color="grey", linestyle="--", linewidth=1, label="target 2 GB")
    left.set_xlabel("seconds (stages one after the other, each a fresh process)")
    left.set_ylabel("RSS (MB)")
    left.set_title(
        f"{results['dump']['lines']:,} lines, DuckDB memory_limit {results['memory_limit']}", fontsize=9
    )
    left.legend(fontsize=7)
    names = [s for s in STAGES if s in results["stages"]]
    secs = [results["stages"][s]["wall_s"] for s in names]
    bars = right.bar(names, secs, color="#4c72b0")
    for b, s in zip(bars, secs):
        right.text(b.get_x() + b.get_width() / 2, s, f"{s:.0f} s", ha="center", va="bottom", fontsize=8)
    rates = [
        f"{results[k]['lines_per_s']:,.0f} ({label})"
        for k, label in (("ingest", f"{results['duckdb_threads']} threads"), ("ingest_threads1", "1 thread"))
        if "lines_per_s" in results.get(k, {})
    ]
    right.set_title(
        f"wall time per stage\ningest {' / '.join(rates)} lines/s (target {TARGET_LINES_PER_S:,})", fontsize=9
    )
    right.set_ylabel("seconds")
    right.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scale_main(
    lines: int, memory_limit: str, threads: int, out: Path, workdir: Path | None, keep: bool = False
) -> int:
    """Generate ``lines`` review lines, run the stages one by one, write JSON + PNG to ``out``."""
    from benchmarks.common import machine_info, write_json

    before = machine_info()
    work = Path(tempfile.mkdtemp(prefix="ingest_scale_", dir=workdir))
    try:
        raw_dir, home = work / "dump", work / "home"
        raw_dir.mkdir()
        home.mkdir()
        dump = write_dump(raw_dir / "reviews_Scale_2018.json.gz", lines)
        print(
            f"generated {lines:,} lines in {dump['seconds']} s ({dump['bytes_gz'] / 2**30:.2f} GiB gz, "
            f"{dump['bytes_raw'] / 2**30:.2f} GiB raw)",
            flush=True,
        )
        stages = {}
        for stage in STAGES:
            stages[stage] = run = _measure(stage, home, raw_dir, memory_limit, threads)
            print(
                f"{stage}: {'ok' if run.get('success') else 'FAILED'} in {run['wall_s']} s, peak RSS "
                f"{run['peak_rss_mb']:,.0f} MB",
                flush=True,
            )
            if not run.get("success"):
                break
        db_bytes = settings_db_bytes(home)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    def ingest_summary(stage: str) -> dict:
        run = stages.get(stage, {})
        rate = float(run.get("metadata", {}).get("lines_per_second", 0.0))
        peak = run.get("peak_rss_mb") or 0.0
        return {
            "lines_per_s": rate,
            "peak_rss_mb": peak,
            "reader": run.get("file_log"),
            # "duckdb" (the fast path) or "python" (the exact line reader) per file, from the log
            "parsers": [m.rsplit(", ", 1)[-1].rstrip(")") for m in run.get("file_log") or []],
            "meets_rss_target": 0 < peak * 2**20 < TARGET_RSS_BYTES,
            "meets_rate_target": rate >= TARGET_LINES_PER_S,
        }

    results = {
        "benchmark": "ingest_scale",
        "memory_limit": memory_limit,
        "duckdb_threads": threads,
        "dump": {**dump, "format": "amazon2018_reviews, one gzip file"},
        "targets": {
            "ingest_peak_rss_mb_below": TARGET_RSS_BYTES / 2**20,
            "ingest_lines_per_s_at_least": TARGET_LINES_PER_S,
        },
        "ingest": ingest_summary("reviews"),
        "ingest_threads1": ingest_summary("reviews_threads1"),
        "stages": stages,
        "duckdb_file_bytes": db_bytes,
        "machine_before": before,
        "machine_after": machine_info(),
        "note": (
            "one run; the load averages before and after say whether other work shared the machine; "
            "each stage a fresh process; peak RSS = VmHWM (kernel high-water mark) of that process at its end"
        ),
    }
    write_json(results, out)
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def settings_db_bytes(home: Path) -> int | None:
    from convrec_dagster.data import settings

    path = settings.duckdb_path(home)
    return path.stat().st_size if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--stage", choices=STAGES, required=True, help="(internal) run one stage in this process"
    )
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    run_stage(args.stage, args.home, args.raw, args.memory_limit, args.threads, args.result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
