"""Scratch (stop 48): deep mutual learning with a cohort of N copies instead of a pair, as an experiment of
``benchmarks.convergence`` (nothing here is product code).

Zhang et al. (CVPR 2018) report gains that grow with the cohort: each copy's loss is its cross-entropy plus
W / (N - 1) x the sum of KL(other || self) over the other copies (held fixed). For N = 2 this is
``models.mutual.MutualPair``'s loss exactly. The first copy alone is validated and kept.

    python benchmarks/results/convergence/s48/cohort_scratch.py --copies 3 -- <benchmarks.convergence arguments>

The extra copies are built right after the partner (the next draws of the seeded generator).

Stop 48 checked its loss only, against ``MutualPair``'s for two copies and on three. Stop 49 ran it on Beauty
(three copies, W 1, seed 42): an epoch 1.7x a pair's, 13 epochs under the 60-minute cap, test full NDCG@10
.0588 / HR@10 .1003 (``convergence/s49/beauty_convrec_budget_cohort3_seed42.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

import benchmarks.convergence as convergence  # noqa: E402
import models.registry as registry  # noqa: E402
import models.train as train_module  # noqa: E402
from models.mutual import MutualPair  # noqa: E402


class Cohort(MutualPair):
    """``MutualPair`` over any number of copies; ``members[0]`` ranks."""

    def __init__(self, members: list, weight: float):
        super().__init__(members[0], members[1], weight)
        self.members = nn.ModuleList(members)

    def calculate_loss(self, batch):
        total, log_probs = self.cross_entropies(batch)
        n = len(log_probs)
        for i, mine in enumerate(log_probs):
            for j, other in enumerate(log_probs):
                if i != j:
                    kl = F.kl_div(mine, other.detach(), log_target=True, reduction="batchmean")
                    total = total + self.weight / (n - 1) * kl
        return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    built: list = []
    original_build = registry.build_model

    def build_and_remember(*a, **k):
        model = original_build(*a, **k)
        built.append(model)
        if len(built) == 2:  # the partner: the cohort's other copies come from the next draws
            built.extend(original_build(*a, **k) for _ in range(args.copies - 2))
        return model

    def cohort(model, partner, config):
        assert partner is built[1] and model is built[0], "the cohort is built from convergence's copies"
        return Cohort(built[: args.copies], config.mutual_learning)

    registry.build_model = build_and_remember  # convergence imports it inside main
    train_module.mutual_pair = cohort
    original_write = convergence.write_json

    def write_marked(result: dict, out):
        script = "python benchmarks/results/convergence/s48/cohort_scratch.py"
        result["command"] = f"{script} --copies {args.copies} -- " + " ".join(rest)
        result["scratch"] = f"mutual learning with a cohort of {args.copies} copies (Cohort in {script})"
        return original_write(result, out)

    convergence.write_json = write_marked
    print(f"mutual learning with a cohort of {args.copies} copies", flush=True)
    convergence.main(rest)


if __name__ == "__main__":
    main()
