"""Stop 44: where replace_before_last_prob .6 gains (test) and loses (validation) against the budget's ConvRec,
by the generator rule behind each row, pooled over dumps 18-21 and model seeds 0 and 1.

    python benchmarks/results/sample_dumps/s44_row_kinds/aggregate.py DIR_OF_PER_DUMP_JSON OUT.json
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

GROUPS = ("row_kind", "successor_rows_by_item_before_last")
MODELS = ("budget", "swap06")


def main(src: Path, out: Path) -> None:
    pooled: dict = {}
    for split in ("valid", "test"):
        for protocol in ("sampled_100", "full"):
            sums = defaultdict(lambda: defaultdict(float))
            users = defaultdict(float)
            for path in sorted(src.glob("dump_*.json")):
                res = json.loads(path.read_text())["models"]
                for model in MODELS:
                    seeds = [res[f"{model}_s{s}"]["splits"][split][protocol] for s in (0, 1)]
                    keyed = [("all", "all", sum(b["users"] for b in seed["row_kind"]), seed["all"]) for seed in seeds]
                    for seed in seeds:
                        keyed += [(g, b["bucket"], b["users"], b) for g in GROUPS for b in seed[g]]
                    for group, bucket, count, figures in keyed:
                        sums[(group, bucket)][model] += figures["NDCG@10"] * count / len(seeds)
                        if model == MODELS[0]:
                            users[(group, bucket)] += count / len(seeds)
            rows = []
            total_change = sums[("all", "all")][MODELS[1]] - sums[("all", "all")][MODELS[0]]
            for (group, bucket), s in sums.items():
                u = users[(group, bucket)]
                change = s[MODELS[1]] - s[MODELS[0]]
                rows.append({
                    "group": group, "bucket": bucket, "users": round(u),
                    **{m: round(s[m] / u, 4) for m in MODELS},
                    "change": round(change / u, 4),
                    "share_of_change": round(change / total_change, 2) if total_change else None,
                })
            pooled[f"{split}/{protocol}"] = rows
    out.write_text(json.dumps(pooled, indent=1) + "\n")
    for key, rows in pooled.items():
        print(key)
        for r in rows:
            print(f"  {r['group'][:22]:22} {str(r['bucket'])[:48]:48} {r['users']:5} {r['budget']:.4f} {r['swap06']:.4f} {r['change']:+.4f} {r['share_of_change']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
