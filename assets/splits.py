"""Splits stage: integer indices, leave-one-out splits with time context, stored negatives, proxy ids.

Thin Dagster wrappers around ``convrec_dagster.data.splits`` (DuckDB SQL + NumPy). The asset checks that
guard training (leakage, split sizes, negatives, proxy counts) are blocking: a failure stops the run
before any model sees the data.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from convrec_dagster.checks import blocking_checks, run_checks
from convrec_dagster.data import splits
from convrec_dagster.data.outcome import CheckOutcome
from convrec_dagster.data.plots import length_histogram_markdown
from convrec_dagster.resources import DUCKDB_POOL, DUCKDB_TAGS, ConvRecPaths

GROUP = "splits"


class SequencesConfig(dg.Config):
    """``histogram_bins``: bins of the sequence-length histogram shown in the UI."""

    histogram_bins: int = 40


class EvalNegativesConfig(dg.Config):
    """Negatives drawn once per evaluated user and stored: same seed, same candidates for every model."""

    n_negatives: int = splits.DEFAULT_N_NEGATIVES
    seed: int = splits.DEFAULT_SEED


class ProxyIdsConfig(dg.Config):
    """Which items keep their own id (the others share one "rare item" id).

    By default every item with at least ``min_count`` (1) training rows keeps its own id, so K
    follows the data. Measured on the embedded sample (BENCHMARKS.md): the paper's 10 % share
    leaves ConvRec unable to tell most items apart (valid NDCG@10 .14 on ids, .49 with attributes,
    against .64 / .56 with every item's own id). A fixed K wins when given: ``top_k`` (a count) or
    ``top_fraction`` (a share of the items with training rows; the paper's is 0.1).
    """

    top_k: int | None = None
    top_fraction: float | None = None
    min_count: int = 1


# Checks (run inside their asset's step, see convrec_dagster/checks.py); the SQL is in
# convrec_dagster/data/splits.py.


def sequences_no_leakage(conn) -> CheckOutcome:
    """No validation or test row is a training input: they are each evaluated user's last two
    positions and no training row comes after them."""
    return splits.check_no_leakage(conn)


def sequences_split_sizes(conn) -> CheckOutcome:
    """train + valid + test rows add up to `interactions`; valid = test = evaluated users."""
    return splits.check_split_sizes(conn)


def eval_negatives_disjoint_from_history(conn) -> CheckOutcome:
    """No stored negative is an item of the user's own history (train, valid or test)."""
    return splits.check_negatives_disjoint(conn)


def eval_negatives_count_per_user(conn, n_negatives: int = splits.DEFAULT_N_NEGATIVES) -> CheckOutcome:
    """Every evaluated user has exactly `n_negatives` distinct negatives (as configured, default 100);
    train-only users have none."""
    return splits.check_negative_counts(conn, n_negatives)


def proxy_ids_training_counts(conn) -> CheckOutcome:
    """Proxy counts equal a recount over training rows only, and own ids go to the top-K items."""
    return splits.check_proxy_counts(conn)


SEQUENCES_CHECKS = [sequences_no_leakage, sequences_split_sizes]
EVAL_NEGATIVES_CHECKS = [eval_negatives_disjoint_from_history, eval_negatives_count_per_user]
SPLITS_CHECKS = [*SEQUENCES_CHECKS, *EVAL_NEGATIVES_CHECKS, proxy_ids_training_counts]


@dg.asset(
    deps=["interactions"],
    group_name=GROUP,
    kinds={"duckdb"},
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks("sequences", *SEQUENCES_CHECKS),
)
def sequences(
    context: dg.AssetExecutionContext, config: SequencesConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    """Users 1..U and items 1..I (by training frequency), and every interaction with its leave-one-out
    split (last = test, second-to-last = valid; users with < 3 interactions only train), timestamp,
    (year, month, day) and the 6 time-context features (NULL when the dump has no timestamps).
    Writes `user_index`, `item_index` and `sequences`."""
    with duckdb.get_connection() as conn:
        context.log.info("building user/item indices and leave-one-out splits")
        summary = splits.build_sequences(conn)
        lengths = splits.sequence_lengths(conn)
        check_results = run_checks(SEQUENCES_CHECKS, conn)
    if not summary["has_timestamps"]:
        context.log.warning(
            f"{summary['interactions'] - summary['rows_with_timestamp']} of {summary['interactions']} "
            "interactions have no timestamp: time context is absent for this dataset."
        )
    context.log.info(
        f"{summary['users']} users ({summary['evaluated_users']} evaluated), {summary['items']} items, "
        f"{summary['interactions']} interactions"
    )
    metadata = {k: v for k, v in summary.items() if k != "has_timestamps"}
    metadata["time_context_available"] = summary["has_timestamps"]
    metadata["sequence_length_histogram"] = dg.MetadataValue.md(
        length_histogram_markdown(
            lengths, config.histogram_bins, f"Sequence lengths ({len(lengths):,} users)"
        )
    )
    metadata["dagster/row_count"] = summary["interactions"]
    return dg.MaterializeResult(metadata=metadata, check_results=check_results)


@dg.asset(
    deps=[sequences],
    group_name=GROUP,
    kinds={"duckdb", "numpy"},
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks("eval_negatives", *EVAL_NEGATIVES_CHECKS),
)
def eval_negatives(
    context: dg.AssetExecutionContext, config: EvalNegativesConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    """`n_negatives` (100) distinct items per evaluated user, uniform over the items the user never
    interacted with (validation and test items excluded too), drawn once with a fixed seed and stored
    so every model and run is scored on the same candidates."""
    with duckdb.get_connection() as conn:
        context.log.info(f"drawing {config.n_negatives} negatives per evaluated user (seed {config.seed})")
        summary = splits.build_eval_negatives(conn, n_negatives=config.n_negatives, seed=config.seed)
        check_results = run_checks([eval_negatives_disjoint_from_history], conn) + run_checks(
            [eval_negatives_count_per_user], conn, config.n_negatives
        )
    metadata = dict(summary)
    metadata["dagster/row_count"] = summary["rows"]
    return dg.MaterializeResult(metadata=metadata, check_results=check_results)


@dg.asset(
    deps=[sequences],
    group_name=GROUP,
    kinds={"duckdb"},
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks("proxy_ids", proxy_ids_training_counts),
)
def proxy_ids(
    context: dg.AssetExecutionContext, config: ProxyIdsConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    """Frequency-based proxy ids: the K most frequent items, counted on training rows only, keep ids
    1..K; all others share the rare-item id K + 1; 0 is padding."""
    with duckdb.get_connection() as conn:
        summary = splits.build_proxy_ids(conn, config.top_k, config.top_fraction, config.min_count)
        check_results = run_checks([proxy_ids_training_counts], conn)
    context.log.info(
        f"{summary['proxy_k']} items keep their own id ({summary['share_items_own_id']:.1%} of items, "
        f"{summary['share_train_interactions_covered']:.1%} of training interactions)"
    )
    metadata = dict(summary)
    metadata["dagster/row_count"] = summary["items"]
    return dg.MaterializeResult(metadata=metadata, check_results=check_results)


@dg.asset(
    deps=["sequences", "eval_negatives", "proxy_ids", "item_attributes", "item_image_features"],
    group_name=GROUP,
    kinds={"duckdb", "parquet"},
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
)
def training_data_parquet(
    context: dg.AssetExecutionContext, duckdb: DuckDBResource, paths: ConvRecPaths
) -> dg.MaterializeResult:
    """The training data as Parquet under `CONVREC_HOME/export/`: `sequences`, `eval_negatives`,
    `proxy_ids`, the indices and the item features, one file per table. A training job on another
    machine reads them without the DuckDB file (`convrec_dagster.data.dataset.load_rec_data_from_parquet`)."""
    from convrec_dagster.data.dataset import export_parquet

    folder = paths.home_path() / "export"
    with duckdb.get_connection() as conn:
        written = export_parquet(conn, folder)
    context.log.info(f"wrote {len(written)} Parquet files to {folder}")
    sizes = {name: (folder / f"{name}.parquet").stat().st_size for name in written}
    return dg.MaterializeResult(
        metadata={
            "folder": dg.MetadataValue.path(str(folder)),
            "rows": dg.MetadataValue.json(written),
            "bytes": sum(sizes.values()),
        }
    )
