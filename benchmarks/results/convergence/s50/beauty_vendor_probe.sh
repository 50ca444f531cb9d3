#!/usr/bin/env bash
# Stop 50: stop 45's one-model Beauty training at seed 42 (one thread, so a run repeats to the bit on one machine)
# for 2 epochs on this Intel machine, three ways side by side: default; MKL limited to AVX2 (as MKL runs on any AMD);
# MKL, oneDNN and torch's kernels all limited to AVX2 (as on an EPYC without AVX512). Stop 45 ran it on an AMD EPYC;
# compare each run's epoch-1 and epoch-2 validation figures with that run's history, digit by digit.
# Usage: bash benchmarks/results/convergence/s50/beauty_vendor_probe.sh HOME SCRATCH_DIR
set -euo pipefail
home=${1:?prepared Beauty home}
scratch=${2:?scratch dir}
declare -A envs=(
  [default]=""
  [mkl_avx2]="MKL_ENABLE_INSTRUCTIONS=AVX2"
  [all_avx2]="MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"
)
for variant in default mkl_avx2 all_avx2; do
  mkdir -p "$scratch/$variant"
  # shellcheck disable=SC2086
  env ${envs[$variant]} .venv/bin/python -m benchmarks.convergence --dataset beauty --model convrec \
    --scheme all_cuts --loss full_softmax --emb-init-std 0.02 --proxy-min-count 1 --max-epochs 2 --patience 3 \
    --ema-decay auto --valid-protocol full --batch-size 1024 --weight-decay 0.5 --threads 1 --residual-pool last \
    --max-len 20 --augment-prob 0.0 --time-budget-min 60 --d 256 --hidden 512 --warmup-epochs 1 --lr 2e-3 \
    --label-smoothing 0.1 --seed 42 --dropout 0.2 --home "$home" --checkpoint-dir "$scratch/$variant/ckpt" \
    --out "$scratch/$variant/run.json" > "$scratch/$variant/log" 2>&1 &
done
wait
