"""Scratch (stop 41): ConvRec's training loss plus an auxiliary term that predicts the target item's
attributes from the sequence vector (S3-Rec's AAP, DIF-SR's attribute predictor), through a linear
head used by training only. The model that ranks is unchanged.

    ATTR_AUX_WEIGHT=0.3 python benchmarks/results/convergence/s41/attr_aux_scratch.py <convergence args>

The head is created after the model with the RNG state put back, so the run draws the same random
numbers as the budget's run of the same seed up to the loss itself.
"""

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import models.registry as registry
from benchmarks import convergence
from models.base import full_softmax_loss
from models.convrec import ConvRec

WEIGHT = float(os.environ["ATTR_AUX_WEIGHT"])
_build = registry.build_model


def build_model(name, data, config):
    model = _build(name, data, config)
    if name == "convrec":
        state = torch.random.get_rng_state()
        model.attr_head = nn.Linear(model.d, data.n_attrs + 1)
        torch.random.set_rng_state(state)
    return model


def calculate_loss(self, batch):
    assert self.loss == "full_softmax"
    seq = self.forward(batch)
    targets = batch.candidates[:, 0]
    loss = full_softmax_loss(seq, self.item_vectors(), targets, self.label_smoothing)
    attrs = self.encoder.item_attrs[targets]  # (N, most attributes), 0-padded
    y = torch.zeros(len(targets), self.attr_head.out_features, device=seq.device)
    y.scatter_(1, attrs, 1.0)
    y[:, 0] = 0.0
    count = y.sum(1)
    keep = count > 0
    log_p = F.log_softmax(self.attr_head(seq[keep]).float()[:, 1:], -1)
    aux = -(y[keep, 1:] / count[keep, None] * log_p).sum(1).mean()
    return loss + WEIGHT * aux


registry.build_model = build_model
ConvRec.calculate_loss = calculate_loss

if __name__ == "__main__":
    convergence.main(sys.argv[1:])
