"""The `cpu` budget on large catalogues: preflight's time per epoch with and without the large-catalogue rule.

Above ``models.budgets.LARGE_CATALOGUE_ITEMS`` items the budget's softmax over every item becomes a shared
softmax over 4,096 items per batch, and a full-ranking validation of more than ``MAX_VALIDATION_SCORES``
(user, item) scores runs on a fixed user sample. This script times both settings the way the `preflight`
asset does (``convrec_dagster.data.preflight.estimate_model``: training batches of the real model on
synthetic data of each size, times the batches of one epoch, plus one validation pass) at the sizes of the
paper's Table 1 and of the benchmark files. Writes JSON and a plot with the machine it ran on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, HelpFormatter, machine_info, write_json
from models.budgets import LARGE_CATALOGUE_ITEMS

# (name, users, items, interactions): the benchmark files and the paper's Table 1 (docs/CONVREC_SPEC.md §1)
SIZES = [
    ("Beauty (S3-Rec file)", 22_363, 12_101, 198_502),
    ("Games / Video", 31_013, 23_715, 287_107),
    ("Beauty (paper)", 52_204, 57_289, 394_908),
    ("Men (paper)", 34_244, 110_636, 254_870),
    ("Fashion (paper)", 45_184, 166_270, 358_003),
]
MODELS = ("convrec", "sasrec")


def budget_settings_for(name: str, size, rule: bool) -> dict:
    """The `cpu` budget's settings for ``name`` on data of ``size`` (attributes, no time path), as preflight
    resolves them (``assets.preflight.estimate_settings``); ``rule`` False: the softmax over every item and
    every user validated, set as a user would, which the rule never overrides."""
    from assets.preflight import estimate_settings
    from assets.training import TrainingConfig
    from convrec_dagster.data.dataset_info import DatasetInfo

    before = {} if rule else {"loss": "full_softmax", "max_validation_scores": 0}
    config = TrainingConfig(budget="cpu", num_threads=0, **before)
    info = DatasetInfo(name="large", format="sasrec_sequences", has_time=False)
    return estimate_settings(name, config, info, size, cuda=False)[1]


def changes_nothing(without: dict, with_rule: dict, size) -> bool:
    from convrec_dagster.data.training_setup import train_config
    from models.train import validated_user_count

    def key(s: dict) -> tuple:
        return s["loss"], s["n_negatives"], validated_user_count(size.users, size.items, train_config(s))

    return key(without) == key(with_rule)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODELS), figsize=(11, 4), sharey=True)
    for ax, model in zip(axes, MODELS):
        rows = [r for r in result["rows"] if r["model"] == model]
        for rule, style in ((False, "o--"), (True, "s-")):
            pts = [(r["items"], r["seconds_per_epoch"] / 60) for r in rows if r["rule"] is rule]
            if pts:
                ax.plot(
                    *zip(*pts),
                    style,
                    label="the budget now"
                    if rule
                    else "before: softmax over every item, every user validated",
                )
        ax.axhline(60, color="grey", lw=0.8, ls=":")
        ax.axvline(LARGE_CATALOGUE_ITEMS, color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlabel="items", title=f"{model}: cpu budget, one epoch")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("minutes per epoch (training + validation)")
    fig.suptitle(f"preflight estimates, {result['machine'].get('cpu_model') or 'CPU'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.large_catalogue",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS_DIR / "large_catalogue.json"), help="JSON path")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from convrec_dagster.data.preflight import DataSize, estimate_model

    torch.set_num_threads(args.threads)
    rows = []
    for label, users, items, interactions in SIZES:
        train_rows = interactions - 2 * users
        lengths = np.full(users, max(train_rows // users, 1))
        size = DataSize(users, items, train_rows, False, True, label, lengths)
        for model in MODELS:
            variants = {rule: budget_settings_for(model, size, rule) for rule in (False, True)}
            if changes_nothing(variants[False], variants[True], size):
                variants.pop(False)  # one estimate where the rule changes nothing
            for rule, s in variants.items():
                started = time.perf_counter()
                e = estimate_model(model, "cpu", s, size, "cpu", "fp32")
                rows.append({"size": label, "users": users, "items": items, "rule": rule, **e})
                print(
                    f"{label:22s} {model:8s} rule {rule!s:5s} loss {e['loss']:14s} {e['seconds_per_epoch'] / 60:7.1f} "
                    f"min/epoch (validation {e['validation_seconds_per_epoch'] / 60:5.1f} min on "
                    f"{e['validated_users']:,} users; estimated in {time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
    result = {
        "benchmark": "large_catalogue",
        "command": "python -m benchmarks.large_catalogue "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("cpu"),
        "threads": args.threads,
        "what": "preflight's estimate of one epoch (training batches timed on synthetic data of each size, "
        "attributes, no time path) under the cpu budget, with and without the large-catalogue rule",
        "rows": rows,
    }
    out = write_json(result, args.out)
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
