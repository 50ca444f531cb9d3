"""Stop 48 (scratch measurement): is ConvRec's training bitwise repeatable at 1 and at 2 torch threads?

Same seed, same batches, 20 steps of AdamW on synthetic data, each setting run twice in one process."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from models.batching import make_batch
from models.mutual import MutualPair
from models.registry import build_model


def run(threads, mutual):
    torch.set_num_threads(threads)
    data = chain_data(
        n_users=2000, n_items=3000, min_len=5, max_len=30, seed=3, with_time=False, with_attributes=True
    )
    data.proxy_ids = np.arange(data.n_items + 1)
    data.n_proxy = data.n_items + 2
    hp = {
        "d": 64,
        "hidden": 128,
        "max_len": 20,
        "dropout": 0.2,
        "loss": "full_softmax",
        "residual_pool": "last",
    }
    torch.manual_seed(42)
    model = build_model("convrec", data, hp)
    if mutual:
        model = MutualPair(model, build_model("convrec", data, hp), 1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.5)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(20):
        users = rng.integers(1, data.n_users + 1, 512)
        targets = data.user_ptr[users + 1] - 3
        batch = make_batch(data, users, targets, 20, data.items[targets][:, None])
        loss = model.calculate_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach()), torch.cat([p.detach().flatten() for p in model.parameters()])


from benchmarks.common import machine_info  # noqa: E402
from models.synthetic import chain_data  # noqa: E402

rows = []
for threads in (1, 2):
    for mutual in (False, True):
        (l1, p1), (l2, p2) = run(threads, mutual), run(threads, mutual)
        rows.append(
            {
                "threads": threads,
                "mutual_learning": mutual,
                "loss_after_20_steps": [l1, l2],
                "max_abs_weight_difference": float((p1 - p2).abs().max()),
            }
        )
        print(rows[-1], flush=True)
out = Path(__file__).with_name("repeatability_threads.json")
out.write_text(
    json.dumps(
        {
            "benchmark": "repeatability of training at 1 and 2 torch threads (two identical runs each)",
            "command": "python benchmarks/results/convergence/s48/repeatability_threads.py",
            "machine": machine_info("cpu"),
            "runs": rows,
        },
        indent=1,
    )
    + "\n"
)
