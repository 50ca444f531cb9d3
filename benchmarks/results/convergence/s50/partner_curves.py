"""Stop 50: Beauty's full-ranking validation NDCG@10 against minutes of training at seed 42: ConvRec alone, beside
a second ConvRec (mutual learning W 1 and W .5) and beside a SASRec d 64 (the same, with a partner of another
architecture), each run's test figure in the legend. Minutes, not epochs, because the partners cost differently
under the same 60-minute cap. Writes partner_curves.png beside this script."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from benchmarks.curves import plot_full_validation  # noqa: E402

RUNS = [
    ("alone (stop 45, one thread beside another run)", "convergence/s45/beauty_convrec_budget_seed42.json", "C0", ":"),
    ("ConvRec partner, convergence run (stop 47)", "convergence/s47/beauty_convrec_budget_mutual1_seed42.json", "C1", "--"),
    ("ConvRec partner, pipeline (stop 48)", "accuracy_beauty_cpu_convrec_mutual1.json", "C1", "-"),
    ("ConvRec partner at W .5 (stop 50)", "convergence/s50/beauty_convrec_budget_mutual05_seed42.json", "C2", "-"),
    ("SASRec d 64 partner (stop 50)", "convergence/s50/beauty_convrec_budget_hetero_sasrec64_seed42.json", "C3", "-"),
]  # fmt: skip

fig, ax = plt.subplots(figsize=(7.5, 4.2))
plot_full_validation(ax, RUNS, marker=".")
ax.axvline(60, color="grey", lw=0.8)
ax.set_ylim(0.064, 0.077)
ax.set_xlim(12, 62)  # the first epochs sit far below the plateau
ax.set_xlabel("minutes of training (2 CPU cores; the issue's cap at 60)")
ax.set_ylabel("validation full-ranking NDCG@10")
ax.set_title("Beauty, ConvRec seed 42 alone and beside a partner; BSARec's test .0611", fontsize=9)
ax.legend(fontsize=7, loc="lower right")
fig.tight_layout()
fig.savefig(Path(__file__).with_name("partner_curves.png"), dpi=110)
