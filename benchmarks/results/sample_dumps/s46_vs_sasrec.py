"""Stop 46: ConvRec (the budget's one model, and the ensemble of two seeds) minus SASRec per dump on dumps 30-41,
with a dump-unit bootstrap interval and a sign-flip p-value (as ``benchmarks.sample_dumps`` summarises a run).

    python benchmarks/results/sample_dumps/s46_vs_sasrec.py   # writes s46_vs_sasrec.json beside it
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
budget = json.loads((HERE / "s46_budget_dumps30_41.json").read_text())["rows"]
ensemble = json.loads((HERE / "s46_ensemble_dumps30_41.json").read_text())["rows"]
by_dump = lambda rows, model: {r["dump_seed"]: r for r in rows if r["model"] == model}  # noqa: E731
sasrec, runs = by_dump(budget, "sasrec"), {"one model": by_dump(budget, "convrec"), "ensemble": by_dump(ensemble, "convrec")}
rng = np.random.default_rng(0)
out = {}
for name, convrec in runs.items():
    out[name] = {"seconds_per_run": round(float(np.mean([r["seconds"] for r in convrec.values()])), 1)}
    for key in ("valid", "test", "test_full"):
        diff = np.array([convrec[d][key] - sasrec[d][key] for d in sorted(sasrec)])
        boot = rng.choice(diff, (10_000, len(diff))).mean(1)
        flips = (rng.choice([-1, 1], (10_000, len(diff))) * diff).mean(1)
        out[name][f"{key}_minus_sasrec"] = {
            "mean": round(float(diff.mean()), 4),
            "ci95_over_dumps": [round(float(x), 4) for x in np.percentile(boot, [2.5, 97.5])],
            "dumps_ahead": int((diff > 0).sum()),
            "dumps": len(diff),
            "p_value_over_dumps": round(float((np.abs(flips) >= abs(diff.mean()) - 1e-12).mean()), 4),
        }
out["sasrec_seconds_per_run"] = round(float(np.mean([r["seconds"] for r in sasrec.values()])), 1)
(HERE / "s46_vs_sasrec.json").write_text(json.dumps(out, indent=1))
print(json.dumps(out, indent=1))
