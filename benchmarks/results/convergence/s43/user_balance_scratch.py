"""Scratch (stop 43): ConvRec's full-softmax loss with each training row weighted by its user's row count,
w = rows(user) ** -p, normalised to a mean of 1 over all training rows. Evaluation averages over users, one
target each, while the all-cuts scheme gives a user with 100 training rows 50 times the say of a user with 2
(Beauty: the top 20 % of users hold 55 % of the rows). p = 0 is the budget; p = 1 gives every user the same
total weight. The model that ranks is unchanged.

    USER_BALANCE_POWER=0.5 python benchmarks/results/convergence/s43/user_balance_scratch.py <convergence args>
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import models.registry as registry
from benchmarks import convergence
from models.convrec import ConvRec

POWER = float(os.environ["USER_BALANCE_POWER"])
_build = registry.build_model


def build_model(name, data, config):
    model = _build(name, data, config)
    if name == "convrec":
        n_train = np.diff(data.user_ptr[1 : data.n_users + 2]) - 2 * data.is_eval_user[1:]
        rows = np.concatenate([[0.0], np.maximum(n_train - 1, 0)])  # all cuts: every training item but the first
        weight = np.where(rows > 0, np.maximum(rows, 1) ** -POWER, 0.0)
        weight /= (weight * rows).sum() / rows.sum()
        model._user_weight = torch.from_numpy(weight.astype(np.float32))
        print(f"user balance p={POWER}: row weights {weight[rows > 0].min():.3f} .. {weight[rows > 0].max():.3f}", flush=True)
    return model


def calculate_loss(self, batch):
    assert self.loss == "full_softmax" and self.attribute_head is None
    seq = self.forward(batch)
    with torch.autocast(seq.device.type, enabled=False):
        logits = seq.float() @ self.item_vectors()[1:].float().T
    ce = F.cross_entropy(logits, batch.candidates[:, 0] - 1, label_smoothing=self.label_smoothing, reduction="none")
    return (self._user_weight.to(ce.device)[batch.users] * ce).mean()


registry.build_model = build_model
ConvRec.calculate_loss = calculate_loss

if __name__ == "__main__":
    convergence.main(sys.argv[1:])
