"""Ingest stage: raw Amazon dumps (or processed benchmark files) into DuckDB, with nothing lost.

Thin Dagster wrappers around ``convrec_dagster.data.ingest_steps`` (which drives ``rawdata`` and
``ingest``): every file of the raw folder is sniffed by content; review files become `reviews`,
metadata files `items` (+ `raw_item_attributes` for S3-Rec attribute maps), unusable lines go to
`quarantine` verbatim with a reason, and `interactions` is the de-duplicated, time-ordered,
k-interaction-filtered history per user.
"""

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource

from convrec_dagster import store
from convrec_dagster.checks import blocking_checks, failures, metadata_values, run_checks
from convrec_dagster.data import ingest_steps, rawdata
from convrec_dagster.data.ingest import interactions_ordered_histories, items_unique, reviews_have_ids
from convrec_dagster.data.rawdata import RawDataError
from convrec_dagster.resources import DUCKDB_POOL, DUCKDB_TAGS, ConvRecPaths

GROUP = "ingest"


class ReviewsConfig(dg.Config):
    """``max_quarantine_share``: if more than this share of a file's lines is unusable, the asset
    fails (naming the file) instead of going on with a damaged dump.
    ``min_review_date`` / ``max_review_date`` (YYYY-MM-DD): reviews outside are quarantined as
    ``timestamp_out_of_range``; an empty ``max_review_date`` means tomorrow.
    ``max_line_bytes``: a longer line is quarantined as ``line_too_long`` (its first KB kept)
    without being parsed, so one huge line cannot exhaust memory."""

    max_quarantine_share: float = 0.2
    min_review_date: str = "1995-01-01"
    max_review_date: str = ""
    max_line_bytes: int = rawdata.DEFAULT_MAX_LINE_BYTES


class ItemsConfig(dg.Config):
    """``max_quarantine_share``: as for `reviews`. ``prefer_local_images``: ``items.image_ref`` records an
    ``images/<item_id>.jpg|png`` file of the raw folder rather than the metadata's image URL (false: the URL).
    It does not change the image features: `item_image_features` always reads the local file where there is
    one, and never fetches a URL. ``max_line_bytes``: as for `reviews`."""

    max_quarantine_share: float = 0.2
    prefer_local_images: bool = True
    max_line_bytes: int = rawdata.DEFAULT_MAX_LINE_BYTES


class InteractionsConfig(dg.Config):
    """The user/item filter: drop users and items with fewer than ``min_interactions`` interactions,
    either in ``one_pass`` (as CARCA does) or ``iterative`` k-core (repeat until stable).
    ``filter_benchmark_formats``: also filter SASRec/S3-Rec files (they are already filtered, and
    their published numbers assume every user is kept, so the default is no)."""

    kcore: Literal["one_pass", "iterative"] = "one_pass"
    min_interactions: int = 5
    filter_benchmark_formats: bool = False


# ---------------------------------------------------------------------------------------------
# helpers


def _failure(err: RawDataError, **metadata) -> dg.Failure:
    return dg.Failure(
        description=str(err),
        metadata={"file": err.path, "problem": err.problem, "what_to_do": err.fix, **metadata},
    )


@contextlib.contextmanager
def _ingest_failures(raw_dir: Path) -> Iterator[None]:
    """Inside the block, ``DataError`` and ``RawDataError`` (with the raw folder) become ``dg.Failure``."""
    try:
        with failures():
            yield
    except RawDataError as err:
        raise _failure(err, raw_dir=str(raw_dir)) from err


# ---------------------------------------------------------------------------------------------
# assets


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb", "python"},
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    deps=["preflight"],
    check_specs=blocking_checks("reviews", reviews_have_ids),
)
def reviews(
    context: dg.AssetExecutionContext, config: ReviewsConfig, duckdb: DuckDBResource, paths: ConvRecPaths
) -> dg.MaterializeResult:
    """Every usable review line of the raw folder: `reviews(user_id, item_id, rating, ts, seq_no,
    source_file, line_no, source_format)`. Files are told apart by content (2014/2018/2023 Amazon
    JSON lines, SASRec `user item` pairs, S3-Rec `user item1 item2 ...` lines); `ts` is unix seconds
    (NULL for the timestamp-less benchmark formats, whose file order `seq_no` keeps). Unusable lines
    go to `quarantine` (stage `reviews`) verbatim with a reason."""
    t0 = time.perf_counter()
    raw_dir = paths.raw_path()
    log, warn = context.log.info, context.log.warning
    with _ingest_failures(raw_dir):
        plan = ingest_steps.plan_reviews(
            raw_dir, config.max_line_bytes, config.min_review_date, config.max_review_date, log, warn
        )
    with duckdb.get_connection() as conn, contextlib.closing(conn):
        with _ingest_failures(raw_dir):
            result = ingest_steps.ingest_reviews(
                conn,
                plan,
                config.max_quarantine_share,
                paths.is_embedded_sample(),
                lambda c, files: store.record_ingest(c, context.run_id, raw_dir, files),
                log,
            )
        check_results = run_checks([reviews_have_ids], conn)
    metadata = result.metadata(seconds=time.perf_counter() - t0)
    return dg.MaterializeResult(
        metadata=metadata_values(metadata, md=("files",)), check_results=check_results
    )


@dg.asset(
    deps=[reviews],
    group_name=GROUP,
    kinds={"duckdb", "python"},
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks("items", items_unique),
)
def items(
    context: dg.AssetExecutionContext, config: ItemsConfig, duckdb: DuckDBResource, paths: ConvRecPaths
) -> dg.MaterializeResult:
    """One row per distinct item with metadata: `items(item_id, title, brand, categories, price,
    image_ref, source_file, line_no)` (first line wins; duplicate lines are counted, not
    quarantined); `categories` are the de-duplicated tokens of every category path; `image_ref` is
    the local `images/<item_id>` file when present, else the first image URL. S3-Rec
    `*_item2attributes.json` maps go to `raw_item_attributes(item_id, attribute, source_file)`.
    Reviewed items without metadata are reported."""
    raw_dir = paths.raw_path()
    log, warn = context.log.info, context.log.warning
    with _ingest_failures(raw_dir):
        plan = ingest_steps.plan_items(raw_dir, config.max_line_bytes, log, warn)
    with duckdb.get_connection() as conn, contextlib.closing(conn):
        with _ingest_failures(raw_dir):
            result = ingest_steps.ingest_items(
                conn, plan, config.max_quarantine_share, config.prefer_local_images, log, warn
            )
        check_results = run_checks([items_unique], conn)
    return dg.MaterializeResult(
        metadata=metadata_values(result.metadata(), md=("files",)), check_results=check_results
    )


@dg.asset(
    deps=[reviews, items],
    group_name=GROUP,
    kinds={"duckdb"},
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks("interactions", interactions_ordered_histories),
)
def interactions(
    context: dg.AssetExecutionContext, config: InteractionsConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    """De-duplicated interactions, each user's history in time order: `interactions(user_id,
    item_id, ts, rating, position)` with `position` 0-based. One row per (user, item), the earliest;
    ties in time keep file order. Then users and items with fewer than `min_interactions` rows are
    dropped (CARCA's one pass or the iterative k-core; both counts are reported); SASRec/S3-Rec
    files are already filtered and kept whole unless configured otherwise."""
    with duckdb.get_connection() as conn, contextlib.closing(conn):
        with failures():
            result = ingest_steps.build_interactions(
                conn,
                config.kcore,
                config.min_interactions,
                config.filter_benchmark_formats,
                context.log.info,
                context.log.warning,
            )
        check_results = run_checks([interactions_ordered_histories], conn)
    return dg.MaterializeResult(
        metadata=metadata_values(result.metadata(), md=("history_lengths",)), check_results=check_results
    )
