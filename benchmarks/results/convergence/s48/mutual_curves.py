"""Stop 48: Beauty's full-ranking validation NDCG@10 by epoch, one model against mutual learning (W 1), seeds 42
and 0, with each run's test figure in the legend. Writes mutual_curves.png beside this script."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from benchmarks.curves import plot_full_validation  # noqa: E402

RUNS = [
    ("one model, seed 42 (stop 45)", "convergence/s45/beauty_convrec_budget_seed42.json", "C0", ":"),
    (
        "mutual W 1, seed 42, convergence run (stop 47)",
        "convergence/s47/beauty_convrec_budget_mutual1_seed42.json",
        "C0",
        "--",
    ),
    ("mutual W 1, seed 42, pipeline (stop 48)", "accuracy_beauty_cpu_convrec_mutual1.json", "C0", "-"),
    ("one model, seed 0 (stop 45)", "convergence/s45/beauty_convrec_budget_seed0.json", "C1", ":"),
    (
        "mutual W 1, seed 0, convergence run (stop 48)",
        "convergence/s48/beauty_convrec_budget_mutual1_seed0.json",
        "C1",
        "-",
    ),
]


fig, ax = plt.subplots(figsize=(7.5, 4.2))
plot_full_validation(ax, RUNS, x="epoch")
ax.set_ylim(0.066, 0.077)
ax.set_xlim(4.5, 21.5)  # the first epochs sit far below the plateau
ax.set_xlabel("epoch (2 CPU cores, about 165 s each with mutual learning)")
ax.set_ylabel("validation full-ranking NDCG@10")
ax.set_title(
    "Beauty, ConvRec as one model: mutual learning (W 1) against one model; BSARec's test .0611", fontsize=9
)
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
fig.savefig(Path(__file__).with_name("mutual_curves.png"), dpi=110)
