"""Learning curves of every accuracy run of a dataset in one plot, beside the published figures.

    python -m benchmarks.curves --dataset video

Reads ``benchmarks/results/convergence/<dataset>_*.json`` (``benchmarks.convergence``) and the
training histories inside ``benchmarks/results/accuracy_<dataset>_*.json`` (``benchmarks.accuracy``),
or the JSONs that ``--runs`` names (globs under ``benchmarks/results``, subfolders included),
and plots validation NDCG@10 (sampled 100) against training minutes, one line per run, with the
published test figures of ``benchmarks.accuracy.PUBLISHED`` as dashed lines; runs that also logged
full-ranking validation (``--valid-protocol full``) get a second panel beside the published
full-ranking figures. Writes
``benchmarks/results/curves_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.accuracy import PUBLISHED, draw_published
from benchmarks.common import RESULTS_DIR


def _histories(path: Path) -> list[tuple[str, list[dict]]]:
    """(label, history) of each trained model in one result JSON: a ``benchmarks.convergence`` run, or
    each training asset of a ``benchmarks.accuracy`` run (each member of an ensemble of seeds)."""
    res = json.loads(path.read_text())
    if "training" in res:
        out = []
        for asset, meta in (res.get("training") or {}).items():
            if asset == "popularity_model":
                continue
            members = meta.get("member_histories") or []  # an ensemble of seeds: one line per member
            if members:
                out += [(f"{path.stem}: {asset} member {i}", h) for i, h in enumerate(members) if h]
            elif meta.get("history"):
                out.append((f"{path.stem}: {asset}", meta["history"]))
        return out
    return [(f"{path.stem} (convergence)", res.get("history") or [])]


def history_and_test(path: Path, model: str = "convrec") -> tuple[list[dict], dict]:
    """``model``'s validation history and its test full-ranking metrics in one result JSON, a
    ``benchmarks.convergence`` run or a ``benchmarks.accuracy`` run (for a stop's own plots)."""
    res = json.loads(Path(path).read_text())
    if "training" in res:
        history = res["training"][f"{model}_model"]["history"]
        return history, res["ours_test_all_users"][model]["full"]
    return res["history"], res["test"]["full"]


def plot_full_validation(
    ax, runs: list[tuple[str, str, str, str]], x: str = "minutes", **plot_kwargs
) -> None:
    """For a stop's own plots: one line per ``(label, path under benchmarks/results, color, style)``, the run's
    full-ranking validation NDCG@10 against minutes of training (``x="minutes"``) or epochs (``x="epoch"``),
    its test full NDCG@10 in the legend label (``history_and_test``)."""
    for label, rel, color, style in runs:
        history, test = history_and_test(RESULTS_DIR / rel)
        xs = [row["elapsed_s"] / 60 for row in history] if x == "minutes" else range(1, len(history) + 1)
        valid = [row["valid_full_NDCG@10"] for row in history]
        ax.plot(xs, valid, style, color=color, label=f"{label}: test {test['NDCG@10']:.4f}", **plot_kwargs)


def runs(dataset: str, patterns: list[str] | None = None) -> list[tuple[str, list[dict]]]:
    """(label, history) of every run with at least one trained epoch: by default every top-level
    convergence and accuracy JSON of ``dataset``; with ``patterns``, the JSONs they match under
    ``benchmarks/results`` (for example ``convergence/s32/beauty_*.json``)."""
    patterns = patterns or [f"convergence/{dataset}_*.json", f"accuracy_{dataset}_*.json"]
    paths = [path for pattern in patterns for path in sorted(RESULTS_DIR.glob(pattern))]
    out = [run for path in dict.fromkeys(paths) for run in _histories(path)]
    return [(label, h) for label, h in out if any(r.get("loss") is not None for r in h)]


def _minutes(history: list[dict]) -> list[float]:
    minutes, total = [], 0.0
    for record in history:
        total += record.get("epoch_time_s") or 0.0
        minutes.append(total / 60)
    return minutes


def _published(ax, dataset: str, protocol: str) -> None:
    """Dashed lines at the published test figures of ``protocol``."""
    draw_published(ax, PUBLISHED[dataset]["rows"], protocol)


CPU_MINUTES = "training minutes (2-core CPU, 1 torch thread per run)"


def plot(dataset: str, out: Path, patterns: list[str] | None = None, xlabel: str = CPU_MINUTES) -> Path:
    """Sampled validation curves of every run; beside them, where runs logged it (``valid_protocol:
    full``), full-ranking validation curves against the published full-ranking figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = runs(dataset, patterns)
    legend_in = 0.14 * ((len(found) + 1) // 2) + 0.1  # one shared legend below the panels, two columns
    height = 5 + legend_in
    with_full = [(label, h) for label, h in found if any("valid_full_NDCG@10" in r for r in h)]
    fig, axes = plt.subplots(
        1, 2 if with_full else 1, figsize=(15 if with_full else 9, height), dpi=100, squeeze=False
    )
    ax = axes[0, 0]
    colors = plt.get_cmap("tab20").colors  # more runs than the default cycle's 10 colours
    style = {
        label: {"color": colors[i % len(colors)], "ls": "-" if i < len(colors) else ":"}
        for i, (label, _) in enumerate(found)
    }
    for label, history in found:
        ax.plot(
            _minutes(history), [r["valid_NDCG@10"] for r in history], marker=".", label=label, **style[label]
        )
    _published(ax, dataset, "sampled_100")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation NDCG@10, sampled 100")
    ax.set_title(f"{dataset}: learning curves")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=6, loc="lower center", ncol=2, frameon=False)
    if with_full:
        full = axes[0, 1]
        for label, history in with_full:
            values = [r.get("valid_full_NDCG@10") for r in history]
            full.plot(_minutes(history), values, marker=".", label=label, **style[label])
        _published(full, dataset, "full")
        full.set_xlabel(xlabel)
        full.set_ylabel("validation NDCG@10, full ranking")
        full.set_title(f"{dataset}: full-ranking validation (runs with valid_protocol full)")
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(PUBLISHED))
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="GLOB",
        help="result JSONs to plot, as globs under benchmarks/results (default: every top-level "
        "convergence/<dataset>_*.json and accuracy_<dataset>_*.json)",
    )
    parser.add_argument("--out", default="", help="default benchmarks/results/curves_<dataset>.png")
    parser.add_argument("--xlabel", default=CPU_MINUTES, help="the x axis: the machine the runs trained on")
    args = parser.parse_args(argv)
    out = Path(args.out or RESULTS_DIR / f"curves_{args.dataset}.png")
    print(plot(args.dataset, out, args.runs, args.xlabel))


if __name__ == "__main__":
    main()
