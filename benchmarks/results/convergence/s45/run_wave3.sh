#!/bin/bash
# Stop 45, wave 3: the cpu budget's Beauty ConvRec at seeds 0 and 1, side by side (one thread each, as two
# members of an ensemble would train on the 2 cores), for benchmarks.ensemble.
cd /work/main
COMMON="--dataset beauty --model convrec --scheme all_cuts --loss full_softmax --emb-init-std 0.02 --proxy-min-count 1 --max-epochs 40 --patience 3 --ema-decay auto --valid-protocol full --batch-size 1024 --weight-decay 0.5 --threads 1 --residual-pool last --max-len 20 --augment-prob 0.0 --time-budget-min 60 --d 256 --hidden 512 --dropout 0.2 --warmup-epochs 1 --lr 2e-3 --label-smoothing 0.1 --home /tmp/s45/beauty_home"
for s in 0 1; do
  PYTHONPATH=/work/main .venv/bin/python -m benchmarks.convergence $COMMON --seed $s --checkpoint-dir /tmp/s45/ckpt_budget_seed$s --out /tmp/s45/runs/beauty_convrec_budget_seed$s.json > /tmp/s45/budget_seed$s.log 2>&1 &
done
wait
