#!/bin/bash
# Stop 45, wave 1: the cpu budget's ConvRec on Beauty (seed 42, as stop 42's pipeline run) with every epoch's
# resume.pt copied aside (for weight averages over the plateau), and dropout .3 (the budget was tuned when the
# hour held 13 epochs; the faster code of stop 40 lets a more regularized model use ~20).
cd /work/main
COMMON="--dataset beauty --model convrec --scheme all_cuts --loss full_softmax --emb-init-std 0.02 --proxy-min-count 1 --max-epochs 40 --patience 3 --ema-decay auto --valid-protocol full --batch-size 1024 --weight-decay 0.5 --threads 1 --residual-pool last --max-len 20 --augment-prob 0.0 --time-budget-min 60 --d 256 --hidden 512 --warmup-epochs 1 --lr 2e-3 --label-smoothing 0.1 --seed 42 --home /tmp/s45/beauty_home"
snap() {  # copy each new resume.pt of $1 to $1/epoch_<n>.pt
  while sleep 20; do
    f=$1/resume.pt; [ -f "$f" ] || continue
    m=$(stat -c %Y "$f"); [ "$m" = "${seen[$1]}" ] && continue; seen[$1]=$m
    n=$(ls $1/epoch_*.pt 2>/dev/null | wc -l); cp "$f" $1/epoch_$((n+1)).pt
  done
}
declare -A seen
PYTHONPATH=/work/main .venv/bin/python -m benchmarks.convergence $COMMON --dropout 0.2 --checkpoint-dir /tmp/s45/ckpt_budget --out /tmp/s45/runs/beauty_convrec_budget_seed42.json > /tmp/s45/budget.log 2>&1 &
A=$!
until [ -f /tmp/s45/beauty_home/prepared.json ]; do sleep 10; done
PYTHONPATH=/work/main .venv/bin/python -m benchmarks.convergence $COMMON --dropout 0.3 --checkpoint-dir /tmp/s45/ckpt_dropout03 --out /tmp/s45/runs/beauty_convrec_budget_dropout03_seed42.json > /tmp/s45/dropout03.log 2>&1 &
B=$!
snap /tmp/s45/ckpt_budget & S1=$!
snap /tmp/s45/ckpt_dropout03 & S2=$!
wait $A $B; sleep 30; kill $S1 $S2
