"""Bad input: a clear error that names the file and what to do, and nothing lost (quarantine)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.ingest import items, reviews

GOOD = 20


def review(user: str, asin: str, ts: int = 1_300_000_000) -> str:
    return json.dumps(
        {
            "reviewerID": user,
            "asin": asin,
            "overall": 4.0,
            "unixReviewTime": ts,
            "reviewTime": "03 13, 2011",
            "helpful": [0, 0],
            "reviewText": "fine",
        }
    )


def good_lines(n: int = GOOD) -> list[str]:
    return [review(f"U{k % 4}", f"I{k}") for k in range(n)]


def write_bytes(path: Path, lines: list[bytes | str], gz: bool = False) -> Path:
    data = b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def run(make_resources, raw_dir: Path, assets=(reviews,), config: dict | None = None):
    resources = make_resources(raw_dir)
    run_config = {"ops": config} if config else None
    result = dg.materialize(list(assets), resources=resources, run_config=run_config)
    return result, resources["duckdb"].database


def metadata(result, key: str = "reviews") -> dict:
    ev = [e for e in result.get_asset_materialization_events() if e.asset_key.path == [key]][-1]
    return {k: v.value for k, v in ev.materialization.metadata.items()}


def quarantine(db: str) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as conn:
        return conn.execute(
            "SELECT stage, source_file, line_no, reason, raw FROM quarantine ORDER BY source_file, line_no"
        ).fetchall()


def test_truncated_gzip_fails_naming_file_and_fix(make_resources, tmp_path):
    path = write_bytes(tmp_path / "raw" / "reviews_Cut.json.gz", good_lines(3000), gz=True)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(dg.Failure) as exc:
        run(make_resources, tmp_path / "raw")
    msg = str(exc.value)
    assert "reviews_Cut.json.gz" in msg and "truncated" in msg and "re-download" in msg


def test_non_utf8_line_is_quarantined_escaped(make_resources, tmp_path):
    lines = good_lines()
    lines.insert(5, b'{"reviewerID": "U9", "asin": "I\xff\xfe", "unixReviewTime": 1300000000}')
    write_bytes(tmp_path / "raw" / "r.json", lines)
    result, db = run(make_resources, tmp_path / "raw")
    assert metadata(result)["records_kept"] == GOOD
    [(stage, file, line_no, reason, raw)] = quarantine(db)
    assert (stage, file, line_no, reason) == ("reviews", "r.json", 6, "invalid_utf8")
    assert "\\xff\\xfe" in raw and raw.startswith('{"reviewerID": "U9"')


def test_malformed_json_is_quarantined_verbatim(make_resources, tmp_path):
    lines = good_lines()
    broken = '{"reviewerID": "U1", "asin": "I3", "overall": 5.0, "unixRev'
    lines.insert(10, broken)
    lines.insert(3, "")  # a blank line is no record, but it still counts for line numbers
    write_bytes(tmp_path / "raw" / "r.json.gz", lines, gz=True)
    result, db = run(make_resources, tmp_path / "raw")
    md = metadata(result)
    assert md["records_read"] == GOOD + 1 and md["records_kept"] == GOOD
    assert md["quarantined_by_reason"] == {"malformed_json": 1}
    assert quarantine(db) == [("reviews", "r.json.gz", 12, "malformed_json", broken)]
    with duckdb.connect(db, read_only=True) as conn:
        assert conn.execute("SELECT max(line_no) FROM reviews").fetchall() == [(GOOD + 2,)]


def test_python_literal_code_is_quarantined_never_run(make_resources, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    write_bytes(raw / "r.json", good_lines())
    meta = [str({"asin": f"I{k}", "title": f"t{k}", "categories": [["A", "B"]]}) for k in range(GOOD)]
    evil = "__import__('os').system('touch PWNED')"
    evil_in_dict = "{'asin': __import__('os').system('touch PWNED'), 'title': 'x'}"
    meta.insert(0, evil_in_dict)  # seen by the format sniffer too
    meta.insert(7, evil)
    write_bytes(raw / "meta_Evil.json.gz", meta, gz=True)
    result, db = run(make_resources, raw, assets=(reviews, items))
    md = metadata(result, "items")
    assert md["items"] == GOOD and md["quarantined_by_reason"] == {"not_a_python_literal": 2}
    rows = [(r[2], r[3], r[4]) for r in quarantine(db) if r[0] == "items"]
    assert rows == [(1, "not_a_python_literal", evil_in_dict), (8, "not_a_python_literal", evil)]
    assert not list(tmp_path.rglob("PWNED")) and not Path(os.getcwd(), "PWNED").exists()


def test_empty_files_are_reported_and_skipped(make_resources, tmp_path):
    raw = tmp_path / "raw"
    write_bytes(raw / "r.json", good_lines())
    (raw / "empty.json").write_bytes(b"")
    (raw / "empty.json.gz").write_bytes(gzip.compress(b"", mtime=0))
    result, _ = run(make_resources, raw)
    md = metadata(result)
    assert md["records_kept"] == GOOD
    assert {s["file"] for s in md["skipped_files"]} == {"empty.json", "empty.json.gz"}
    assert all("empty" in s["why"] for s in md["skipped_files"])


def test_review_without_reviewer_or_asin_is_quarantined(make_resources, tmp_path):
    lines = good_lines()
    no_user = json.dumps({"asin": "I1", "overall": 5.0, "unixReviewTime": 1_300_000_000})
    no_item = json.dumps({"reviewerID": "U1", "asin": "", "overall": 5.0, "unixReviewTime": 1_300_000_000})
    lines += [no_user, no_item]
    write_bytes(tmp_path / "raw" / "r.json", lines)
    result, db = run(make_resources, tmp_path / "raw")
    assert metadata(result)["quarantined_by_reason"] == {"missing_item_id": 1, "missing_user_id": 1}
    assert [(r[2], r[3], r[4]) for r in quarantine(db)] == [
        (GOOD + 1, "missing_user_id", no_user),
        (GOOD + 2, "missing_item_id", no_item),
    ]


def test_timestamp_out_of_range_is_quarantined(make_resources, tmp_path):
    lines = good_lines() + [review("U1", "I1", 4_102_444_800), review("U1", "I2", 100)]  # 2100, 1970
    write_bytes(tmp_path / "raw" / "r.json", lines)
    result, db = run(make_resources, tmp_path / "raw")
    assert metadata(result)["quarantined_by_reason"] == {"timestamp_out_of_range": 2}
    # the bounds are config: widening them keeps both
    result, db = run(
        make_resources,
        tmp_path / "raw",
        config={"reviews": {"config": {"min_review_date": "1960-01-01", "max_review_date": "2200-01-01"}}},
    )
    assert metadata(result)["records_kept"] == GOOD + 2


def test_unknown_file_is_reported_not_fatal(make_resources, tmp_path):
    raw = tmp_path / "raw"
    write_bytes(raw / "r.json", good_lines())
    write_bytes(raw / "README.txt", ["These are my notes about the dump.", "Nothing to parse."])
    write_bytes(raw / "ratings.csv", ["A1,B1,5.0,1300000000"])
    write_bytes(raw / "config.json", [json.dumps({"name": "x", "version": 2})])
    (raw / "images").mkdir()
    (raw / "images" / "I1.jpg").write_bytes(b"not read by the ingest stage")
    result, _ = run(make_resources, raw)
    md = metadata(result)
    assert md["records_kept"] == GOOD
    assert {s["file"] for s in md["skipped_files"]} == {"README.txt", "ratings.csv", "config.json"}
    assert "README.txt" in md["files"] and "skipped" in md["files"]


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_missing_or_empty_raw_dir_fails_with_what_to_do(make_resources, tmp_path, monkeypatch, case):
    raw = tmp_path / "nowhere"
    if case == "empty":
        raw.mkdir()
    monkeypatch.setenv("CONVREC_RAW_DIR", str(raw))
    with pytest.raises(dg.Failure) as exc:
        run(make_resources, "")  # the folder comes from the environment
    msg = str(exc.value)
    assert str(raw) in msg and "CONVREC_RAW_DIR" in msg
    assert ("does not exist" if case == "missing" else "no files") in msg


def test_quarantine_share_over_threshold_fails_loudly(make_resources, tmp_path):
    lines = good_lines(10) + ['{"reviewerID": broken'] * 4
    write_bytes(tmp_path / "raw" / "reviews_Bad.json", lines)
    with pytest.raises(dg.Failure) as exc:
        run(make_resources, tmp_path / "raw")
    msg = str(exc.value)
    assert "reviews_Bad.json" in msg and "max_quarantine_share" in msg and "4 of 14" in msg
    assert "SELECT * FROM quarantine" in msg
    db = make_resources(tmp_path / "raw")["duckdb"].database
    assert len(quarantine(db)) == 4  # the bad lines are kept for inspection
    result, _ = run(
        make_resources, tmp_path / "raw", config={"reviews": {"config": {"max_quarantine_share": 0.5}}}
    )
    assert metadata(result)["records_kept"] == 10


@pytest.mark.parametrize("where", ["first_line", "middle"])
def test_deeply_nested_lines_are_quarantined_and_the_rest_kept(make_resources, tmp_path, where):
    """~1,000 nested brackets make json.loads raise RecursionError: the line is quarantined, in a
    review file (also when it is the first line the format sniffer reads) and in 2014 metadata."""
    deep_review = '{"reviewerID": "U1", "asin": "I1", "x": ' + "[" * 1000 + "]" * 1000 + "}"
    deep_meta = "{'asin': 'I2', 'x': " + "[" * 1000 + "]" * 1000 + "}"
    raw = tmp_path / "raw"
    lines = good_lines()
    meta = [str({"asin": f"I{k}", "title": f"t{k}", "categories": [["A", "B"]]}) for k in range(GOOD)]
    at = 0 if where == "first_line" else 5
    lines.insert(at, deep_review)
    meta.insert(at, deep_meta)
    write_bytes(raw / "r.json", lines)
    write_bytes(raw / "meta_Deep.json.gz", meta, gz=True)
    result, db = run(make_resources, raw, assets=(reviews, items))
    assert metadata(result)["records_kept"] >= GOOD
    assert metadata(result, "items")["items"] == GOOD
    rows = quarantine(db)
    meta_rows = [r for r in rows if r[0] == "items"]
    assert [(r[2], r[4]) for r in meta_rows] == [(at + 1, deep_meta)] and meta_rows[0][3] in (
        "nested_too_deep",
        "malformed_literal",
    )


@pytest.mark.parametrize("gz", [False, True])
def test_a_5_mb_line_is_quarantined_with_its_first_kb_and_the_rest_kept(make_resources, tmp_path, gz):
    """Longer than max_line_bytes (1 MB): quarantined as line_too_long, never parsed, its first KB
    kept; in review files (DuckDB's reader, then the bounded Python reader) and in metadata."""
    huge_review = '{"reviewerID": "U9", "asin": "I9", "reviewText": "' + "x" * 5_000_000 + '"}'
    huge_meta = "{'asin': 'I7', 'title': '" + "y" * 5_000_000 + "'}"
    raw = tmp_path / "raw"
    lines = good_lines()
    lines.insert(7, huge_review)
    meta = [str({"asin": f"I{k}", "title": f"t{k}"}) for k in range(GOOD)]
    meta.insert(3, huge_meta)
    write_bytes(raw / "reviews_Huge.json", lines, gz=gz)
    write_bytes(raw / "meta_Huge.json", meta, gz=gz)
    result, db = run(make_resources, raw, assets=(reviews, items))
    assert metadata(result)["records_kept"] == GOOD
    assert metadata(result)["quarantined_by_reason"] == {"line_too_long": 1}
    assert metadata(result, "items")["items"] == GOOD
    rows = {(r[0], r[2]): r for r in quarantine(db)}
    assert set(rows) == {("reviews", 8), ("items", 4)}
    assert all(r[3] == "line_too_long" for r in rows.values())
    assert rows[("reviews", 8)][4] == huge_review[:1024]
    assert rows[("items", 4)][4] == huge_meta[:1024]


def test_max_line_bytes_is_a_setting(make_resources, tmp_path):
    raw = tmp_path / "raw"
    lines = good_lines()
    lines.append(review("U1", "I99").replace('"fine"', '"' + "z" * 3000 + '"'))
    write_bytes(raw / "reviews_Long.json", lines)
    result, db = run(make_resources, raw, config={"reviews": {"config": {"max_line_bytes": 2000}}})
    assert metadata(result)["quarantined_by_reason"] == {"line_too_long": 1}
    result, db = run(make_resources, raw)  # the default (1 MB) takes the line
    assert metadata(result)["records_kept"] == GOOD + 1


@pytest.mark.parametrize("n_lines", [1, 3])
def test_a_byte_order_mark_on_line_1_is_ignored(make_resources, tmp_path, n_lines):
    raw = tmp_path / "raw"
    lines = good_lines(n_lines)
    write_bytes(raw / "reviews_Bom.json", [b"\xef\xbb\xbf" + lines[0].encode(), *lines[1:]])
    result, db = run(make_resources, raw)
    assert metadata(result)["records_kept"] == n_lines and metadata(result)["quarantined"] == 0


def test_quarantine_share_error_escapes_the_file_name_in_its_sql(make_resources, tmp_path):
    name = "reviews_O'Brien.json"
    write_bytes(tmp_path / "raw" / name, good_lines(4) + ['{"reviewerID": broken'] * 4)
    with pytest.raises(dg.Failure) as exc:
        run(make_resources, tmp_path / "raw")
    sql = str(exc.value).split("`")[1]
    assert "source_file = 'reviews_O''Brien.json'" in sql
    with duckdb.connect(make_resources(tmp_path / "raw")["duckdb"].database, read_only=True) as conn:
        assert len(conn.execute(sql).fetchall()) == 4  # the suggested SQL runs and finds the lines


def test_a_one_line_item2attributes_file_over_max_line_bytes_is_still_read_whole(make_resources, tmp_path):
    """An S3-Rec *_item2attributes.json is one JSON document, often on one line of a few MB: it is
    a document, not a too-long line."""
    raw = tmp_path / "raw"
    n_items = 80_000
    write_bytes(raw / "Toys.txt", [f"{u} " + " ".join(str(i) for i in range(1, 6)) for u in range(1, 8)])
    attrs = json.dumps({str(i): [i % 97, i % 13 + 100] for i in range(1, n_items + 1)})
    assert len(attrs) > 1 << 20
    write_bytes(raw / "Toys_item2attributes.json", [attrs])
    result, db = run(make_resources, raw, assets=(reviews, items))
    with duckdb.connect(db, read_only=True) as conn:
        assert conn.execute("SELECT count(DISTINCT item_id) FROM raw_item_attributes").fetchall() == [
            (n_items,)
        ]
