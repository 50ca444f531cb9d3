"""What each ingest asset does, start to end (no Dagster).

``assets/ingest.py`` reads its config, calls these with the step's logger as ``log`` / ``warn``,
runs its checks and returns the metadata built here. A raw file that cannot be read raises
:class:`RawDataError`, any other problem the user can fix :class:`DataError`; the asset turns both
into ``dg.Failure``. The tables themselves are written by ``ingest.py`` and ``rawdata.py``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from convrec_dagster.data import ingest as ingest_data
from convrec_dagster.data import rawdata
from convrec_dagster.data.dataset_info import (
    DatasetInfo,
    dataset_name,
    record_item_metadata,
    write_dataset_info,
)
from convrec_dagster.data.ingest import InteractionsSummary, ItemsSummary, ReviewsSummary
from convrec_dagster.data.plots import length_histogram_markdown
from convrec_dagster.data.rawdata import CoreCounts, FileFormat, FileStats
from convrec_dagster.data.tables import DataError, replace_quarantine, require_tables, transaction

Log = Callable[[str], None]
# writes whose ingest the tables hold (``convrec_dagster.store.record_ingest``, a floor up) inside
# the transaction that writes `reviews`, given the files read; returns the dataset fingerprint
RecordIngest = Callable[[duckdb.DuckDBPyConnection, list[Path]], str]

MAX_EXAMPLES = 10
RAW_DIR_FIX = (
    "set CONVREC_RAW_DIR (or resources.paths.config.raw_dir) to a folder holding Amazon review "
    "dumps (e.g. reviews_<Cat>.json.gz and meta_<Cat>.json.gz), or unset it to use the "
    "embedded sample dump"
)


# ---------------------------------------------------------------------------------------------
# the raw folder


@dataclass
class RawFolder:
    """The raw folder, sniffed: the readable files and the skipped entries (``{"file", "why"}``)."""

    raw_dir: Path
    formats: list[FileFormat]
    skipped: list[dict]

    def of_kind(self, kind: str) -> list[FileFormat]:
        return [ff for ff in self.formats if ff.kind == kind]


def _folder_error(raw_dir: Path, problem: str) -> DataError:
    return DataError(
        f"Raw dump folder {raw_dir} {problem}. What to do: {RAW_DIR_FIX}.", metadata={"raw_dir": str(raw_dir)}
    )


def scan_raw_folder(raw_dir: Path, max_line_bytes: int, log: Log, warn: Log) -> RawFolder:
    """Sniff every file of ``raw_dir``; unknown and empty files are skipped with a warning."""
    if not raw_dir.exists():
        raise _folder_error(raw_dir, "does not exist")
    if not raw_dir.is_dir():
        raise _folder_error(raw_dir, "is not a folder")
    files, skipped_dirs = rawdata.list_raw_files(raw_dir)
    if not files:
        raise _folder_error(raw_dir, "holds no files to read")
    formats, skipped = [], [{"file": n, "why": why} for n, why in skipped_dirs]
    for path in files:
        ff = rawdata.sniff(path, max_line_bytes)
        if ff.kind in ("unknown", "empty"):
            warn(f"skipping {path.name}: {ff.note} (not a review, metadata or attribute file)")
            skipped.append({"file": path.name, "why": ff.note})
        else:
            log(f"{path.name}: {ff.kind}, {ff.format} ({ff.syntax}, {ff.compression})")
            formats.append(ff)
    return RawFolder(raw_dir, formats, skipped)


def _file_metadata(raw_dir: Path, stats: list[FileStats], skipped: list[dict]) -> dict:
    """The metadata `reviews` and `items` share (``files``: a markdown table)."""
    return {
        "raw_dir": str(raw_dir),
        "files": ingest_data.files_markdown(stats, skipped),
        "formats": {s.file: s.format for s in stats},
        "records_read": sum(s.lines for s in stats),
    }


def _file_line(s: FileStats, unit: str, detail: str) -> str:
    return (
        f"{s.file}: {s.lines:,} {unit}, {s.kept:,} kept, {s.n_quarantined:,} "
        f"quarantined {dict(s.quarantined)} ({detail})"
    )


def _publish_quarantine(
    conn: duckdb.DuckDBPyConnection, stage: str, stats: list[FileStats], max_share: float
) -> None:
    """The staged unusable records become ``stage``'s `quarantine` rows; a :class:`DataError` when
    more than ``max_share`` of a file was unusable."""
    with transaction(conn):
        replace_quarantine(conn, stage, "_stage_quarantine")
    ingest_data.check_quarantine_shares(conn, stage, stats, max_share)


def _time_range(min_ts: int | None, max_ts: int | None, n_ts: int) -> str:
    if not n_ts:
        return "unavailable"
    return f"{ingest_data.iso_date(min_ts)} .. {ingest_data.iso_date(max_ts)}"


# ---------------------------------------------------------------------------------------------
# reviews


@dataclass
class ReviewsPlan:
    """What `reviews` will read: the sniffed folder, its review files, the accepted time range."""

    folder: RawFolder
    files: list[FileFormat]
    min_ts: int
    max_ts: int


def plan_reviews(
    raw_dir: Path, max_line_bytes: int, min_review_date: str, max_review_date: str, log: Log, warn: Log
) -> ReviewsPlan:
    """The raw folder sniffed; a :class:`DataError` when it holds no review file or a date is bad."""
    folder = scan_raw_folder(raw_dir, max_line_bytes, log, warn)
    files = folder.of_kind("reviews")
    if not files:
        names = sorted(ff.path.name for ff in folder.formats) + [s["file"] for s in folder.skipped]
        raise DataError(
            f"No review file in {raw_dir} (files: {', '.join(names)}). "
            "What to do: add a review dump (JSON lines with reviewerID/asin or "
            "user_id/parent_asin, or SASRec/S3-Rec id lines) to the folder, or point "
            "CONVREC_RAW_DIR at the right folder.",
            metadata={"raw_dir": str(raw_dir), "skipped": folder.skipped},
        )
    min_ts = ingest_data.date_to_ts(min_review_date, 0)
    max_ts = ingest_data.date_to_ts(max_review_date, int(time.time()) + 86_400)
    return ReviewsPlan(folder, files, min_ts, max_ts)


@dataclass
class ReviewsResult:
    raw_dir: Path
    stats: list[FileStats]
    skipped: list[dict]
    summary: ReviewsSummary
    fingerprint: str

    def metadata(self, seconds: float) -> dict:
        """The asset's metadata (``files``: markdown); ``seconds``: the step's time, for the rate."""
        stats = self.stats
        users, items, rows, min_ts, max_ts, n_ts = dataclasses.astuple(self.summary)
        n_lines = sum(s.lines for s in stats)
        return {
            **_file_metadata(self.raw_dir, stats, self.skipped),
            "records_kept": rows,
            "dataset_fingerprint": self.fingerprint,
            "quarantined": sum(s.n_quarantined for s in stats),
            "quarantined_by_reason": ingest_data.quarantine_reasons(stats),
            "users": users,
            "items": items,
            "time_range": _time_range(min_ts, max_ts, n_ts),
            "timestamps_available": n_ts == rows,
            "time_context": (
                "available"
                if n_ts == rows
                else "unavailable for the benchmark formats (no timestamps): file order is kept"
                if n_ts == 0
                else f"partial: {n_ts:,} of {rows:,} rows have a timestamp"
            ),
            "skipped_files": self.skipped,
            "lines_per_second": round(n_lines / seconds, 1) if seconds else 0.0,
            "dagster/row_count": rows,
        }


def ingest_reviews(
    conn: duckdb.DuckDBPyConnection,
    plan: ReviewsPlan,
    max_quarantine_share: float,
    embedded_sample: bool,
    record_ingest: RecordIngest,
    log: Log,
) -> ReviewsResult:
    """Parse the review files into `reviews` (unusable lines into `quarantine`), record the ingest
    and the dataset's identity; a :class:`DataError` when too much of a file, or all, is unusable."""
    raw_dir = plan.folder.raw_dir
    stats: list[FileStats] = []
    rawdata.create_staging(conn)
    seq_offset = 0
    for ff in plan.files:
        log(f"{ff.path.name}: reading ({ff.path.stat().st_size / 2**20:,.1f} MB on disk)")
        s = rawdata.load_reviews(conn, ff, seq_offset, plan.min_ts, plan.max_ts)
        seq_offset += s.max_line_no
        stats.append(s)
        rate = s.lines / s.seconds if s.seconds else 0.0
        log(_file_line(s, "lines", f"{rate:,.0f} lines/s, {s.parser}"))
    _publish_quarantine(conn, "reviews", stats, max_quarantine_share)
    if sum(s.kept for s in stats) == 0:
        raise DataError(
            f"No usable review in {raw_dir}: every review line was quarantined "
            f"({ingest_data.quarantine_reasons(stats)}). What to do: look at `SELECT * FROM quarantine WHERE "
            "stage = 'reviews'` and fix the dump."
        )
    with transaction(conn):
        summary = ingest_data.publish_reviews(conn)
        # whose ingest the tables hold: later steps of other runs check it (run_guard.StoreGuard)
        fingerprint = record_ingest(conn, [ff.path for ff in plan.folder.formats])
        write_dataset_info(
            conn,
            DatasetInfo(
                name=dataset_name(raw_dir, embedded_sample),
                format=",".join(sorted({s.format for s in stats})),
                has_time=summary.has_time,
                fingerprint=fingerprint,
                embedded_sample=embedded_sample,
            ),
        )
    return ReviewsResult(raw_dir, stats, plan.folder.skipped, summary, fingerprint)


# ---------------------------------------------------------------------------------------------
# items


@dataclass
class ItemsPlan:
    """What `items` will read: the sniffed folder, metadata files then attribute maps, local images."""

    folder: RawFolder
    files: list[FileFormat]
    images: dict[str, Path]


def plan_items(raw_dir: Path, max_line_bytes: int, log: Log, warn: Log) -> ItemsPlan:
    """The raw folder sniffed (a warning when it holds no metadata) and its ``images/`` files."""
    folder = scan_raw_folder(raw_dir, max_line_bytes, log, warn)
    files = folder.of_kind("meta") + folder.of_kind("item_attributes")
    if not files:
        warn(
            f"no metadata file in {raw_dir}: `items` will be empty, so items get no "
            "brand/category/price attributes (image files under images/ still count)"
        )
    return ItemsPlan(folder, files, rawdata.local_images(raw_dir))


@dataclass
class ItemsResult:
    raw_dir: Path
    stats: list[FileStats]
    skipped: list[dict]
    summary: ItemsSummary
    local_image_files: int
    missing: list[str] | None  # reviewed items without metadata; None: no `reviews` table

    def metadata(self) -> dict:
        """The asset's metadata (``files``: markdown)."""
        stats, summary, missing = self.stats, self.summary, self.missing
        return {
            **_file_metadata(self.raw_dir, stats, self.skipped),
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
            "local_image_files": self.local_image_files,
            "attribute_items": summary.attribute_items,
            "attribute_rows": summary.attribute_rows,
            "reviewed_items_without_metadata": -1 if missing is None else len(missing),
            "reviewed_items_without_metadata_examples": [] if missing is None else missing[:MAX_EXAMPLES],
            "skipped_files": self.skipped,
            "dagster/row_count": summary.items,
        }


def ingest_items(
    conn: duckdb.DuckDBPyConnection,
    plan: ItemsPlan,
    max_quarantine_share: float,
    prefer_local_images: bool,
    log: Log,
    warn: Log,
) -> ItemsResult:
    """Parse the metadata files and attribute maps into `items` and `raw_item_attributes`
    (unusable records into `quarantine`); a :class:`DataError` when too much of a file is unusable."""
    stats: list[FileStats] = []
    rawdata.create_staging(conn)
    for file_no, ff in enumerate(plan.files):
        s = (
            rawdata.load_meta(conn, ff, file_no)
            if ff.kind == "meta"
            else rawdata.load_item_attributes(conn, ff)
        )
        stats.append(s)
        log(_file_line(s, "records", f"{s.parser}, {s.seconds:.2f} s"))
    _publish_quarantine(conn, "items", stats, max_quarantine_share)
    image_rows = [(k, str(v)) for k, v in plan.images.items()] if prefer_local_images else []
    with transaction(conn):
        summary = ingest_data.publish_items(conn, image_rows)
        record_item_metadata(conn, summary.has_attributes, summary.image_refs > 0)
    missing = ingest_data.reviewed_items_without_metadata(conn)
    if missing:
        warn(f"{len(missing):,} reviewed items have no metadata, e.g. {missing[:5]}")
    return ItemsResult(plan.folder.raw_dir, stats, plan.folder.skipped, summary, len(plan.images), missing)


# ---------------------------------------------------------------------------------------------
# interactions


@dataclass
class InteractionsResult:
    min_interactions: int
    n_reviews: int
    duplicates: int
    before: CoreCounts  # after de-duplication, before the filter
    one_pass: CoreCounts
    iterative: CoreCounts
    applied: str
    kept: CoreCounts
    summary: InteractionsSummary

    def metadata(self) -> dict:
        """The asset's metadata (``history_lengths``: markdown)."""
        kept, summary = self.kept, self.summary
        lengths = summary.lengths or [0]  # [0]: nothing left after the filter
        no_meta = summary.items_without_metadata
        return {
            "records_read": self.n_reviews,
            "records_kept": kept.interactions,
            "duplicates": self.duplicates,
            "quarantined": 0,
            "users": kept.users,
            "items": kept.items,
            "min_interactions": self.min_interactions,
            "filter_applied": self.applied,
            "before_filter": self.before.as_dict(),
            "one_pass": self.one_pass.as_dict(),
            "iterative": self.iterative.as_dict(),
            "time_range": _time_range(summary.min_ts, summary.max_ts, summary.n_ts),
            "timestamps_available": summary.n_ts == kept.interactions,
            "history_length": {
                "min": lengths[0],
                "median": lengths[len(lengths) // 2],
                "mean": round(sum(lengths) / len(lengths), 2),
                "max": lengths[-1],
            },
            "density": round(kept.interactions / max(1, kept.users * kept.items), 6),
            "items_without_metadata": -1 if no_meta is None else no_meta,
            "history_lengths": length_histogram_markdown(
                lengths, 40, "history lengths after filtering", log_tail=False
            ),
            "dagster/row_count": kept.interactions,
        }


def build_interactions(
    conn: duckdb.DuckDBPyConnection,
    kcore: str,
    min_interactions: int,
    filter_benchmark_formats: bool,
    log: Log,
    warn: Log,
) -> InteractionsResult:
    """`interactions` from `reviews`: de-duplicated, both filters counted, the chosen one applied
    (``kcore``: ``one_pass`` or ``iterative``; benchmark files stay whole unless configured)."""
    k = min_interactions
    require_tables(conn, "reviews", hint="materialize `reviews` first (e.g. select `reviews+`).")
    n_reviews = rawdata.table_counts(conn, "reviews").interactions
    duplicates = rawdata.dedupe_reviews(conn, "reviews")
    before = rawdata.table_counts(conn, "_dedup")
    one_pass = rawdata.one_pass_filter(conn, "_dedup", "_one_pass", k)
    iterative = rawdata.iterative_kcore(conn, "_dedup", "_iterative", k)
    only_benchmark = ingest_data.benchmark_rows(conn, "_dedup") == before.interactions
    if only_benchmark and not filter_benchmark_formats:
        chosen, applied = "_dedup", "none (processed benchmark files are already filtered)"
    else:
        chosen, applied = ("_one_pass", "one_pass") if kcore == "one_pass" else ("_iterative", "iterative")
    log(
        f"{n_reviews:,} reviews, {duplicates:,} duplicates; {k}-interaction filter: one pass keeps "
        f"{one_pass.interactions:,} rows / {one_pass.users:,} users / {one_pass.items:,} items, "
        f"iterative keeps {iterative.interactions:,} / {iterative.users:,} / {iterative.items:,} "
        f"({iterative.rounds} rounds); applied: {applied}"
    )
    with transaction(conn):
        ingest_data.publish_interactions(conn, chosen)
    kept = rawdata.table_counts(conn, "interactions")
    if kept.interactions == 0:
        warn(
            f"!!! no interaction is left after the {k}-interaction filter ({applied}) of "
            f"{before.interactions:,} rows: `interactions` is empty. Lower min_interactions in "
            "the `interactions` config or use a larger dump. !!!"
        )
    summary = ingest_data.interactions_summary(conn)
    return InteractionsResult(k, n_reviews, duplicates, before, one_pass, iterative, applied, kept, summary)
