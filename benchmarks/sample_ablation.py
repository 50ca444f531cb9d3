"""Why ConvRec trailed SASRec on the embedded sample: one training setting changed at a time.

    python -m benchmarks.sample_ablation            # every variant, 10 epochs each (~10 min on 2 cores)
    python -m benchmarks.sample_ablation --set time --dataset magazine   # the time-path variants
    python -m benchmarks.sample_ablation --set mixer --epochs 20          # stack, window, regularisation

Prepares the embedded sample with the pipeline's own assets (``benchmarks.convergence.prepare``,
two homes: proxy ids for every trained item, and the paper's 10 % share), then trains each variant
with ``models.train.train`` (``scheme="all_cuts"``, batch 64, lr 2e-3, d 64, hidden 128, dropout .2,
1 torch thread) and records its validation NDCG@10 per epoch. Variants switch one thing against a
base: the id embeddings' initial scale, the window L, the proxy share K, the item features, and
the time context (kept, or dropped from the data). Writes
``benchmarks/results/sample_ablation.json``.

``--set time`` runs the variants of the time path instead (intervals in raw or calendar units, the
context layer at PyTorch's or zero init, id init) on the sample or on another dataset with
timestamps (``--dataset magazine``), into ``sample_ablation_time[_<dataset>].json``.

``--set window`` trains the ``sample`` budget's ConvRec at windows L 20 to 2 beside SASRec as that budget
trains it, and also records test figures and, on the sample, how often the chain successor of the last
item is ranked first (``sample_ablation_window.json``; ``--epochs 12`` as in BENCHMARKS.md).

``--set successor`` trains the ``sample`` budget's ConvRec as it ships (L 2; the paper's and the ``last``
residuals) beside SASRec and splits the successor rows of both splits by how often the training rows hold
the transition and by the sub-category of the item before the last (``successor_breakdown``,
``sample_ablation_successor.json``; BENCHMARKS.md, "Stop 34").

``--set mixer`` trains on item ids alone (no time, no dropout) and varies the convolution stack
(kernels, residuals, one convolution, pooling only, heads), the window L, the width and the
regularisation (dropout, item replacement, weight decay, crop), into ``sample_ablation_mixer.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, machine_info, write_json
from benchmarks.convergence import DATA_DIRS, prepare, test_metrics

BASE = {"d": 64, "hidden": 128, "dropout": 0.2, "max_len": 20, "loss": "full_softmax", "features": "none"}
# (label, proxy home, keep time context, model, hparam overrides)
VARIANTS = [
    ("SASRec (ids, L 20)", "all", False, "sasrec", {}),
    ("ConvRec ids, unit init (PyTorch default), L 20", "all", False, "convrec", {}),
    ("ConvRec ids, init .02, L 20", "all", False, "convrec", {"emb_init_std": 0.02}),
    ("ConvRec ids, init .02, L 10", "all", False, "convrec", {"emb_init_std": 0.02, "max_len": 10}),
    ("ConvRec ids, init .02, L 10, K 10 %", "top10", False, "convrec", {"emb_init_std": 0.02, "max_len": 10}),
    (
        "ConvRec attributes, init .02, L 10",
        "all",
        False,
        "convrec",
        {"emb_init_std": 0.02, "max_len": 10, "features": "attributes"},
    ),
    (
        "ConvRec attributes, init .02, L 10, K 10 %",
        "top10",
        False,
        "convrec",
        {"emb_init_std": 0.02, "max_len": 10, "features": "attributes"},
    ),
    (
        "ConvRec attributes + untrained-ResNet images, init .02, L 10",
        "all",
        False,
        "convrec",
        {"emb_init_std": 0.02, "max_len": 10, "features": "both"},
    ),
    (
        "ConvRec ids + time context and intervals, init .02, L 10 (sampled softmax 100)",
        "all",
        True,
        "convrec",
        {"emb_init_std": 0.02, "max_len": 10, "loss": "softmax"},
    ),
    (
        "ConvRec ids + time context, no intervals, init .02, L 10 (sampled softmax 100)",
        "all",
        True,
        "convrec",
        {"emb_init_std": 0.02, "max_len": 10, "loss": "softmax", "intervals": False},
    ),
    (
        "ConvRec ids without time, init .02, L 10 (sampled softmax 100)",
        "all",
        False,
        "convrec",
        {"emb_init_std": 0.02, "max_len": 10, "loss": "softmax"},
    ),
    (
        "ConvRec attributes + time context, init .02, L 20 (sampled softmax 100)",
        "all",
        True,
        "convrec",
        {"emb_init_std": 0.02, "features": "attributes", "loss": "softmax"},
    ),
    (
        "ConvRec attributes + time context, unit init, L 20 (sampled softmax 100; the sample budget)",
        "all",
        True,
        "convrec",
        {"features": "attributes", "loss": "softmax"},
    ),
]

TIME_BASE = {**BASE, "features": "attributes", "loss": "softmax"}
TIME_VARIANTS = [
    ("SASRec (ids, L 20)", "all", False, "sasrec", {}),
    ("ConvRec attributes, no time, init .02", "all", False, "convrec", {"emb_init_std": 0.02}),
    (
        "ConvRec attributes + time, unit init, raw intervals (the sample budget before)",
        "all",
        True,
        "convrec",
        {},
    ),
    (
        "ConvRec attributes + time, unit init, calendar intervals",
        "all",
        True,
        "convrec",
        {"interval_scale": "calendar"},
    ),
    (
        "ConvRec attributes + time, unit init, calendar intervals, zero-init context",
        "all",
        True,
        "convrec",
        {"interval_scale": "calendar", "side_init": "zero_time"},
    ),
    ("ConvRec attributes + time, init .02, raw intervals", "all", True, "convrec", {"emb_init_std": 0.02}),
    (
        "ConvRec attributes + time, init .02, calendar intervals",
        "all",
        True,
        "convrec",
        {"emb_init_std": 0.02, "interval_scale": "calendar"},
    ),
    (
        "ConvRec attributes + time, init .02, calendar intervals, zero-init context",
        "all",
        True,
        "convrec",
        {"emb_init_std": 0.02, "interval_scale": "calendar", "side_init": "zero_time"},
    ),
    (
        "ConvRec attributes + time, init .02, raw intervals, zero-init context",
        "all",
        True,
        "convrec",
        {"emb_init_std": 0.02, "side_init": "zero_time"},
    ),
    (
        "ConvRec attributes, no time, init .02, zero-init side path",
        "all",
        False,
        "convrec",
        {"emb_init_std": 0.02, "side_init": "zero"},
    ),
    (
        "ConvRec attributes + time, init .02, calendar intervals, zero-init side path",
        "all",
        True,
        "convrec",
        {"emb_init_std": 0.02, "interval_scale": "calendar", "side_init": "zero"},
    ),
    (
        "ConvRec ids + time, init .02, calendar intervals, zero-init side path",
        "all",
        True,
        "convrec",
        {"emb_init_std": 0.02, "interval_scale": "calendar", "side_init": "zero", "features": "none"},
    ),
    ("ConvRec ids, no time, init .02", "all", False, "convrec", {"emb_init_std": 0.02, "features": "none"}),
]


# Ids only, no time, no dropout: what caps ConvRec where the next item follows from the last one?
# Each variant changes the convolution stack, the window, the capacity or the regularisation; the
# optional 6th element overrides the training config.
MIXER_BASE = {**BASE, "dropout": 0.0, "emb_init_std": 0.02}
MIXER_VARIANTS = [
    ("SASRec (ids, L 20, dropout .2)", "all", False, "sasrec", {"dropout": 0.2}),
    ("ConvRec ids, kernels [2, 2, 5] (default for L 20)", "all", False, "convrec", {}),
    ("ConvRec, one convolution with kernel = stride = L", "all", False, "convrec", {"single_conv": True}),
    ("ConvRec, blocks without the weighted residuals", "all", False, "convrec", {"residuals": False}),
    ("ConvRec, average pooling of the item vectors only", "all", False, "convrec", {"avg_pool_only": True}),
    ("ConvRec, kernels [5, 2, 2]", "all", False, "convrec", {"kernels": [5, 2, 2]}),
    ("ConvRec, 4 heads (grouped convolutions)", "all", False, "convrec", {"heads": 4}),
    ("ConvRec, d 128", "all", False, "convrec", {"d": 128, "hidden": 256}),
    ("ConvRec, L 10", "all", False, "convrec", {"max_len": 10}),
    ("ConvRec, L 5", "all", False, "convrec", {"max_len": 5}),
    ("ConvRec, dropout .2", "all", False, "convrec", {"dropout": 0.2}),
    ("ConvRec, item replacement .2", "all", False, "convrec", {}, {"augment_prob": 0.2}),
    ("ConvRec, weight decay .1 (AdamW)", "all", False, "convrec", {}, {"weight_decay": 0.1}),
    ("ConvRec, L 5, dropout .2", "all", False, "convrec", {"max_len": 5, "dropout": 0.2}),
    ("ConvRec, crop .5", "all", False, "convrec", {}, {"crop_prob": 0.5}),
    ("ConvRec, dropout .2, crop .5", "all", False, "convrec", {"dropout": 0.2}, {"crop_prob": 0.5}),
    (
        "ConvRec, L 5, dropout .2, crop .5",
        "all",
        False,
        "convrec",
        {"max_len": 5, "dropout": 0.2},
        {"crop_prob": 0.5},
    ),
]
# The `sample` budget's ConvRec (attributes and time, no dropout, a softmax over 100 sampled negatives, batch
# 128, lr 3e-3, the weight average) at each window, and SASRec as that budget trains it: how much of the gap is
# the window? The JSON also gives each variant's test figures and, on the sample, how often the chain
# successor of the last item (the next item 55 % of the time) is ranked first.
SAMPLE_TRAIN = {"batch_size": 128, "lr": 3e-3, "n_negatives": 100, "ema_decay": "auto"}
WINDOW_BASE = {**BASE, "dropout": 0.0, "loss": "softmax", "features": "attributes"}
WINDOW_VARIANTS = [
    (
        "SASRec (the sample budget: L 20, dropout .2, full softmax, batch 32)",
        "all",
        False,
        "sasrec",
        {"loss": "full_softmax", "dropout": 0.2},
        {"batch_size": 32, "lr": 3e-3},
    ),
    *[
        (f"ConvRec, the sample budget at L {n}", "all", True, "convrec", {"max_len": n}, SAMPLE_TRAIN)
        for n in (20, 10, 5, 3, 2)
    ],
    (
        "ConvRec ids only, no time, L 2",
        "all",
        False,
        "convrec",
        {"max_len": 2, "features": "none"},
        SAMPLE_TRAIN,
    ),
    *[
        (
            f"ConvRec, the sample budget at L {n}, residuals keep the last position",
            "all",
            True,
            "convrec",
            {"max_len": n, "residual_pool": "last"},
            SAMPLE_TRAIN,
        )
        for n in (20, 10, 5, 2)
    ],
]
# The `sample` budget of stops 34-35 (256 negatives, i.e. the exact softmax over the unseen items, and the N(0, 1)
# tables at lr x 50, batch 128 at lr 3e-3; since stop 36 it trains in batches of 32 at lr 1e-3 with weight decay .1,
# and since stop 37 crops half its rows) at its searched window L 2, with the paper's and the `last` residuals,
# beside SASRec: where in the successor rows ConvRec's misses sit (``successor_breakdown``).
BUDGET_TRAIN = {**SAMPLE_TRAIN, "n_negatives": 256, "embedding_lr_scale": 50.0}
SUCCESSOR_VARIANTS = [
    WINDOW_VARIANTS[0],
    ("ConvRec, the sample budget (L 2)", "all", True, "convrec", {"max_len": 2}, BUDGET_TRAIN),
    (
        "ConvRec, the sample budget (L 2), residuals keep the last position",
        "all",
        True,
        "convrec",
        {"max_len": 2, "residual_pool": "last"},
        BUDGET_TRAIN,
    ),
]
SETS = {
    "causes": (BASE, VARIANTS),
    "time": (TIME_BASE, TIME_VARIANTS),
    "mixer": (MIXER_BASE, MIXER_VARIANTS),
    "window": (WINDOW_BASE, WINDOW_VARIANTS),
    "successor": (WINDOW_BASE, SUCCESSOR_VARIANTS),
}


def successor_first_share(model, data, split: str = "test") -> float | None:
    """On the embedded sample: the share of users whose target is the chain successor of their last item
    and whose model ranks it first over every item (history masked); None without item names."""
    from benchmarks.valid_test_gap import sample_successors
    from models.evaluate import rank_eval_users
    from models.metrics import per_user_metrics

    successors = sample_successors(data)
    if successors is None:
        return None
    users, greater, equal = rank_eval_users(model, data, split, "full", "cpu")
    ends = data.user_ptr[users + 1] - (1 if split == "test" else 2)
    is_successor = successors[data.items[ends - 1]] == data.items[ends]
    first = per_user_metrics(greater, equal, ks=(1,))["HR@1"]
    return round(float(first[is_successor].mean()), 4) if is_successor.any() else None


def sample_subcategories(data) -> np.ndarray | None:
    """On the embedded sample: each item's (category, sub-category) as one number (-1 where unknown);
    None without item names."""
    from benchmarks.valid_test_gap import sample_catalog

    catalog = sample_catalog(data)
    return None if catalog is None else catalog["subcategory"]


def transition_counts(data, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """How many times the training rows hold ``first[i]`` directly followed by ``second[i]`` (same user)."""
    train = data.train_mask()
    rows = np.flatnonzero(train[1:] & train[:-1]) + 1  # a training row whose predecessor is a training row...
    user_start = np.zeros(len(data.items), dtype=bool)
    user_start[data.user_ptr[1 : data.n_users + 1]] = True
    rows = rows[~user_start[rows]]  # ...of the same user
    width = data.n_items + 1
    keys, counts = np.unique(data.items[rows - 1] * width + data.items[rows], return_counts=True)
    wanted = np.asarray(first) * width + np.asarray(second)
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[pos] == wanted, counts[pos], 0)


TRANSITION_BUCKETS = ((1, 2), (3, 5), (6, 10), (11, np.inf))


def successor_breakdown(model, data, split: str = "test", well_learned: int = 11) -> dict | None:
    """On the embedded sample, the rows whose target is the chain successor of the last item: the share
    ranked first over every item (history masked), by how often the training rows hold that transition,
    and, for transitions seen ``well_learned`` times or more, by whether the item before the last shares
    the last one's sub-category (stop 34: ConvRec's misses sit there; SASRec's do not). None without
    item names."""
    from benchmarks.valid_test_gap import sample_successors
    from models.evaluate import rank_eval_users
    from models.metrics import per_user_metrics

    successors, subcategories = sample_successors(data), sample_subcategories(data)
    if successors is None or subcategories is None:
        return None
    users, greater, equal = rank_eval_users(model, data, split, "full", "cpu")
    ends = data.user_ptr[users + 1] - (1 if split == "test" else 2)
    last, before = data.items[ends - 1], data.items[np.maximum(ends - 2, data.user_ptr[users])]
    rows = successors[last] == data.items[ends]
    first = per_user_metrics(greater, equal, ks=(1,))["HR@1"]
    seen = transition_counts(data, last, data.items[ends])

    def share(mask: np.ndarray) -> dict:
        return {
            "rows": int(mask.sum()),
            "ranked_first": round(float(first[mask].mean()), 3) if mask.any() else None,
        }

    by_count = {
        f"{lo}+" if hi == np.inf else f"{lo}-{hi}": share(rows & (seen >= lo) & (seen <= hi))
        for lo, hi in TRANSITION_BUCKETS
    }
    well = rows & (seen >= well_learned) & (ends - 2 >= data.user_ptr[users])
    same = subcategories[before] == subcategories[last]
    return {
        "split": split,
        "successor_rows": share(rows),
        "by_training_transitions": by_count,
        f"seen_{well_learned}+_item_before_last_same_subcategory": share(well & same),
        f"seen_{well_learned}+_item_before_last_other_subcategory": share(well & ~same),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sample_ablation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--set", default="causes", choices=sorted(SETS), help="which list of variants")
    parser.add_argument("--dataset", default="sample", choices=["sample", "magazine"])
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated variant indices (0-based) to run; their results "
        "replace those of the same label in an existing --out JSON",
    )
    parser.add_argument("--home", default="", help="default /tmp/convrec_ablation_<dataset>")
    parser.add_argument(
        "--out", default="", help="default benchmarks/results/sample_ablation[_time][_<dataset>].json"
    )
    args = parser.parse_args(argv)
    suffix = ("" if args.set == "causes" else f"_{args.set}") + (
        "" if args.dataset == "sample" else f"_{args.dataset}"
    )
    out = Path(args.out or RESULTS_DIR / f"sample_ablation{suffix}.json")
    base, variants = SETS[args.set]

    import duckdb
    import torch

    from convrec_dagster.data import settings
    from convrec_dagster.data.dataset import load_rec_data
    from models.registry import build_model
    from models.train import TrainConfig, train

    torch.set_num_threads(1)
    root = Path(args.home or f"/tmp/convrec_ablation_{args.dataset}")
    homes = {"all": root / "k_all", "top10": root / "k_top10"}
    if args.set != "causes":
        homes.pop("top10")
    proxies = {"all": {"min_count": 1}, "top10": {"top_fraction": 0.1}}
    datasets = {}
    for key, home in homes.items():
        home.mkdir(parents=True, exist_ok=True)
        prepare(
            args.dataset, home, DATA_DIRS[args.dataset], proxies[key]
        )  # pipeline defaults but for the proxy rule
        with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
            datasets[key] = load_rec_data(conn, features="both")
    res = {
        "benchmark": "sample_ablation",
        "set": args.set,
        "dataset": args.dataset,
        "machine": machine_info("cpu"),
        "epochs": args.epochs,
        "base": base,
        "train": {"scheme": "all_cuts", "batch_size": 64, "lr": 2e-3, "adam_beta2": 0.98},
        "variants": [],
    }
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        variants = [v for i, v in enumerate(variants) if i in keep]
        if out.exists():  # merge: earlier variants stay, re-run ones are replaced
            import json

            res["variants"] = [
                v
                for v in json.loads(out.read_text())["variants"]
                if v["label"] not in {label for label, *_ in variants}
            ]
    for label, proxy, keep_time, name, overrides, *train_overrides in variants:
        data = datasets[proxy]
        saved = (data.context, data.ymd)
        if not keep_time:
            data.context, data.ymd = None, None
        hp = {**base, **overrides}
        if name == "sasrec":
            hp = {k: v for k, v in hp.items() if k in ("d", "dropout", "max_len", "loss")}
        train_settings = {
            "weight_decay": 0.0,
            "augment_prob": 0.0,
            **(train_overrides[0] if train_overrides else {}),
        }
        config = TrainConfig(
            **{
                "scheme": "all_cuts",
                "batch_size": 64,
                "lr": 2e-3,
                "max_epochs": args.epochs,
                "patience": args.epochs,
                "adam_beta2": 0.98,
                "resume": False,
                **train_settings,
            }
        )
        torch.manual_seed(0)
        started = time.perf_counter()
        model = build_model(name, data, hp)
        result = train(model, data, name, hp, config, log=lambda m: None)
        with_test = args.set in ("window", "successor")
        test = test_metrics(model, data, "cpu") if with_test else None
        on_sample = with_test and args.dataset == "sample"
        successor_first = successor_first_share(model, data) if on_sample else None
        breakdown = (
            [successor_breakdown(model, data, split) for split in ("valid", "test")]
            if on_sample and args.set == "successor"
            else None
        )
        data.context, data.ymd = saved
        curve = [round(h["valid_NDCG@10"], 4) for h in result.history]
        res["variants"].append(
            {
                "label": label,
                "model": name,
                "proxy": proxies[proxy],
                "time_context": keep_time,
                "hparams": hp,
                "train_overrides": train_settings,
                "valid_NDCG@10_per_epoch": curve,
                "best_valid_NDCG@10": round(result.best_metrics["NDCG@10"], 4),
                "best_epoch": result.best_epoch,
                "seconds": round(time.perf_counter() - started, 1),
                **({"test": test, "successor_first_share": successor_first} if test else {}),
                **({"successor_breakdown": breakdown} if breakdown else {}),
            }
        )
        print(
            f"{label}: best {curve[result.best_epoch - 1]} at epoch {result.best_epoch}; {curve}", flush=True
        )
        write_json(res, out)


if __name__ == "__main__":
    main()
