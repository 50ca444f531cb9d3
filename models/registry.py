"""Model names, construction from a hyper-parameter dict, and checkpoints.

Checkpoints hold only tensors and plain Python (``torch.load(weights_only=True)`` reads them):
``{"model": name, "hparams": {...}, "state_dict": {...}, "extra": {...}}``. Dataset arrays (proxy
ids, attributes, image features) are rebuilt from the ``RecData`` given to :func:`load_model`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

from models.attention import ConvRecAttention
from models.base import SequentialRecommender
from models.convrec import ConvRec
from models.data import RecData
from models.popularity import Popularity
from models.sasrec import SASRec

MODEL_NAMES = ("popularity", "sasrec", "convrec_attention", "convrec")
_CLASSES = {"popularity": Popularity, "sasrec": SASRec, "convrec_attention": ConvRecAttention, "convrec": ConvRec}


def model_kwargs(name: str, hparams: dict) -> dict:
    """The entries of ``hparams`` that ``name``'s constructor takes (others are ignored)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    accepted = set(inspect.signature(_CLASSES[name].__init__).parameters) - {"self", "data", "n_items"}
    return {k: v for k, v in hparams.items() if k in accepted}


def build_model(name: str, data: RecData, hparams: dict) -> SequentialRecommender:
    kwargs = model_kwargs(name, hparams)
    if name == "sasrec":
        return SASRec(data.n_items, **kwargs)
    return _CLASSES[name](data, **kwargs)


def save_checkpoint(path: str | Path, model: SequentialRecommender, name: str, hparams: dict, extra: dict) -> None:
    """Write atomically (temporary file + rename), so a killed run never leaves half a checkpoint."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": name, "hparams": dict(hparams), "state_dict": state, "extra": extra}, tmp)
    os.replace(tmp, path)


def load_model(path: str | Path, data: RecData, map_location: str | torch.device = "cpu") -> tuple[SequentialRecommender, dict]:
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    model = build_model(checkpoint["model"], data, checkpoint["hparams"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location), checkpoint
