"""Pick the history window L by validation: one short training run per candidate (pure PyTorch).

ConvRec's convolutions read the whole window at once and its blocks pool what they read, so on data
whose next item follows mostly from the last one, a long window blurs that item: on the embedded
sample, validation NDCG@10 after 12 epochs is .57 at L 20, .61 at L 5 and .68 at L 2, against SASRec's
.68 (BENCHMARKS.md, "the embedded sample"). The paper chooses L per dataset (Appendix C); this
chooses it from the data, with the same validation figure that picks the best epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from models.config import ModelConfig
from models.data import RecData
from models.registry import build_model
from models.train import TrainConfig, config_hash, selection_score, train


def search_max_len(
    name: str,
    data: RecData,
    model_config: ModelConfig,
    train_config: TrainConfig,
    choices: list[int],
    epochs: int,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    log: Callable[[str], None] = print,
    record: str | Path | None = None,
) -> tuple[int, list[dict]]:
    """Train a fresh ``name`` for ``epochs`` epochs at each window in ``choices`` (the rest of
    ``model_config`` and ``train_config`` unchanged, no checkpoints) and return (the window with the
    best validation figure, first one on a tie; one record per window).

    ``record``: a JSON file that keeps the search under a key of everything that shapes it (the
    settings but the window, the choices and epochs, the data's fingerprint); a later call with the
    same key reads it instead of training again, as an unchanged finished model is reused."""
    if not choices or epochs < 1:
        raise ValueError(f"a window search needs choices and epochs >= 1, not {choices!r} and {epochs}")
    probe = dataclasses.replace(
        train_config,
        max_epochs=epochs,
        patience=epochs,
        time_budget_s=0.0,
        resume=False,
        popularity_adjustment=0.0,  # the trials compare windows by the scores as trained
    )
    key = {
        "config_hash": config_hash(name, {**model_config.to_hparams(), "max_len": None}, probe),
        "choices": [int(c) for c in choices],
        "fingerprint": str(data.info.get("fingerprint", "")),
    }
    path = Path(record) if record is not None else None
    if path is not None and path.exists():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            log(f"{name}: same settings and data as the last window search, so its choice stands")
            return int(kept["chosen"]), list(kept["trials"])
    trials = []
    for max_len in choices:
        config = dataclasses.replace(model_config, max_len=int(max_len))
        torch.manual_seed(train_config.seed)
        model = build_model(name, data, config)
        started = time.perf_counter()
        result = train(
            model, data, name, config.to_hparams(), probe, device, precision, None, None, lambda m: None
        )
        trial = {
            "max_len": int(max_len),
            "valid_NDCG@10": round(float(selection_score(result.best_metrics, probe)), 4),
            "best_epoch": result.best_epoch,
            "seconds": round(time.perf_counter() - started, 1),
        }
        trials.append(trial)
        log(
            f"{name}: window search, L {max_len}: valid NDCG@10 {trial['valid_NDCG@10']:.4f} "
            f"({train_config.valid_protocol}) after {epochs} epoch{'s' if epochs > 1 else ''} "
            f"({trial['seconds']:.0f} s)"
        )
    best = max(trials, key=lambda t: t["valid_NDCG@10"])  # max() keeps the first of equal ones
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "chosen": best["max_len"], "trials": trials}, indent=1))
        os.replace(tmp, path)
    return best["max_len"], trials
