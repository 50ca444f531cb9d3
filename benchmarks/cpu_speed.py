"""What each CPU speed-up of stop 40 buys on a real catalogue: training steps and validation of the
`cpu` budget's Beauty ConvRec (the features rule), each change switched on in turn.

    python -m benchmarks.cpu_speed --out benchmarks/results/cpu_speed.json

Variants, each in a fresh Python process (so no allocator state carries over), in this order:

- ``before``: the code as it was before stop 40 (the two changes below switched off);
- ``+fused_ce``: the full softmax's label smoothing through ``F.cross_entropy`` (``masked=False``);
- ``+item_table``: evaluation reads one table of every item's vector (``item_table_for_eval``): this is
  the code as it now runs in fp32;
- ``+allocator``: the same with glibc keeping freed memory for large tensors (``mallopt`` of the mmap and
  trim thresholds, ``keep_freed_memory`` below). Measured and **not adopted**: it saves about a tenth of a
  step, but the heap fragments and a training process's peak memory grows epoch after epoch (Video: 9.3 GB
  after two epochs against 2.9 GB, BENCHMARKS.md "Stop 40");
- ``bf16``: the code now under CPU bf16 autocast (a precision choice, not the default; its accuracy is
  measured by a training run, BENCHMARKS.md).

What is timed: ``--steps`` optimizer steps of ``models.train.train_epoch`` (data, forward, loss, backward,
clipping, AdamW, the weight average), the median after ``--warmup`` steps; and one validation
(``models.train.validate`` under ``valid_protocol: full``: the sampled-100 and full-ranking protocols) of
``--valid-users`` users, scaled to all of them. Ratios are against ``before`` in the same run; every
variant trains the same batches from the same seed (the validation figures after the steps show it).
Peak resident memory is the process's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, HelpFormatter, machine_info, write_json
from models.budgets import CPU_CONVREC_WITH_FEATURES

VARIANTS = ("before", "+fused_ce", "+item_table", "+allocator", "bf16")
# the cpu budget's Beauty ConvRec: its rule for item features without a time path (models.budgets) on the
# budget's settings for such data (full softmax, batch 1,024, weight decay .5, L 20 from the data, ...)
RULE = CPU_CONVREC_WITH_FEATURES
HPARAMS = {
    "d": RULE["d"],
    "hidden": RULE["hidden"],
    "dropout": RULE["dropout"],
    "max_len": 20,
    "loss": "full_softmax",
    "features": "auto",
    "emb_init_std": 0.02,
    "residual_pool": "last",
}
TRAIN = {
    "lr": RULE["lr"],
    "label_smoothing": RULE["label_smoothing"],
    "warmup_epochs": RULE["warmup_epochs"],
    "batch_size": 1024,
    "weight_decay": 0.5,
    "scheme": "all_cuts",
    "augment_prob": 0.0,
    "ema_decay": "auto",
    "adam_beta2": 0.98,
    "valid_protocol": "full",
}


def keep_freed_memory() -> bool:
    """The ``+allocator`` variant: raise glibc's mmap threshold (1 GiB) and trim threshold (2 GiB), so that
    freed tensors of tens of MB stay in the heap instead of going back to the kernel; False off glibc."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(-3, 1 << 30)) and bool(mallopt(-1, 1 << 31))  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def _switch_off(variant: str) -> None:
    """Restore the code paths before stop 40 that ``variant`` does not yet include."""
    import models.base as base
    from models.convrec import EncodedSequenceModel

    index = VARIANTS.index(variant)
    if index < VARIANTS.index("+fused_ce"):
        spread = base.softmax_cross_entropy
        base.softmax_cross_entropy = lambda logits, targets, smoothing=0.0, masked=True: spread(
            logits, targets, smoothing, True
        )
    if index < VARIANTS.index("+item_table"):
        EncodedSequenceModel.item_table_for_eval = base.SequentialRecommender.item_table_for_eval


def worker(variant: str, home: Path, steps: int, warmup: int, valid_users: int) -> dict:
    import duckdb
    import torch

    from benchmarks.common import PeakRSS
    from convrec_dagster.data import settings
    from convrec_dagster.data.dataset import load_rec_data
    from models.registry import build_model
    from models.train import (
        TrainConfig,
        epoch_examples,
        make_ema,
        make_optimizer,
        resolved_ema_decay,
        seed_everything,
        step_times,
        validate,
    )

    torch.set_num_threads(1)
    _switch_off(variant)
    allocator = variant == "+allocator" and keep_freed_memory()
    with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
        data = load_rec_data(conn, features="auto")
    config = TrainConfig(**TRAIN)
    rng = seed_everything(config.seed)
    model = build_model("convrec", data, HPARAMS)
    model.label_smoothing = config.label_smoothing
    optimizer, scheduler = make_optimizer(model, data, config)
    ema = make_ema(model, resolved_ema_decay(model, data, config))
    precision = "bf16" if variant == "bf16" else "fp32"
    peak = PeakRSS().start()
    stamps = step_times(
        model, optimizer, data, config, torch.device("cpu"), precision,
        lambda done, _: done >= warmup + steps, rng, scheduler, ema,
    )  # fmt: skip
    step_s = [b - a for a, b in zip(stamps, stamps[1:])]
    users = data.eval_users()
    started = time.perf_counter()
    metrics = validate(ema.module, data, torch.device("cpu"), precision, 256, "full", users[:valid_users])
    valid_s = (time.perf_counter() - started) * len(users) / min(valid_users, len(users))
    steps_per_epoch = math.ceil(epoch_examples(model, data, config) / config.batch_size)
    return {
        "variant": variant,
        "precision": precision,
        "step_s_median": statistics.median(step_s[warmup:]),
        "step_s": [round(s, 4) for s in step_s],
        "steps_per_epoch": steps_per_epoch,
        "validation_s_all_users": valid_s,
        "validation_users": len(users),
        "valid_metrics_after_steps": {k: round(float(v), 5) for k, v in metrics.items()},
        "peak_rss_bytes": peak.stop(),
        "allocator_applied": allocator,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--home", default="/tmp/convrec_cpu_speed_beauty", help="CONVREC_HOME for the prepared Beauty data"
    )
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--valid-users", type=int, default=2048, help="validation users timed (scaled to all)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "cpu_speed.json"))
    parser.add_argument("--plot", default="", help="PNG path (default: --out with .png)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    if args.worker:
        print(json.dumps(worker(args.worker, home, args.steps, args.warmup, args.valid_users)))
        return
    from benchmarks.convergence import DATA_DIRS, prepare

    if not DATA_DIRS["beauty"].exists():
        raise SystemExit(f"the Beauty benchmark files are not at {DATA_DIRS['beauty']}")
    home.mkdir(parents=True, exist_ok=True)
    prepare("beauty", home, DATA_DIRS["beauty"], {"min_count": 1})
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    rows = []
    for variant in variants:
        cmd = [sys.executable, "-m", "benchmarks.cpu_speed", "--worker", variant, "--home", str(home)]
        cmd += [
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--valid-users",
            str(args.valid_users),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(
            f"{variant:12s} step {rows[-1]['step_s_median']:.3f} s, validation {rows[-1]['validation_s_all_users']:.1f} s",
            flush=True,
        )
    base = next((r for r in rows if r["variant"] == "before"), rows[0])
    for row in rows:
        epoch = row["step_s_median"] * row["steps_per_epoch"] + row["validation_s_all_users"]
        base_epoch = base["step_s_median"] * base["steps_per_epoch"] + base["validation_s_all_users"]
        row["epoch_s_estimate"] = round(epoch, 1)
        row["speedup_vs_before"] = {
            "step": round(base["step_s_median"] / row["step_s_median"], 3),
            "validation": round(base["validation_s_all_users"] / row["validation_s_all_users"], 3),
            "epoch": round(base_epoch / epoch, 3),
        }
    out = Path(args.out)
    write_json(
        {
            "benchmark": "cpu_speed",
            "command": "python -m benchmarks.cpu_speed " + " ".join(argv or sys.argv[1:]),
            "machine": machine_info("cpu"),
            "torch_threads_per_variant": 1,
            "hparams": HPARAMS,
            "train_config": TRAIN,
            "baseline": base["variant"],
            "rows": rows,
        },
        out,
    )
    plot(rows, Path(args.plot) if args.plot else out.with_suffix(".png"))
    print(f"wrote {out}")


def plot(rows: list[dict], path: Path) -> None:
    """Estimated seconds per epoch (training steps + validation) per variant, stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    train = [r["step_s_median"] * r["steps_per_epoch"] for r in rows]
    valid = [r["validation_s_all_users"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, train, label="training steps")
    ax.bar(names, valid, bottom=train, label="validation (both protocols)")
    for i, r in enumerate(rows):
        ax.text(i, train[i] + valid[i], f"{r['speedup_vs_before']['epoch']:.2f}x", ha="center", va="bottom")
    ax.set_ylim(0, max(t + v for t, v in zip(train, valid)) * 1.15)
    ax.set_ylabel("seconds per epoch (estimate)")
    ax.set_title("Beauty, cpu budget's ConvRec, 1 thread: each speed-up in turn")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
