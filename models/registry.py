"""Every model, once: names and properties, construction, and checkpoints.

``MODELS`` is the one list of models. The training assets (``assets/training.py``), the report's
order, labels and colours (``convrec_dagster/data/report.py``) and the evaluation's model choices
are generated from it; a new model is one ``ModelSpec`` here (docs/ARCHITECTURE.md).

Checkpoints hold only tensors and plain Python (``torch.load(weights_only=True)`` reads them):
``{"model": name, "hparams": {...}, "state_dict": {...}, "extra": {...}}``, where ``hparams`` is the
model's typed config as a dict (``models/config.py``, ``ModelConfig.to_hparams``). Dataset arrays (proxy
ids, attributes, image features) are rebuilt from the ``RecData`` given to :func:`load_model`, which also
applies the popularity adjustment fitted after training (``extra["popularity_adjustment"]``,
``models.calibration``). An ensemble of seeds (``models.ensemble``) is one checkpoint too: ``extra["ensemble_size"]``
members with one ``hparams``, their weights under ``members.<i>.`` in ``state_dict``.
Importing this module does not import torch or the model classes (the report reads ``MODELS``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.config import (
    ConvRecAttentionConfig,
    ConvRecConfig,
    ModelConfig,
    PopularityConfig,
    SASRecConfig,
)

if TYPE_CHECKING:
    import torch

    from models.base import SequentialRecommender
    from models.data import RecData


@dataclass(frozen=True)
class ModelSpec:
    """One model: what the pipeline, the report and the evaluation need to know about it."""

    name: str  # the checkpoint's "model", the asset is f"{name}_model"
    label: str  # in the report
    color: str  # in the report's plots
    target: str  # "module:Class"
    config: type[ModelConfig]  # its hyper-parameters (models/config.py)
    item_features: bool  # reads item attributes / image features (and time context) through ConvRec's encoder
    description: str  # the training asset's description

    @property
    def asset_name(self) -> str:
        return f"{self.name}_model"

    def model_class(self) -> type:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)


# In the report's order: baselines first, ConvRec last.
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "popularity", "Popularity", "#9e9e9e", "models.popularity:Popularity", PopularityConfig, False,
        "Popularity baseline: items ranked by training interactions. Nothing to learn; evaluated once.",
    ),
    ModelSpec(
        "sasrec", "SASRec", "#4c78a8", "models.sasrec:SASRec", SASRecConfig, False,
        "SASRec baseline: causal self-attention over item-ID embeddings, trained like ConvRec.",
    ),
    ModelSpec(
        "convrec_attention", "ConvRec-Attention", "#72b7b2", "models.attention:ConvRecAttention", ConvRecAttentionConfig,
        True,
        "ConvRec's attention counterpart: ConvRec's item encoder with a Transformer encoder instead of the "
        "convolution stack, isolating convolution versus attention.",
    ),
    ModelSpec(
        "convrec", "ConvRec", "#e45756", "models.convrec:ConvRec", ConvRecConfig, True,
        "ConvRec (IJCAI-ECAI 2026): attribute-aware item encoder and convolution down-scaling, trained with "
        "early stopping on validation NDCG@10; best and resumable checkpoints under artifacts/models/convrec.",
    ),
)  # fmt: skip
SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in MODELS}
MODEL_NAMES: tuple[str, ...] = tuple(SPECS)


def spec(name: str) -> ModelSpec:
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    return SPECS[name]


def model_config(name: str, hparams: dict | ModelConfig) -> ModelConfig:
    """``name``'s typed config: ``hparams`` itself, or read from a plain dict (a checkpoint's
    ``hparams``; ``ModelConfig.from_hparams``)."""
    config_class = spec(name).config
    if isinstance(hparams, ModelConfig):
        if not isinstance(hparams, config_class):
            raise TypeError(f"{name} takes a {config_class.__name__}, not a {type(hparams).__name__}")
        return hparams
    return config_class.from_hparams(hparams)


def build_model(name: str, data: RecData, config: ModelConfig | dict) -> SequentialRecommender:
    """The model ``name`` with ``config`` (a config's fields are its constructor's arguments)."""
    kwargs = model_config(name, config).to_hparams()
    cls = spec(name).model_class()
    if name == "sasrec":
        return cls(data.n_items, **kwargs)
    return cls(data, **kwargs)


def save_checkpoint(
    path: str | Path, model: SequentialRecommender, name: str, hparams: dict, extra: dict
) -> None:
    """Write ``model``'s checkpoint atomically (``write_checkpoint``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_checkpoint(path, {"model": name, "hparams": dict(hparams), "state_dict": state, "extra": extra})


def write_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """``torch.save`` to a temporary file, then rename: a killed run never leaves half a checkpoint."""
    import torch

    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_model(
    path: str | Path, data: RecData, map_location: str | torch.device = "cpu"
) -> tuple[SequentialRecommender, dict]:
    import torch

    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    return model_from_checkpoint(checkpoint, data).to(map_location), checkpoint


def build_ensemble(name: str, data: RecData, config: ModelConfig | dict, size: int) -> SequentialRecommender:
    """``size`` untrained copies of ``name`` with ``config`` as one ``models.ensemble.ScoreEnsemble``."""
    from models.ensemble import ScoreEnsemble

    return ScoreEnsemble([build_model(name, data, config) for _ in range(size)])


def ensemble_size(checkpoint: dict) -> int:
    """How many members the checkpoint holds (1: one model)."""
    return int((checkpoint.get("extra") or {}).get("ensemble_size", 1))


def model_from_checkpoint(checkpoint: dict, data: RecData) -> SequentialRecommender:
    """The model a loaded checkpoint holds (an ensemble where it holds several): built, its weights, and
    its popularity adjustment."""
    size = ensemble_size(checkpoint)
    if size > 1:
        model = build_ensemble(checkpoint["model"], data, checkpoint["hparams"], size)
    else:
        model = build_model(checkpoint["model"], data, checkpoint["hparams"])
    model.load_state_dict(checkpoint["state_dict"])
    tau = (checkpoint.get("extra") or {}).get("popularity_adjustment", 0.0)
    if tau:
        model.set_popularity_adjustment(tau, data.train_item_counts())
    return model
