"""Scratch probe (stop 42): the popularity adjustment's figure for every tau, on validation and on test.

    PYTHONPATH=. python benchmarks/results/convergence/s42/popularity_adjustment.py \\
        --home /tmp/s42/acc_beauty --checkpoint /tmp/s42/acc_beauty/artifacts/models/convrec/best.pt \\
        --protocol full --out OUT.json

Every score becomes ``score - tau * log(1 + training count of the item)`` (``models.calibration``); tau 0 is
the model as trained. The pipeline picks tau on validation; this prints test beside it for every tau, which
the pipeline never looks at, to see whether validation's choice carries over.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb
import torch

from convrec_dagster.data import settings
from convrec_dagster.data.dataset import load_rec_data
from models.calibration import pick_tau, validation_by_tau
from models.registry import load_model

TAUS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--protocol", default="full", choices=("full", "sampled_100"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    with duckdb.connect(str(settings.duckdb_path(Path(args.home))), read_only=True) as conn:
        data = load_rec_data(conn, features=checkpoint["extra"].get("data_features") or "auto")
    model, checkpoint = load_model(args.checkpoint, data)
    figures = {
        split: validation_by_tau(model, data, args.protocol, taus=TAUS, split=split)
        for split in ("valid", "test")
    }
    picked = pick_tau(figures["valid"])
    res = {
        "checkpoint": args.checkpoint,
        "epoch": checkpoint["extra"].get("epoch"),
        "protocol": args.protocol,
        "NDCG@10_by_tau": {str(t): {s: round(figures[s][t], 5) for s in figures} for t in TAUS},
        "tau_picked_by_validation": picked,
    }
    for tau in TAUS:
        print(tau, res["NDCG@10_by_tau"][str(tau)], flush=True)
    print("picked by validation:", picked, res["NDCG@10_by_tau"][str(picked)])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
