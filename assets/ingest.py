"""Ingest stage: raw Amazon dumps (or processed benchmark files) into DuckDB, with nothing lost.

Thin Dagster wrappers around ``convrec_dagster.data.rawdata``: every file of the raw folder is sniffed by
content; review files become `reviews`, metadata files `items` (+ `raw_item_attributes` for S3-Rec
attribute maps), unusable lines go to `quarantine` verbatim with a reason, and `interactions` is the
de-duplicated, time-ordered, k-interaction-filtered history per user.
"""

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource

from convrec_dagster import store
from convrec_dagster.checks import blocking_checks, failures, run_checks
from convrec_dagster.data import ingest as ingest_data
from convrec_dagster.data import rawdata
from convrec_dagster.data.dataset_info import (
    DatasetInfo,
    dataset_name,
    record_item_metadata,
    write_dataset_info,
)
from convrec_dagster.data.ingest import interactions_ordered_histories, items_unique, reviews_have_ids
from convrec_dagster.data.plots import length_histogram_markdown
from convrec_dagster.data.rawdata import FileFormat, FileStats, RawDataError
from convrec_dagster.data.tables import replace_quarantine, require_tables, transaction
from convrec_dagster.resources import DUCKDB_POOL, DUCKDB_TAGS, ConvRecPaths

GROUP = "ingest"
MAX_EXAMPLES = 10


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
    """``max_quarantine_share``: as for `reviews`. ``prefer_local_images``: an
    ``images/<item_id>.jpg|png`` file in the raw folder wins over the image URL in the metadata.
    ``max_line_bytes``: as for `reviews`."""

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


def _raw_files(
    context, paths: ConvRecPaths, max_line_bytes: int = rawdata.DEFAULT_MAX_LINE_BYTES
) -> tuple[Path, list[FileFormat], list[dict]]:
    """Sniff every file of the raw folder; returns (folder, readable formats, skipped entries)."""
    raw_dir = paths.raw_path()
    fix = (
        "set CONVREC_RAW_DIR (or resources.paths.config.raw_dir) to a folder holding Amazon review "
        "dumps (e.g. reviews_<Cat>.json.gz and meta_<Cat>.json.gz), or unset it to use the "
        "embedded sample dump"
    )
    if not raw_dir.exists():
        raise dg.Failure(
            description=f"Raw dump folder {raw_dir} does not exist. What to do: {fix}.",
            metadata={"raw_dir": str(raw_dir)},
        )
    if not raw_dir.is_dir():
        raise dg.Failure(
            description=f"Raw dump folder {raw_dir} is not a folder. What to do: {fix}.",
            metadata={"raw_dir": str(raw_dir)},
        )
    files, skipped_dirs = rawdata.list_raw_files(raw_dir)
    if not files:
        raise dg.Failure(
            description=f"Raw dump folder {raw_dir} holds no files to read. What to do: {fix}.",
            metadata={"raw_dir": str(raw_dir)},
        )
    formats, skipped = [], [{"file": n, "why": why} for n, why in skipped_dirs]
    for path in files:
        try:
            ff = rawdata.sniff(path, max_line_bytes)
        except RawDataError as err:
            raise _failure(err, raw_dir=str(raw_dir)) from err
        if ff.kind in ("unknown", "empty"):
            context.log.warning(f"skipping {path.name}: {ff.note} (not a review, metadata or attribute file)")
            skipped.append({"file": path.name, "why": ff.note})
        else:
            context.log.info(f"{path.name}: {ff.kind}, {ff.format} ({ff.syntax}, {ff.compression})")
            formats.append(ff)
    return raw_dir, formats, skipped


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
    raw_dir, formats, skipped = _raw_files(context, paths, config.max_line_bytes)
    review_files = [ff for ff in formats if ff.kind == "reviews"]
    if not review_files:
        raise dg.Failure(
            description=(
                f"No review file in {raw_dir} (files: "
                f"{', '.join(sorted(ff.path.name for ff in formats) + [s['file'] for s in skipped])}). "
                "What to do: add a review dump (JSON lines with reviewerID/asin or "
                "user_id/parent_asin, or SASRec/S3-Rec id lines) to the folder, or point "
                "CONVREC_RAW_DIR at the right folder."
            ),
            metadata={"raw_dir": str(raw_dir), "skipped": skipped},
        )
    with failures():
        min_ts = ingest_data.date_to_ts(config.min_review_date, 0)
        max_ts = ingest_data.date_to_ts(config.max_review_date, int(time.time()) + 86_400)
    stats: list[FileStats] = []
    with duckdb.get_connection() as conn, contextlib.closing(conn):
        rawdata.create_staging(conn)
        seq_offset = 0
        for ff in review_files:
            context.log.info(f"{ff.path.name}: reading ({ff.path.stat().st_size / 2**20:,.1f} MB on disk)")
            try:
                s = rawdata.load_reviews(conn, ff, seq_offset, min_ts, max_ts)
            except RawDataError as err:
                raise _failure(err, raw_dir=str(raw_dir)) from err
            seq_offset += s.max_line_no
            stats.append(s)
            rate = s.lines / s.seconds if s.seconds else 0.0
            context.log.info(
                f"{s.file}: {s.lines:,} lines, {s.kept:,} kept, {s.n_quarantined:,} "
                f"quarantined {dict(s.quarantined)} ({rate:,.0f} lines/s, {s.parser})"
            )
        with transaction(conn):
            replace_quarantine(conn, "reviews", "_stage_quarantine")
        with failures():
            ingest_data.check_quarantine_shares(conn, "reviews", stats, config.max_quarantine_share)
        n_kept = sum(s.kept for s in stats)
        if n_kept == 0:
            raise dg.Failure(
                description=(
                    f"No usable review in {raw_dir}: every review line was quarantined "
                    f"({ingest_data.quarantine_reasons(stats)}). What to do: look at `SELECT * FROM quarantine WHERE "
                    "stage = 'reviews'` and fix the dump."
                )
            )
        embedded = paths.is_embedded_sample()
        with transaction(conn):
            summary = ingest_data.publish_reviews(conn)
            # whose ingest the tables hold: later steps of other runs check it (run_guard.StoreGuard)
            fingerprint = store.record_ingest(conn, context.run_id, raw_dir, [ff.path for ff in formats])
            write_dataset_info(
                conn,
                DatasetInfo(
                    name=dataset_name(raw_dir, embedded),
                    format=",".join(sorted({s.format for s in stats})),
                    has_time=summary.has_time,
                    fingerprint=fingerprint,
                    embedded_sample=embedded,
                ),
            )
        users, items, rows, min_ts_v, max_ts_v, n_ts = dataclasses.astuple(summary)
        check_results = run_checks([reviews_have_ids], conn)
    seconds = time.perf_counter() - t0
    n_lines = sum(s.lines for s in stats)
    return dg.MaterializeResult(
        metadata={
            "raw_dir": str(raw_dir),
            "files": dg.MetadataValue.md(ingest_data.files_markdown(stats, skipped)),
            "formats": {s.file: s.format for s in stats},
            "records_read": n_lines,
            "records_kept": rows,
            "dataset_fingerprint": fingerprint,
            "quarantined": sum(s.n_quarantined for s in stats),
            "quarantined_by_reason": ingest_data.quarantine_reasons(stats),
            "users": users,
            "items": items,
            "time_range": f"{ingest_data.iso_date(min_ts_v)} .. {ingest_data.iso_date(max_ts_v)}"
            if n_ts
            else "unavailable",
            "timestamps_available": n_ts == rows,
            "time_context": (
                "available"
                if n_ts == rows
                else "unavailable for the benchmark formats (no timestamps): file order is kept"
                if n_ts == 0
                else f"partial: {n_ts:,} of {rows:,} rows have a timestamp"
            ),
            "skipped_files": skipped,
            "lines_per_second": round(n_lines / seconds, 1) if seconds else 0.0,
            "dagster/row_count": rows,
        },
        check_results=check_results,
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
    raw_dir, formats, skipped = _raw_files(context, paths, config.max_line_bytes)
    meta_files = [ff for ff in formats if ff.kind == "meta"]
    attr_files = [ff for ff in formats if ff.kind == "item_attributes"]
    if not meta_files and not attr_files:
        context.log.warning(
            f"no metadata file in {raw_dir}: `items` will be empty, so items get no "
            "brand/category/price attributes (image files under images/ still count)"
        )
    images = rawdata.local_images(raw_dir)
    stats: list[FileStats] = []
    with duckdb.get_connection() as conn, contextlib.closing(conn):
        rawdata.create_staging(conn)
        for file_no, ff in enumerate(meta_files + attr_files):
            try:
                s = (
                    rawdata.load_meta(conn, ff, file_no)
                    if ff.kind == "meta"
                    else rawdata.load_item_attributes(conn, ff)
                )
            except RawDataError as err:
                raise _failure(err, raw_dir=str(raw_dir)) from err
            stats.append(s)
            context.log.info(
                f"{s.file}: {s.lines:,} records, {s.kept:,} kept, {s.n_quarantined:,} "
                f"quarantined {dict(s.quarantined)} ({s.parser}, {s.seconds:.2f} s)"
            )
        with transaction(conn):
            replace_quarantine(conn, "items", "_stage_quarantine")
        with failures():
            ingest_data.check_quarantine_shares(conn, "items", stats, config.max_quarantine_share)
        image_rows = [(k, str(v)) for k, v in images.items()] if config.prefer_local_images else []
        with transaction(conn):
            summary = ingest_data.publish_items(conn, image_rows)
            record_item_metadata(conn, summary.has_attributes, summary.image_refs > 0)
        missing = ingest_data.reviewed_items_without_metadata(conn)
        missing_meta: dict = {"count": None, "examples": [], "note": "table `reviews` not materialized"}
        if missing is not None:
            missing_meta = {"count": len(missing), "examples": missing[:MAX_EXAMPLES]}
            if missing:
                context.log.warning(
                    f"{len(missing):,} reviewed items have no metadata, e.g. {missing_meta['examples'][:5]}"
                )
        check_results = run_checks([items_unique], conn)
    return dg.MaterializeResult(
        metadata={
            "raw_dir": str(raw_dir),
            "files": dg.MetadataValue.md(ingest_data.files_markdown(stats, skipped)),
            "formats": {s.file: s.format for s in stats},
            "records_read": sum(s.lines for s in stats),
            "records_kept": summary.items,
            "quarantined": sum(s.n_quarantined for s in stats),
            "quarantined_by_reason": ingest_data.quarantine_reasons(stats),
            "duplicates": summary.meta_lines - summary.items,
            "items": summary.items,
            "items_with_brand": summary.brand,
            "items_with_categories": summary.categories,
            "items_with_price": summary.price,
            "items_with_local_image": summary.local_images,
            "items_with_image_url_only": summary.url_images,
            "local_image_files": len(images),
            "attribute_items": summary.attribute_items,
            "attribute_rows": summary.attribute_rows,
            "reviewed_items_without_metadata": missing_meta["count"]
            if missing_meta["count"] is not None
            else -1,
            "reviewed_items_without_metadata_examples": missing_meta["examples"],
            "skipped_files": skipped,
            "dagster/row_count": summary.items,
        },
        check_results=check_results,
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
    k = config.min_interactions
    with duckdb.get_connection() as conn, contextlib.closing(conn):
        with failures():
            require_tables(conn, "reviews", hint="materialize `reviews` first (e.g. select `reviews+`).")
        n_reviews = rawdata.table_counts(conn, "reviews").interactions
        duplicates = rawdata.dedupe_reviews(conn, "reviews")
        before = rawdata.table_counts(conn, "_dedup")
        one_pass = rawdata.one_pass_filter(conn, "_dedup", "_one_pass", k)
        iterative = rawdata.iterative_kcore(conn, "_dedup", "_iterative", k)
        only_benchmark = ingest_data.benchmark_rows(conn, "_dedup") == before.interactions
        if only_benchmark and not config.filter_benchmark_formats:
            chosen, applied = "_dedup", "none (processed benchmark files are already filtered)"
        else:
            chosen, applied = (
                ("_one_pass", "one_pass") if config.kcore == "one_pass" else ("_iterative", "iterative")
            )
        context.log.info(
            f"{n_reviews:,} reviews, {duplicates:,} duplicates; {k}-interaction filter: one pass keeps "
            f"{one_pass.interactions:,} rows / {one_pass.users:,} users / {one_pass.items:,} items, "
            f"iterative keeps {iterative.interactions:,} / {iterative.users:,} / {iterative.items:,} "
            f"({iterative.rounds} rounds); applied: {applied}"
        )
        with transaction(conn):
            ingest_data.publish_interactions(conn, chosen)
        kept = rawdata.table_counts(conn, "interactions")
        if kept.interactions == 0:
            context.log.warning(
                f"!!! no interaction is left after the {k}-interaction filter ({applied}) of "
                f"{before.interactions:,} rows: `interactions` is empty. Lower min_interactions in "
                "the `interactions` config or use a larger dump. !!!"
            )
        summary = ingest_data.interactions_summary(conn)
        check_results = run_checks([interactions_ordered_histories], conn)
    min_ts, max_ts, n_ts, no_meta = (
        summary.min_ts,
        summary.max_ts,
        summary.n_ts,
        summary.items_without_metadata,
    )
    lengths = summary.lengths or [0]  # [0]: nothing left after the filter
    return dg.MaterializeResult(
        metadata={
            "records_read": n_reviews,
            "records_kept": kept.interactions,
            "duplicates": duplicates,
            "quarantined": 0,
            "users": kept.users,
            "items": kept.items,
            "min_interactions": k,
            "filter_applied": applied,
            "before_filter": before.as_dict(),
            "one_pass": one_pass.as_dict(),
            "iterative": iterative.as_dict(),
            "time_range": f"{ingest_data.iso_date(min_ts)} .. {ingest_data.iso_date(max_ts)}"
            if n_ts
            else "unavailable",
            "timestamps_available": n_ts == kept.interactions,
            "history_length": {
                "min": lengths[0],
                "median": lengths[len(lengths) // 2],
                "mean": round(sum(lengths) / len(lengths), 2),
                "max": lengths[-1],
            },
            "density": round(kept.interactions / max(1, kept.users * kept.items), 6),
            "items_without_metadata": -1 if no_meta is None else no_meta,
            "history_lengths": dg.MetadataValue.md(
                length_histogram_markdown(lengths, 40, "history lengths after filtering", log_tail=False)
            ),
            "dagster/row_count": kept.interactions,
        },
        check_results=check_results,
    )
