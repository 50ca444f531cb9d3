"""From a model's resolved settings and its loaded data to a trained model (no Dagster).

``prepare_training`` serves both ways a training asset trains: in its own process
(``assets/training.py``) and on the ranks that ``torchrun`` starts (``convrec_dagster/torchrun_entry.py``),
so that both build the same model with the same ``TrainConfig``. ``run_training`` is the one-process
sequence (prepare, choose the window, seed, build, train) that the asset and
``benchmarks.sample_dumps`` share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from convrec_dagster.data.dataset_info import DatasetInfo
from convrec_dagster.data.tables import DataError
from models.base import SequentialRecommender
from models.budgets import (
    CPU_CONVREC_IDS_ONLY,
    CPU_CONVREC_WITH_FEATURES,
    EMB_REFERENCE_STD,
    MAX_LEN_CHOICES,
    apply_large_catalogue,
    apply_without_time,
    auto_max_len,
    budget_settings,
    dataset_preset,
    resolve_budget,
    resolve_emb_init,
    resolve_embedding_lr_scale,
    resolve_loss,
    resolve_popularity_adjustment,
)
from models.config import ModelConfig
from models.data import RecData
from models.registry import build_model, spec
from models.train import TrainConfig, TrainResult, train

ATTENTION_DEFAULTS = {"n_layers": 2, "n_heads": 2, "augment_prob": 0.01}
# settings whose "auto" means the budget's
AUTO_CHOICES = ("scheme", "loss", "valid_protocol", "residual_pool")


def resolve_settings(user: dict, dataset: DatasetInfo, model: str, cuda: bool) -> tuple[str, str, dict]:
    """(budget, dataset preset, every setting with the budget's values filled in). ``user``: the training
    asset's config as a dict (``TrainingConfig.model_dump()``: None or ``auto`` leaves a setting to the budget);
    ``dataset``: the dataset's identity (``ConvRecPaths.dataset``), which picks the ``auto`` budget and preset."""
    budget = resolve_budget(user["budget"], dataset.embedded_sample, cuda)
    preset = user["dataset"] if user["dataset"] != "auto" else dataset_preset(dataset.name)
    base = {**ATTENTION_DEFAULTS, **budget_settings(budget, model, preset)}
    settings = dict(user)
    from_budget = set()
    for key, value in base.items():
        if settings.get(key) is None or settings.get(key) == "auto" and key in AUTO_CHOICES:
            settings[key] = value
            from_budget.add(key)
    # data-dependent budget settings (applied in prepare_training) never override a user's value
    for rule in ("without_time", "ids_only", "with_features", "large_catalogue"):
        settings[rule] = {k: v for k, v in base.get(rule, {}).items() if k in from_budget}
    if user["max_len"] is not None and user["max_len_choices"] is None:
        settings["max_len_choices"] = []  # a window the user set is not searched
    settings["kernels"] = settings["kernels"] or None
    settings["strides"] = settings["strides"] or None
    settings["time_budget_s"] = float(settings.pop("time_budget_min") or 0.0) * 60
    settings["emb_init_std_user"] = user["emb_init_std"]  # resolved with the data (resolve_emb_init)
    settings["emb_init_std_budget"] = base.get("emb_init_std")
    return budget, preset, settings


@dataclasses.dataclass
class TrainingRun:
    """What ``run_training`` produced: the model (the picked epoch's weights), its typed config, the
    loop's settings, the loop's result and the window search's trials (empty without a search)."""

    model: SequentialRecommender
    model_config: ModelConfig
    train_config: TrainConfig
    result: TrainResult
    window_trials: list[dict]

    @property
    def hparams(self) -> dict:
        return self.model_config.to_hparams()


def prepare_run(
    name: str, settings: dict, data: RecData, device, precision: str, log: Callable[[str], None], record=None
) -> tuple[ModelConfig, TrainConfig, list[dict]]:
    """``prepare_training`` then ``choose_window``: (the model's config with its window, the loop's
    settings, the window search's trials). ``settings`` is updated in place."""
    model_config, train_config = prepare_training(name, settings, data, log)
    model_config, trials = choose_window(
        name, settings, data, model_config, train_config, device, precision, log, record
    )
    return model_config, train_config, trials


def run_training(
    name: str,
    settings: dict,
    data: RecData,
    device,
    precision: str,
    out_dir: Path,
    log: Callable[[str], None],
    on_epoch: Callable[[dict], None] | None = None,
    compile_mixer: bool = False,
    run_id: str | None = None,
) -> TrainingRun:
    """Train ``name`` in this process from its resolved ``settings`` (``resolve_settings``):
    ``prepare_run`` (the window search is kept in ``out_dir/window_search.json``), seed, build, and
    ``models.train.train`` with checkpoints in ``out_dir``; with ``ensemble_size`` > 1 that many seeds, joined
    into one ``models.ensemble.ScoreEnsemble`` (``ensemble_training.train_ensemble``). ``compile_mixer``:
    ``torch.compile`` the sequence mixer of models that have one."""
    model_config, train_config, trials = prepare_run(
        name, settings, data, device, precision, log, out_dir / "window_search.json"
    )
    size = 1 if settings.get("ensemble_size") is None else int(settings["ensemble_size"])
    if size < 1:
        raise ValueError(f"ensemble_size must be 1 (one model) or more, not {settings['ensemble_size']!r}")
    if size > 1 and spec(name).model_class().trainable:
        from convrec_dagster.data.ensemble_training import train_ensemble

        ensemble, result = train_ensemble(
            name, data, model_config, train_config, size, device, precision, out_dir, log, on_epoch,
            int(settings.get("num_threads") or 0), compile_mixer, run_id,
        )  # fmt: skip
        return TrainingRun(ensemble, model_config, train_config, result, trials)
    torch.manual_seed(train_config.seed)
    model = build_model(name, data, model_config)
    partner = mutual_partner(name, data, model_config, train_config, log)
    if compile_mixer and hasattr(model, "mix"):
        model.mix = torch.compile(model.mix)
        log("torch.compile applied to the sequence mixer")
    hparams = model_config.to_hparams()
    result = train(
        model, data, name, hparams, train_config, device, precision, out_dir, on_epoch, log, run_id=run_id,
        partner=partner,
    )  # fmt: skip
    return TrainingRun(model, model_config, train_config, result, trials)


def mutual_partner(
    name: str, data: RecData, model_config: ModelConfig, config: TrainConfig, log: Callable[[str], None]
):
    """Under ``mutual_learning`` the second copy of the model, built right after the first one (so from the
    next draws of the seeded generator: the first copy starts as the one-model run of the same seed would);
    else None."""
    if not config.mutual_learning or not spec(name).model_class().trainable:
        return None
    log(
        f"{name}: mutual learning (weight {config.mutual_learning:g}): a second copy trains beside the model on "
        "the same batches, each matching the other's distribution over every item; the model alone is kept"
    )
    return build_model(name, data, model_config)


def choose_window(
    name: str,
    settings: dict,
    data: RecData,
    model_config: ModelConfig,
    train: TrainConfig,
    device,
    precision: str,
    log: Callable[[str], None],
    record=None,
) -> tuple[ModelConfig, list[dict]]:
    """Under ``max_len_choices`` (the budget's unless the user set ``max_len``), pick the window by
    validation (``models.window_search``; ``record``: the JSON that keeps the search for an unchanged
    rerun) and return the config with it, and the trials; else the config as it is and no trials.
    Explicit ``kernels`` fit one window only, so they keep theirs."""
    from models.window_search import search_max_len

    choices = [int(c) for c in settings.get("max_len_choices") or []]
    if not choices:
        return model_config, []
    if getattr(model_config, "kernels", None) or getattr(model_config, "single_conv", False):
        log(f"{name}: kernels are set, so no window search: L {model_config.max_len}")
        return model_config, []
    epochs = int(settings.get("max_len_search_epochs") or 1)
    log(f"{name}: choosing the window L among {choices} by validation, {epochs} epoch(s) each")
    chosen, trials = search_max_len(
        name, data, model_config, train, choices, epochs, device, precision, log, record
    )
    log(f"{name}: L {chosen} (the best validation figure of the window search)")
    return dataclasses.replace(model_config, max_len=chosen), trials


def window_search_markdown(trials: list[dict], chosen: int) -> str:
    """The window search as a Markdown table (asset metadata)."""
    rows = [
        f"| {t['max_len']}{' (chosen)' if t['max_len'] == chosen else ''} | {t['valid_NDCG@10']:.4f} | "
        f"{t['best_epoch']} | {t['seconds']:.1f} |"
        for t in trials
    ]
    return "\n".join(["| L | valid NDCG@10 | best epoch | seconds |", "|---|---|---|---|", *rows])


def data_features(name: str, settings: dict) -> str:
    """The item features to load for ``name`` (only ConvRec and its attention counterpart use any)."""
    return settings["features"] if spec(name).item_features else "none"


def data_rules(name: str, has_context: bool, has_attributes: bool, has_images: bool) -> tuple[bool, bool]:
    """(row_dependent, ids_only) of model ``name`` on data with these traits: its candidate vectors depend
    on the row's time (a time path), and it reads no item features. Training (``prepare_training``) and
    preflight's time estimate decide the budget's data-dependent rules with this one function."""
    reads_features = spec(name).item_features
    return reads_features and has_context, not (reads_features and (has_attributes or has_images))


def prepare_training(
    name: str, settings: dict, data: RecData, log: Callable[[str], None]
) -> tuple[ModelConfig, TrainConfig]:
    """Fill in what depends on the data (``max_len`` 0: from the histories; a ``full_softmax``
    that the model cannot take: a sampled softmax; the id init: ``resolve_emb_init``; the budget's
    settings for data without a time path: ``apply_without_time``, and for a large catalogue:
    ``apply_large_catalogue``), log the choices, and return (the model's
    typed config, the loop's ``TrainConfig``). ``settings`` is updated in place."""
    s = settings
    if not s["max_len"]:
        lengths = np.diff(data.user_ptr[1 : data.n_users + 2]) - 2 * data.is_eval_user[1:]
        s["max_len"] = auto_max_len(lengths)
        log(
            f"{name}: max_len {s['max_len']} from the data (90 % of the users' training "
            f"histories fit; choices {MAX_LEN_CHOICES})"
        )
    row_dependent, ids_only = data_rules(name, data.has_context, data.has_attributes, data.has_images)
    s["emb_init_std"] = resolve_emb_init(
        s.pop("emb_init_std_user", None),
        s.pop("emb_init_std_budget", None),
        s.pop("emb_init_std_with_time", None),
        row_dependent,
    )
    s["embedding_lr_scale"] = resolve_embedding_lr_scale(
        s["embedding_lr_scale"], s["emb_init_std"], spec(name).item_features
    )
    if s["embedding_lr_scale"] != 1.0:
        log(
            f"{name}: the embedding tables start at PyTorch's N(0, 1), so they learn at lr x "
            f"{s['embedding_lr_scale']:g} (the relative step of N(0, {EMB_REFERENCE_STD}²) tables)"
        )
    applied = apply_without_time(s, row_dependent, ids_only)
    if applied:
        log(
            f"{name}: no candidate vector depends on the row (no time path"
            + (", item ids only" if ids_only and applied.keys() & CPU_CONVREC_IDS_ONLY.keys() else "")
            + (
                ", with item features"
                if not ids_only and applied.keys() & CPU_CONVREC_WITH_FEATURES.keys()
                else ""
            )
            + "), so the budget trains with "
            + ", ".join(f"{k} {v}" for k, v in applied.items())
        )
    large = apply_large_catalogue(s, data.n_items)
    if large and spec(name).model_class().trainable:  # popularity fits nothing: its loss is never used
        log(
            f"{name}: {data.n_items:,} items: the softmax over every item would cost items x rows per epoch, so "
            "the budget trains with " + ", ".join(f"{k} {v}" for k, v in large.items())
        )
    requested = s["n_negatives"]
    loss, s["n_negatives"] = resolve_loss(s["loss"], requested, row_dependent)
    if loss != s["loss"]:
        log(
            f"{name}: candidate vectors depend on each row's time, so the loss is a softmax over "
            f"{s['n_negatives']} sampled negatives per row instead of {s['loss']}"
            + (
                f" (n_negatives {requested} is a shared sample's size: {requested} per row would take "
                f"about {requested / s['n_negatives']:.0f}x the time, so it is capped)"
                if s["n_negatives"] != requested
                else ""
            )
        )
    s["loss"] = loss
    model_class = spec(name).model_class()
    if s.get("mutual_learning") and model_class.trainable:
        check_mutual_learning(name, s["mutual_learning"], loss, model_class.positionwise, row_dependent)
    log(
        f"{name}: scheme {s['scheme']}, loss {loss}, lr {s['lr']}, batch {s['batch_size']}, "
        f"d {s['d']}, L {s['max_len']}, at most {s['max_epochs']} epochs"
        + (f" / {s['time_budget_s'] / 60:.0f} min" if s["time_budget_s"] else "")
    )
    return spec(name).config.from_settings(s), train_config(s)


def check_mutual_learning(
    name: str, weight: float, loss: str, positionwise: bool, row_dependent: bool
) -> None:
    """Mutual learning (``models.mutual``) matches two copies' next-item distributions over every item, one
    per row: a ``DataError`` that says what to do for a model or data where it cannot train."""
    if positionwise:
        why = "this model predicts at every position of the sequence (it trains position-wise)"
    elif loss != "full_softmax":
        why = f"this model trains with loss={loss!r}" + (
            " because its candidate vectors depend on each row's time" if row_dependent else ""
        )
    else:
        return
    raise DataError(
        f"{name}: mutual_learning {weight:g} matches two copies' distributions over every item, one per row, so it "
        f"needs loss='full_softmax' on a one-row-per-cut model, but {why}. What to do: set mutual_learning to 0 "
        "(it applies to ConvRec on data without a time path, such as the S3-Rec benchmark files)."
    )


def train_config(s: dict) -> TrainConfig:
    """The training loop's settings out of a model's resolved settings (``eval_batch_size`` keeps
    ``TrainConfig``'s default)."""
    return TrainConfig(
        batch_size=s["batch_size"],
        lr=s["lr"],
        weight_decay=s["weight_decay"],
        max_epochs=s["max_epochs"],
        patience=s["patience"],
        n_negatives=s["n_negatives"],
        augment_prob=s["augment_prob"],
        crop_prob=s["crop_prob"],
        replace_before_last_prob=s["replace_before_last_prob"],
        negative_power=s["negative_power"],
        label_smoothing=s["label_smoothing"],
        embedding_lr_scale=s["embedding_lr_scale"],
        valid_protocol=s["valid_protocol"],
        max_validation_scores=s["max_validation_scores"],
        ema_decay=s["ema_decay"],
        grad_clip=s["grad_clip"],
        seed=s["seed"],
        resume=s["resume"],
        scheme=s["scheme"],
        adam_beta2=s["adam_beta2"],
        warmup_epochs=s["warmup_epochs"],
        lr_schedule=s["lr_schedule"],
        plateau_factor=s["plateau_factor"],
        time_budget_s=s["time_budget_s"],
        popularity_adjustment=resolve_popularity_adjustment(s["popularity_adjustment"]),
        mutual_learning=float(s.get("mutual_learning") or 0.0),
    )


def epoch_line(name: str, record: dict) -> str:
    """One epoch's run-log line: loss, validation (full ranking too where it picks the epoch; each figure
    marked "(best)" in the epoch its protocol picks), time, ETA."""
    loss = "-" if record["loss"] is None else f"{record['loss']:.4f}"
    full = record.get("valid_full_NDCG@10")
    if "member" in record:  # one member of an ensemble of seeds
        name = f"{name} member {record['member']}"
    line = (
        f"{name} epoch {record['epoch']}: loss {loss}, valid HR@10 {record['valid_HR@10']:.4f}, "
        f"NDCG@10 {record['valid_NDCG@10']:.4f}"
        + (" (best)" if record.get("best_sampled_100") else "")  # under valid_protocol full: its own pick
        + (f", full-ranking NDCG@10 {full:.4f}" if full is not None else "")
        + f"{' (best)' if record['best'] else ''}, {record['epoch_time_s']:.2f} s"
    )
    if record.get("examples_per_s") is not None:
        line += f", {record['examples_per_s']:.0f} examples/s"
    if "elapsed_s" in record:
        line += f", elapsed {record['elapsed_s'] / 60:.1f} min, ETA {record['eta_s'] / 60:.1f} min"
    return line


def validation_metadata(best_metrics: dict, config: TrainConfig, extra: dict | None = None) -> dict:
    """Training metadata on validation: the protocol that picked the epoch and, under ``full``, the best
    epoch's full-ranking figures (its sampled ones are ``best_valid_*`` already), the epoch the sampled-100
    validation picked for the sampled figures, and the popularity adjustment fitted after training
    (``extra``: ``TrainResult.extra``)."""
    extra = extra or {}
    out: dict = {"valid_protocol": config.valid_protocol}
    if "full_NDCG@10" in best_metrics:
        out["best_valid_full_HR@10"] = float(best_metrics["full_HR@10"])
        out["best_valid_full_NDCG@10"] = float(best_metrics["full_NDCG@10"])
    if sampled_best := extra.get("sampled_best"):
        out["sampled_100_best_epoch"] = int(sampled_best["epoch"])
        out["sampled_100_best_valid_NDCG@10"] = float(sampled_best["metrics"]["NDCG@10"])
    if fits := extra.get("popularity_adjustment"):
        out["popularity_adjustment_tau"] = float(fits[config.valid_protocol]["tau"])
        out["popularity_adjustment"] = fits
    return out
