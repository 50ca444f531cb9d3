#!/bin/bash
# Beauty sweep on the lent GPU: the cpu budget's features rule and one change each, two seeds,
# 13 epochs (what the 2-core CPU hour holds at d 256), 16 runs sharing the GPU.
set -u
W=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
pip install --no-index --no-deps --target /tmp/site .gpu/whl/*.whl -q > $OUT/pip.log 2>&1
export PYTHONPATH=$W:/tmp/site
nvidia-smi > $OUT/nvidia_smi.txt 2>&1
python -c "import torch,duckdb,numpy;print(torch.__version__, torch.version.cuda, duckdb.__version__, numpy.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" > $OUT/versions.txt 2>&1
cat $OUT/versions.txt
BASE="--dataset beauty --model convrec --scheme all_cuts --loss full_softmax --emb-init-std 0.02 --proxy-min-count 1
 --max-epochs 13 --patience 3 --ema-decay auto --valid-protocol full --batch-size 1024 --weight-decay 0.5 --threads 1
 --residual-pool last --max-len 20 --augment-prob 0.0 --home $W/.gpu/home --device $DEVICE --time-budget-min 5
 --d 256 --hidden 512 --dropout 0.2 --warmup-epochs 1 --lr 2e-3 --label-smoothing 0.1"
run() { name=$1; shift; python -m benchmarks.convergence $BASE "$@" $EXTRA --out $OUT/$name.json > $OUT/$name.log 2>&1 & }
for s in 0 1; do
  run base_s$s --seed $s
  run cosine_s$s --seed $s --lr-schedule cosine
  run ls02_s$s --seed $s --label-smoothing 0.2
  run wd1_s$s --seed $s --weight-decay 1.0
  run lr3e3_s$s --seed $s --lr 3e-3
  run drop3_s$s --seed $s --dropout 0.3
  run cosine_lr3e3_s$s --seed $s --lr-schedule cosine --lr 3e-3
  run b512_s$s --seed $s --batch-size 512 --weight-decay 0.25
done
sleep 30; nvidia-smi > $OUT/nvidia_smi_busy.txt 2>&1
wait
python - <<'PY'
import json, glob, os
out = os.environ.get("OUT", "/tmp/out")
for f in sorted(glob.glob(f"{out}/*.json")):
    d = json.load(open(f))
    t = d.get("test", {}).get("full", {})
    print(os.path.basename(f), d.get("best_epoch"), len(d["history"]), round(d.get("train_wall_s", 0)),
          max((h.get("valid_full_NDCG@10", 0) for h in d["history"]), default=0), t.get("NDCG@10"), t.get("HR@10"),
          d.get("test", {}).get("sampled_100", {}).get("NDCG@10"))
PY
