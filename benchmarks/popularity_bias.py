"""How popular are the items a model puts in its full-ranking top 10, against the items users took?

    python -m benchmarks.popularity_bias --dataset beauty            # ConvRec, ~7 min on 1 thread
    python -m benchmarks.popularity_bias --dataset beauty --model sasrec --epochs 25 --d 64 --dropout 0.5 --max-len 50

A model that leans on popularity scores well against 100 uniform negatives (mostly rare items) and
badly under full ranking, where the popular items compete. Trains one model with
``benchmarks.convergence``'s data preparation and the stop-21 settings (no dropout, item replacement
.2, crop .5, ``shared_softmax`` 2048, patience 3), then ranks every item for each test user (history
masked) and records, for the top 10 and for the test targets: the mean log(1 + training count), and
the share among the 100 most popular training items. Also the Spearman correlation between item
vector norms and training counts. Writes ``benchmarks/results/popularity_bias_<dataset>_<model>.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, machine_info, write_json
from benchmarks.convergence import DATA_DIRS, prepare


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.popularity_bias", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dataset", default="beauty", choices=sorted(DATA_DIRS))
    parser.add_argument("--model", default="convrec", choices=["convrec", "sasrec"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--home", default="", help="prepared data (default /tmp/convrec_popbias_<dataset>)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)

    import duckdb
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from convrec_dagster.data import settings
    from convrec_dagster.data.dataset import load_rec_data
    from models.batching import eval_targets, make_batch
    from models.evaluate import seen_items_mask
    from models.registry import build_model
    from models.train import TrainConfig, train

    torch.set_num_threads(1)
    home = Path(args.home or f"/tmp/convrec_popbias_{args.dataset}").resolve()
    home.mkdir(parents=True, exist_ok=True)
    prepare(args.dataset, home, DATA_DIRS[args.dataset], {"min_count": 1})
    with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
        data = load_rec_data(conn, features="auto" if args.model == "convrec" else "none")
    hp = {"d": args.d, "max_len": args.max_len, "dropout": args.dropout}
    if args.model == "convrec":
        hp |= {"hidden": 2 * args.d, "loss": "shared_softmax", "emb_init_std": 0.02}
        train_settings = {"n_negatives": 2048, "augment_prob": 0.2, "crop_prob": 0.5}
    else:
        hp |= {"loss": "full_softmax"}
        train_settings = {"augment_prob": 0.0}
    config = TrainConfig(
        scheme="all_cuts", batch_size=128, lr=1e-3, weight_decay=0.0, max_epochs=args.epochs, patience=3,
        adam_beta2=0.98, resume=False, **train_settings,
    )  # fmt: skip
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_model(args.model, data, hp)
    result = train(model, data, args.model, hp, config, log=print)  # leaves the best epoch's weights
    model.eval()

    counts = data.train_item_counts().astype(float)
    top100 = np.argsort(-counts[1:])[:100] + 1
    users = np.flatnonzero(data.is_eval_user).astype(np.int64)
    rows = eval_targets(data, users, "test")
    targets = data.items[rows]
    recommended = []
    with torch.no_grad():
        for s in range(0, len(users), 512):
            batch = make_batch(
                data, users[s : s + 512], rows[s : s + 512], model.max_len, targets[s : s + 512, None]
            )
            scores = model.full_sort_predict(batch)
            scores = scores.masked_fill(
                seen_items_mask(data, users[s : s + 512], rows[s : s + 512], scores.device), float("-inf")
            )
            recommended.append(scores.topk(10, dim=1).indices.numpy())
    recommended = np.concatenate(recommended).ravel()
    norms = np.linalg.norm(model.item_vectors()[1:].detach().numpy(), axis=1)
    res = {
        "benchmark": "popularity_bias",
        "command": "python -m benchmarks.popularity_bias " + " ".join(argv or []),
        "machine": machine_info("cpu"),
        "dataset": args.dataset,
        "model": args.model,
        "hparams": hp,
        "train": train_settings,
        "best_epoch": result.best_epoch,
        "best_valid_NDCG@10": round(result.best_metrics["NDCG@10"], 4),
        "seconds": round(time.perf_counter() - started, 1),
        "test_users": len(users),
        "mean_log1p_train_count": {
            "test_targets": round(float(np.log1p(counts[targets]).mean()), 3),
            "full_ranking_top10": round(float(np.log1p(counts[recommended]).mean()), 3),
            "all_items": round(float(np.log1p(counts[1:]).mean()), 3),
        },
        "share_in_100_most_popular": {
            "test_targets": round(float(np.isin(targets, top100).mean()), 4),
            "full_ranking_top10": round(float(np.isin(recommended, top100).mean()), 4),
        },
        "spearman_item_vector_norm_vs_train_count": round(float(spearmanr(norms, counts[1:]).correlation), 3),
    }
    out = Path(args.out or RESULTS_DIR / f"popularity_bias_{args.dataset}_{args.model}.json")
    write_json(res, out)
    print({k: res[k] for k in ("mean_log1p_train_count", "share_in_100_most_popular")}, "->", out)


if __name__ == "__main__":
    main()
