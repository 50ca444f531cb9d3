"""The one prepared GPU check: every CUDA code path and the GPU targets, in under 8 minutes.

    python -m benchmarks.gpu_check --out gpu_check_results

Run it when a GPU is lent (GPU time comes in short slots). In order, each part cut short when the
time budget (``--budget-s``, default 450 s) runs out, everything written under ``--out`` as JSON:

1. ``environment.json``: ``nvidia-smi`` output, torch / CUDA / cuDNN versions, device name.
2. ``pytest_gpu.json``: the tests marked ``gpu`` (``pytest -m gpu``, at most 150 s): bf16 training
   and ``torch.compile`` on CUDA, ``full_pipeline`` on the embedded sample with the CUDA resource,
   and one NCCL rank of the data-parallel path.
3. ``training.json``: a short bf16 training of ConvRec on ``Video.txt`` with ``compile`` off and
   on: examples/s and peak memory (``torch.cuda.max_memory_allocated``).
4. ``efficiency.json``: ``benchmarks.efficiency --device cuda --batch-size 128`` at
   L = 500, 2000, 50, 200, 1000 (the targets' lengths first) for ConvRec and its attention
   counterpart (bf16), one process per run with a time cap; an out-of-memory step is recorded as
   ``OOM``. Lengths are dropped when the budget would not hold them.
5. ``gpu_check.json``: all of it, plus pass / fail for the GPU targets: at L = 500, B = 128 ConvRec
   takes >= 3x less time and >= 3x less memory than the attention counterpart; ConvRec trains at
   L = 2,000 where the attention counterpart runs out of memory.

Without CUDA it exits at once with code 2 and says so (nothing to measure on a CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, HelpFormatter, machine_info, write_json

VIDEO = REPO_ROOT.parent / "shared" / "data" / "benchmarks" / "sasrec_video" / "Video.txt"
# -rA lists each test's outcome; a module that cannot import here must not keep the others from running
PYTEST_GPU = ("-m", "pytest", "-q", "-rA", "--continue-on-collection-errors", "-m", "gpu", "tests")
LENGTHS = (500, 2000, 50, 200, 1000)  # the GPU targets' lengths first, in case time runs short


def environment() -> dict:
    import torch

    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        smi = f"nvidia-smi failed: {exc}"
    return {
        "nvidia_smi": smi,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(0),
        "machine": machine_info("cuda"),
    }


def run_gpu_tests(timeout: float) -> dict:
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *PYTEST_GPU],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return {
            "returncode": proc.returncode,
            "tail": proc.stdout[-6000:],
            "seconds": round(time.perf_counter() - started, 1),
        }
    except subprocess.TimeoutExpired:
        return {"returncode": None, "tail": f"timed out after {timeout:.0f} s", "seconds": round(timeout, 1)}


def run_efficiency(out: Path, deadline: float, per_run_s: float) -> dict:
    """One efficiency invocation per length, as long as the budget holds one more pair of runs."""
    runs, skipped = [], []
    for length in LENGTHS:
        left = deadline - time.time()
        if left < 2 * per_run_s / 3:
            skipped.append(length)
            continue
        path = out / f"efficiency_L{length}.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.efficiency",
            "--device",
            "cuda",
            "--lengths",
            str(length),
            "--batch-size",
            "128",
            "--steps",
            "5",
            "--warmup",
            "2",
            "--worker-timeout",
            str(int(per_run_s)),
            "--out",
            str(path),
        ]
        try:
            subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=2 * per_run_s + 30)
        except subprocess.TimeoutExpired:
            runs.append({"length": length, "status": "timeout"})
            continue
        if path.exists():
            runs.extend(json.loads(path.read_text()).get("runs", []))
    runs.sort(key=lambda r: (r.get("length", 0), str(r.get("model"))))
    return {"runs": runs, "lengths_skipped_for_time": skipped}


def load_video(max_users: int = 20000):
    """``Video.txt`` as a RecData (ids only), without the pipeline: a throughput check, not accuracy."""
    import numpy as np

    from models.synthetic import build_rec_data

    sequences: dict[int, list[int]] = {}
    for line in VIDEO.read_text().splitlines():
        user, item = line.split()
        sequences.setdefault(int(user), []).append(int(item))
    seqs = [np.array(s) for _, s in sorted(sequences.items())[:max_users]]
    n_items = int(max(s.max() for s in seqs))
    data = build_rec_data(seqs, n_items, np.random.default_rng(0))
    data.proxy_ids = np.arange(n_items + 1)
    data.n_proxy = n_items + 2
    return data


def run_training(seconds_each: float) -> dict:
    """Steps of the cpu budget's ConvRec (all cuts, softmax over all items) under bf16, compile off
    and on, for about ``seconds_each`` each: examples/s after warm-up and peak memory."""
    import numpy as np
    import torch

    from models.batching import NegativeSampler
    from models.registry import build_model
    from models.train import TrainConfig, _epoch_batches

    if not VIDEO.exists():
        return {"status": f"skipped: {VIDEO} not found"}
    data = load_video()
    device = torch.device("cuda")
    out = {}
    for compile_mix in (False, True):
        torch.manual_seed(0)
        model = build_model(
            "convrec",
            data,
            {"d": 128, "max_len": 20, "dropout": 0.2, "loss": "full_softmax", "emb_init_std": 0.02},
        ).to(device)
        if compile_mix:
            model.mix = torch.compile(model.mix)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        config = TrainConfig(scheme="all_cuts", batch_size=256, augment_prob=0.0)
        torch.cuda.reset_peak_memory_stats(device)
        batches = _epoch_batches(model, data, NegativeSampler(data), np.random.default_rng(0), config)
        examples, started, warm_started, steps = 0, time.perf_counter(), None, 0
        for size, batch in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model.calculate_loss(batch.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == 10:  # compile and cuDNN autotuning happen in the first steps
                torch.cuda.synchronize()
                warm_started, examples = time.perf_counter(), 0
            elif warm_started is not None:
                examples += size
            now = time.perf_counter()
            # measured for seconds_each after the warm-up steps; compiling may take a minute or two first
            if (
                warm_started is not None and now - warm_started > seconds_each
            ) or now - started > seconds_each + 120:
                break
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - (warm_started or started)
        out["compile" if compile_mix else "eager"] = {
            "examples_per_s": round(examples / max(elapsed, 1e-9), 1),
            "steps": steps,
            "first_10_steps_s": round((warm_started or time.perf_counter()) - started, 2),
            "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "loss_last": float(loss.detach()),
        }
    return out


def targets(efficiency: dict) -> dict:
    ok = {(r.get("model"), r.get("length")): r for r in efficiency.get("runs", [])}
    out = {}
    conv, att = ok.get(("convrec", 500)), ok.get(("convrec_attention", 500))
    if conv and att and conv.get("status") == att.get("status") == "ok":
        time_ratio = att["step_s"] / conv["step_s"]
        mem_ratio = att["peak_mem_mb"] / conv["peak_mem_mb"]
        out["L500_B128_time_ratio>=3"] = {
            "status": "pass" if time_ratio >= 3 else "fail",
            "ratio": round(time_ratio, 2),
        }
        out["L500_B128_memory_ratio>=3"] = {
            "status": "pass" if mem_ratio >= 3 else "fail",
            "ratio": round(mem_ratio, 2),
        }
    else:
        out["L500_B128"] = {"status": "not measured"}
    conv, att = ok.get(("convrec", 2000)), ok.get(("convrec_attention", 2000))
    if conv and att:
        passed = conv.get("status") == "ok" and att.get("status") == "OOM"
        out["L2000_convrec_trains_attention_OOM"] = {
            "status": "pass" if passed else "fail",
            "convrec": conv.get("status"),
            "attention": att.get("status"),
        }
    else:
        out["L2000_convrec_trains_attention_OOM"] = {"status": "not measured"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", required=True, help="folder for the JSON files")
    parser.add_argument(
        "--budget-s", type=float, default=450.0, help="stop starting new parts after this many seconds"
    )
    parser.add_argument("--per-run-s", type=float, default=60.0, help="time cap of one efficiency run")
    parser.add_argument(
        "--parts",
        default="tests,training,efficiency",
        help="comma-separated subset of tests,training,efficiency (the environment is always recorded): "
        "a second GPU slot can finish what the first did not reach",
    )
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"tests", "training", "efficiency"}:
        parser.error(f"--parts takes tests, training and efficiency, not {args.parts!r}")

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        message = (
            "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False), so there is nothing "
            "to measure here. Run it on a machine with an NVIDIA GPU and a CUDA build of torch."
        )
        write_json(
            {
                "benchmark": "gpu_check",
                "status": "no_cuda",
                "message": message,
                "machine": machine_info("cpu"),
            },
            out / "gpu_check.json",
        )
        print(message, file=sys.stderr)
        return 2
    started = time.time()
    deadline = started + args.budget_s
    res: dict = {"benchmark": "gpu_check", "status": "ran", "budget_s": args.budget_s, "parts": sorted(parts)}
    res["environment"] = environment()
    write_json(res["environment"], out / "environment.json")
    if "tests" in parts:
        res["pytest_gpu"] = run_gpu_tests(timeout=min(150.0, deadline - time.time()))
        write_json(res["pytest_gpu"], out / "pytest_gpu.json")
    if "training" in parts:
        res["training"] = run_training(seconds_each=min(40.0, max((deadline - time.time()) / 8, 5.0)))
        write_json(res["training"], out / "training.json")
    if "efficiency" in parts:
        res["efficiency"] = run_efficiency(out, deadline, args.per_run_s)
        write_json(res["efficiency"], out / "efficiency.json")
        res["targets"] = targets(res["efficiency"])
    res["wall_s"] = round(time.time() - started, 1)
    write_json(res, out / "gpu_check.json")
    for name, target in res.get("targets", {}).items():
        print(f"{name}: {target['status']}")
    print(f"gpu_check: {res['wall_s']} s; JSON under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
