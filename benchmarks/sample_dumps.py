"""The ``sample`` budget over several dumps of the sample generator, trained as the pipeline trains it.

    python -m benchmarks.sample_dumps                                  # ConvRec and SASRec, 6 dumps x 2 seeds
    python -m benchmarks.sample_dumps --models convrec --set crop_prob=0.3 --tag crop03 \\
        --against benchmarks/results/sample_dumps/budget.json         # one change, paired with the budget
    python -m benchmarks.sample_dumps --combine budget,budget_dumps6_17 --tag budget_dumps18  # runs as one

Judging a change to the embedded sample's training on the sample's own test rows alone mistakes one
draw of the generator for its behaviour. This harness generates the embedded dump (seed 20140723) and
more dumps of the same generator (seeds 1-5 by default), prepares each with the pipeline's own assets
(``benchmarks.convergence.prepare``), and trains each model there as the training asset does:
``resolve_settings`` of ``budget: sample`` with the ``--set`` overrides, then the asset's own
``run_training`` (``prepare_training``, ``choose_window``, ``models.train.train``), then test figures
in both protocols (``test_metrics``).
It is deterministic on the CPU: the same settings give the same figures to the last digit.

The JSON (``benchmarks/results/sample_dumps/<tag>.json``) keeps one row per (dump, model, seed) and a
summary: each model's mean validation / test sampled NDCG@10 and test full-ranking NDCG@10; ConvRec
minus SASRec per dump, when both ran (the mean over dumps, how many dumps ConvRec leads, and a 95 %
bootstrap interval and sign-flip p-value with the dump as the unit, its seeds averaged); and with
``--against`` the change against a reference run of the same dumps and seeds (mean difference and
how many of the figures went up).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, HelpFormatter, machine_info, write_json
from benchmarks.convergence import prepare, test_metrics
from models.significance import paired_permutation_test

EMBEDDED_SEED = 20140723
OUT_DIR = RESULTS_DIR / "sample_dumps"
FIGURES = ("valid", "test", "test_full")


def prepare_dump(seed: int, root: Path) -> Path:
    """A prepared home for the dump of generator seed ``seed`` (the embedded sample for its own seed)."""
    from convrec_dagster.data.sample_dump import SampleDumpConfig, generate_sample_dump

    home = root / f"home_{seed}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"prepare_{seed}.lock", "w") as lock:  # runs of this harness side by side share the root
        fcntl.flock(lock, fcntl.LOCK_EX)
        if seed == EMBEDDED_SEED:
            prepare("sample", home, None, {})
        else:
            dump = generate_sample_dump(root / f"dump_{seed}", SampleDumpConfig(seed=seed))
            prepare("sample", home, dump, {})
    return home


def parse_value(text: str):
    """A ``--set`` value: JSON where it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def train_one(home: Path, model_name: str, seed: int, overrides: dict, keep: Path | None = None) -> dict:
    """Train ``model_name`` on the prepared ``home`` as the training asset does (``budget: sample``);
    ``keep``: copy the picked epoch's checkpoint there (for ``benchmarks.valid_test_gap``)."""
    import duckdb
    import torch

    from assets.training import TrainingConfig
    from convrec_dagster.data import settings as paths
    from convrec_dagster.data.dataset import load_rec_data
    from convrec_dagster.data.dataset_info import read_dataset_info
    from convrec_dagster.data.training_setup import data_features, resolve_settings, run_training
    from models.registry import load_model
    from models.train import SAMPLED_BEST

    config = TrainingConfig(budget="sample", seed=seed, **overrides)
    with duckdb.connect(str(paths.duckdb_path(home)), read_only=True) as conn:
        identity = read_dataset_info(conn)
        _, _, s = resolve_settings(config.model_dump(), identity, model_name, cuda=False)
        data = load_rec_data(conn, features=data_features(model_name, s))
    threads = torch.get_num_threads()
    torch.set_num_threads(int(s["num_threads"] or threads))
    quiet = lambda message: None  # noqa: E731
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            run = run_training(model_name, s, data, torch.device("cpu"), "fp32", Path(out_dir), quiet)
            model, result, model_config = run.model, run.result, run.model_config
            test = test_metrics(model, data, torch.device("cpu"))
            if keep is not None:
                keep.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(out_dir) / "best.pt", keep)
            if "sampled_best" in result.extra:  # valid_protocol full: the sampled figures from their own pick
                picked = load_model(Path(out_dir) / SAMPLED_BEST, data, torch.device("cpu"))[0]
                test["sampled_100"] = test_metrics(picked, data, torch.device("cpu"), ("sampled_100",))[
                    "sampled_100"
                ]
    finally:
        torch.set_num_threads(threads)
    fits = result.extra.get("popularity_adjustment") or {}  # empty when the setting is 0 (off)
    return {
        "max_len": model_config.max_len,
        **({"tau": {protocol: fit["tau"] for protocol, fit in fits.items()}} if fits else {}),
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "valid": round(
            result.extra.get("sampled_best", {"metrics": result.best_metrics})["metrics"]["NDCG@10"], 4
        ),
        "valid_full": round(result.best_metrics["full_NDCG@10"], 4)
        if "full_NDCG@10" in result.best_metrics
        else None,
        "test": test["sampled_100"]["NDCG@10"],
        "test_full": test["full"]["NDCG@10"],
    }


def mean(rows: list[dict], key: str) -> float:
    return round(statistics.mean(r[key] for r in rows), 4)


def summarize(rows: list[dict], against: list[dict] | None) -> dict:
    """Means per model; ConvRec - SASRec per dump; the change against ``against`` (same dumps, seeds)."""
    models = sorted({r["model"] for r in rows})
    summary: dict = {m: {k: mean([r for r in rows if r["model"] == m], k) for k in FIGURES} for m in models}
    dumps = sorted({r["dump_seed"] for r in rows})

    def per_dump(rs: list[dict], model: str, dump: int, key: str) -> float:
        return statistics.mean(r[key] for r in rs if r["model"] == model and r["dump_seed"] == dump)

    both = [d for d in dumps if {"convrec", "sasrec"} <= {r["model"] for r in rows if r["dump_seed"] == d}]
    if both:
        summary["convrec_minus_sasrec"] = {}
        for k in FIGURES:
            convrec = np.array([per_dump(rows, "convrec", d, k) for d in both])
            sasrec = np.array([per_dump(rows, "sasrec", d, k) for d in both])
            # the dump is the unit: its two models' figures are paired, dumps are independent draws
            test = paired_permutation_test(convrec, sasrec)
            summary["convrec_minus_sasrec"][k] = {
                "mean": round(test["diff"], 4),
                "dumps_ahead": int((convrec > sasrec).sum()),
                "dumps": len(both),
                "ci95_over_dumps": [round(test["ci_low"], 4), round(test["ci_high"], 4)],
                "p_value_over_dumps": round(test["p_value"], 4),
            }
    if against:
        key_of = lambda r: (r["dump_seed"], r["model"], r["seed"])  # noqa: E731
        ref = {key_of(r): r for r in against}
        paired = [(r, ref[key_of(r)]) for r in rows if key_of(r) in ref]
        change = {}
        for m in models:
            pairs = [(r, q) for r, q in paired if r["model"] == m]
            if not pairs:
                continue
            diffs = {k: [r[k] - q[k] for r, q in pairs] for k in FIGURES}
            # the valid and test figures together, as stops 36-37 judged a change
            both = diffs["valid"] + diffs["test"]
            change[m] = {
                **{k: round(statistics.mean(v), 4) for k, v in diffs.items()},
                "valid_and_test": round(statistics.mean(both), 4),
                "valid_and_test_up": f"{sum(x > 0 for x in both)} of {len(both)}",
                "test_full_up": f"{sum(x > 0 for x in diffs['test_full'])} of {len(diffs['test_full'])}",
                "over_dumps": _change_over_dumps(pairs),
            }
        summary["against_reference"] = change
    return summary


def _change_over_dumps(pairs: list[tuple[dict, dict]]) -> dict:
    """Per figure, the change's 95 % bootstrap interval and sign-flip p-value with the dump as the unit
    (each dump's seeds averaged on both sides), as for ConvRec - SASRec."""
    dumps = sorted({r["dump_seed"] for r, _ in pairs})
    out = {}
    for k in FIGURES:
        new = np.array([statistics.mean(r[k] for r, _ in pairs if r["dump_seed"] == d) for d in dumps])
        ref = np.array([statistics.mean(q[k] for r, q in pairs if r["dump_seed"] == d) for d in dumps])
        test = paired_permutation_test(new, ref)
        out[k] = {
            "dumps_up": int((new > ref).sum()),
            "dumps": len(dumps),
            "ci95": [round(test["ci_low"], 4), round(test["ci_high"], 4)],
            "p_value": round(test["p_value"], 4),
        }
    return out


def combine(tags: list[str], tag: str, against: list[dict] | None) -> dict:
    """One JSON (``tag``) from the rows of earlier runs ``tags`` of the same settings, with its summary."""
    runs = [json.loads((OUT_DIR / f"{t}.json").read_text()) for t in tags]
    if any(run["overrides"] != runs[0]["overrides"] for run in runs):
        raise ValueError(
            f"runs {tags} have different --set overrides; only runs of the same settings combine"
        )
    rows = [row for run in runs for row in run["rows"]]
    keys = [(r["dump_seed"], r["model"], r["seed"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"runs {tags} share a (dump, model, seed) row; combine runs of different dumps or seeds"
        )
    res = {
        "benchmark": "sample_dumps",
        "command": f"python -m benchmarks.sample_dumps --combine {','.join(tags)} --tag {tag}",
        "combined_from": {
            t: {"command": run["command"], "machine": run["machine"]} for t, run in zip(tags, runs)
        },
        "machine": runs[0]["machine"],
        "overrides": runs[0]["overrides"],
        "dumps": sorted({r["dump_seed"] for r in rows}),
        "seeds": sorted({r["seed"] for r in rows}),
        "rows": rows,
        "summary": summarize(rows, against),
        "wall_s": round(sum(run.get("wall_s", 0.0) for run in runs), 1),
    }
    write_json(res, OUT_DIR / f"{tag}.json")
    print(json.dumps(res["summary"], indent=1))
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sample_dumps", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--dumps", default=f"{EMBEDDED_SEED},1,2,3,4,5", help="generator seeds, comma-separated"
    )
    parser.add_argument("--seeds", default="0,1", help="model seeds, comma-separated")
    parser.add_argument("--models", default="convrec,sasrec", help="models, comma-separated")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a training-config override (TrainingConfig field), repeatable; VALUE as JSON where it parses",
    )  # fmt: skip
    parser.add_argument(
        "--tag", default="budget", help="the JSON's name under benchmarks/results/sample_dumps/"
    )
    parser.add_argument("--against", type=Path, help="a reference JSON of this harness to pair the rows with")
    parser.add_argument(
        "--keep-models", type=Path, metavar="DIR",
        help="keep each run's picked checkpoint as DIR/<dump>_<model>_s<seed>.pt (for benchmarks.valid_test_gap)",
    )  # fmt: skip
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "convrec_sample_dumps",
                        help="where the dumps and their prepared homes live (reused across runs)")  # fmt: skip
    parser.add_argument(
        "--combine", metavar="TAGS",
        help="train nothing: summarise the rows of earlier runs (their tags, comma-separated; the same "
        "settings, e.g. dumps split between two processes) as one run under --tag",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.combine:
        combine(
            args.combine.split(","),
            args.tag,
            json.loads(args.against.read_text())["rows"] if args.against else None,
        )
        return
    overrides = dict(item.split("=", 1) for item in args.set)
    overrides = {k: parse_value(v) for k, v in overrides.items()}
    dumps = [int(x) for x in args.dumps.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    models = args.models.split(",")
    against = json.loads(args.against.read_text())["rows"] if args.against else None
    out = OUT_DIR / f"{args.tag}.json"
    res = {
        "benchmark": "sample_dumps",
        "command": "python -m benchmarks.sample_dumps " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info("cpu"),
        "overrides": overrides,
        "dumps": dumps,
        "seeds": seeds,
        "rows": [],
    }
    started = time.perf_counter()
    homes = {dump: prepare_dump(dump, args.root) for dump in dumps}
    for dump, home in homes.items():
        for model_name in models:
            for seed in seeds:
                t0 = time.perf_counter()
                keep = args.keep_models / f"{dump}_{model_name}_s{seed}.pt" if args.keep_models else None
                row = {
                    "dump_seed": dump,
                    "model": model_name,
                    "seed": seed,
                    **train_one(home, model_name, seed, overrides, keep),
                }
                row["seconds"] = round(time.perf_counter() - t0, 1)
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
                res["summary"] = summarize(res["rows"], against)
                write_json(res, out)
    res["wall_s"] = round(time.perf_counter() - started, 1)
    res["summary"] = summarize(res["rows"], against)
    write_json(res, out)
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
