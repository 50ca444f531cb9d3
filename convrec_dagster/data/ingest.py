"""The ingest stage's tables and checks (no Dagster).

The tables: ``publish_reviews``, ``publish_items``, ``publish_interactions`` turn the staging tables
that ``convrec_dagster.data.rawdata`` fills into the stage's tables and return their counts. The
checks: pure functions over DuckDB returning a CheckOutcome, run inside the ingest assets' steps
(``convrec_dagster/checks.py``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

import duckdb

from convrec_dagster.data import rawdata
from convrec_dagster.data.outcome import CheckOutcome
from convrec_dagster.data.rawdata import FileStats
from convrec_dagster.data.tables import DataError, quote_literal, table_exists


def reviews_have_ids(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """Every review row has a user id, an item id, a line number and a unique `seq_no`."""
    bad_ids, rows = conn.execute(
        "SELECT count(*) FILTER (WHERE user_id IS NULL OR user_id = '' OR item_id IS NULL "
        "OR item_id = '' OR line_no IS NULL), count(*) FROM reviews"
    ).fetchall()[0]
    # rising seq_no in table order proves them unique at the cost of one column scan; else count
    not_rising = conn.execute(
        "SELECT count(*) FILTER (WHERE seq_no IS NULL OR seq_no <= prev) FROM "
        "(SELECT seq_no, lag(seq_no) OVER () AS prev FROM reviews)"
    ).fetchall()[0][0]
    seqs = rows
    if not_rising:
        seqs = conn.execute("SELECT count(DISTINCT seq_no) FROM reviews").fetchall()[0][0]
    return CheckOutcome(
        passed=bad_ids == 0 and seqs == rows,
        metadata={"rows_without_ids": bad_ids, "duplicate_seq_no": rows - seqs},
    )


def items_unique(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """`items` has one row per item id."""
    rows, distinct = conn.execute("SELECT count(*), count(DISTINCT item_id) FROM items").fetchall()[0]
    return CheckOutcome(passed=rows == distinct, metadata={"duplicate_item_rows": rows - distinct})


def interactions_ordered_histories(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """No (user, item) twice; each user's positions are 0..n-1; time never goes backwards."""
    dup, bad_pos, backwards = conn.execute("""
        WITH o AS (SELECT *, lag(ts) OVER (PARTITION BY user_id ORDER BY position) AS prev_ts
                   FROM interactions),
             p AS (SELECT user_id, count(*) AS n, min(position) AS lo, max(position) AS hi,
                          count(DISTINCT position) AS d FROM interactions GROUP BY 1)
        SELECT (SELECT count(*) - count(DISTINCT (user_id, item_id)) FROM interactions),
               (SELECT count(*) FROM p WHERE lo <> 0 OR hi <> n - 1 OR d <> n),
               (SELECT count(*) FROM o WHERE ts < prev_ts)""").fetchall()[0]
    return CheckOutcome(
        passed=dup == 0 and bad_pos == 0 and backwards == 0,
        metadata={"duplicate_pairs": dup, "users_with_bad_positions": bad_pos, "time_reversals": backwards},
    )


# ---------------------------------------------------------------------------------------------
# the ingest stage's tables, from the staging tables ``rawdata`` fills (call inside a transaction)


@dataclass(frozen=True)
class ReviewsSummary:
    users: int
    items: int
    rows: int
    min_ts: int | None
    max_ts: int | None
    n_ts: int  # rows with a timestamp

    @property
    def has_time(self) -> bool:
        return self.rows > 0 and self.n_ts == self.rows


def publish_reviews(conn: duckdb.DuckDBPyConnection) -> ReviewsSummary:
    """`reviews` from the staged review files, in file order; returns its counts.

    Each file's rows are appended in line order, so with DuckDB's default
    ``preserve_insertion_order`` the table is in ``seq_no`` order without sorting it; with that
    setting off, the rows are sorted by ``seq_no`` as before."""
    selects, tables = rawdata.staged_reviews_sql(conn)
    ordered = conn.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    # declared, not `CREATE TABLE AS ... LIMIT 0`: in DuckDB 2.0.0 a table made that way and then
    # filled with more than one row group (122,880 rows) in the same transaction answers
    # count(DISTINCT ...) with 0 (tests/test_ingest_readers.py)
    conn.execute(f"CREATE OR REPLACE TABLE reviews({rawdata.REVIEW_SCHEMA})")
    if ordered:
        for select in selects:
            conn.execute(f"INSERT INTO reviews {select}")
    elif selects:
        conn.execute(f"INSERT INTO reviews SELECT * FROM ({' UNION ALL '.join(selects)}) ORDER BY seq_no")
    for table in tables:  # the parsed files' temp tables: not needed any more
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DELETE FROM _stage_review_parts")
    # no count of distinct (user, item) pairs here: `interactions` counts the repeats when it drops
    # them, and that count took ~1 s per 5M rows, a sixth of this step (BENCHMARKS.md, issue 16)
    return ReviewsSummary(
        *conn.execute(
            "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*), min(ts), max(ts), count(ts) "
            "FROM reviews"
        ).fetchall()[0]
    )


def quarantine_examples(conn: duckdb.DuckDBPyConnection, source_file: str, n: int = 5) -> list[tuple]:
    """The first ``n`` (line_no, reason) of ``source_file`` in the stage's `_stage_quarantine`."""
    return conn.execute(
        "SELECT line_no, reason FROM _stage_quarantine WHERE source_file = ? ORDER BY line_no LIMIT ?",
        [source_file, n],
    ).fetchall()


@dataclass(frozen=True)
class ItemsSummary:
    meta_lines: int
    items: int
    local_images: int  # items whose image is a local file
    url_images: int
    image_refs: int  # items with any image reference
    brand: int
    categories: int
    price: int
    attribute_items: int
    attribute_rows: int

    @property
    def has_attributes(self) -> bool:
        return self.brand + self.categories + self.price + self.attribute_rows > 0


def publish_items(conn: duckdb.DuckDBPyConnection, local_images: list[tuple[str, str]]) -> ItemsSummary:
    """`items` (first line per item wins; a local image, ``(item_id, path)``, wins over the
    metadata's reference) and `raw_item_attributes` from the staging tables; returns the counts."""
    conn.execute("CREATE OR REPLACE TEMP TABLE _local_images(item_id VARCHAR, path VARCHAR)")
    if local_images:
        conn.executemany("INSERT INTO _local_images VALUES (?, ?)", local_images)
    conn.execute("""
        CREATE OR REPLACE TABLE items AS
        SELECT s.item_id, s.title, s.brand, s.categories, s.price,
               coalesce(li.path, s.image_ref) AS image_ref, s.source_file, s.line_no
        FROM (SELECT *, row_number() OVER (PARTITION BY item_id ORDER BY file_no, line_no) AS rn
              FROM _stage_items) s
        LEFT JOIN _local_images li USING (item_id)
        WHERE s.rn = 1
        ORDER BY s.item_id""")
    conn.execute("""CREATE OR REPLACE TABLE raw_item_attributes AS
                    SELECT DISTINCT item_id, attribute, source_file FROM _stage_item_attributes
                    ORDER BY item_id, attribute""")
    meta_lines = conn.execute("SELECT count(*) FROM _stage_items").fetchall()[0][0]
    n_items, n_local, n_url, n_refs, n_brand, n_cat, n_price = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE image_ref IN (SELECT path FROM _local_images)), "
        "count(*) FILTER (WHERE image_ref LIKE 'http%'), count(image_ref), count(brand), "
        "count(*) FILTER (WHERE len(categories) > 0), count(price) FROM items"
    ).fetchall()[0]
    n_attr_items, n_attr_rows = conn.execute(
        "SELECT count(DISTINCT item_id), count(*) FROM raw_item_attributes"
    ).fetchall()[0]
    return ItemsSummary(
        meta_lines, n_items, n_local, n_url, n_refs, n_brand, n_cat, n_price, n_attr_items, n_attr_rows
    )


def reviewed_items_without_metadata(conn: duckdb.DuckDBPyConnection) -> list[str] | None:
    """Reviewed item ids with neither an `items` row nor attributes (None: no `reviews` table)."""
    if not table_exists(conn, "reviews"):
        return None
    rows = conn.execute("""
        SELECT DISTINCT r.item_id FROM reviews r
        WHERE r.item_id NOT IN (SELECT item_id FROM items)
          AND r.item_id NOT IN (SELECT item_id FROM raw_item_attributes)
        ORDER BY 1""").fetchall()
    return [r[0] for r in rows]


BENCHMARK_FORMATS = ("sasrec_pairs", "s3rec_sequences")


def benchmark_rows(conn: duckdb.DuckDBPyConnection, table: str) -> int:
    """Rows of ``table`` that come from the processed benchmark formats (SASRec / S3-Rec files)."""
    return conn.execute(
        f"SELECT count(*) FROM {table} WHERE source_format IN {BENCHMARK_FORMATS}"
    ).fetchall()[0][0]


def publish_interactions(conn: duckdb.DuckDBPyConnection, source: str) -> None:
    """`interactions` from the filtered table ``source``: each user's history in time order (ties
    in file order), ``position`` 0-based."""
    conn.execute(f"""
        CREATE OR REPLACE TABLE interactions AS
        SELECT user_id, item_id, ts, rating,
               CAST(row_number() OVER (PARTITION BY user_id ORDER BY ts NULLS LAST, seq_no) - 1
                    AS INTEGER) AS position
        FROM {source}
        ORDER BY user_id, position""")


@dataclass(frozen=True)
class InteractionsSummary:
    min_ts: int | None
    max_ts: int | None
    n_ts: int
    lengths: list[int]  # per user, ascending
    items_without_metadata: int | None  # None: no `items` table


def interactions_summary(conn: duckdb.DuckDBPyConnection) -> InteractionsSummary:
    min_ts, max_ts, n_ts = conn.execute("SELECT min(ts), max(ts), count(ts) FROM interactions").fetchall()[0]
    lengths = sorted(
        r[0] for r in conn.execute("SELECT count(*) FROM interactions GROUP BY user_id").fetchall()
    )
    no_meta = None
    if table_exists(conn, "items"):
        attrs = (
            "OR item_id IN (SELECT item_id FROM raw_item_attributes)"
            if table_exists(conn, "raw_item_attributes")
            else ""
        )
        no_meta = conn.execute(f"""
            SELECT count(DISTINCT item_id) FROM interactions
            WHERE NOT (item_id IN (SELECT item_id FROM items) {attrs})""").fetchall()[0][0]
    return InteractionsSummary(min_ts, max_ts, n_ts, lengths, no_meta)


# ---------------------------------------------------------------------------------------------
# what the ingest assets report


def check_quarantine_shares(
    conn: duckdb.DuckDBPyConnection, stage: str, stats: list[FileStats], max_share: float
) -> None:
    """A :class:`DataError` naming the first file whose unusable share is over ``max_share``."""
    bad = [s for s in stats if s.lines and s.quarantine_share > max_share]
    if not bad:
        return
    s = bad[0]
    examples = quarantine_examples(conn, s.file)
    example_text = "; ".join(f"line {n}: {r}" for n, r in examples)
    raise DataError(
        (
            f"{s.file}: {s.n_quarantined:,} of {s.lines:,} lines ({s.quarantine_share:.1%}) could not be "
            f"used, more than max_quarantine_share={max_share:.0%} (reasons: "
            f"{dict(s.quarantined)}; first: {example_text}). The file looks damaged or is not the "
            f"format it seems ({s.format}). What to do: inspect the lines with `SELECT * FROM "
            f"quarantine WHERE stage = {quote_literal(stage)} AND source_file = "
            f"{quote_literal(s.file)}`, fix or re-download the "
            "file, remove it from the raw folder, or raise max_quarantine_share in the "
            f"`{stage}` asset config if this is expected."
        ),
        metadata={
            "file": s.file,
            "quarantine_share": s.quarantine_share,
            "quarantined_by_reason": dict(s.quarantined),
            "other_files_over_threshold": [b.file for b in bad[1:]],
        },
    )


def iso_date(ts: int | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(int(ts), dt.UTC).date().isoformat()


def files_markdown(stats: list[FileStats], skipped: list[dict]) -> str:
    rows = [
        "| file | kind | format | lines | kept | quarantined | parser | s |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for s in stats:
        rows.append(
            f"| {s.file} | {s.kind} | {s.format} | {s.lines:,} | {s.kept:,} | "
            f"{s.n_quarantined:,} | {s.parser} | {s.seconds:.2f} |"
        )
    for sk in skipped:
        rows.append(f"| {sk['file']} | skipped | {sk['why']} | | | | | |")
    return "\n".join(rows)


def date_to_ts(value: str, default: int) -> int:
    """Unix seconds of a YYYY-MM-DD config date (``default`` when empty)."""
    if not value:
        return default
    try:
        return int(dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp())
    except ValueError as exc:
        raise DataError(
            f"Config date {value!r} is not YYYY-MM-DD. What to do: fix the reviews "
            "asset config (min_review_date / max_review_date)."
        ) from exc


def quarantine_reasons(stats: list[FileStats]) -> dict[str, int]:
    total: Counter = Counter()
    for s in stats:
        total.update(s.quarantined)
    return dict(sorted(total.items()))
