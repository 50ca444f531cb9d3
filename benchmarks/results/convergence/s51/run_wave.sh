#!/bin/bash
# Stop 51: the cpu budget's one-model ConvRec on Beauty trained ALONE (no partner) on this session's machine,
# two seeds side by side at one thread each, exactly as stop 45's wave 1 ran them on an AMD EPYC. Every pair
# (mutual learning, stops 47-50) ran on an Intel Xeon and every seed alone on an AMD EPYC; these runs give the
# pair's gain over one model measured on one kind of machine.
# usage: run_wave.sh SEED_A SEED_B
cd /work/main
COMMON="--dataset beauty --model convrec --scheme all_cuts --loss full_softmax --emb-init-std 0.02 --proxy-min-count 1 --max-epochs 40 --patience 3 --ema-decay auto --valid-protocol full --batch-size 1024 --weight-decay 0.5 --threads 1 --residual-pool last --max-len 20 --augment-prob 0.0 --time-budget-min 60 --d 256 --hidden 512 --warmup-epochs 1 --lr 2e-3 --label-smoothing 0.1 --dropout 0.2 --home /tmp/s51/beauty_home"
run() {
  PYTHONPATH=/work/main .venv/bin/python -m benchmarks.convergence $COMMON --seed $1 --checkpoint-dir /tmp/s51/ckpt_alone_seed$1 \
    --out benchmarks/results/convergence/s51/beauty_convrec_budget_alone_seed$1.json > /tmp/s51/alone_seed$1.log 2>&1
}
run $1 & A=$!
until [ -f /tmp/s51/beauty_home/prepared.json ]; do sleep 10; done
run $2 & B=$!
wait $A $B
