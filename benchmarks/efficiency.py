"""Training-step cost of ConvRec versus its attention counterpart, as the sequence length L grows.

    python -m benchmarks.efficiency --device cpu --lengths 50,500 --batch-size 32 \\
        --out benchmarks/results/efficiency_cpu_quick.json

What is timed: one full training step exactly as ``models.train.train_epoch`` runs it -- forward
and loss (``calculate_loss``: softmax over 1 positive + 100 negatives), ``zero_grad``, backward,
gradient clipping, AdamW step -- for ``convrec`` and ``convrec_attention`` (the same item encoder,
a 2-layer Transformer instead of the convolution stack), both built by ``models.registry`` with the
Games preset of the paper (d = 256, dropout .35, lr 1e-4, weight decay .1, L = max_len).

Setting: Games-like synthetic data (``models.synthetic.games_like_data``: 23,715 items, 506
attributes at about 5 per item, time context and intervals present, proxy ids for the top 10 %).
Each row's history is a full L items; candidates are the positive and 100 negatives from the
project's ``NegativeSampler``; batches come from ``models.batching.make_batch`` with 1 %
item-replacement augmentation -- what the trainer feeds the model. Every (length, model) runs in a
fresh Python process (this script with a hidden worker flag), so no allocator cache or peak
carries over; the median over ``--steps`` steps after ``--warmup`` steps is reported, each step on
a different pre-built batch.

Memory: CUDA -- ``torch.cuda.max_memory_allocated`` over the steps (absolute, parameters and
optimizer state included; the part above the pre-step baseline is recorded too). CPU -- peak
resident set size above the baseline taken after building the data, model, optimizer and batches:
the kernel high-water mark ``VmHWM`` reset through ``/proc/self/clear_refs`` (fallback: a 1 ms
``/proc/self/statm`` sampler), see ``benchmarks.common.PeakRSS``.

The authors' reference figures (2 CPU cores, B = 32, issue 8 / docs/CONVREC_SPEC.md §7) are stored
in the JSON and drawn in the plot as *quoted* figures: they were not measured by this script.
On CUDA, steps run under bf16 autocast; an out-of-memory step is reported as "OOM".
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

from benchmarks.common import REPO_ROOT, RESULTS_DIR, HelpFormatter, PeakRSS, machine_info, write_json

MODELS = ("convrec", "convrec_attention")
LABELS = {"convrec": "ConvRec (ours)", "convrec_attention": "attention counterpart (ours)"}
GAMES_PRESET = {
    "d": 256,
    "dropout": 0.35,
    "lr": 1e-4,
    "weight_decay": 0.1,
    "n_layers": 2,
    "n_heads": 2,
    "loss": "softmax",
    "grad_clip": 1.0,
    "augment_prob": 0.01,
}

# Quoted, not measured here: the authors' reference code, 2 CPU cores, torch 2.14.1, B = 32,
# Games-like setting, one training step (issue 8; docs/CONVREC_SPEC.md §7).
REFERENCE = {
    "source": "issue 8 / docs/CONVREC_SPEC.md §7: authors' reference code on 2 CPU cores, torch 2.14.1, "
    "B = 32, Games-like setting, one training step. QUOTED, NOT MEASURED IN THIS RUN.",
    "batch_size": 32,
    "device": "cpu",
    "time_s": {
        "reference_convrec": {50: 0.79, 100: 1.06, 200: 1.44, 500: 3.20, 1000: 5.63},
        "reference_proxyrca": {50: 0.86, 100: 0.98, 200: 1.76, 500: 5.31, 1000: 16.45},
    },
    "peak_memory_mb": {
        "reference_convrec": {50: 352, 1000: 1515},
        "reference_proxyrca": {50: 581, 1000: 4961},
    },
}


# ----------------------------------------------------------------------------- worker (one process)


def run_worker(args: argparse.Namespace) -> dict:
    """Build data, model and batches for one (model, length), time the steps, return a dict."""
    import numpy as np
    import torch

    from models.batching import NegativeSampler, make_batch
    from models.evaluate import autocast
    from models.registry import build_model
    from models.synthetic import games_like_data

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    length, batch_size, n_steps = args.length, args.batch_size, args.warmup + args.steps
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    slack = 16  # every history is a full L items; the target moves within the last `slack` rows
    data = games_like_data(n_users=batch_size, seq_len=length + slack + 2, seed=0, with_time=True)
    data_s = time.perf_counter() - t0

    hparams = {**GAMES_PRESET, "max_len": length}
    model = build_model(args.model, data, hparams).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    t0 = time.perf_counter()
    sampler = NegativeSampler(data)
    users = np.arange(1, batch_size + 1, dtype=np.int64)
    batches = []
    for _ in range(n_steps):
        targets = data.user_ptr[users] + length + rng.integers(0, slack, batch_size)
        cands = np.concatenate([data.items[targets][:, None], sampler.sample(users, 100, rng)], 1)
        batches.append(
            make_batch(data, users, targets, length, cands, rng=rng, augment_prob=hparams["augment_prob"]).to(
                device
            )
        )
    batch_build_s = (time.perf_counter() - t0) / n_steps
    assert int(batches[0].mask.sum(1).min()) == length, "every history must be a full L items"

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(batch) -> float:
        with autocast(device, precision):
            loss = model.calculate_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hparams["grad_clip"])
        optimizer.step()
        return float(loss.detach())

    result = {
        "model": args.model,
        "length": length,
        "batch_size": batch_size,
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "parameters": model.n_parameters(),
        "candidates_per_row": int(batches[0].candidates.shape[1]),
        "distinct_items_per_batch": int(
            torch.unique(torch.cat([batches[0].items.flatten(), batches[0].candidates.flatten()])).numel()
        ),
        "data_build_s": round(data_s, 3),
        "batch_build_s": round(batch_build_s, 4),
    }
    sync()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        result["memory_method"] = (
            "torch.cuda.max_memory_allocated (absolute: parameters, optimizer state, batch, activations)"
        )
    else:
        tracker = PeakRSS().start()
        result["memory_method"] = "CPU peak RSS above baseline: " + tracker.method
        result["rss_baseline_mb"] = round(tracker.baseline / 2**20, 1)

    result.update(run_steps(step, batches, sync, args.warmup))
    if result["status"] != "ok":
        return result
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result["peak_mem_mb"] = round(peak / 2**20, 1)
        result["peak_mem_above_baseline_mb"] = round((peak - baseline) / 2**20, 1)
    else:
        result["peak_mem_mb"] = round(tracker.stop() / 2**20, 1)
    return result


def run_steps(step, batches, sync, warmup: int) -> dict:
    """Time ``step(batch)`` over ``batches``; an out-of-memory step ends the run as ``status: OOM``
    (with the steps done before it) instead of crashing the benchmark."""
    import torch

    times, losses = [], []
    try:
        for batch in batches:
            sync()
            t0 = time.perf_counter()
            losses.append(step(batch))
            sync()
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as exc:  # torch.cuda.OutOfMemoryError is this class
        return {
            "status": "OOM",
            "error": str(exc).splitlines()[0] if str(exc) else "out of memory",
            "steps_done": len(times),
        }
    measured = times[warmup:] or times
    out = {
        "status": "ok",
        "step_s": statistics.median(measured),
        "step_s_all": [round(t, 4) for t in times],
        "step_s_min": min(measured),
        "step_s_max": max(measured),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    if not all(math.isfinite(v) for v in losses):
        out["status"] = "non-finite loss"
    return out


# ----------------------------------------------------------------------------- driver


def spawn(args: argparse.Namespace, model: str, length: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.efficiency",
        "--_worker",
        "--model",
        model,
        "--length",
        str(length),
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--precision",
        args.precision,
    ]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {
            "model": model,
            "length": length,
            "status": "timeout",
            "error": f"worker exceeded --worker-timeout {args.worker_timeout} s",
        }
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
            res["worker_wall_s"] = round(wall, 1)
            return res
    tail = (proc.stderr or proc.stdout)[-1500:]
    status = "OOM" if "out of memory" in tail.lower() or proc.returncode in (-9, 137) else "error"
    return {"model": model, "length": length, "status": status, "returncode": proc.returncode, "error": tail}


def fit_exponent(lengths: list[int], values: list[float]) -> float | None:
    """Slope of log(value) on log(L) by least squares (cost ~ L^slope); None with < 2 points."""
    import numpy as np

    if len(lengths) < 2:
        return None
    return round(float(np.polyfit(np.log(lengths), np.log(values), 1)[0]), 3)


def summarize(runs: list[dict], args: argparse.Namespace) -> dict:
    ok = {(r["model"], r["length"]): r for r in runs if r.get("status") == "ok"}
    lengths = sorted({r["length"] for r in runs})
    per_length = []
    for length in lengths:
        c, a = ok.get(("convrec", length)), ok.get(("convrec_attention", length))
        row = {
            "length": length,
            "convrec_step_s": c and round(c["step_s"], 4),
            "attention_step_s": a and round(a["step_s"], 4),
            "convrec_peak_mb": c and c["peak_mem_mb"],
            "attention_peak_mb": a and a["peak_mem_mb"],
            "attention_status": next(
                (r["status"] for r in runs if r["model"] == "convrec_attention" and r["length"] == length),
                None,
            ),
        }
        if c and a:
            row["time_ratio_attention_over_convrec"] = round(a["step_s"] / c["step_s"], 3)
            if c["peak_mem_mb"] > 0:
                row["memory_ratio_attention_over_convrec"] = round(a["peak_mem_mb"] / c["peak_mem_mb"], 3)
        ref_c = REFERENCE["time_s"]["reference_convrec"].get(length)
        ref_a = REFERENCE["time_s"]["reference_proxyrca"].get(length)
        if c and ref_c:
            row["speedup_vs_reference_convrec"] = round(ref_c / c["step_s"], 3)
        if a and ref_a:
            row["attention_speedup_vs_reference_proxyrca"] = round(ref_a / a["step_s"], 3)
        per_length.append(row)

    exponents = {}
    for model in MODELS:
        ls = [length for length in lengths if (model, length) in ok]
        exponents[model] = {
            "time": fit_exponent(ls, [ok[(model, length)]["step_s"] for length in ls]),
            "memory": fit_exponent(ls, [max(ok[(model, length)]["peak_mem_mb"], 1e-3) for length in ls]),
            "lengths_used": ls,
        }
    for name, table in REFERENCE["time_s"].items():
        ls = sorted(table)
        exponents[name + " (quoted)"] = {
            "time": fit_exponent(ls, [table[length] for length in ls]),
            "lengths_used": ls,
        }
    return {"per_length": per_length, "fitted_exponents": exponents, "targets": targets(per_length, args)}


def targets(per_length: list[dict], args: argparse.Namespace) -> dict:
    by_len = {row["length"]: row for row in per_length}
    out = {}
    comparable = args.device == "cpu" and args.batch_size == REFERENCE["batch_size"]
    ref_rows = [row for row in per_length if "speedup_vs_reference_convrec" in row]
    if not comparable:
        out["2x_vs_reference_convrec_every_length"] = {
            "status": "not comparable",
            "why": f"the reference figures are CPU, B = 32; this run is {args.device}, B = {args.batch_size}",
        }
    elif not ref_rows:
        out["2x_vs_reference_convrec_every_length"] = {
            "status": "not measured",
            "why": "no length with a reference figure",
        }
    else:
        speedups = {row["length"]: row["speedup_vs_reference_convrec"] for row in ref_rows}
        missing = sorted(set(REFERENCE["time_s"]["reference_convrec"]) - set(speedups))
        out["2x_vs_reference_convrec_every_length"] = {
            "status": "pass" if all(s >= 2 for s in speedups.values()) else "fail",
            "speedup_by_length": speedups,
            "lengths_not_measured": missing,
            "note": "quoted reference times on the authors' machine vs this run's times on this (shared) machine",
        }
    if args.device == "cpu":
        row = by_len.get(1000)
        key = "3x_time_and_memory_vs_attention_at_L1000"
        if row is None or "time_ratio_attention_over_convrec" not in row:
            out[key] = {"status": "not measured", "why": "L = 1000 not run or a model failed"}
        else:
            t, m = row["time_ratio_attention_over_convrec"], row.get("memory_ratio_attention_over_convrec")
            out[key] = {
                "status": "pass" if t >= 3 and m is not None and m >= 3 else "fail",
                "time_ratio": t,
                "memory_ratio": m,
            }
    else:
        row = by_len.get(500)
        key = "gpu_3x_time_and_memory_vs_attention_at_L500"
        if row is None or "time_ratio_attention_over_convrec" not in row:
            out[key] = {"status": "not measured"}
        else:
            t, m = row["time_ratio_attention_over_convrec"], row.get("memory_ratio_attention_over_convrec")
            out[key] = {
                "status": "pass" if t >= 3 and m is not None and m >= 3 else "fail",
                "time_ratio": t,
                "memory_ratio": m,
            }
        row = by_len.get(2000)
        key = "gpu_L2000_trains_where_attention_fails"
        if row is None:
            out[key] = {"status": "not measured"}
        else:
            out[key] = {
                "status": "pass" if row["convrec_step_s"] and row["attention_status"] != "ok" else "fail",
                "convrec_step_s": row["convrec_step_s"],
                "attention_status": row["attention_status"],
            }
        if args.batch_size != 128:
            out["note"] = "the GPU targets are stated for B = 128"
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r.get("status") == "ok"]
    failed = [r for r in result["runs"] if r.get("status") != "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), dpi=100)
    colors = {"convrec": "tab:blue", "convrec_attention": "tab:red"}
    quoted = result["args"]["device"] == "cpu"
    for ax, key, ref_key, ylabel in (
        (axes[0], "step_s", "time_s", "seconds per training step"),
        (axes[1], "peak_mem_mb", "peak_memory_mb", "peak memory (MB)"),
    ):
        for model in MODELS:
            pts = sorted((r["length"], r[key]) for r in runs if r["model"] == model)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors[model], label=f"{LABELS[model]}, measured")
            for r in failed:
                if r["model"] == model:
                    ax.annotate(
                        r["status"],
                        (r["length"], ax.get_ylim()[1] if pts else 1),
                        color=colors[model],
                        fontsize=8,
                        ha="center",
                    )
        if quoted:
            for name, color in (("reference_convrec", "tab:blue"), ("reference_proxyrca", "tab:red")):
                table = REFERENCE[ref_key][name]
                ax.plot(
                    list(table),
                    list(table.values()),
                    linestyle="--",
                    marker="s",
                    markerfacecolor="none",
                    color=color,
                    alpha=0.6,
                    label=f"{name.replace('_', ' ')} (QUOTED, authors' code, not this run)",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    m = result["machine"]
    fig.suptitle(
        f"training step, Games-like, B = {result['args']['batch_size']}, {result['args']['device']} "
        f"({m['device_name']}, {m['cpu_count']} CPUs, torch {m['torch']}) -- measured {m['date'][:10]}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.efficiency",
        description="Seconds and peak memory per training step of ConvRec vs its attention counterpart as "
        "the sequence length grows (Games-like sizes: 23,715 items, 506 attributes, d = 256, "
        "101 candidates per row). Each (length, model) runs in a fresh process. Writes JSON with "
        "machine info, ratios, fitted exponents and pass/fail vs the issue's targets, and a PNG plot "
        "beside it. The authors' reference figures are included as quoted (not measured) anchors.",
        epilog="Quick CPU check: python -m benchmarks.efficiency --device cpu --lengths 50,500 --batch-size 32 "
        "--out benchmarks/results/efficiency_cpu_quick.json",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (cuda uses bf16 autocast unless --precision)"
    )
    parser.add_argument(
        "--lengths", default="50,100,200,500,1000,2000", help="comma-separated sequence lengths L"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="rows per batch B")
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS)
    )
    parser.add_argument("--steps", type=int, default=5, help="measured steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before measuring")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 autocast on CUDA, fp32 on CPU",
    )
    parser.add_argument(
        "--worker-timeout", type=float, default=1800, help="seconds before a worker is killed"
    )
    parser.add_argument(
        "--out", default=str(RESULTS_DIR / "efficiency.json"), help="JSON path; the PNG goes beside it"
    )
    parser.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._worker:
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked but torch.cuda.is_available() is False on this machine")
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"--models: unknown {sorted(unknown)}; choose from {MODELS}")
    started = time.perf_counter()
    runs = []
    for length in lengths:
        for model in models:
            print(f"[efficiency] L={length} {model} ...", flush=True)
            res = spawn(args, model, length)
            runs.append(res)
            shown = (
                f"{res['step_s']:.3f} s/step, peak {res['peak_mem_mb']:.0f} MB"
                if res.get("status") == "ok"
                else f"{res.get('status')}: {str(res.get('error', ''))[-300:]}"
            )
            print(f"[efficiency]   {shown}", flush=True)
    result = {
        "benchmark": "efficiency",
        "command": "python -m benchmarks.efficiency " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {
            k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("model", "length")
        },
        "machine": machine_info(args.device),
        "setting": {
            "data": "models.synthetic.games_like_data: 23,715 items, 506 attributes ~5 per item, time "
            "context + intervals, proxy ids for the top 10 % items; full-length histories",
            "hparams": GAMES_PRESET,
            "candidates_per_row": 101,
            "step": "calculate_loss + zero_grad + backward + clip_grad_norm_(1.0) + AdamW.step "
            "(as models.train.train_epoch)",
            "statistic": f"median of {args.steps} steps after {args.warmup} warm-up steps, fresh process "
            "per (length, model)",
        },
        "runs": runs,
        "reference_quoted_not_measured": REFERENCE,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    result.update(summarize(runs, args))
    out = write_json(result, args.out)
    plot(result, out.with_suffix(".png"))
    print(
        json.dumps(
            {
                "per_length": result["per_length"],
                "fitted_exponents": result["fitted_exponents"],
                "targets": result["targets"],
            },
            indent=1,
        )
    )
    print(f"[efficiency] wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
