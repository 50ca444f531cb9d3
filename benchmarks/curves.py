"""Learning curves of every accuracy run of a dataset in one plot, beside the published figures.

    python -m benchmarks.curves --dataset video

Reads ``benchmarks/results/convergence/<dataset>_*.json`` (``benchmarks.convergence``) and the
training histories inside ``benchmarks/results/accuracy_<dataset>_*.json`` (``benchmarks.accuracy``),
and plots validation NDCG@10 (sampled 100) against training minutes, one line per run, with the
published test figures of ``benchmarks.accuracy.PUBLISHED`` as dashed lines. Writes
``benchmarks/results/curves_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.accuracy import PUBLISHED
from benchmarks.common import RESULTS_DIR


def runs(dataset: str) -> list[tuple[str, list[dict]]]:
    """(label, history) of every run with at least one trained epoch."""
    out = []
    for path in sorted((RESULTS_DIR / "convergence").glob(f"{dataset}_*.json")):
        res = json.loads(path.read_text())
        out.append((f"{path.stem} (convergence)", res.get("history") or []))
    for path in sorted(RESULTS_DIR.glob(f"accuracy_{dataset}_*.json")):
        res = json.loads(path.read_text())
        for asset, meta in (res.get("training") or {}).items():
            if meta.get("history") and asset != "popularity_model":
                out.append((f"{path.stem}: {asset}", meta["history"]))
    return [(label, h) for label, h in out if any(r.get("loss") is not None for r in h)]


def plot(dataset: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    colors = plt.get_cmap("tab20").colors  # more runs than the default cycle's 10 colours
    for i, (label, history) in enumerate(runs(dataset)):
        minutes, total = [], 0.0
        for record in history:
            total += record.get("epoch_time_s") or 0.0
            minutes.append(total / 60)
        style = {"color": colors[i % len(colors)], "ls": "-" if i < len(colors) else ":"}
        ax.plot(minutes, [r["valid_NDCG@10"] for r in history], marker=".", label=label, **style)
    for row in PUBLISHED[dataset]["rows"]:
        if row["protocol"] == "sampled_100":
            ax.axhline(row["NDCG@10"], ls="--", lw=0.8, color="gray")
            ax.text(
                0.99,
                row["NDCG@10"],
                f"{row['model']} (published, test) ",
                fontsize=7,
                va="bottom",
                ha="right",
                transform=ax.get_yaxis_transform(),
            )
    ax.set_xlabel("training minutes (2-core CPU, 1 torch thread per run)")
    ax.set_ylabel("validation NDCG@10, sampled 100")
    ax.set_title(f"{dataset}: learning curves")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(PUBLISHED))
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    print(plot(args.dataset, Path(args.out or RESULTS_DIR / f"curves_{args.dataset}.png")))


if __name__ == "__main__":
    main()
