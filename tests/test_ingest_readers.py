"""The review readers agree: DuckDB's reader (with its fallback to the Python reader) and the exact
Python reader give the same `reviews` rows and quarantine rows, gzip and plain, and `reviews` is in
`seq_no` order without sorting it (DuckDB keeps insertion order)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pytest

from convrec_dagster.data import ingest as ingest_data
from convrec_dagster.data import rawdata
from convrec_dagster.data.tables import transaction as store_transaction

MIN_TS, MAX_TS = 946_684_800, 2_000_000_000


def review(k: int, **change) -> str:
    rec = {
        "overall": float(k % 5 + 1),
        "verified": True,
        "reviewTime": "03 13, 2011",
        "reviewerID": f"U{k % 7}",
        "asin": f"B{k % 11:09d}",
        "style": {"Format:": " Paperback"},
        "reviewText": f"text {k}",
        "unixReviewTime": 1_300_000_000 + k,
        "vote": "2",
    }
    rec.update(change)
    return json.dumps({k: v for k, v in rec.items() if v is not None})


def lines_with_bad_records(n: int, offset: int) -> list[str]:
    """Valid JSON lines, a few of them unusable (each is quarantined with its own reason)."""
    lines = [review(offset + k) for k in range(n)]
    lines[3] = review(offset + 3, reviewerID=None)  # missing_user_id
    lines[7] = review(offset + 7, overall="five")  # invalid_rating
    lines[11] = review(offset + 11, unixReviewTime=None, reviewTime=None)  # missing_timestamp
    lines[13] = review(offset + 13, unixReviewTime=99)  # timestamp_out_of_range
    lines[17] = review(offset + 17, unixReviewTime=None, reviewTime="13 45, 2011")  # invalid_timestamp
    lines[19] = review(offset + 19, asin="  ")  # missing_item_id
    return lines


def encode(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def write_dump(raw: Path) -> list[Path]:
    raw.mkdir(parents=True)
    a = lines_with_bad_records(300, 0)
    a_bytes = b"\xef\xbb\xbf" + encode(a)  # a byte-order mark on line 1
    # two gzip members, as `cat x.gz y.gz` makes: DuckDB's reader takes it
    (raw / "reviews_A.json.gz").write_bytes(
        gzip.compress(a_bytes[:5000], mtime=0) + gzip.compress(a_bytes[5000:], mtime=0)
    )
    b = lines_with_bad_records(120, 1000)
    b[40] = '{"reviewerID": "U1", "asin": '  # malformed: the Python reader for any reader
    b.insert(60, "")  # a blank line
    (raw / "reviews_B.json").write_text("\n".join(b) + "\n")
    c = lines_with_bad_records(200, 2000)  # plain, DuckDB path
    (raw / "reviews_C.json").write_bytes(encode(c))
    d = lines_with_bad_records(150, 3000)
    d[100] = "not json at all"  # gzip with a malformed line: the Python reader
    (raw / "reviews_D.json.gz").write_bytes(gzip.compress(encode(d), mtime=0))
    return sorted(raw.iterdir())


def ingest(files: list[Path], db: Path, reader: str, preserve_order: bool = True) -> dict:
    conn = duckdb.connect(str(db), config={"threads": 2, "preserve_insertion_order": preserve_order})
    try:
        rawdata.create_staging(conn)
        seq_offset, stats = 0, []
        for path in files:
            s = rawdata.load_reviews(conn, rawdata.sniff(path), seq_offset, MIN_TS, MAX_TS, reader=reader)
            seq_offset += s.max_line_no
            stats.append({k: v for k, v in s.as_dict().items() if k != "seconds"})
        summary = ingest_data.publish_reviews(conn)
        leftovers = conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE temporary AND table_name LIKE '_stage_reviews_p%'"
        ).fetchall()
        return {
            "reviews": conn.execute("SELECT * FROM reviews").fetchall(),  # table order, no ORDER BY
            "sorted": conn.execute("SELECT * FROM reviews ORDER BY seq_no").fetchall(),
            "quarantine": conn.execute(
                "SELECT * FROM _stage_quarantine ORDER BY source_file, line_no"
            ).fetchall(),
            "stats": stats,
            "summary": summary,
            "check": ingest_data.reviews_have_ids(conn).passed,
            "part_tables_left": leftovers,
            "columns": [(r[0], r[1]) for r in conn.execute("DESCRIBE reviews").fetchall()],
        }
    finally:
        conn.close()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("readers")
    files = write_dump(tmp / "raw")
    out = {reader: ingest(files, tmp / f"{reader}.duckdb", reader) for reader in rawdata.READERS}
    out["duckdb_unordered"] = ingest(files, tmp / "unordered.duckdb", "duckdb", preserve_order=False)
    return out


def test_every_reader_gives_the_same_reviews_and_quarantine(results):
    python = results["python"]
    assert len(python["reviews"]) == 300 + 120 + 200 + 150 - 24 - 2
    assert len(python["quarantine"]) == 26  # 6 bad records in each of 4 files + 2 malformed
    assert {r[2] for r in python["quarantine"]} >= {"missing_user_id", "invalid_timestamp", "malformed_json"}
    assert [s["parser"] for s in results["duckdb"]["stats"]] == ["duckdb", "python", "duckdb", "python"]
    for reader in ("duckdb", "duckdb_unordered"):
        got = results[reader]
        assert got["sorted"] == python["sorted"], reader
        assert got["quarantine"] == python["quarantine"], reader
        assert [{**s, "parser": ""} for s in got["stats"]] == [{**s, "parser": ""} for s in python["stats"]]
        assert got["summary"] == python["summary"], reader
        assert got["check"], reader


def test_reviews_are_in_seq_no_order_without_sorting(results):
    for reader in ("duckdb", "python", "duckdb_unordered"):
        got = results[reader]
        assert got["reviews"] == got["sorted"], reader
        seq = [row[4] for row in got["reviews"]]
        assert seq == sorted(set(seq)), reader


def test_no_staging_table_is_left(results):
    for reader in rawdata.READERS:
        assert results[reader]["part_tables_left"] == [], reader


def test_reviews_check_still_finds_duplicate_seq_no(tmp_path):
    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE reviews AS SELECT * FROM (VALUES ('u', 'i', 1, 1), ('u', 'j', 2, 2), ('v', 'i', 3, 2)) "
        "t(user_id, item_id, line_no, seq_no)"
    )
    outcome = ingest_data.reviews_have_ids(conn)
    assert not outcome.passed and outcome.metadata["duplicate_seq_no"] == 1


def test_publish_of_several_row_groups_in_one_transaction_keeps_counts_and_order(tmp_path):
    """Two staged files of 150,000 rows each (over DuckDB's 122,880-row group), published inside a
    transaction as the asset does: the counts see every row and the table is in seq_no order."""
    conn = duckdb.connect(str(tmp_path / "big.duckdb"), config={"threads": 2})
    rawdata.create_staging(conn)
    n = 150_000
    for part in range(2):
        conn.execute(f"""
            CREATE TEMP TABLE _parsed AS
            SELECT range + 1 AS line_no, false AS blank, 'U' || (range % 7919) AS user_id,
                   'I' || (range % 104729) AS item_id, 4.0::DOUBLE AS rating,
                   (1300000000 + range)::BIGINT AS ts, NULL::VARCHAR AS reason, NULL::VARCHAR AS raw
            FROM range({n})""")
        stats = rawdata.FileStats(f"f{part}.json", "reviews", "amazon2018_reviews", "none")
        rawdata._stage_parsed_reviews(conn, stats, stats.file, stats.format, part * n)
    with store_transaction(conn):
        summary = ingest_data.publish_reviews(conn)
        rows = conn.execute("SELECT count(DISTINCT seq_no), count(ts), min(seq_no), max(seq_no) FROM reviews")
        assert rows.fetchall()[0] == (2 * n, 2 * n, 1, 2 * n)
    assert (summary.rows, summary.users, summary.items, summary.n_ts) == (2 * n, 7919, 104729, 2 * n)
    seq = [r[0] for r in conn.execute("SELECT seq_no FROM reviews").fetchall()]  # table order
    assert seq == list(range(1, 2 * n + 1))
    assert ingest_data.reviews_have_ids(conn).passed


# the columns of `reviews`, in order, with their types: what the stages after ingest read
REVIEWS_COLUMNS = [
    ("user_id", "VARCHAR"),
    ("item_id", "VARCHAR"),
    ("rating", "DOUBLE"),
    ("ts", "BIGINT"),
    ("seq_no", "BIGINT"),
    ("source_file", "VARCHAR"),
    ("line_no", "BIGINT"),
    ("source_format", "VARCHAR"),
]


@pytest.mark.parametrize(
    "names",
    [
        ["reviews_C.json"],  # one file, DuckDB's reader
        ["reviews_A.json.gz", "reviews_C.json"],  # two files, DuckDB's reader
        ["reviews_B.json", "reviews_C.json"],  # the Python reader, then DuckDB's
    ],
)
def test_one_and_two_files_give_the_exact_reviews_columns_rows_and_quarantine(tmp_path, names):
    files = [f for f in write_dump(tmp_path / "raw") if f.name in names]
    assert [f.name for f in files] == names
    python = ingest(files, tmp_path / "python.duckdb", "python")
    for preserve_order in (True, False):
        got = ingest(files, tmp_path / f"duckdb_{preserve_order}.duckdb", "duckdb", preserve_order)
        assert got["columns"] == python["columns"] == REVIEWS_COLUMNS
        assert got["reviews"] == python["reviews"]  # table order too
        assert got["quarantine"] == python["quarantine"]
        assert [{**s, "parser": ""} for s in got["stats"]] == [{**s, "parser": ""} for s in python["stats"]]
        assert got["summary"] == python["summary"]
        assert got["part_tables_left"] == []
    assert {r[5] for r in python["reviews"]} == set(names)
    assert len(python["quarantine"]) == 6 * len(names) + ("reviews_B.json" in names)
