"""Scratch (stop 42): the Beauty pipeline run's resident memory over time (ps every 30 s), beside the peaks
of the same run before the per-epoch malloc_trim (stop 40: 7.5 GB, stop 41: 8.0 GB)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).parent
rows = [line.split() for line in (here / "rss_pipeline_beauty_seed42.log").read_text().splitlines()]
rows = [(int(t), int(kb)) for t, kb in rows if kb.isdigit()]
t0 = rows[0][0]
minutes = [(t - t0) / 60 for t, _ in rows]
gb = [kb / 2**20 for _, kb in rows]
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(minutes, gb, label="stop 42 (malloc_trim after each epoch), sampled every 30 s")
for peak, label in ((7.5, "stop 40's peak (ru_maxrss)"), (8.0, "stop 41's peak (ru_maxrss)")):
    ax.axhline(peak, ls="--", lw=1, color="grey")
    ax.text(1, peak + 0.1, label, fontsize=8)
ax.set_xlabel("minutes since the sampler started (during epoch 3 of 17)")
ax.set_ylabel("resident memory (GB)")
ax.set_ylim(0, 9)
ax.set_title("Beauty, benchmarks.accuracy --models convrec (cpu budget, 1 thread)")
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(here / "rss_pipeline_beauty_seed42.png", dpi=110)
print(f"max {max(gb):.2f} GB over {minutes[-1]:.0f} min")
