#!/bin/bash
# usage: run.sh NAME POWER
cd /work/main
USER_BALANCE_POWER=$2 PYTHONPATH=/work/main nohup .venv/bin/python benchmarks/results/convergence/s43/user_balance_scratch.py --dataset beauty --model convrec --scheme all_cuts --loss full_softmax --emb-init-std 0.02 --proxy-min-count 1 --max-epochs 40 --patience 3 --ema-decay auto --valid-protocol full --batch-size 1024 --weight-decay 0.5 --threads 1 --residual-pool last --max-len 20 --augment-prob 0.0 --time-budget-min 60 --d 256 --hidden 512 --dropout 0.2 --warmup-epochs 1 --lr 2e-3 --label-smoothing 0.1 --seed 42 --home /tmp/s43/beauty_home --checkpoint-dir /tmp/s43/ckpt_$1 --out /tmp/s43/runs/beauty_convrec_budget_$1_seed42_scratch.json > /tmp/s43/$1.log 2>&1
