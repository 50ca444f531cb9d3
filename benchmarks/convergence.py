"""How fast a model converges on a real benchmark file: one training run, its validation curve and
its test metrics, without the rest of the pipeline (for comparing training schemes quickly).

    python -m benchmarks.convergence --dataset video --model sasrec --scheme all_cuts --loss bce \\
        --lr 1e-3 --max-epochs 40 --out benchmarks/results/convergence/video_sasrec_bce.json

The data is prepared once by the pipeline's own ingest, features and splits assets (``dg.materialize``
into ``--home``, reused when its DuckDB file exists), then loaded with
``convrec_dagster.data.dataset.load_rec_data`` and trained with ``models.train.train`` exactly as the
training assets do. The JSON holds every epoch (loss, validation HR/NDCG@10, seconds, learning
rate), the best epoch, minutes to the plateau and the test metrics of both protocols; it is
rewritten after every epoch, so a run stopped half-way still leaves its curve.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, HelpFormatter, machine_info, write_json

DATA_DIRS = {
    "video": REPO_ROOT.parent / "shared" / "data" / "benchmarks" / "sasrec_video",
    "beauty": REPO_ROOT.parent / "shared" / "data" / "benchmarks" / "s3rec_beauty",
    "sample": None,  # the embedded sample dump, generated under the home
    "magazine": REPO_ROOT.parent / "shared" / "data" / "amazon2018" / "magazine",
}
PREP_ASSETS = (
    "reviews",
    "items",
    "interactions",
    "item_attributes",
    "item_image_features",
    "sequences",
    "eval_negatives",
    "proxy_ids",
)


def prepare(dataset: str, home: Path, data_dir: Path | None, proxy: dict) -> None:
    """Materialize ingest -> splits into ``home`` (skipped when the proxy config is unchanged)."""
    marker = home / "prepared.json"
    if marker.exists() and json.loads(marker.read_text()) == {"dataset": dataset, "proxy": proxy}:
        return
    os.environ["CONVREC_HOME"] = str(home)
    if data_dir is None:
        os.environ.pop("CONVREC_RAW_DIR", None)
    else:
        os.environ["CONVREC_RAW_DIR"] = str(data_dir)
    import dagster as dg

    from convrec_dagster.definitions import defs
    from convrec_dagster.resources import build_resources

    selection = [a for a in defs.assets if any(k.to_user_string() in PREP_ASSETS for k in a.keys)]
    resources = {
        **defs.resources,
        **build_resources(home, data_dir or ""),
    }  # this home, even on a second call
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            selection,
            resources=resources,
            instance=instance,
            run_config={"ops": {"proxy_ids": {"config": proxy}}},
        )
    if not result.success:
        raise SystemExit("preparing the data failed")
    marker.write_text(json.dumps({"dataset": dataset, "proxy": proxy}))


def test_metrics(model, data, device, protocols: tuple[str, ...] = ("sampled_100", "full")) -> dict:
    from models.evaluate import rank_eval_users
    from models.metrics import per_user_metrics, summarize

    out = {}
    for protocol in protocols:
        _, greater, equal = rank_eval_users(model, data, "test", protocol, device, 256)
        summary = summarize(per_user_metrics(greater, equal, ks=(10, 20)))
        out[protocol] = {
            k: round(float(v), 4) for k, v in summary.items() if k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.convergence",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATA_DIRS))
    parser.add_argument("--model", required=True, choices=["sasrec", "convrec", "convrec_attention"])
    parser.add_argument("--scheme", default="all_cuts", choices=["one_cut", "all_cuts"])
    parser.add_argument(
        "--loss", default="full_softmax", choices=["bce", "softmax", "full_softmax", "shared_softmax"]
    )
    parser.add_argument("--n-negatives", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--adam-beta2", type=float, default=0.98)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument(
        "--embedding-lr-scale", type=float, default=1.0, help="the embedding tables learn at lr x this"
    )
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "plateau"])
    parser.add_argument(
        "--plateau-factor",
        type=float,
        default=0.3,
        help="lr-schedule plateau: the factor per epoch without gain",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--time-budget-min", type=float, default=60.0)
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=0, help="ConvRec encoder width (0: 4 d)")
    parser.add_argument(
        "--residual-pool",
        default="avg",
        choices=["avg", "last"],
        help="ConvRec: down-scale the block residuals by the window's mean (the paper) or its last position",
    )
    parser.add_argument(
        "--heads", type=int, default=1, help="ConvRec: split the convolutions' channels into this many groups"
    )
    parser.add_argument(
        "--attribute-loss",
        type=float,
        default=0.0,
        help="ConvRec: weight of an auxiliary loss that predicts the target item's attributes (training only)",
    )
    parser.add_argument(
        "--kernels",
        default="",
        help="ConvRec: the blocks' kernels, comma-separated (default: from --max-len, as the model does)",
    )
    parser.add_argument(
        "--strides", default="", help="ConvRec: the blocks' strides, with --kernels (default: the kernels)"
    )
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--augment-prob", type=float, default=0.0)
    parser.add_argument(
        "--crop-prob",
        type=float,
        default=0.0,
        help="share of rows cut to a random recent part of their history",
    )
    parser.add_argument(
        "--replace-before-last-prob",
        type=float,
        default=0.0,
        help="share of the history items before the last replaced by random items (the last is kept)",
    )
    parser.add_argument(
        "--negative-power",
        type=float,
        default=0.0,
        help="shared_softmax: draw the shared negatives ∝ training count ** this (0: uniform)",
    )
    parser.add_argument(
        "--ema-decay",
        type=lambda v: v if v == "auto" else float(v),
        default=0.0,
        help="validate and keep an exponential moving average of the weights (0: off; auto: about one epoch)",
    )
    parser.add_argument("--features", default="auto")
    parser.add_argument(
        "--emb-init-std",
        type=float,
        default=None,
        help="ConvRec: std of the id and attribute embeddings init",
    )
    parser.add_argument(
        "--proxy-min-count", type=int, default=None, help="proxy_ids: own id from this many training rows"
    )
    parser.add_argument("--proxy-top-fraction", type=float, default=None)
    parser.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="softmax losses: share of the target spread over the candidates",
    )
    parser.add_argument(
        "--popularity-adjustment",
        default="0",
        help="after training, rank by score - tau x log(1 + training count): 'auto' (tau fitted on validation, "
        "models.calibration) or tau (0: off)",
    )
    parser.add_argument(
        "--valid-protocol",
        choices=("sampled_100", "full"),
        default="sampled_100",
        help="the validation NDCG@10 that picks the best epoch (full: every item; sampled figures logged too)",
    )
    parser.add_argument(
        "--mutual-learning",
        type=float,
        default=0.0,
        help="train a second copy beside the model, each also matching the other's distribution over every "
        "item with this weight (deep mutual learning, models.mutual; full_softmax only); the first copy ranks",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the machine is recorded)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: autocast, as the pipeline trains on CUDA",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="model init, batch order and negatives (run-to-run spread)"
    )
    parser.add_argument(
        "--home", default="", help="CONVREC_HOME of the prepared data (default /tmp/convrec_conv_<dataset>)"
    )
    parser.add_argument("--out", default="")
    parser.add_argument(
        "--checkpoint-dir",
        default="",
        help="keep best.pt (the picked epoch's weights), resume.pt and history.json here "
        "(for benchmarks.valid_test_gap); default: none",
    )
    args = parser.parse_args(argv)
    if args.strides and not args.kernels:
        parser.error(
            "--strides needs --kernels (without them the kernels, and so the strides, come from --max-len)"
        )

    import torch

    torch.set_num_threads(args.threads)
    proxy = {
        k: v
        for k, v in (("min_count", args.proxy_min_count), ("top_fraction", args.proxy_top_fraction))
        if v is not None
    }
    tag = "_".join(f"{k}{v}" for k, v in sorted(proxy.items())) or "default"
    home = Path(args.home or f"/tmp/convrec_conv_{args.dataset}_{tag}").resolve()
    home.mkdir(parents=True, exist_ok=True)
    prepare(args.dataset, home, DATA_DIRS[args.dataset], proxy)

    import duckdb

    from convrec_dagster.data import settings
    from convrec_dagster.data.dataset import load_rec_data
    from models.budgets import resolve_popularity_adjustment
    from models.registry import build_model
    from models.train import TrainConfig, train

    with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as conn:
        data = load_rec_data(conn, features=args.features if args.model != "sasrec" else "none")
    hparams = {"d": args.d, "max_len": args.max_len, "dropout": args.dropout, "loss": args.loss}
    if args.model != "sasrec":
        hparams.update(features=args.features, hidden=args.hidden or None, emb_init_std=args.emb_init_std)
    if args.model == "convrec" and args.residual_pool != "avg":
        hparams["residual_pool"] = args.residual_pool
    if args.model == "convrec" and args.attribute_loss:
        hparams["attribute_loss"] = args.attribute_loss
    if args.model == "convrec" and args.heads != 1:
        hparams["heads"] = args.heads
    if args.model == "convrec" and args.kernels:
        hparams["kernels"] = [int(k) for k in args.kernels.split(",")]
        hparams["strides"] = [int(k) for k in (args.strides or args.kernels).split(",")]
    config = TrainConfig(
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        embedding_lr_scale=args.embedding_lr_scale,
        max_epochs=args.max_epochs,
        patience=args.patience,
        n_negatives=args.n_negatives,
        augment_prob=args.augment_prob,
        crop_prob=args.crop_prob,
        replace_before_last_prob=args.replace_before_last_prob,
        negative_power=args.negative_power,
        label_smoothing=args.label_smoothing,
        valid_protocol=args.valid_protocol,
        ema_decay=args.ema_decay,
        scheme=args.scheme,
        adam_beta2=args.adam_beta2,
        warmup_epochs=args.warmup_epochs,
        lr_schedule=args.lr_schedule,
        plateau_factor=args.plateau_factor,
        time_budget_s=args.time_budget_min * 60,
        resume=False,
        seed=args.seed,
        popularity_adjustment=resolve_popularity_adjustment(args.popularity_adjustment),
        mutual_learning=args.mutual_learning,
    )
    torch.manual_seed(config.seed)
    model = build_model(args.model, data, hparams)
    partner = build_model(args.model, data, hparams) if args.mutual_learning else None
    out = Path(
        args.out
        or RESULTS_DIR / "convergence" / f"{args.dataset}_{args.model}_{args.scheme}_{args.loss}.json"
    )
    res = {
        "benchmark": "convergence",
        "command": "python -m benchmarks.convergence " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(args.device),
        "device": args.device,
        "precision": args.precision,
        "dataset": args.dataset,
        "model": args.model,
        "hparams": hparams,
        "train_config": config.__dict__,
        "proxy": proxy,
        "n_proxy": int(data.n_proxy),
        "n_items": int(data.n_items),
        "parameters": model.n_parameters(),
        "history": [],
    }

    def on_epoch(record: dict) -> None:
        res["history"].append(record)
        write_json(res, out)
        print(
            f"[{args.model}] epoch {record['epoch']}: loss {record['loss']:.4f} valid NDCG@10 "
            f"{record['valid_NDCG@10']:.4f} HR@10 {record['valid_HR@10']:.4f}"
            + (f", full NDCG@10 {record['valid_full_NDCG@10']:.4f}" if "valid_full_NDCG@10" in record else "")
            + f" ({record['epoch_time_s']:.0f} s, "
            f"elapsed {record['elapsed_s'] / 60:.1f} min, ETA {record['eta_s'] / 60:.1f} min)",
            flush=True,
        )

    started = time.perf_counter()
    # under valid_protocol full the sampled figures come from their own pick (best_sampled_100.pt)
    scratch = (
        tempfile.TemporaryDirectory() if config.valid_protocol == "full" and not args.checkpoint_dir else None
    )
    result = train(
        model,
        data,
        args.model,
        hparams,
        config,
        args.device,
        args.precision,
        args.checkpoint_dir or (scratch.name if scratch else None),
        on_epoch,
        lambda m: print(m, flush=True),
        partner=partner,
    )
    res["train_wall_s"] = round(time.perf_counter() - started, 1)
    best = result.best_epoch
    res["best_epoch"] = best
    res["minutes_to_best"] = round(sum(h["epoch_time_s"] for h in result.history[:best]) / 60, 2)
    res["best_valid"] = result.best_metrics
    res["test"] = test_metrics(model, data, args.device)
    res["popularity_adjustment"] = result.extra.get("popularity_adjustment")
    if model.popularity_adjustment:
        from models.calibration import raw_scores

        with raw_scores(model):
            res["test_unadjusted"] = test_metrics(model, data, args.device)
    if "sampled_best" in result.extra:
        from models.registry import load_model
        from models.train import SAMPLED_BEST

        picked = Path(args.checkpoint_dir or scratch.name) / SAMPLED_BEST
        res["sampled_100_best_epoch"] = result.extra["sampled_best"]["epoch"]
        res["test_at_best_epoch"] = dict(res["test"])  # both protocols from the full-ranking pick
        res["test"]["sampled_100"] = test_metrics(
            load_model(picked, data, args.device)[0], data, args.device, ("sampled_100",)
        )["sampled_100"]
    if scratch is not None:
        scratch.cleanup()
    write_json(res, out)
    print(f"[{args.model}] best epoch {best} ({res['minutes_to_best']} min); test {json.dumps(res['test'])}")


if __name__ == "__main__":
    main()
