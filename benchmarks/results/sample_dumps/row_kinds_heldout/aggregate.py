"""Stop 43: where ConvRec's full-ranking gap to SASRec sits on the twelve held-out dumps (6-17).

For each dump, ``benchmarks.valid_test_gap --sample-seed DUMP`` scores the four kept checkpoints
(ConvRec and SASRec, seeds 0 and 1; ``benchmarks.sample_dumps --keep-models``) per user and groups the
test users by the generator rule that could have drawn the target. This script pools the dumps: each
bucket's NDCG@10 (and HR@1) is the user-weighted mean over dumps of the two seeds' mean, per model.

    python benchmarks/results/sample_dumps/row_kinds_heldout/aggregate.py DIR_OF_PER_DUMP_JSON OUT.json
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

GROUPS = ("row_kind", "successor_rows_by_item_before_last")


def main(src: Path, out: Path) -> None:
    pooled: dict = {}
    for split in ("valid", "test"):
        for protocol in ("sampled_100", "full"):
            sums = defaultdict(lambda: defaultdict(float))  # (group, bucket) -> model -> sum over users
            users = defaultdict(int)
            for path in sorted(src.glob("dump_*.json")):
                res = json.loads(path.read_text())["models"]
                for model in ("convrec", "sasrec"):
                    seeds = [res[f"{model}_s{s}"]["splits"][split][protocol] for s in (0, 1)]
                    n = len(seeds)
                    keyed = [("all", "all", sum(b["users"] for b in seed["row_kind"]), seed["all"]) for seed in seeds]
                    for seed in seeds:
                        keyed += [(g, b["bucket"], b["users"], b) for g in GROUPS for b in seed[g]]
                    for group, bucket, count, figures in keyed:
                        for metric in ("NDCG@10", "HR@1"):
                            sums[(group, bucket)][f"{model} {metric}"] += figures[metric] * count / n
                        if model == "convrec":
                            users[(group, bucket)] += count / n
            table = []
            for (group, bucket), total in sums.items():
                u = users[(group, bucket)]
                row = {"group": group, "bucket": bucket, "users": round(u)}
                row.update({k: round(v / u, 4) for k, v in total.items()})
                row["convrec - sasrec NDCG@10"] = round(row["convrec NDCG@10"] - row["sasrec NDCG@10"], 4)
                row["share of the gap"] = None
                table.append(row)
            overall = next(r for r in table if r["group"] == "all")
            gap_total = overall["convrec - sasrec NDCG@10"] * overall["users"]
            for row in table:
                if gap_total:
                    row["share of the gap"] = round(row["convrec - sasrec NDCG@10"] * row["users"] / gap_total, 3)
            pooled[f"{split} {protocol}"] = table
    res = {"dumps": sorted(p.stem for p in src.glob("dump_*.json")), "pooled": pooled}
    out.write_text(json.dumps(res, indent=1))
    for row in pooled["test full"]:
        print(row)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
