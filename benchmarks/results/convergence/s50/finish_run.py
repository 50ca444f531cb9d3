"""Stop 50: finish a ``hetero_scratch.py`` run whose last step failed. The scratch replaced
``models.registry.build_model`` for every later call, so ``benchmarks.convergence`` rebuilt the kept ConvRec's
``best_sampled_100.pt`` as a SASRec after training and stopped before writing its test figures (fixed in the
scratch since). This computes them as ``benchmarks.convergence`` does, from the run's checkpoints: both protocols
from ``best.pt`` (the epoch full-ranking validation picked), the sampled one from ``best_sampled_100.pt``.

    python benchmarks/results/convergence/s50/finish_run.py --home H --checkpoint-dir C --out O
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

import duckdb  # noqa: E402

from benchmarks.convergence import test_metrics, write_json  # noqa: E402
from convrec_dagster.data import settings  # noqa: E402
from convrec_dagster.data.dataset import load_rec_data  # noqa: E402
from models.registry import load_model  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--home", required=True)
parser.add_argument("--checkpoint-dir", required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()

res = json.loads(Path(args.out).read_text())
history = json.loads((Path(args.checkpoint_dir) / "history.json").read_text())
with duckdb.connect(str(settings.duckdb_path(Path(args.home))), read_only=True) as conn:
    data = load_rec_data(conn, features=res["hparams"]["features"])
best = max(history, key=lambda r: (r["valid_full_NDCG@10"], -r["epoch"]))
sampled = max(history, key=lambda r: (r["valid_NDCG@10"], -r["epoch"]))
res["train_wall_s"] = round(history[-1]["elapsed_s"], 1)  # the last epoch's elapsed time (the wall time was lost)
res["best_epoch"] = best["epoch"]
res["minutes_to_best"] = round(sum(h["epoch_time_s"] for h in history[: best["epoch"]]) / 60, 2)
res["best_valid"] = {k.removeprefix("valid_"): v for k, v in best.items() if k.startswith("valid_")}
res["test"] = test_metrics(load_model(Path(args.checkpoint_dir) / "best.pt", data, "cpu")[0], data, "cpu")
res["popularity_adjustment"] = {}
res["sampled_100_best_epoch"] = sampled["epoch"]
res["test_at_best_epoch"] = json.loads(json.dumps(res["test"]))
res["test"]["sampled_100"] = test_metrics(
    load_model(Path(args.checkpoint_dir) / "best_sampled_100.pt", data, "cpu")[0], data, "cpu", ("sampled_100",)
)["sampled_100"]
res["finished_by"] = "python benchmarks/results/convergence/s50/finish_run.py (the scratch's last step failed)"
write_json(res, Path(args.out))
print(json.dumps({k: res[k] for k in ("best_epoch", "minutes_to_best", "best_valid", "test", "sampled_100_best_epoch")}))
