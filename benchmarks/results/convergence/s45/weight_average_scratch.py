"""Stop 45 scratch: uniform averages of the per-epoch weight averages (EMA) kept by run_wave1.sh.

For a run's snapshots epoch_1.pt .. epoch_n.pt (each a copy of that epoch's resume.pt), evaluate the
uniform average of the EMA weights over epochs k..j, for every window that ends at the best epoch or at
the last, and report validation (both protocols) and test (both protocols). The window is to be picked by
full-ranking validation, as the budget picks its epoch; test figures are printed for every window only so
that the pick can be checked afterwards.

    PYTHONPATH=. python benchmarks/results/convergence/s45/weight_average_scratch.py RUN.json CKPT_DIR OUT.json
"""

import json
import sys
from pathlib import Path

import duckdb
import torch

from benchmarks.convergence import test_metrics
from convrec_dagster.data import settings
from convrec_dagster.data.dataset import load_rec_data
from models.registry import build_model
from models.train import validate

run_json, ckpt_dir, out_json = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
run = json.loads(run_json.read_text())
home = Path(run["command"].split("--home ")[1].split()[0])
with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
    data = load_rec_data(conn, features=run["hparams"].get("features", "auto"))
model = build_model(run["model"], data, run["hparams"])
model.eval()
snaps = sorted(ckpt_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def ema_weights(path: Path) -> tuple[int, dict]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    return int(state["epoch"]), {**state["model"], **ema}


weights = dict(ema_weights(p) for p in snaps)
epochs = sorted(weights)
best = run["best_epoch"]
last = epochs[-1]
print(f"snapshots: epochs {epochs}; best {best}, last {last}", flush=True)
windows = sorted(
    {(k, best) for k in range(max(1, best - 4), best + 1)} | {(k, last) for k in range(max(1, last - 5), last + 1)}
)
rows = []
for k, j in windows:
    if k not in weights or j not in weights:
        continue
    span = [weights[e] for e in range(k, j + 1)]
    avg = {
        name: (sum(w[name].double() for w in span) / len(span)).to(v.dtype) if v.is_floating_point() else v
        for name, v in span[-1].items()
    }
    model.load_state_dict(avg)
    valid = validate(model, data, torch.device("cpu"), "fp32", 256, "full")
    test = test_metrics(model, data, "cpu")
    row = {"from": k, "to": j, "n": j - k + 1, "valid": {n: round(float(v), 4) for n, v in valid.items()}, "test": test}
    rows.append(row)
    print(json.dumps(row), flush=True)
    out_json.write_text(json.dumps({"run": str(run_json), "best_epoch": best, "last_epoch": last, "windows": rows}, indent=1))
