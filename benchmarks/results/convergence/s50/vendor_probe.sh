#!/usr/bin/env bash
# Stop 50: is the embedded sample's SASRec drift (.6670 / full .6015 in stops 33-46, .6616 / .5918 since stop 47)
# the CPU vendor? Every result JSON through stop 46 records an AMD EPYC, every one since stop 47 an Intel Xeon.
# Intel's MKL takes its AVX2 code path on AMD processors, and older EPYCs have no AVX512 at all, so this runs
# full_pipeline (the `make run` command) on this Intel machine three times, each in a fresh CONVREC_HOME and
# DAGSTER_HOME: default; MKL limited to AVX2 (as MKL runs on any AMD); and MKL, oneDNN and torch's own kernels all
# limited to AVX2 (as on an EPYC without AVX512). Then writes the test figures of each as JSON.
# Usage: bash benchmarks/results/convergence/s50/vendor_probe.sh SCRATCH_DIR OUT_JSON
set -euo pipefail
scratch=${1:?scratch dir}
out=${2:?out json}
declare -A envs=(
  [default]=""
  [mkl_avx2]="MKL_ENABLE_INSTRUCTIONS=AVX2"
  [all_avx2]="MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"
)
for variant in default mkl_avx2 all_avx2; do
  home=$scratch/$variant
  rm -rf "$home" && mkdir -p "$home/dagster"
  start=$(date +%s)
  # shellcheck disable=SC2086
  env CONVREC_HOME="$home/convrec" DAGSTER_HOME="$home/dagster" ${envs[$variant]} PYTHONWARNINGS=ignore::FutureWarning \
    .venv/bin/dagster job execute -m convrec_dagster.definitions -j full_pipeline > "$home/run.log" 2>&1
  echo "$(( $(date +%s) - start ))" > "$home/seconds"
  echo "$variant: $(cat "$home/seconds") s, $(grep -c RUN_SUCCESS "$home/run.log") RUN_SUCCESS"
done
.venv/bin/python - "$scratch" "$out" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
from benchmarks.common import machine_info, write_json
scratch, out = Path(sys.argv[1]), sys.argv[2]
envs = {"default": "", "mkl_avx2": "MKL_ENABLE_INSTRUCTIONS=AVX2",
        "all_avx2": "MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"}
test = {}
for variant in envs:
    report = json.loads((scratch / variant / "convrec/artifacts/reports/evaluation_report.json").read_text())
    figures = test.setdefault(variant, {})
    for row in report["metrics"]:
        name = row["metric"] if "@" in str(row["metric"]) else f"{row['metric']}@{row['k']}"
        if row["split"] == "test" and row.get("user_group") in (None, "all") and name in ("HR@10", "NDCG@10"):
            figures.setdefault(row["model"], {})[f"{row['protocol']} {name}"] = round(row["value"], 4)
write_json({
    "benchmark": "the embedded sample through full_pipeline with MKL, oneDNN and torch's kernels limited as on an AMD EPYC (stop 50)",
    "command": f"bash benchmarks/results/convergence/s50/vendor_probe.sh {scratch} {out}",
    "machine": machine_info(),
    "environment": envs,
    "pipeline_s": {v: int((scratch / v / "seconds").read_text()) for v in envs},
    "test": test,
    "earlier_machines": {"sasrec sampled_100 NDCG@10": 0.667, "sasrec full NDCG@10": 0.6015,
                         "where": "stops 33-46, AMD EPYC (s48_stop46_code_this_machine.json)"},
}, out)
print(json.dumps(test, indent=1))
PY
