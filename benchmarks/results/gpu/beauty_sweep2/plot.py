"""The stop 39 sweep as one picture: test full NDCG@10 per run, by change, against BSARec's .0611.

python benchmarks/results/gpu/beauty_sweep2/plot.py      # writes sweep.png beside this file
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
summary = json.loads((HERE / "summary.json").read_text())
variants = sorted(summary["by_variant"], key=lambda v: summary["by_variant"][v]["mean_test_full_NDCG10"])
fig, ax = plt.subplots(figsize=(8, 5.5))
for y, name in enumerate(variants):
    runs = [r for r in summary["runs"] if r["variant"] == name]
    ax.scatter([r["test_full_NDCG10"] for r in runs], [y] * len(runs), color="tab:blue", s=22, zorder=3)
    ax.scatter([summary["by_variant"][name]["mean_test_full_NDCG10"]], [y], marker="|", s=300, color="black")
ax.axvline(0.0611, color="tab:red", linestyle="--", label="BSARec's published .0611 (target)")
ax.axvline(0.0600, color="tab:green", linestyle=":", label="the cpu budget on 2 CPU cores, seed 0 (.0600)")
ax.set_yticks(range(len(variants)), [summary["by_variant"][v]["change"] for v in variants], fontsize=8)
ax.set_xlabel("Beauty test full-ranking NDCG@10 (dots: runs; bars: means)")
ax.set_title("ConvRec on Beauty, 13 epochs (the CPU hour) on one H200", fontsize=10)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(HERE / "sweep.png", dpi=110)
