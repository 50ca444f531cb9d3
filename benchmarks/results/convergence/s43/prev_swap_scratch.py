"""Scratch (stop 43): in ConvRec's training rows, each history item but the last is replaced by a uniformly
random item with probability PREV_SWAP (the last item is never touched; evaluation rows never). On the
embedded sample's generator ConvRec trails SASRec in full ranking only where the item before the last
belongs to another sub-category (BENCHMARKS.md, "Stop 43"): this shows training rows where that item is
unrelated, as the budget's crops show rows where it is absent.

    PREV_SWAP=0.3 python benchmarks/results/convergence/s43/prev_swap_scratch.py --models convrec \\
        --dumps 6,...,17 --tag prev_swap03 --against benchmarks/results/sample_dumps/budget_dumps6_17.json

ConvRec only: SASRec's training rows come from the same function.
"""

import os
import sys

import numpy as np

import models.train as train
from benchmarks import sample_dumps

PREV_SWAP = float(os.environ["PREV_SWAP"])
_make_batch = train.make_batch


def make_batch(data, *args, rng=None, **kwargs):
    batch = _make_batch(data, *args, rng=rng, **kwargs)
    if rng is not None and PREV_SWAP > 0:  # a training row
        items = batch.items.numpy()
        swap = (items[:, :-1] > 0) & (rng.random((items.shape[0], items.shape[1] - 1)) < PREV_SWAP)
        items[:, :-1][swap] = rng.integers(1, data.n_items + 1, int(swap.sum()))
    return batch


train.make_batch = make_batch

if __name__ == "__main__":
    assert "--models" in sys.argv and sys.argv[sys.argv.index("--models") + 1] == "convrec"
    sample_dumps.main(sys.argv[1:])
