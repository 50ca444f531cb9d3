"""Scratch (stop 50): deep mutual learning with a partner of another architecture, as an experiment of
``benchmarks.convergence`` (nothing here is product code).

``models.mutual.MutualPair`` trains ConvRec beside a second ConvRec from another initialisation. Zhang et al.
(CVPR 2018) report that partners of different architectures teach each other too; what two ConvRecs share
(the same window of two, the same inductive bias) a SASRec does not. Here the partner is Kang & McAuley's SASRec
(``models.sasrec``) at its own settings (d 64 as BSARec, 2 blocks, 1 head, dropout .5; lr 1e-3, no weight
decay, in its own optimizer group), scoring the same batches of cuts from the last position of the same
window. The first copy, ConvRec, alone is validated and kept: one ConvRec at one model's scoring cost.

    python benchmarks/results/convergence/s50/hetero_scratch.py [--partner-d 64] -- <benchmarks.convergence args>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

import benchmarks.convergence as convergence  # noqa: E402
import models.registry as registry  # noqa: E402
import models.train as train_module  # noqa: E402
from models.sasrec import SASRec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partner-d", type=int, default=64)
    parser.add_argument("--partner-dropout", type=float, default=0.5)
    parser.add_argument("--partner-lr", type=float, default=1e-3)
    parser.add_argument("--partner-weight-decay", type=float, default=0.0)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    built: list = []
    original_build = registry.build_model

    def build_convrec_then_sasrec(name, data, hparams):
        # the second call builds the partner: a SASRec over the same window, from the next draws of the seeded
        # generator; any other (the first, and reloading the kept ConvRec's checkpoints after training) is as usual
        if len(built) == 1:
            partner = SASRec(
                data.n_items, max_len=int(hparams["max_len"]), d=args.partner_d, n_layers=2, n_heads=1,
                dropout=args.partner_dropout, loss="full_softmax",
            )  # fmt: skip
            built.append(partner)
            return partner
        model = original_build(name, data, hparams)
        if not built:
            built.append(model)
        return model

    original_optimizer = train_module.make_optimizer

    def optimizer_with_partner_group(model, data, config):
        optimizer, scheduler = original_optimizer(model, data, config)
        partner_ids = {id(p) for p in built[1].parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in partner_ids]
        optimizer.add_param_group(
            {
                "params": list(built[1].parameters()),
                "lr": args.partner_lr,
                "weight_decay": args.partner_weight_decay,
            }
        )
        # LambdaLR scales each group's base rate by the same warm-up factor
        scheduler.base_lrs = [*scheduler.base_lrs, args.partner_lr]
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
        scheduler.lr_lambdas = [scheduler.lr_lambdas[0]] * len(optimizer.param_groups)
        return optimizer, scheduler

    registry.build_model = build_convrec_then_sasrec  # convergence imports it inside main
    train_module.make_optimizer = optimizer_with_partner_group
    original_write = convergence.write_json
    partner = (
        f"SASRec d {args.partner_d}, 2 blocks, 1 head, dropout {args.partner_dropout:g}, "
        f"lr {args.partner_lr:g}, weight decay {args.partner_weight_decay:g}"
    )

    def write_marked(result: dict, out):
        script = "python benchmarks/results/convergence/s50/hetero_scratch.py"
        options = (
            f"--partner-d {args.partner_d} --partner-dropout {args.partner_dropout:g} "
            f"--partner-lr {args.partner_lr:g} --partner-weight-decay {args.partner_weight_decay:g}"
        )
        result["command"] = f"{script} {options} -- " + " ".join(rest)
        result["scratch"] = f"mutual learning with a partner of another architecture: {partner} ({script})"
        if len(built) > 1:
            result["partner_parameters"] = sum(p.numel() for p in built[1].parameters())
        return original_write(result, out)

    convergence.write_json = write_marked
    print(f"mutual learning with a {partner} partner", flush=True)
    torch.set_printoptions(precision=4)
    convergence.main(rest)


if __name__ == "__main__":
    main()
