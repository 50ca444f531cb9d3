"""Training budgets: named sets of training settings, per model (pure Python, no Dagster).

- ``cpu``: what reaches the accuracy targets on 2 CPU cores within an hour of training per model
  (BENCHMARKS.md). Every training row is a positive once per epoch (``scheme="all_cuts"``) and the
  loss is a cross-entropy over all items (``full_softmax``) wherever candidate vectors do not depend
  on the row; with time context, a sampled softmax over ``n_negatives`` negatives instead. SASRec is
  Kang & McAuley's model and settings (d 50, L 50, dropout .5, lr 1e-3, batch 128, Adam β2 .98). On a
  catalogue over 50,000 items a shared softmax over 4,096 items per batch, and full-ranking validation on a
  user sample (``apply_large_catalogue``, ``max_validation_scores``). After training, each model's scores
  get the popularity adjustment validation picks (``popularity_adjustment: auto``; tau 0 declines it).
- ``paper``: the paper's Appendix C (d 256, batch 128, one random cut per user per epoch, softmax
  over 100 negatives, up to 1,000 epochs, the dataset's lr / dropout / weight decay / L). For GPUs.
- ``sample``: small and quick, for the embedded sample dump (about a minute on 2 cores).

``auto`` picks ``sample`` on the embedded sample, ``paper`` when CUDA is available, else ``cpu``.
The paper's per-dataset settings are one typed table, ``PAPER_PRESETS``.
Settings a user sets explicitly always win over the budget's.
"""

from __future__ import annotations

from dataclasses import dataclass

BUDGETS = ("cpu", "paper", "sample")


@dataclass(frozen=True)
class PaperPreset:
    """The paper's best settings for one dataset (Appendix C), and the words that name the dataset
    (``dataset_preset`` looks for them in the dataset's name, in table order)."""

    lr: float
    dropout: float
    weight_decay: float
    max_len: int  # L
    keywords: tuple[str, ...]

    def settings(self) -> dict:
        return {
            "lr": self.lr,
            "dropout": self.dropout,
            "weight_decay": self.weight_decay,
            "max_len": self.max_len,
        }


# The one table of dataset presets: a new preset is one row (docs/ARCHITECTURE.md).
PAPER_PRESETS: dict[str, PaperPreset] = {
    "beauty": PaperPreset(lr=4e-5, dropout=0.45, weight_decay=0.2, max_len=70, keywords=("beauty",)),
    "games": PaperPreset(lr=1e-4, dropout=0.35, weight_decay=0.1, max_len=50, keywords=("games", "video")),
    "fashion": PaperPreset(lr=5e-5, dropout=0.35, weight_decay=0.1, max_len=50, keywords=("fashion", "clothing")),
    "men": PaperPreset(lr=1e-4, dropout=0.30, weight_decay=0.1, max_len=30, keywords=("men",)),
}  # fmt: skip
DEFAULT_PRESET = "games"  # when the dataset's name names none


def dataset_preset(dataset_name: str) -> str:
    """The paper preset whose keyword the dataset's name contains first, else ``DEFAULT_PRESET``."""
    name = dataset_name.lower()
    found = (preset for preset, row in PAPER_PRESETS.items() for word in row.keywords if word in name)
    return next(found, DEFAULT_PRESET)


PAPER_DEFAULTS = {
    "d": 256, "batch_size": 128, "max_epochs": 1000, "patience": 20, "num_threads": 0, "scheme": "one_cut",
    "loss": "softmax", "n_negatives": 100, "adam_beta2": 0.999, "time_budget_min": 0.0, "ema_decay": 0.0,
    "crop_prob": 0.0, "replace_before_last_prob": 0.0, "valid_protocol": "sampled_100", "max_len_choices": [],
    "max_len_search_epochs": 1, "residual_pool": "avg", "embedding_lr_scale": 1.0, "max_validation_scores": 0,
    "warmup_epochs": 0.0, "label_smoothing": 0.0, "attribute_loss": 0.0, "popularity_adjustment": 0.0,
    "ensemble_size": 1,
}  # fmt: skip
# Kang & McAuley's SASRec settings (their paper and code), whatever the budget's other models use.
SASREC_PAPER = {"d": 50, "max_len": 50, "dropout": 0.5, "lr": 1e-3, "batch_size": 128, "adam_beta2": 0.98,
                "weight_decay": 0.0, "n_layers": 2, "n_heads": 1}  # fmt: skip
# The cpu budget on large data. Its softmax over every item and its full-ranking validation both cost items x
# rows. Above LARGE_CATALOGUE_ITEMS items the loss is a softmax over one uniform sample of 4,096 items per batch,
# and validation scores at most MAX_VALIDATION_SCORES (user, item) pairs: Video (30,901 users x 23,715 items =
# 7.3e8) and Beauty keep every user; larger data validates on a fixed user sample. At the paper's Fashion size
# (45,184 users x 166,270 items) preflight estimates 3.0 min per ConvRec epoch with this rule, 38 without; forced
# onto Video it gives test .5573 / full .0620 against .5596 / .0640, Beauty .0575 against .0582 (BENCHMARKS.md,
# "Stop 35").
LARGE_CATALOGUE_ITEMS = 50_000
CPU_LARGE_CATALOGUE = {"loss": "shared_softmax", "n_negatives": 4096}
MAX_VALIDATION_SCORES = 1_000_000_000
CPU_COMMON = {
    "scheme": "all_cuts", "loss": "full_softmax", "n_negatives": 256, "max_len": 50, "max_epochs": 40,
    "patience": 3, "num_threads": 0, "time_budget_min": 60.0, "adam_beta2": 0.98, "weight_decay": 0.0,
    "augment_prob": 0.0, "crop_prob": 0.0, "replace_before_last_prob": 0.0, "ema_decay": 0.0,
    "valid_protocol": "sampled_100", "max_len_choices": [], "max_len_search_epochs": 1, "residual_pool": "avg",
    "embedding_lr_scale": "auto", "max_validation_scores": MAX_VALIDATION_SCORES, "large_catalogue": CPU_LARGE_CATALOGUE,
    "warmup_epochs": 0.0, "label_smoothing": 0.0, "attribute_loss": 0.0, "popularity_adjustment": "auto",
    "ensemble_size": 1,
}  # fmt: skip
# popularity_adjustment "auto": after training, every model's scores less tau x log(1 + training count), tau fitted
# on validation (models.calibration), which declines where it does not help. Stop 42 (BENCHMARKS.md): Beauty's and
# Video's converged ConvRec and Video's SASRec keep tau 0 (their figures to the digit); on Magazine ConvRec takes .1
# (test .2669 -> .2697) and SASRec .7 (.1127 -> .1402).
# ConvRec and its attention counterpart. emb_init_std: id and attribute embeddings start at N(0, .02²) (the
# GPT/BERT convention) instead of PyTorch's N(0, 1): with unit-scale ids the convolution stack
# learns several times slower (BENCHMARKS.md). max_len 0: chosen from the data (auto_max_len).
# With a time path (context + intervals) the small ids learn slower than PyTorch's N(0, 1) ids (sample .49 vs
# .54, Magazine .20 vs .26: BENCHMARKS.md), so there ``emb_init_std_with_time`` applies (0: PyTorch's).
CPU_ENCODER = {"d": 128, "hidden": 256, "dropout": 0.2, "lr": 1e-3, "batch_size": 128, "emb_init_std": 0.02,
               "emb_init_std_with_time": 0.0, "max_len": 0}  # fmt: skip
# ConvRec validates and keeps a moving average of its weights over about one epoch of steps, at most 1,000
# (models.train.auto_ema_decay). The same runs otherwise (stop 23): Video .5012 -> .5151 and Beauty .3829 ->
# .3899 (full .0426 -> .0447) at .999; Magazine .2715 -> .2930 at .9 (10 steps per epoch; a fixed .999 there
# lagged far behind: .1747).
CPU_CONVREC = {"ema_decay": "auto"}
# ConvRec where no candidate vector depends on the row (no time path): an item's vector is then the same for
# every row, so the softmax runs over every item (``full_softmax``), in batches of 1,024 rows, with no dropout
# and AdamW weight decay .5. The block residuals keep each window's last position (``residual_pool: last``;
# the paper averages), so a long window no longer blurs the last item. Validation is by full ranking
# (``valid_protocol: full``), and the sampled-100 figures come from the epoch their own validation picks
# (models.train), so neither protocol's figures are reported from the other's epoch. Measured (BENCHMARKS.md):
# - stop 21-25: no dropout and the shared softmax beat dropout .2 (Video .5012 against .4847 in 20 minutes
#   of training instead of 64); batch 512 beat 128 (Video .5464 against .5239);
# - stop 28-29 (Video, ids only): the full softmax at batch 1,024 (.5542 / full .0598 against .5464 /
#   .0571), weight decay .5 on top (.5600 / .0598; our SASRec .5581 / .0631);
# - stop 31: ``last`` (Video .5594 / full .0634; Beauty's budget .3990 / .0501 against .3968 / .0427);
#   with a time path it did not help (Magazine .2506 against .2930, the sample .6284 against .6316 as the
#   mean of three seeds), so it stays out of the budget there;
# - stop 26-31 (Beauty, with attributes): the epoch picked by full-ranking validation, the full softmax,
#   batch 1,024, weight decay .5 and no item replacement at L 20 with ``last``: test full NDCG@10 .0582
#   (a second seed .0567) against .0501 with the budget before (shared softmax, batch 512, item
#   replacement .2, the epoch picked by sampled validation); item replacement .2 alone cost .005 (.0530).
# - stop 32: the two picks, this rule as a whole (BENCHMARKS.md, "Stop 32").
CPU_CONVREC_WITHOUT_TIME = {
    "dropout": 0.0,
    "augment_prob": 0.0,
    "loss": "full_softmax",
    "batch_size": 1024,
    "weight_decay": 0.5,
    "residual_pool": "last",
    "valid_protocol": "full",
}
# ... and where ConvRec also reads no item features (ids only): twice the learning rate. Every signal then
# sits in the id table, which Adam moves by about lr per step. Video: test .5239 against .5151 at lr 1e-3;
# with Beauty's attributes lr 2e-3 gave the same sampled figure (.3899) and full .0421 against .0447 (stop 23).
# And 20 % of the history items replaced at random (noise on the sequence side only): on Video sampled
# validation peaks at .5965 with it against .5890 without (stop 32); with Beauty's attributes it cost full
# ranking .005 (above).
CPU_CONVREC_IDS_ONLY = {"lr": 2e-3, "augment_prob": 0.2}
# ... and where it does read item features (Beauty's brands and categories): twice the width (d 256, hidden 512)
# with dropout .2, a one-epoch warm-up to lr 2e-3 and label smoothing .1. The wider model alone overfits (Beauty
# test full NDCG@10 .0558 against the d 128 budget's .0582); with dropout .2 it gains over three seeds (.0588 /
# .0584 / .0584 on a GPU, mean .0585, against the budget's .0582 / .0567 / .0571, mean .0573), the warm-up, lr
# and smoothing on top .0592 there; on 2 CPU cores through the pipeline .0600 / HR .1008 (a second seed .0582)
# (BENCHMARKS.md, "Stop 37, second session" and "Stop 38"). An epoch takes about 3x as long (Beauty ~272 s at
# 1 thread against 89), so the 60-minute budget holds 13 epochs, still improving slightly at the end.
# Two such models, seeds s and s + 1, trained side by side (one process and one thread each, so the pair trains
# in the same 2-core hour as one model), ranked by the mean of their scores (``ensemble_size`` 2,
# models.ensemble). About 80 single-model changes moved Beauty's full NDCG@10 by at most the seed spread (about
# ±.001); a second seed gains about +.003: under a rule written before the runs, the three pairs of seeds 42, 0
# and 1 gave .0620 / .0619 / .0625 (HR@10 .1039 as their mean), each above both its members (p < 1e-4), against
# .0594 / .0581 / .0592 alone (BENCHMARKS.md, "Stop 45"). Twice the scoring cost at evaluation.
CPU_CONVREC_WITH_FEATURES = {
    "d": 256,
    "hidden": 512,
    "dropout": 0.2,
    "warmup_epochs": 1.0,
    "lr": 2e-3,
    "label_smoothing": 0.1,
    "ensemble_size": 2,
}
MAX_LEN_CHOICES = (10, 20, 30, 50)
# The embedded sample (~600 users, ~240 items, ~8k interactions): small and quick on 2 CPU cores.
# Every cut each epoch (4 epochs of it beat 15 of one cut: BENCHMARKS.md), 3 epochs to stay near a minute; the id embeddings keep
# PyTorch's init here, because the sample has time context and small ids drown in the time path.
# No dropout for ConvRec and its attention counterpart: in 3 epochs they underfit, and dropout .2 only
# slowed them (validation NDCG@10 .468 -> .500 without it; BENCHMARKS.md); SASRec keeps its .2.
SAMPLE = {
    "d": 64, "hidden": 128, "batch_size": 128, "lr": 3e-3, "dropout": 0.0, "weight_decay": 0.0,
    "max_len": 20, "max_epochs": 3, "patience": 3, "num_threads": 1, "scheme": "all_cuts", "loss": "softmax",
    "n_negatives": 100, "adam_beta2": 0.98, "time_budget_min": 0.0, "augment_prob": 0.0, "crop_prob": 0.0,
    "replace_before_last_prob": 0.0, "ema_decay": 0.0, "valid_protocol": "sampled_100", "max_len_choices": [],
    "max_len_search_epochs": 1, "residual_pool": "avg", "embedding_lr_scale": "auto", "max_validation_scores": 0,
    "warmup_epochs": 0.0, "label_smoothing": 0.0, "attribute_loss": 0.0, "popularity_adjustment": 0.0,
    "ensemble_size": 1,
}  # fmt: skip
SAMPLE_SASREC = {"max_epochs": 15, "patience": 5, "loss": "full_softmax", "batch_size": 32, "dropout": 0.2}
# ConvRec validates and keeps the weight average (as under ``cpu``: about one epoch of steps, here ~60):
# on the sample, test NDCG@10 .5006 against .4759 without it (stop 26). And it chooses its window by
# validation, one epoch at each of L 2 / 5 / 10 / 20 (~8 s; models.window_search), then trains 10 epochs:
# its pooled convolutions blur the last item in a long window, and the sample's next item follows from the
# last one (L 20 .5189, L 5 .5890, L 2 .6301 test; SASRec .6585; through `make run` .5006 -> .6251).
# The search picks L 2 there; BENCHMARKS.md, "the embedded sample", stop 27. Its softmax runs over 256 uniform
# negatives per row, about every item of the sample's 240, instead of 100: test .6348 against .6266 as the mean
# of three seeds, .6386 against .6251 through `make run` (stop 28), for 16 s more of training. 256 is at least the
# sample's catalogue (240), so training scores every never-interacted item once instead (models.train.
# exact_unseen_softmax; same accuracy, ~20 % faster: stop 33). Its N(0, 1) tables learn at lr x 50
# (``embedding_lr_scale: auto``): .6386 -> .6498 through `make run`, SASRec .6670 (stop 33). Batch 32 at lr 1e-3
# (SASRec's batch there): judged on the sample's own test rows it was inside their noise (stop 35); over six dumps of
# the same generator (the sample and five other seeds), valid and test, it gains .0042 over batch 128 at lr 3e-3
# (sd .0033 over the 12 figures, 10 of 12 up; ConvRec against SASRec from -.0059 to -.0017; BENCHMARKS.md, "Stop 36").
# On top of it, AdamW weight decay .1 gains .0015 more (sd .0023, 8 of 12 up): +.0057 in all, 12 of 12 up, against
# SASRec -.0002; `make run` .6456 -> .6573, SASRec .6670 (p = .19). Half the training rows cut to their most recent
# k items, k uniform over 1 .. the history (``crop_prob`` .5; at L 2 a quarter of the rows then hold the last item
# alone): +.0041 over the same six dumps (sd .0033, 10 of 12 up; test +.0062, 6 of 6 up; test full ranking +.0059,
# 6 of 6 up), crop .3 +.0031, 1.0 +.0025; `make run` .6573 -> .6632, SASRec .6670 (p = .62) (BENCHMARKS.md, "Stop 37").
# In training, each history item before the last is replaced by a random one with probability .6, the last
# item kept (``replace_before_last_prob``): the rows ConvRec lost were successor rows whose item before the last
# is unrelated to the target, which its kernel-2 window at L 2 mixes in. Chosen on dumps 6-17 (stop 43) and
# confirmed, under a rule written before the run, on dumps 18-29 that chose nothing: test full ranking +.0049
# [.0028, .0070] (11 of 12 dumps up), sampled +.0007, validation -.0013; ConvRec - SASRec in full ranking
# -.0039 -> +.0010 [-.0017, .0036] there, and -.0046 -> -.0008 over all 30 dumps run, where sampled validation
# gives up .0018 (BENCHMARKS.md, "Stop 44").
# Two such models, seeds s and s + 1, trained side by side (one process and one thread each, so the pair takes about
# the wall time of one), ranked by the mean of their scores (``ensemble_size`` 2, as Beauty's ``cpu`` budget): under
# a rule written before the runs, on dumps 30-41 that chose nothing, test full ranking +.0032 [.0019, .0046] over one
# model (11 of 12 dumps up), sampled +.0046; ConvRec - SASRec in full ranking -.0001 -> +.0031 [.0003, .0061]
# (BENCHMARKS.md, "Stop 46"; adopted in stop 47 after `make run` was timed with it).
SAMPLE_CONVREC = {
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.1,
    "crop_prob": 0.5,
    "replace_before_last_prob": 0.6,
    "ema_decay": "auto",
    "n_negatives": 256,
    "max_epochs": 10,
    "max_len_choices": [2, 5, 10, 20],
    "max_len_search_epochs": 1,
    "ensemble_size": 2,
    "num_threads": 2,
}


def auto_max_len(train_lengths, quantile: float = 0.9) -> int:
    """The shortest of ``MAX_LEN_CHOICES`` that holds the whole training history of ``quantile`` of
    the users (longer histories keep their most recent items). Short windows matter to ConvRec: a
    window that is mostly padding feeds the convolutions mostly constants."""
    import numpy as np

    lengths = np.asarray(train_lengths)
    need = float(np.quantile(lengths, quantile)) if len(lengths) else MAX_LEN_CHOICES[0]
    return next((n for n in MAX_LEN_CHOICES if n >= need), MAX_LEN_CHOICES[-1])


def resolve_popularity_adjustment(value: float | str) -> float | str:
    """``popularity_adjustment`` as the training loop takes it: ``auto`` (fitted on validation after
    training, ``models.calibration``), or tau >= 0 as a number or its text (config fields are text)."""
    if value == "auto":
        return value
    try:
        tau = float(value)
    except (TypeError, ValueError):
        tau = -1.0
    if not tau >= 0:
        raise ValueError(f"popularity_adjustment must be 'auto' or a number >= 0 (0: off), not {value!r}")
    return tau


def resolve_budget(budget: str, embedded_sample: bool, cuda: bool) -> str:
    if budget == "auto":
        return "sample" if embedded_sample else "paper" if cuda else "cpu"
    if budget not in BUDGETS:
        raise ValueError(f"budget must be 'auto' or one of {BUDGETS}, not {budget!r}")
    return budget


def budget_settings(budget: str, model: str, dataset: str) -> dict:
    """The settings ``budget`` gives ``model`` (``dataset`` picks the paper preset)."""
    if budget == "sample":
        return {**SAMPLE, **{"sasrec": SAMPLE_SASREC, "convrec": SAMPLE_CONVREC}.get(model, {})}
    if budget == "paper":
        base = {**PAPER_DEFAULTS, **PAPER_PRESETS[dataset].settings()}
        return (
            {
                **base,
                **SASREC_PAPER,
                "loss": "bce",
                "n_negatives": 1,
                "scheme": "all_cuts",
                "max_epochs": 1000,
            }
            if model == "sasrec"
            else base
        )
    if budget == "cpu":
        if model == "sasrec":
            return {**CPU_COMMON, **SASREC_PAPER}
        if model != "convrec":
            return {**CPU_COMMON, **CPU_ENCODER}
        # the data-dependent rules, applied in prepare_training (apply_without_time)
        rules = {
            "without_time": dict(CPU_CONVREC_WITHOUT_TIME),
            "ids_only": dict(CPU_CONVREC_IDS_ONLY),
            "with_features": dict(CPU_CONVREC_WITH_FEATURES),
        }
        return {**CPU_COMMON, **CPU_ENCODER, **CPU_CONVREC, **rules}
    raise ValueError(f"unknown budget {budget!r}")


def resolve_emb_init(
    user_value: float | None, budget_value: float | None, with_time_value: float | None, has_time: bool
) -> float | None:
    """The id embeddings' init std: the user's if set (0: PyTorch's N(0, 1)), else the budget's for the
    data (its ``emb_init_std_with_time`` where the encoder has a time path). None means PyTorch's."""
    if user_value is not None:
        return user_value or None
    value = with_time_value if has_time and with_time_value is not None else budget_value
    return value or None


# Adam moves a weight by about lr per step whatever the weight's size, so an embedding table that starts at
# PyTorch's N(0, 1) changes, relative to its size, 1 / .02 = 50 times slower than one that starts at
# N(0, .02²). ConvRec's encoder keeps N(0, 1) ids where it has a time path (their size keeps the ids from drowning
# in the time features: ``emb_init_std_with_time``), and then learns item identities slowly: on the sample the
# chain successor of the last item was ranked below a category-level move one time in five (BENCHMARKS.md, "Stop
# 33"). ``auto`` gives those tables lr x 50, the relative step of the N(0, .02²) tables the budget uses elsewhere.
EMB_REFERENCE_STD = 0.02


def resolve_embedding_lr_scale(value: float | str, emb_init_std: float | None, item_features: bool) -> float:
    """The embedding tables' learning-rate multiplier: a number as given; ``auto``: 1 / EMB_REFERENCE_STD
    for ConvRec's encoder (``item_features``) when its tables start at PyTorch's N(0, 1) (``emb_init_std``
    None), else 1."""
    if value != "auto":
        return float(value)
    return 1 / EMB_REFERENCE_STD if item_features and emb_init_std is None else 1.0


def apply_without_time(settings: dict, has_time: bool, ids_only: bool = False) -> dict:
    """Pop the budget's ``without_time``, ``ids_only`` and ``with_features`` settings (only the keys a
    user left unset: ``resolve_settings``) and, when the model's candidates do not depend on the row's
    time, apply the first, then the second where the model reads no item features and the third where
    it does. Returns those applied."""
    without_time = settings.pop("without_time", None) or {}
    only_ids = settings.pop("ids_only", None) or {}
    with_features = settings.pop("with_features", None) or {}
    if has_time:
        return {}
    applied = {**without_time, **(only_ids if ids_only else with_features)}
    settings.update(applied)
    return applied


def apply_large_catalogue(settings: dict, n_items: int) -> dict:
    """Pop the budget's ``large_catalogue`` settings (only the keys a user left unset: ``resolve_settings``)
    and apply them where the catalogue has more than ``LARGE_CATALOGUE_ITEMS`` items and the budget's loss is
    the softmax over every item. Returns those applied."""
    rule = settings.pop("large_catalogue", None) or {}
    if n_items <= LARGE_CATALOGUE_ITEMS or "loss" not in rule or settings["loss"] != "full_softmax":
        return {}
    settings.update(rule)
    return rule


# A shared sample is a few thousand items for the whole batch; per row that many would encode B times as
# many candidates, so a shared_softmax that falls back to a per-row softmax keeps at most this many.
MAX_PER_ROW_NEGATIVES = 256


def resolve_loss(loss: str, n_negatives: int, row_dependent: bool) -> tuple[str, int]:
    """A ``full_softmax`` or ``shared_softmax`` that cannot apply (candidate vectors depend on the
    row's time) becomes a sampled softmax over ``n_negatives`` per row (``shared_softmax``: at most
    ``MAX_PER_ROW_NEGATIVES``); other losses are kept."""
    if loss == "shared_softmax" and row_dependent:
        return "softmax", min(n_negatives, MAX_PER_ROW_NEGATIVES)
    if loss == "full_softmax" and row_dependent:
        return "softmax", n_negatives
    return loss, n_negatives
