#!/bin/bash
# Stop 45, wave 2 (stopped after 4 epochs, not reported: its core went to the budget at seeds 0 and 1, the members of the ensembles in wave 3): dropout .3 at seeds 0 (paired with stop 42's budget run at seed 0) and 1,
# resume.pt kept as in wave 1. $1: the seed.
cd /work/main
s=$1
COMMON="--dataset beauty --model convrec --scheme all_cuts --loss full_softmax --emb-init-std 0.02 --proxy-min-count 1 --max-epochs 40 --patience 3 --ema-decay auto --valid-protocol full --batch-size 1024 --weight-decay 0.5 --threads 1 --residual-pool last --max-len 20 --augment-prob 0.0 --time-budget-min 60 --d 256 --hidden 512 --warmup-epochs 1 --lr 2e-3 --label-smoothing 0.1 --home /tmp/s45/beauty_home"
dir=/tmp/s45/ckpt_dropout03_seed$s
PYTHONPATH=/work/main .venv/bin/python -m benchmarks.convergence $COMMON --dropout 0.3 --seed $s --checkpoint-dir $dir --out /tmp/s45/runs/beauty_convrec_budget_dropout03_seed$s.json > /tmp/s45/dropout03_seed$s.log 2>&1 &
A=$!
seen=""
while kill -0 $A 2>/dev/null; do
  sleep 20; f=$dir/resume.pt; [ -f "$f" ] || continue
  m=$(stat -c %Y "$f"); [ "$m" = "$seen" ] && continue; seen=$m
  n=$(ls $dir/epoch_*.pt 2>/dev/null | wc -l); cp "$f" $dir/epoch_$((n+1)).pt
done
m=$(stat -c %Y $dir/resume.pt); [ "$m" = "$seen" ] || cp $dir/resume.pt $dir/epoch_$(( $(ls $dir/epoch_*.pt | wc -l) + 1 )).pt
