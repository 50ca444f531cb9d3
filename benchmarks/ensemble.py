"""What ranking by the mean of several trained models' scores buys: every member alone and every
ensemble of ``--size`` of them, on validation and test, under both protocols.

    python -m benchmarks.ensemble --home /tmp/s45/beauty_home \\
        --checkpoint seed42=/tmp/ckpt42/best.pt --checkpoint seed0=/tmp/ckpt0/best.pt --out ensemble.json

The checkpoints are ``best.pt`` files of ``benchmarks.convergence --checkpoint-dir`` (or of the pipeline)
trained on the prepared data in ``--home``. An ensemble ranks by the mean of its members' scores (each
with its own popularity adjustment), exactly as ``models.evaluate`` ranks one model (full ranking masks
the history). Each batch of users is scored once per member, and every ensemble's ranks come from those
scores. The members are independently trained copies of one model (different seeds): a deep ensemble.
Not a pipeline setting: a measurement of what a second model, trained beside the first on the other
core, would buy. The JSON holds, per model or ensemble, split and protocol: HR@10 and NDCG@10 with 95 % bootstrap
intervals; and for every ensemble, its per-user NDCG@10 against each member's (a paired permutation test),
on test under full ranking and sampled-100.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, HelpFormatter, machine_info, write_json

SPLITS = ("valid", "test")
PROTOCOLS = ("full", "sampled_100")


def ranks_per_subset(members: dict, data, split: str, protocol: str, subsets: list[tuple[str, ...]]) -> dict:
    """(n_greater, n_equal) per evaluated user for every subset of ``members`` (name -> model): the ranks
    of the mean of the subset's scores (``predict`` / ``full_sort_predict``), as ``rank_eval_users`` ranks."""
    import torch

    from models.evaluate import rank_counts, scored_eval_batches

    device = torch.device("cpu")
    names = list(members)
    counts = {s: ([], []) for s in subsets}
    with contextlib.ExitStack() as stack:
        for model in members.values():
            model.eval()
            stack.enter_context(model.item_table_for_eval())
        streams = [scored_eval_batches(members[n], data, split, protocol, device) for n in names]
        for parts in zip(*streams):
            scores = dict(zip(names, (p[0] for p in parts)))
            items, not_counted = parts[0][1], parts[0][2]
            for subset in subsets:
                mean = torch.stack([scores[n] for n in subset]).mean(0)
                above, tied = rank_counts(mean, items, not_counted)
                counts[subset][0].append(above)
                counts[subset][1].append(tied)
    return {
        s: (torch.cat(g).numpy().astype(np.int64), torch.cat(e).numpy().astype(np.int64))
        for s, (g, e) in counts.items()
    }


def plot(results: dict, target: float | None, path: Path) -> None:
    """Test NDCG@10 of every member and ensemble with its 95 % interval, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.6))
    for ax, protocol in zip(axes, PROTOCOLS):
        cells = [results[n][f"test_{protocol}"]["NDCG@10"] for n in names]
        means = [c["mean"] for c in cells]
        errors = [
            [m - c["ci95"][0] for m, c in zip(means, cells)],
            [c["ci95"][1] - m for m, c in zip(means, cells)],
        ]
        colours = ["tab:blue" if "+" in n else "tab:gray" for n in names]
        ax.barh(names, means, xerr=errors, color=colours, capsize=3)
        if target is not None and protocol == "full":
            ax.axvline(target, color="tab:red", linestyle="--")
            ax.set_title(f"dashed: the target, {target}", fontsize=9, color="tab:red")
        ax.set_xlim(min(c["ci95"][0] for c in cells) * 0.97, max(c["ci95"][1] for c in cells) * 1.02)
        ax.set_xlabel(f"test NDCG@10 ({protocol}), 95 % interval")
        ax.invert_yaxis()
    axes[1].set_yticklabels([])
    fig.suptitle("members (gray) and ensembles, the mean of their scores (blue)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ensemble",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--home", required=True, help="CONVREC_HOME of the prepared data the models trained on"
    )
    parser.add_argument(
        "--checkpoint", action="append", required=True, metavar="NAME=PATH", help="a member (at least two)"
    )
    parser.add_argument("--size", type=int, default=2, help="members per ensemble (every combination)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--target", type=float, help="a test full-ranking NDCG@10 to draw on the plot")
    parser.add_argument(
        "--out", default=str(RESULTS_DIR / "ensemble.json"), help="the JSON; the plot beside it (.png)"
    )
    args = parser.parse_args(argv)
    if any("=" not in c for c in args.checkpoint):
        parser.error("each --checkpoint is NAME=PATH, for example seed42=/tmp/ckpt42/best.pt")
    members_arg = dict(c.split("=", 1) for c in args.checkpoint)
    if len(members_arg) < len(args.checkpoint):
        parser.error("two checkpoints share a NAME; give each its own")
    if len(members_arg) < 2 or not 2 <= args.size <= len(members_arg):
        parser.error("give at least two checkpoints and --size between 2 and their number")

    import duckdb
    import torch

    from convrec_dagster.data import settings
    from convrec_dagster.data.dataset import data_for_checkpoint, load_rec_data
    from models.metrics import bootstrap_ci, per_user_metrics
    from models.registry import model_from_checkpoint
    from models.significance import paired_permutation_test

    torch.set_num_threads(args.threads)
    loaded = {}

    def load(features: str):
        if features not in loaded:
            with duckdb.connect(str(settings.duckdb_path(Path(args.home))), read_only=True) as conn:
                loaded[features] = load_rec_data(conn, features=features)
        return loaded[features]

    members, about, datasets = {}, {}, {}
    for name, path in members_arg.items():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        data = data_for_checkpoint(load, checkpoint)  # the features it trained on, its fingerprint checked
        if data is None:
            parser.error(
                f"{path} was not trained on the data in {args.home}: no loading of it has its fingerprint"
            )
        members[name] = model_from_checkpoint(checkpoint, data)
        datasets[id(data)] = data
        extra = checkpoint.get("extra") or {}
        about[name] = {
            "path": path,
            "model": checkpoint["model"],
            "epoch": extra.get("epoch"),
            "valid": extra.get("valid"),
        }
    if len(datasets) > 1:
        parser.error(
            "the members were trained on different feature sets of the data; ensemble one model's runs"
        )
    (data,) = datasets.values()
    subsets = [(n,) for n in members] + list(itertools.combinations(members, args.size))
    res = {"benchmark": "ensemble", "command": "python -m benchmarks.ensemble " + " ".join(argv or sys.argv[1:]),
           "machine": machine_info("cpu"), "members": about, "results": {}, "ensemble_vs_member": {}}  # fmt: skip
    per_user = {}
    for split, protocol in itertools.product(SPLITS, PROTOCOLS):
        for subset, (greater, equal) in ranks_per_subset(members, data, split, protocol, subsets).items():
            metrics = per_user_metrics(greater, equal, ks=(10,))
            per_user[subset, split, protocol] = metrics["NDCG@10"]
            res["results"].setdefault("+".join(subset), {})[f"{split}_{protocol}"] = {
                name: {"mean": round(float(metrics[name].mean()), 4),
                       "ci95": [round(v, 4) for v in bootstrap_ci(metrics[name])]}
                for name in ("HR@10", "NDCG@10")
            }  # fmt: skip
        cells = {
            name: cell[f"{split}_{protocol}"]["NDCG@10"]["mean"] for name, cell in res["results"].items()
        }
        print(
            f"{split} {protocol} NDCG@10: " + ", ".join(f"{n} {v:.4f}" for n, v in cells.items()), flush=True
        )
    for subset in subsets[len(members) :]:
        for member, protocol in itertools.product(subset, PROTOCOLS):
            test = paired_permutation_test(
                per_user[subset, "test", protocol], per_user[(member,), "test", protocol]
            )
            res["ensemble_vs_member"].setdefault("+".join(subset), {})[f"{member} test_{protocol}"] = {
                k: round(v, 5) if isinstance(v, float) else v for k, v in test.items()
            }
    write_json(res, args.out)
    plot(res["results"], args.target, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} and its plot")


if __name__ == "__main__":
    main()
