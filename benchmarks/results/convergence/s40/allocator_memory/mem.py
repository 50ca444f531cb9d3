# Scratch script of stop 40 (run as: PYTHONPATH=. python mem.py on|off|mmaponly EPOCHS, with a Video home
# prepared by benchmarks.accuracy at /tmp/s40/acc_video): peak resident memory of models.train.train over
# EPOCHS epochs of the cpu budget's Video ConvRec, with glibc's thresholds raised (on), the mmap threshold
# only (mmaponly) or neither (off). The logs beside it are its output; "on" used models/allocator.py, since removed.
import sys, os, time, resource, json, duckdb, torch
from pathlib import Path
if sys.argv[1] == "mmaponly":
    import ctypes
    print('mallopt', ctypes.CDLL('libc.so.6').mallopt(-3, 1 << 30))
if sys.argv[1] in ("off", "mmaponly"):
    import models.allocator as a
    a.reuse_freed_memory = lambda: False  # train() imports the name from models.allocator at import time
    import models.train as t
    t.reuse_freed_memory = lambda: False
from convrec_dagster.data import settings
from convrec_dagster.data.dataset import load_rec_data
from models.registry import build_model
from models.train import TrainConfig, train
torch.set_num_threads(1)
home = Path('/tmp/s40/acc_video')
with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as c:
    data = load_rec_data(c, features='auto')
hp = {'max_len': 20, 'd': 128, 'dropout': 0.0, 'hidden': 256, 'loss': 'full_softmax', 'emb_init_std': 0.02, 'residual_pool': 'last'}
torch.manual_seed(42)
model = build_model('convrec', data, hp)
cfg = TrainConfig(batch_size=1024, lr=2e-3, weight_decay=.5, max_epochs=int(sys.argv[2]), patience=9, augment_prob=.2, valid_protocol='full', ema_decay='auto', scheme='all_cuts', adam_beta2=.98, resume=False)
print('before train maxrss GB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, flush=True)
r = train(model, data, 'convrec', hp, cfg, 'cpu', 'fp32', None, lambda rec: print(rec['epoch'], round(rec['epoch_time_s']), 'maxrss GB', round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), flush=True), lambda m: None)
print(sys.argv[1], 'peak GB', r.peak_memory_bytes / 2**30)
