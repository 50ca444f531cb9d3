# Scratch script of stop 41 (run as: [MALLOC_MMAP_THRESHOLD_=4194304] PYTHONPATH=. python mem_beauty.py EPOCHS, with a Beauty home
# prepared by benchmarks.convergence at /tmp/s41/beauty_home): peak (maxrss) and current (VmRSS) resident memory after each
# epoch of models.train.train with the cpu budget's Beauty ConvRec (the features rule), 1 thread. Logs beside it:
# default.log (glibc's default, dynamic mmap threshold), mmap_threshold_4mb.log (the threshold fixed at 4 MB),
# malloc_trim_each_epoch.log (malloc_trim(0) in the epoch callback, what models.train now does after each epoch).
# peak and current resident memory per epoch of the cpu budget's Beauty ConvRec (the features rule), 1 thread
import sys, resource, duckdb, torch
from pathlib import Path
from convrec_dagster.data import settings
from convrec_dagster.data.dataset import load_rec_data
from models.registry import build_model
from models.train import TrainConfig, train
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'): return int(line.split()[1]) / 2**20
torch.set_num_threads(1)
home = Path('/tmp/s41/beauty_home')
with duckdb.connect(str(settings.duckdb_path(home)), read_only=True) as c:
    data = load_rec_data(c, features='auto')
hp = {'max_len': 20, 'd': 256, 'dropout': 0.2, 'hidden': 512, 'loss': 'full_softmax', 'emb_init_std': 0.02, 'residual_pool': 'last'}
torch.manual_seed(42)
model = build_model('convrec', data, hp)
cfg = TrainConfig(batch_size=1024, lr=2e-3, weight_decay=.5, max_epochs=int(sys.argv[1]), patience=9, valid_protocol='full', ema_decay='auto', scheme='all_cuts', adam_beta2=.98, warmup_epochs=1.0, label_smoothing=.1, resume=False)
print('before train maxrss GB', round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), 'rss', round(rss(), 2), flush=True)
r = train(model, data, 'convrec', hp, cfg, 'cpu', 'fp32', None, lambda rec: print(rec['epoch'], round(rec['epoch_time_s']), 'maxrss GB', round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), 'rss GB', round(rss(), 2), flush=True), lambda m: None)
