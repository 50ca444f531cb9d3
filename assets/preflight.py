"""Preflight: the root of `full_pipeline`. Checks in seconds what would otherwise fail late, and
says how long training will take, before any step does work (``convrec_dagster.data.preflight``)."""

import time
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from convrec_dagster.data import preflight as pf
from convrec_dagster.resources import (
    DUCKDB_POOL,
    DUCKDB_TAGS,
    ConvRecPaths,
    TorchDevice,
)

TRAINED_MODELS = ("sasrec", "convrec_attention", "convrec")  # popularity has nothing to train


class PreflightConfig(dg.Config):
    """``estimate_training``: time a few training batches of each model for the time estimate
    (seconds on CPU); off, only the paths, formats and device are checked."""

    estimate_training: bool = True


def _op_config(context: dg.AssetExecutionContext, name: str) -> dict:
    """The run config an op of this run was given (empty when none): preflight checks the other
    steps' settings before they run."""
    ops = (context.run.run_config or {}).get("ops") or {}
    return dict((ops.get(name) or {}).get("config") or {})


def estimate_settings(name: str, config, dataset, size: pf.DataSize, cuda: bool) -> tuple[str, dict]:
    """(budget, settings) of model ``name`` for the time estimate: ``config`` (its ``TrainingConfig``)
    resolved as its training asset resolves it, with the data-dependent rules for data of ``size``."""
    from convrec_dagster.data.training_setup import data_rules, resolve_settings
    from models.budgets import apply_large_catalogue, apply_without_time, auto_max_len, resolve_loss

    budget, _, s = resolve_settings(config.model_dump(), dataset, name, cuda)
    if not s["max_len"]:
        s["max_len"] = auto_max_len(size.lengths) if size.lengths is not None else 50
    row_dependent, ids_only = data_rules(name, size.has_context, size.has_attributes, size.has_images)
    apply_without_time(s, row_dependent, ids_only)
    apply_large_catalogue(s, size.items)
    s["embedding_lr_scale"] = 1.0  # the step time does not depend on the tables' learning rate
    s["loss"], s["n_negatives"] = resolve_loss(s["loss"], s["n_negatives"], row_dependent)
    return budget, s


@dg.asset(
    group_name="ingest",
    kinds={"python"},
    pool=DUCKDB_POOL,  # reads an earlier run's prepared data, when there is some, for the estimate
    op_tags=DUCKDB_TAGS,
)
def preflight(
    context: dg.AssetExecutionContext,
    config: PreflightConfig,
    duckdb: DuckDBResource,
    paths: ConvRecPaths,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    """Checks, in seconds and before any step does work: the home is writable, the raw folder
    exists and holds review files of a known format, every path named in config exists (image
    weights, DuckDB temp directory), the device; then the expected training time per model (budget,
    epochs, a time per epoch measured on a few batches, the total), with advice when it is over an
    hour on CPU. Fails with every problem found and what to do about each."""
    import duckdb as duckdb_lib

    from assets.features import ItemImageFeaturesConfig
    from assets.training import TrainingConfig

    started = time.perf_counter()
    found = pf.Findings()
    home = paths.home_path()
    found.extend(pf.check_home(home))
    weights = ItemImageFeaturesConfig(**_op_config(context, "item_image_features")).weights_path
    found.extend(pf.check_weights(weights))
    temp_directory = getattr(duckdb, "temp_directory", "")
    found.extend(pf.check_temp_directory(temp_directory))
    raw = pf.RawSize()
    home_ok = not found.problems
    if home_ok or not paths.is_embedded_sample():  # the embedded sample is generated into the home
        try:
            raw_dir = paths.raw_path()  # generates the embedded sample when no folder is named
        except OSError as err:
            found.problems.append(
                pf.Problem(
                    f"cannot prepare the embedded sample dump under {home} ({err})",
                    "make CONVREC_HOME writable, or name a dump folder with CONVREC_RAW_DIR",
                )
            )
        else:
            raw_found, raw = pf.check_raw_dir(raw_dir)
            found.extend(raw_found)
    device = torch_device.torch_device
    found.notes.append(f"device {torch_device.describe()}, precision {torch_device.effective_precision()}")
    found.facts["device"] = torch_device.describe()

    estimates: list[dict] = []
    advice: list[str] = []
    models = list(TRAINED_MODELS)
    if not found.problems and config.estimate_training:
        size = None
        database = duckdb.path() if hasattr(duckdb, "path") else duckdb.database
        if database != ":memory:" and Path(database).is_file():
            try:
                with duckdb_lib.connect(database, read_only=True) as conn:
                    size = pf.size_from_duckdb(conn)
            except (duckdb_lib.Error, OSError):  # another process writes it: estimate from the raw files
                size = None
        if size is None and raw.interactions:
            size = pf.size_from_raw(raw, pretrained_weights=bool(weights))
        if size is not None:
            for name in models:
                try:
                    cfg = TrainingConfig(**_op_config(context, f"{name}_model"))
                    budget, s = estimate_settings(name, cfg, paths.dataset(), size, device.type == "cuda")
                    estimates.append(
                        pf.estimate_model(name, budget, s, size, device, torch_device.effective_precision())
                    )
                except (
                    ValueError,
                    RuntimeError,
                    TypeError,
                ) as err:  # e.g. kernels/strides that do not fit max_len
                    found.problems.append(
                        pf.Problem(
                            f"{name}_model config cannot build the model ({type(err).__name__}: {err})",
                            f"fix ops.{name}_model.config (see docs/run_config.example.yaml)",
                        )
                    )
            if estimates:
                lines, advice, total = pf.estimate_lines(estimates, size, device.type)
                found.notes += lines
                found.facts["expected_training_s"] = round(total, 1)

    for line in found.notes:
        context.log.info(f"preflight: {line}")
    for line in found.warnings + advice:
        context.log.warning(f"preflight: {line}")
    if found.problems:
        raise dg.Failure(
            description=found.failure_text(),
            metadata={
                "problems": dg.MetadataValue.json(
                    [{"what": p.what, "what_to_do": p.what_to_do} for p in found.problems]
                )
            },
            allow_retries=False,
        )
    seconds = time.perf_counter() - started
    context.log.info(f"preflight: all checks passed in {seconds:.1f} s")
    return dg.MaterializeResult(
        metadata={
            **{
                k: v if isinstance(v, (int, float, str, bool)) else dg.MetadataValue.json(v)
                for k, v in found.facts.items()
            },
            "training_estimate": dg.MetadataValue.json(estimates),
            "advice": dg.MetadataValue.json(advice),
            "warnings": dg.MetadataValue.json(found.warnings),
            "seconds": round(seconds, 2),
        }
    )
