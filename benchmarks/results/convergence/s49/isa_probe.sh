#!/usr/bin/env bash
# Stop 49: the embedded sample through full_pipeline (the `make run` command) twice on this machine, once with
# torch's default CPU kernels (AVX512 here) and once with ATEN_CPU_CAPABILITY=avx2, each in a fresh CONVREC_HOME
# and DAGSTER_HOME. Usage: bash benchmarks/results/convergence/s49/isa_probe.sh SCRATCH_DIR
set -euo pipefail
scratch=${1:?scratch dir}
for isa in default avx2; do
  home=$scratch/$isa
  rm -rf "$home" && mkdir -p "$home/dagster"
  start=$(date +%s)
  env CONVREC_HOME="$home/convrec" DAGSTER_HOME="$home/dagster" \
    $( [ "$isa" = avx2 ] && echo ATEN_CPU_CAPABILITY=avx2 ) PYTHONWARNINGS=ignore::FutureWarning \
    .venv/bin/dagster job execute -m convrec_dagster.definitions -j full_pipeline > "$home/run.log" 2>&1
  echo "$isa: $(( $(date +%s) - start )) s, $(grep -c RUN_SUCCESS "$home/run.log") RUN_SUCCESS"
done
