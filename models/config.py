"""Each model's hyper-parameters as one typed dataclass (the pattern of nanoGPT's ``GPTConfig``).

A config's fields are exactly its model's constructor arguments (besides the data), with the same
defaults; ``models.registry.build_model`` builds the model from it. Three ways in:

- ``from_settings(s)``: from a training asset's resolved settings (``assets/training.py``
  ``resolve_settings`` after ``convrec_dagster.data.training_setup.prepare_training``), field by field;
  every field must be there.
- ``from_hparams(h)``: from a checkpoint's plain-dict ``hparams`` (``to_hparams``), or a hand-written
  dict as in the tests and benchmarks. Fields missing from ``h`` (older checkpoints) keep their
  defaults; keys that are not fields of this model (another model's, e.g. ``hidden`` for SASRec) are
  not used.
- the constructor, as ``ConvRecConfig(d=64, max_len=20)``.

Checkpoints store ``to_hparams()``, a plain dict, so ``torch.load(weights_only=True)`` reads them.
Pure Python: importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="ModelConfig")


@dataclass
class ModelConfig:
    """Base: what every model's config can do."""

    model: ClassVar[str] = ""  # the registry name
    # fields added after checkpoints were written: at these defaults ``to_hparams`` leaves them out, so the
    # config hash of earlier checkpoints stays as it was (the model-side twin of ``models.train``'s
    # ``_HASHED_WHEN_SET``)
    omitted_at_default: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_settings(cls: type[C], s: dict[str, Any]) -> C:  # pragma: no cover - every model overrides
        raise NotImplementedError

    @classmethod
    def from_hparams(cls: type[C], hparams: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in hparams.items() if k in names})

    def to_hparams(self) -> dict[str, Any]:
        """A plain dict (what a checkpoint stores and the config hash covers)."""
        skip = self.omitted_at_default
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in skip and v == skip[k])}


@dataclass
class PopularityConfig(ModelConfig):
    model: ClassVar[str] = "popularity"
    max_len: int = 50
    loss: str = "softmax"

    @classmethod
    def from_settings(cls, s: dict[str, Any]) -> PopularityConfig:
        return cls(max_len=s["max_len"], loss=s["loss"])


@dataclass
class SASRecConfig(ModelConfig):
    """Kang & McAuley's SASRec (their defaults)."""

    model: ClassVar[str] = "sasrec"
    max_len: int = 50
    d: int = 50
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.5
    loss: str = "bce"

    @classmethod
    def from_settings(cls, s: dict[str, Any]) -> SASRecConfig:
        return cls(
            max_len=s["max_len"],
            d=s["d"],
            n_layers=s["n_layers"],
            n_heads=s["n_heads"],
            dropout=s["dropout"],
            loss=s["loss"],
        )


@dataclass
class EncoderConfig(ModelConfig):
    """What ConvRec and its attention counterpart share: ConvRec's item encoder (``models.convrec``).

    ``features``: the item features the encoder reads (``models.data.FeatureChoice``); ``hidden``:
    the attribute/image projection width (None: 4 d); ``emb_init_std``: the id embeddings' init
    std (None: PyTorch's N(0, 1)); ``interval_scale``: ``raw`` or ``calendar``; ``side_init``:
    ``default``, ``zero`` or ``zero_time``."""

    max_len: int = 50
    d: int = 256
    dropout: float = 0.3
    features: str = "auto"
    intervals: bool = True
    hidden: int | None = None
    loss: str = "softmax"
    emb_init_std: float | None = None
    interval_scale: str = "raw"
    side_init: str = "default"

    @staticmethod
    def _encoder_settings(s: dict[str, Any]) -> dict[str, Any]:
        return {
            "max_len": s["max_len"],
            "d": s["d"],
            "dropout": s["dropout"],
            "features": s["features"],
            "intervals": s["intervals"],
            "hidden": s["hidden"],
            "loss": s["loss"],
            "emb_init_std": s["emb_init_std"],
            "interval_scale": s["interval_scale"],
            "side_init": s["side_init"],
        }


@dataclass
class ConvRecConfig(EncoderConfig):
    """ConvRec with the paper's ablation switches (``models.convrec.ConvRec``). ``kernels`` /
    ``strides`` None: from ``max_len`` (``default_kernels``)."""

    model: ClassVar[str] = "convrec"
    omitted_at_default: ClassVar[dict[str, Any]] = {"residual_pool": "avg", "attribute_loss": 0.0}
    kernels: list[int] | None = None
    strides: list[int] | None = None
    heads: int = 1
    residuals: bool = True
    single_conv: bool = False
    avg_pool_only: bool = False
    residual_pool: str = "avg"
    attribute_loss: float = 0.0  # training only: the weight of the target's attribute prediction

    @classmethod
    def from_settings(cls, s: dict[str, Any]) -> ConvRecConfig:
        return cls(
            **cls._encoder_settings(s),
            kernels=s["kernels"],
            strides=s["strides"],
            heads=s["heads"],
            residuals=s["residuals"],
            single_conv=s["single_conv"],
            avg_pool_only=s["avg_pool_only"],
            residual_pool=s["residual_pool"],
            attribute_loss=s["attribute_loss"],
        )


@dataclass
class ConvRecAttentionConfig(EncoderConfig):
    """ConvRec's item encoder with a Transformer encoder (``models.attention.ConvRecAttention``)."""

    model: ClassVar[str] = "convrec_attention"
    n_layers: int = 2
    n_heads: int = 2
    pooling: str = "last"

    @classmethod
    def from_settings(cls, s: dict[str, Any]) -> ConvRecAttentionConfig:
        return cls(
            **cls._encoder_settings(s),
            n_layers=s["n_layers"],
            n_heads=s["n_heads"],
            pooling=s["pooling"],
        )
