"""Stop 44: the `sample` budget and `replace_before_last_prob` .6 over all 30 dumps run so far, from the
harness's JSONs beside this file (the embedded dump and 1-5, 6-17, 18-29; two seeds each).

    python benchmarks/results/sample_dumps/s44_thirty_dumps.py  # writes s44_thirty_dumps.json

Stop 43's .6 rows on dumps 6-17 came from a scratch patch (its JSON records no override); the option
reproduces them to the last digit, so they are read as the option's rows here.
"""

import json
from pathlib import Path

from benchmarks.sample_dumps import summarize

HERE = Path(__file__).parent


def rows(name: str) -> list[dict]:
    return json.loads((HERE / name).read_text())["rows"]


budget = rows("budget.json") + rows("budget_dumps6_17.json") + rows("budget_dumps18_29.json")
option = rows("s44_prev_swap06_dumps_tuning.json") + rows("s43_prev_swap06.json") + rows("s44_prev_swap06_dumps18_29.json")
sasrec = [r for r in budget if r["model"] == "sasrec"]
result = {
    "dumps": sorted({r["dump_seed"] for r in budget}),
    "budget": summarize(budget, None),
    "replace_before_last_prob_06": summarize(option + sasrec, [r for r in budget if r["model"] == "convrec"]),
}
(HERE / "s44_thirty_dumps.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({k: v for k, v in result.items() if k != "dumps"}, indent=1))
