"""Stop 51: Beauty's full-ranking validation NDCG@10 per epoch for the cpu budget's one model trained alone, the same
command and seed on the AMD EPYC of stop 45 and on the Intel Xeon of stop 51, beside the pair (mutual learning W 1)
trained on the Intel machine at that seed; each run's test figure in the legend. One panel per seed. Writes
machine_curves.png beside this script."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from benchmarks.curves import plot_full_validation  # noqa: E402

PAIRS = {42: "convergence/s47/beauty_convrec_budget_mutual1_seed42.json", 0: "convergence/s48/beauty_convrec_budget_mutual1_seed0.json"}  # fmt: skip

fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, seed in zip(axes, PAIRS):
    plot_full_validation(
        ax,
        [
            ("alone, AMD (stop 45)", f"convergence/s45/beauty_convrec_budget_seed{seed}.json", "C0", ":"),
            ("alone, Intel (stop 51)", f"convergence/s51/beauty_convrec_budget_alone_seed{seed}.json", "C0", "-"),
            ("pair W 1, Intel", PAIRS[seed], "C1", "-"),
        ],
        x="epoch",
        marker=".",
    )
    ax.set_title(f"seed {seed}", fontsize=9)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0.066, 0.0765)
    ax.legend(fontsize=7, loc="lower right")
axes[0].set_ylabel("validation full-ranking NDCG@10")
fig.suptitle("Beauty, the cpu budget's ConvRec: one command on two machines, and the pair; BSARec's test .0611", fontsize=9)
fig.tight_layout()
fig.savefig(Path(__file__).with_name("machine_curves.png"), dpi=110)
