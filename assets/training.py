"""Training: one asset per model (popularity, SASRec, ConvRec's attention counterpart, ConvRec).

Each asset loads the prepared data from DuckDB (``convrec_dagster.data.dataset.load_rec_data``), trains
with ``models.train.train`` on the ``torch_device`` resource's device, and writes
``CONVREC_HOME/artifacts/models/<model>/{best.pt, resume.pt, history.json}``. A run that was killed
resumes from its last epoch when config and data are unchanged. Training steps share the ``gpu``
pool (size 1), so two runs never fight over one device.
"""

import dataclasses
import time
from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource

from convrec_dagster.checks import failures
from convrec_dagster.data.plots import training_curves_markdown
from convrec_dagster.k8s import training_op_tags
from convrec_dagster.resources import DUCKDB_TAGS, GPU_POOL, ConvRecPaths, TorchDevice
from convrec_dagster.retry import TRANSIENT_RETRY_POLICY
from models.data import FeatureChoice
from models.registry import MODELS, ModelSpec

GROUP = "training"
ENCODER_DEPS = ["sequences", "eval_negatives", "proxy_ids", "item_attributes", "item_image_features"]
SPLIT_DEPS = ["sequences", "eval_negatives", "proxy_ids"]


class TrainingConfig(dg.Config):
    """Hyper-parameters; fields left at None (or ``auto``) take the budget's value (``models.budgets``).

    ``budget``: ``cpu`` (all cuts per epoch, cross-entropy over all items, at most 60 minutes per
    model: what reaches the accuracy targets on 2 CPU cores), ``paper`` (the paper's Appendix C:
    d = 256, one random cut per user per epoch, up to 1,000 epochs; for GPUs), ``sample`` (small
    and quick, for the embedded sample dump), ``auto`` (``sample`` on the embedded sample, else
    ``paper`` with CUDA and ``cpu`` without). ``dataset``: which paper preset
    (``models.budgets.PAPER_PRESETS``; ``auto``: the one the dataset's name in `dataset_info` names,
    else ``games``). ``features``: item features for ConvRec and its attention counterpart.
    ``scheme``: ``one_cut`` (the paper's) or ``all_cuts``. ``loss``:
    ``softmax`` over [positive + n_negatives] (authors' code), ``bce`` (paper text; SASRec's own),
    ``full_softmax`` over all items, or ``shared_softmax`` over one uniform sample of ``n_negatives``
    items per batch (both fall back to ``softmax`` when candidate vectors depend on the row's time;
    ``shared_softmax`` then keeps at most 256 negatives per row).
    ``warmup_epochs`` / ``lr_schedule``: linear warm-up (None: the budget's, 1 epoch under ``cpu`` for
    ConvRec with item features and no time path, else 0), then constant, cosine, or ``plateau``: x
    ``plateau_factor`` after each epoch whose validation figure did not improve. ``augment_prob``:
    share of history items replaced by random items; ``crop_prob``: share of training rows cut to a
    random recent part of their history; ``replace_before_last_prob``: share of the history items before
    the last replaced by random items, the last kept (ConvRec-style rows only; all three training-only
    augmentations; None: the budget's: ``crop_prob`` .5 and ``replace_before_last_prob`` .6 for ConvRec
    under ``sample``, else 0). ``negative_power``
    (``shared_softmax`` only): draw the shared negatives ∝ training count ** this (0: uniform).
    ``label_smoothing``: the softmax losses put 1 - this on the positive and spread this over the
    candidates (0: off; None: the budget's, .1 where its warm-up is 1 epoch, else 0).
    ``attribute_loss`` (ConvRec, data with attributes): the loss adds this weight times a cross-entropy
    that predicts the target item's attributes from the sequence vector (training only; 0: off; None:
    the budget's).
    ``popularity_adjustment``: after training, rank by score - tau x log(1 + the item's training count),
    which corrects a model that leans on past popularity (``models.calibration``): ``auto`` fits tau on
    validation (0 when nothing helps), a number (as text, e.g. ``"0.3"``) sets it, ``"0"`` is off; None:
    the budget's, ``auto`` under ``cpu``, 0 under ``paper`` and ``sample`` (BENCHMARKS.md, "Stop 42").
    ``embedding_lr_scale``: the embedding tables learn at lr x this (None: the
    budget's rule, ``models.budgets.resolve_embedding_lr_scale``: under ``cpu`` and ``sample``, 50 for
    ConvRec's encoder where its tables start at PyTorch's N(0, 1), i.e. with a time path; else 1).
    ``max_len_choices``: windows L to choose among by validation before training, each trained
    ``max_len_search_epochs`` epochs from scratch (``models.window_search``; ``[]``: off, and off when
    ``max_len`` is set); the ``sample`` budget searches ConvRec's window.
    ``valid_protocol``: the validation NDCG@10 that picks the best epoch and stops early,
    ``sampled_100`` (the stored 100 negatives per user) or ``full`` (every item, history masked; the
    sampled figures are logged beside it); ``auto``: the budget's. ``max_validation_scores``: a full-ranking
    validation of more (user, item) scores than this runs on a fixed random sample of the users (0: every
    user; None: the budget's, under ``cpu`` 10⁹: every user up to Video's size, a sample on larger data).
    On a catalogue over 50,000 items the ``cpu`` budget's ``full_softmax`` becomes a ``shared_softmax``
    over 4,096 items per batch (``models.budgets.apply_large_catalogue``), unless ``loss`` is set.
    ``ema_decay``: validate and keep an exponential moving average of the weights, updated after
    every step with this decay (0: off; None: the budget's; under ``cpu`` ConvRec averages over about
    one epoch of steps, at most 1,000, also across torchrun ranks).
    ``time_budget_min``: a hard cap, training stops before an epoch that would end past it (0: no
    limit). ``ensemble_size``: train this many copies of the model, seeds ``seed`` .. ``seed + n - 1``, and rank by
    the mean of their scores (``models.ensemble``); on a CPU they train side by side, one process each with the
    threads split, each member resumable in ``<model>/member_<i>/`` (None: the budget's: 2 for ConvRec under
    ``cpu`` with item features and no time path, where a second seed gains more than any single-model change
    measured, BENCHMARKS.md "Stop 45", and under ``sample``, "Stop 47"; else 1; not under torchrun).
    ``mutual_learning`` > 0: deep mutual learning (``models.mutual``): a second copy of the model, another
    initialisation, trains beside it on the same batches, each copy's loss adding this weight times KL(other ||
    self) over every item (``full_softmax`` only; not under torchrun); only the model is kept and ranks, at one
    model's scoring cost, and training costs about what an ensemble of two costs. No budget sets it (0): on Beauty
    with weight 1 it beat the same seed trained alone on the same machine by +.0028 and +.0018 test full NDCG@10
    (seeds 42 and 0), and four trainings gave .0593-.0605, short of BSARec's .0611; .5 and 2 did worse
    (BENCHMARKS.md, "Stop 47" to "Stop 51").
    ``resume``: continue a killed run with the same config and data. ``retrain``: train again
    from scratch even when a finished model with the same config and data exists (by default it is
    reused, and the log says so). ``num_threads``: torch CPU threads (0: torch's default;
    per rank under torchrun). ``nproc_per_node`` > 1: data-parallel training on that many processes
    (one per GPU; CPU ranks for tests) started by ``torchrun`` as a Dagster Pipes subprocess
    (``convrec_dagster.pipes_training``); ``nnodes`` > 1 with ``rdzv_endpoint`` (host:port of node 0)
    spreads it over nodes, each node running the command this step logs. See README "Scaling out".
    """

    budget: Literal["auto", "cpu", "paper", "sample"] = "auto"
    dataset: Literal["auto", "beauty", "games", "fashion", "men"] = "auto"
    features: FeatureChoice = "auto"
    d: int | None = None
    hidden: int | None = None
    max_len: int | None = None  # 0: chosen from the data (models.budgets.auto_max_len)
    max_len_choices: list[int] | None = None  # windows to choose L among by validation (None: budget's)
    max_len_search_epochs: int | None = None  # epochs per window of that search (None: the budget's)
    batch_size: int | None = None
    lr: float | None = None
    dropout: float | None = None
    weight_decay: float | None = None
    max_epochs: int | None = None
    patience: int | None = None
    num_threads: int | None = None
    scheme: Literal["auto", "one_cut", "all_cuts"] = "auto"
    loss: Literal["auto", "softmax", "bce", "full_softmax", "shared_softmax"] = "auto"
    n_negatives: int | None = None
    adam_beta2: float | None = None
    warmup_epochs: float | None = None
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    plateau_factor: float = 0.3
    time_budget_min: float | None = None
    augment_prob: float | None = None
    crop_prob: float | None = None
    replace_before_last_prob: float | None = None
    negative_power: float = 0.0
    label_smoothing: float | None = None
    popularity_adjustment: str | None = None  # "auto", a tau >= 0 as text, or None (the budget's)
    embedding_lr_scale: float | None = None  # lr multiplier of the embedding tables (None: the budget's rule)
    valid_protocol: Literal["auto", "sampled_100", "full"] = "auto"
    max_validation_scores: int | None = None  # full-ranking validation on a user sample above it (0: off)
    ema_decay: float | None = None
    grad_clip: float = 1.0
    seed: int = 42
    ensemble_size: int | None = None  # seeds trained and ranked by their mean score (None: the budget's)
    # > 0: a second copy trains beside the model, this weight on their KL (models.mutual; full_softmax only)
    mutual_learning: float = 0.0
    resume: bool = True
    retrain: bool = False
    # distributed (torchrun behind Dagster Pipes); 1 x 1: the one-process path
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = ""
    # ConvRec
    kernels: list[int] = []
    strides: list[int] = []
    heads: int = 1
    intervals: bool = True
    residuals: bool = True
    single_conv: bool = False
    avg_pool_only: bool = False
    residual_pool: Literal["auto", "avg", "last"] = "auto"  # down-scale residuals by mean (paper) or last
    attribute_loss: float | None = None  # weight of predicting the target's attributes (training only)
    interval_scale: Literal["raw", "calendar"] = "raw"  # Δ in (years, months, days) or over their ranges
    side_init: Literal["default", "zero", "zero_time"] = "default"  # where attributes/images/time start
    # attention models
    n_layers: int | None = None
    n_heads: int | None = None
    pooling: Literal["last", "mean"] = "last"
    emb_init_std: float | None = (
        None  # std of the id embeddings' init (None: the budget's; 0: PyTorch's N(0, 1))
    )


def train_model_asset(
    name: str,
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    duckdb: DuckDBResource,
    paths: ConvRecPaths,
    torch_device: TorchDevice,
    pipes_client: dg.PipesSubprocessClient | None = None,
) -> dg.MaterializeResult:
    import torch

    from convrec_dagster.data.dataset import load_rec_data
    from convrec_dagster.data.training_setup import data_features, epoch_line, resolve_settings, run_training

    started = time.perf_counter()
    with duckdb.get_connection() as conn:
        identity = paths.dataset(conn)
    budget, dataset, s = resolve_settings(
        config.model_dump(), identity, name, torch_device.torch_device.type == "cuda"
    )
    if config.retrain:  # both paths: the one-process loop and the torchrun ranks build TrainConfig from s
        s["resume"] = False
    if s["nproc_per_node"] > 1 or s["nnodes"] > 1:
        if (config.ensemble_size or 1) > 1:
            raise dg.Failure(
                f"{name}: ensemble_size {config.ensemble_size} trains its members in one process each; it does not "
                f"combine with torchrun (nproc_per_node {s['nproc_per_node']}, nnodes {s['nnodes']}). Set one of "
                "them to 1.",
                allow_retries=False,
            )
        if config.mutual_learning:
            raise dg.Failure(
                f"{name}: mutual_learning trains two copies of the model in one process; it does not combine with "
                f"torchrun (nproc_per_node {s['nproc_per_node']}, nnodes {s['nnodes']}). Set mutual_learning to 0 "
                "or nproc_per_node and nnodes to 1.",
                allow_retries=False,
            )
        budget_ensemble = max(int(s.get("ensemble_size") or 1), s["with_features"].pop("ensemble_size", 1))
        if budget_ensemble > 1:  # the budget's, not the user's (refused above): the ranks train one model
            s["ensemble_size"] = 1
            context.log.warning(
                f"{name}: the {budget} budget trains an ensemble of {budget_ensemble} seeds here, one process or "
                "thread per member, which does not combine with torchrun: one model is trained instead. Set "
                "ensemble_size: 1 to say so, or nproc_per_node: 1 to train the ensemble."
            )
        if name != "popularity" and pipes_client is not None:
            window_trials = _window_before_torchrun(name, context, duckdb, paths, torch_device, s)
            return _distributed(
                name, context, config, duckdb, paths, torch_device, pipes_client, s, budget, started,
                window_trials,
            )  # fmt: skip
        context.log.info(
            f"{name}: nothing to train, so one process despite nproc_per_node {s['nproc_per_node']}"
        )
    threads_before = torch.get_num_threads()
    if s["num_threads"] and torch_device.torch_device.type == "cpu":
        torch.set_num_threads(int(s["num_threads"]))
    try:
        with duckdb.get_connection() as conn:
            data = load_rec_data(conn, features=data_features(name, s))
        context.log.info(
            f"{name}: {data.n_users} users, {data.n_items} items, {len(data.items)} interactions, "
            f"features {data.info.get('features')}, time context {data.has_context}; budget {budget}"
            + (f" ({dataset} preset)" if budget == "paper" else "")
        )
        device, precision = torch_device.torch_device, torch_device.effective_precision()
        out_dir = paths.model_path(name)
        run = run_training(
            name, s, data, device, precision, out_dir, context.log.info,
            on_epoch=lambda record: context.log.info(epoch_line(name, record)),
            compile_mixer=torch_device.compile, run_id=context.run_id,
        )  # fmt: skip
        reused = run.result.extra.get("reused")
        if reused:
            context.log.info(
                f"{name}: unchanged config and data, reusing the model trained in run {reused['run_id'] or '(unknown)'} "
                f"(valid NDCG@10 {reused['valid_NDCG@10']:.4f}, best epoch {reused['best_epoch']} of {reused['epochs']}). "
                "Set `retrain: true` to train again."
            )
        device_description = torch_device.describe()  # before the thread count is restored
    finally:
        torch.set_num_threads(threads_before)

    wall = time.perf_counter() - started
    metadata = _training_metadata(
        name, run, data, budget, wall, device, device_description, precision, out_dir
    )
    result = run.result
    context.log.info(
        f"{name}: best epoch {result.best_epoch}, valid NDCG@10 {result.best_metrics['NDCG@10']:.4f}"
        + (
            f" (full ranking {result.best_metrics['full_NDCG@10']:.4f}, which picked the epoch)"
            if "full_NDCG@10" in result.best_metrics
            else ""
        )
        + f", {result.epochs_run} epochs in {wall:.1f} s"
    )
    return dg.MaterializeResult(metadata=metadata)


def _training_metadata(
    name: str, run, data, budget: str, wall: float, device, device_description: str, precision: str, out_dir
) -> dict:
    """The one-process training asset's metadata (the torchrun path returns the same keys, and more)."""
    from convrec_dagster.data.ensemble_training import ensemble_markdown
    from convrec_dagster.data.training_setup import validation_metadata, window_search_markdown

    result, train_config, hparams = run.result, run.train_config, run.hparams
    epoch_times = [h["epoch_time_s"] for h in result.history if h["loss"] is not None]
    metadata = {
        "best_epoch": result.best_epoch,
        "best_valid_HR@10": float(result.best_metrics["HR@10"]),
        "best_valid_NDCG@10": float(result.best_metrics["NDCG@10"]),
        **validation_metadata(result.best_metrics, train_config, result.extra),
        "epochs_run": result.epochs_run,
        "epochs_total": len(result.history),
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": dg.MetadataValue.int(result.resumed_from)
        if result.resumed_from is not None
        else "no",
        "reused_from_run": str((result.extra.get("reused") or {}).get("run_id") or "")
        if result.extra.get("reused")
        else "no",
        "train_time_s": round(sum(float(h.get("epoch_time_s") or 0) for h in result.history), 1),
        "parameters": run.model.n_parameters(),
        "device": device_description,
        "precision": precision,
        "peak_memory_mb": round(result.peak_memory_bytes / 2**20, 1),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "wall_time_s": round(wall, 2),
        "mean_epoch_time_s": round(sum(epoch_times) / len(epoch_times), 3) if epoch_times else 0.0,
        "budget": budget,
        "still_improving_at_end": bool(result.history)
        and result.best_epoch == result.history[-1]["epoch"]
        and len(result.history) > 1
        and not result.stopped_early,
        "hparams": dg.MetadataValue.json({k: v for k, v in hparams.items()}),
        "train_config": dg.MetadataValue.json(dataclasses.asdict(train_config)),
        "data_fingerprint": str(data.info.get("fingerprint", "")),
        "data_features": str(data.info.get("features", "")),
        "checkpoint": dg.MetadataValue.path(str(out_dir / "best.pt")),
        "curves": dg.MetadataValue.md(training_curves_markdown(result.history, f"{name}: training curves")),
    }
    if run.window_trials:
        metadata["window_search"] = dg.MetadataValue.md(
            window_search_markdown(run.window_trials, hparams["max_len"])
        )
    if members := result.extra.get("members"):
        metadata["ensemble_size"] = len(members)
        metadata["ensemble_side_by_side"] = bool(result.extra.get("side_by_side"))
        metadata["ensemble_members"] = dg.MetadataValue.md(ensemble_markdown(members, result.best_metrics))
    return metadata


def _window_before_torchrun(name, context, duckdb, paths, torch_device, s) -> list[dict]:
    """Under ``max_len_choices``, the window search runs here, in one process on the asset's device,
    before the ranks start; they then train the chosen L (``s`` is updated). Returns the trials."""
    if not s.get("max_len_choices"):
        return []
    from convrec_dagster.data.dataset import load_rec_data
    from convrec_dagster.data.training_setup import data_features, prepare_run

    with duckdb.get_connection() as conn:
        data = load_rec_data(conn, features=data_features(name, s))
    model_config, _, trials = prepare_run(
        name, s, data, torch_device.torch_device, torch_device.effective_precision(), context.log.info,
        paths.model_path(name) / "window_search.json",
    )  # fmt: skip
    s["max_len"], s["max_len_choices"] = model_config.max_len, []
    return trials


def _distributed(
    name, context, config, duckdb, paths, torch_device, pipes_client, s, budget, started, window_trials
) -> dg.MaterializeResult:
    """The torchrun path (``convrec_dagster.pipes_training``); same metadata as the one-process path."""
    from convrec_dagster.data.training_setup import window_search_markdown
    from convrec_dagster.pipes_training import run_distributed_training

    metadata, history, streamed = run_distributed_training(
        name, context, pipes_client, duckdb, paths, torch_device, s
    )
    wall = time.perf_counter() - started
    metadata.update(
        {
            "budget": budget,
            "wall_time_s": round(wall, 2),
            "epochs_streamed": streamed,
            "curves": dg.MetadataValue.md(
                training_curves_markdown(
                    history, f"{name}: training curves ({metadata['world_size'].value} ranks)"
                )
            ),
        }
    )
    if window_trials:
        metadata["window_search"] = dg.MetadataValue.md(window_search_markdown(window_trials, s["max_len"]))
    context.log.info(
        f"{name}: best epoch {metadata['best_epoch'].value}, valid NDCG@10 "
        f"{metadata['best_valid_NDCG@10'].value:.4f}, {metadata['epochs_run'].value} epochs on "
        f"{metadata['world_size'].value} ranks in {wall:.1f} s"
    )
    return dg.MaterializeResult(metadata=metadata)


def _training_asset(model: ModelSpec) -> dg.AssetsDefinition:
    name = model.name

    @dg.asset(
        name=model.asset_name,
        group_name=GROUP,
        kinds={"pytorch"},
        deps=ENCODER_DEPS if model.item_features else SPLIT_DEPS,
        pool=GPU_POOL,
        op_tags={**DUCKDB_TAGS, **training_op_tags()},  # + GPUs on Kubernetes (CONVREC_K8S_TRAINING_GPUS)
        retry_policy=TRANSIENT_RETRY_POLICY,  # e.g. CUDA OOM while another process holds the device; resumes
        description=model.description,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: TrainingConfig,
        duckdb: DuckDBResource,
        paths: ConvRecPaths,
        torch_device: TorchDevice,
        pipes_subprocess_client: dg.PipesSubprocessClient,
    ) -> dg.MaterializeResult:
        # a data error, or a setting the model or the data cannot take, fails the same way again: no retries
        with failures(ValueError, TypeError):
            return train_model_asset(
                name, context, config, duckdb, paths, torch_device, pipes_subprocess_client
            )

    return _asset


# One asset per model of models.registry.MODELS: popularity_model, sasrec_model, convrec_attention_model,
# convrec_model (module attributes, so that load_assets_from_modules finds them).
TRAINING_ASSETS: dict[str, dg.AssetsDefinition] = {m.name: _training_asset(m) for m in MODELS}
globals().update({m.asset_name: TRAINING_ASSETS[m.name] for m in MODELS})
