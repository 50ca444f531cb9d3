"""Where a model loses accuracy from validation to test: per-user NDCG@10 on both splits, by bucket.

    python -m benchmarks.valid_test_gap --dataset video --home /tmp/s27/video \\
        --checkpoint convrec=/tmp/ckpt_convrec/best.pt --checkpoint sasrec=/tmp/ckpt_sasrec/best.pt

Two models can reach the same validation figure and still differ on test (ConvRec and SASRec on
Video: .585 and .588 on validation, .546 and .557 on test). The test target is one step later in each
user's timeline than the validation target, so a model that has learnt the training period's
popularity, or that ranks rarely-seen items badly, loses more from one to the other. This script
loads checkpoints written by ``benchmarks.convergence --checkpoint-dir`` (``best.pt``), ranks every
evaluated user's validation and test target under both protocols, and splits the users by:

- ``target_train_count``: how often the target item occurs in the training rows;
- ``target_late_count``: how often it occurs among all users' validation targets (a proxy for how
  popular it is at the end of the timeline, when the dataset has no timestamps);
- ``history_length``: the user's training interactions;
- ``repeat_of_last``: whether the target is an item the user already had in the history.
- ``next_item`` (the embedded sample only): whether the target is the chain successor of the last
  history item, the generator's most frequent rule;
- ``row_kind`` (the embedded sample only): which of the generator's rules could have drawn the target
  (``row_kinds``): the next unseen item along the last item's chain, the same from an earlier
  sub-category of the history (a revisit), or a fresh pick, of a brand the history holds or not;
  and ``successor_rows_by_item_before_last``: the successor rows split by whether the item before the
  last shares the last one's sub-category (where a window of two items mixes two chains).

The JSON holds, per model, split, protocol and bucket: users and mean NDCG@10, HR@10, HR@1 and MRR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, HelpFormatter, machine_info, write_json
from benchmarks.convergence import DATA_DIRS

COUNT_EDGES = (0, 1, 5, 20, 100, 500)  # bucket i: edges[i] <= count < edges[i + 1]; last is open
LENGTH_EDGES = (3, 5, 10, 20, 50)


def bucket_labels(edges: tuple[int, ...]) -> list[str]:
    return [f"{lo}-{hi - 1}" if hi - 1 > lo else str(lo) for lo, hi in zip(edges, edges[1:])] + [
        f"{edges[-1]}+"
    ]


def bucketize(values: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Bucket index per value (values below the first edge go to bucket 0)."""
    return np.clip(np.searchsorted(np.asarray(edges), values, side="right") - 1, 0, len(edges) - 1)


def repeats(data, users: np.ndarray, target_rows: np.ndarray) -> np.ndarray:
    """bool per user: the item at ``target_rows`` already occurs in the user's history before it."""
    starts = data.user_ptr[users]
    lengths = target_rows - starts
    owner = np.repeat(np.arange(len(users)), lengths)
    rows = (
        np.arange(lengths.sum())
        - np.repeat(np.cumsum(lengths) - lengths, lengths)
        + np.repeat(starts, lengths)
    )
    width = data.n_items + 1
    history = owner * width + data.items[rows]
    return np.isin(np.arange(len(users)) * width + data.items[target_rows], history)


def sample_successors(data) -> np.ndarray | None:
    """On the embedded sample: each item's chain successor (item index, 0 where unknown); None
    without item names."""
    catalog = sample_catalog(data)
    return None if catalog is None else catalog["successor"]


ROW_KINDS = [
    "chain successor of the last item",
    "successor in an earlier sub-category",
    "fresh pick, a brand of the history",
    "fresh pick, another brand",
]


def sample_catalog(data, seed: int | None = None) -> dict[str, np.ndarray] | None:
    """On a dump of the sample generator (``seed``; default the embedded sample's): per item index its chain
    ``successor`` (0 unknown), ``subcategory`` and ``brand`` (-1 unknown); None without item names."""
    from convrec_dagster.data.sample_dump import SampleDumpConfig, build_catalog

    if data.item_names is None:
        return None
    catalog = build_catalog(SampleDumpConfig() if seed is None else SampleDumpConfig(seed=seed))
    index = {name: i for i, name in enumerate(data.item_names.tolist())}
    by_asin = {item.asin: item for item in catalog.items}
    items = [by_asin.get(name) for name in data.item_names.tolist()]
    return {
        "successor": np.array(
            [0 if it is None else index.get(catalog.items[it.successor].asin, 0) for it in items],
            dtype=np.int64,
        ),
        "subcategory": np.array([-1 if it is None else it.category * 3 + it.subcategory for it in items]),
        "brand": np.array([-1 if it is None else it.brand for it in items]),
    }


def row_kinds(
    data, starts: np.ndarray, target_rows: np.ndarray, catalog: dict[str, np.ndarray]
) -> np.ndarray:
    """Per user (history ``starts[i]`` .. ``target_rows[i]``), the first of the sample generator's rules,
    in its order, that could have drawn the target (an index into ``ROW_KINDS``): 0 the first item
    along the last item's successor chain that the history does not hold; 1 the same from the last
    item of another sub-category of the history (a revisit); 2 a fresh pick of a brand the history
    holds (the generator favours a user's brands 4x); 3 any other fresh pick."""
    successor, subcategory, brand = catalog["successor"], catalog["subcategory"], catalog["brand"]
    kinds = np.empty(len(starts), dtype=np.int64)
    for k, (start, row) in enumerate(zip(starts.tolist(), target_rows.tolist())):
        history = data.items[start:row].tolist()
        target, seen = int(data.items[row]), set(history)
        if not history:
            kinds[k] = 3
            continue

        def next_unseen(item: int) -> int:
            step, steps = int(successor[item]), 0
            while step and step in seen and steps < len(successor):  # noqa: B023
                step, steps = int(successor[step]), steps + 1
            return step

        last_in_subcategory = {int(subcategory[item]): item for item in history}
        earlier = [item for key, item in last_in_subcategory.items() if key != subcategory[history[-1]]]
        if next_unseen(history[-1]) == target:
            kinds[k] = 0
        elif any(next_unseen(item) == target for item in earlier):
            kinds[k] = 1
        else:
            kinds[k] = 2 if brand[target] in {int(brand[item]) for item in history} else 3
    return kinds


def user_groups(
    data, successors: np.ndarray | None = None, catalog: dict[str, np.ndarray] | None = None
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per evaluated user, one bucket index per grouping (and the buckets' labels), per split.
    ``successors`` (item -> item, 0 unknown) adds ``next_item``: whether the target is the successor
    of the last history item; ``catalog`` (``sample_catalog``) adds ``row_kind`` (``row_kinds``) and
    ``successor_rows_by_item_before_last``."""
    users = data.eval_users()
    ends = data.user_ptr[users + 1]
    valid_items, test_items = data.items[ends - 2], data.items[ends - 1]
    train_counts = data.train_item_counts()
    late_counts = np.bincount(valid_items, minlength=data.n_items + 1)
    lengths = ends - data.user_ptr[users] - 2  # training rows (every evaluated user has two targets)
    groups = {}
    for split, targets, offset in (("valid", valid_items, 2), ("test", test_items, 1)):
        seen = repeats(data, users, ends - offset)
        groups[split] = {
            "target_train_count": (bucketize(train_counts[targets], COUNT_EDGES), bucket_labels(COUNT_EDGES)),
            "target_late_count": (bucketize(late_counts[targets], COUNT_EDGES), bucket_labels(COUNT_EDGES)),
            "history_length": (bucketize(lengths, LENGTH_EDGES), bucket_labels(LENGTH_EDGES)),
            "repeat_of_last": (seen.astype(np.int64), ["new item", "already in history"]),
        }
        if successors is not None:
            follows = successors[data.items[ends - offset - 1]] == targets
            groups[split]["next_item"] = (
                (~follows).astype(np.int64),
                ["successor of the last item", "another"],
            )
        if catalog is not None:
            kinds = row_kinds(data, data.user_ptr[users], ends - offset, catalog)
            groups[split]["row_kind"] = (kinds, ROW_KINDS)
            subcategory = catalog["subcategory"]
            before, last = data.items[ends - offset - 2], data.items[ends - offset - 1]
            mixed = (subcategory[before] != subcategory[last]) & (ends - offset - data.user_ptr[users] >= 2)
            groups[split]["successor_rows_by_item_before_last"] = (
                np.where(kinds == 0, mixed.astype(np.int64), 2),
                [
                    "successor row, the item before the last of the same sub-category",
                    "successor row, the item before the last of another sub-category",
                    "not a successor row",
                ],
            )
    return groups


def per_user_scores(model, data, split: str, protocol: str) -> dict[str, np.ndarray]:
    from models.evaluate import rank_eval_users
    from models.metrics import per_user_metrics

    _, greater, equal = rank_eval_users(model, data, split, protocol, "cpu", 256)
    metrics = per_user_metrics(greater, equal, ks=(1, 10))
    return {k: metrics[k] for k in ("NDCG@10", "HR@10", "HR@1", "MRR")}


def summarize_buckets(values: dict[str, np.ndarray], index: np.ndarray, labels: list[str]) -> list[dict]:
    rows = []
    for i, label in enumerate(labels):
        mask = index == i
        if mask.any():
            rows.append(
                {
                    "bucket": label,
                    "users": int(mask.sum()),
                    **{k: round(float(v[mask].mean()), 4) for k, v in values.items()},
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.valid_test_gap",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATA_DIRS))
    parser.add_argument("--home", required=True, help="the CONVREC_HOME benchmarks.convergence prepared")
    parser.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a label and a best.pt (repeat for each model)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--sample-seed", type=int, default=None,
        help="--dataset sample: the generator seed of the dump --home holds (benchmarks.sample_dumps --dumps); "
        "default the embedded sample's",
    )  # fmt: skip
    parser.add_argument(
        "--out", default="", help="JSON (default benchmarks/results/valid_test_gap_<dataset>.json)"
    )
    args = parser.parse_args(argv)

    import duckdb
    import torch

    from convrec_dagster.data import settings
    from convrec_dagster.data.dataset import load_rec_data
    from models.registry import load_model

    torch.set_num_threads(args.threads)
    loaded: dict[str, object] = {}
    res: dict = {
        "benchmark": "valid_test_gap",
        "command": "python -m benchmarks.valid_test_gap " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info("cpu"),
        "dataset": args.dataset,
        "models": {},
    }
    for spec in args.checkpoint:
        label, _, path = spec.partition("=")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        features = (
            "none" if checkpoint["model"] == "sasrec" else checkpoint["hparams"].get("features", "auto")
        )
        if features not in loaded:
            with duckdb.connect(str(settings.duckdb_path(Path(args.home))), read_only=True) as conn:
                loaded[features] = load_rec_data(conn, features=features)
        data = loaded[features]
        model, checkpoint = load_model(path, data)
        catalog = sample_catalog(data, args.sample_seed) if args.dataset == "sample" else None
        groups = user_groups(data, None if catalog is None else catalog["successor"], catalog)
        out = {"checkpoint": path, "epoch": checkpoint["extra"].get("epoch"), "splits": {}}
        for split in ("valid", "test"):
            out["splits"][split] = {}
            for protocol in ("sampled_100", "full"):
                values = per_user_scores(model, data, split, protocol)
                out["splits"][split][protocol] = {
                    "all": {k: round(float(v.mean()), 4) for k, v in values.items()},
                    **{
                        name: summarize_buckets(values, index, labels)
                        for name, (index, labels) in groups[split].items()
                    },
                }
                print(f"[{label}] {split} {protocol}: {out['splits'][split][protocol]['all']}", flush=True)
        res["models"][label] = out
    path = Path(args.out or RESULTS_DIR / f"valid_test_gap_{args.dataset}.json")
    write_json(res, path)
    for label, out in res["models"].items():
        print(f"\n{label}: sampled NDCG@10 valid -> test by bucket")
        for name in groups["valid"]:
            for v, t in zip(
                out["splits"]["valid"]["sampled_100"][name], out["splits"]["test"]["sampled_100"][name]
            ):
                print(
                    f"  {name:20s} {v['bucket']:>18s}: valid {v['NDCG@10']:.3f} ({v['users']:6d})"
                    f"  test {t['NDCG@10']:.3f} ({t['users']:6d})"
                )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
