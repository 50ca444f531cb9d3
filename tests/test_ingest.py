"""Ingestion: every supported format, detection by content, the k-interaction filter, real dumps."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.ingest import (
    interactions,
    interactions_ordered_histories,
    items,
    items_unique,
    reviews,
    reviews_have_ids,
)
from convrec_dagster.data import rawdata
from convrec_dagster.data.sample_dump import read_marker
from tests.conftest import shared_data

ALL = [reviews, items, interactions]  # each runs its own checks


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def review14(user: str, asin: str, ts: int, rating: float = 5.0) -> str:
    return json.dumps(
        {
            "reviewerID": user,
            "asin": asin,
            "reviewerName": "X",
            "helpful": [0, 0],
            "reviewText": "ok",
            "overall": rating,
            "summary": "s",
            "unixReviewTime": ts,
            "reviewTime": "01 1, 2013",
        }
    )


def materialize(make_resources, raw_dir: Path, assets=None, run_config=None):
    resources = make_resources(raw_dir)
    result = dg.materialize(assets or ALL, resources=resources, run_config=run_config)
    assert result.success
    return result, resources["duckdb"].database


def meta_of(result, key: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.path == [key]]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def query(db: str, sql: str) -> list[tuple]:
    with duckdb.connect(db, read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_sample_dump_ingests(make_resources, sample_dump):
    result, db = materialize(make_resources, sample_dump)
    marker = read_marker(sample_dump)
    rm, im, xm = meta_of(result, "reviews"), meta_of(result, "items"), meta_of(result, "interactions")
    assert rm["records_read"] == marker["reviews"] + 1 and rm["records_kept"] == marker["reviews"]
    assert rm["quarantined_by_reason"] == {"malformed_json": 1} and rm["timestamps_available"] is True
    assert rm["users"] == 600 and rm["items"] == 240 and rm["time_range"].startswith("2012-")
    assert im["items"] == 233 and im["duplicates"] == 4 and im["quarantined"] == 1
    assert sorted(im["reviewed_items_without_metadata_examples"]) == marker["items_without_meta"]
    assert im["reviewed_items_without_metadata"] == 7
    assert xm["records_kept"] == marker["reviews"] and xm["filter_applied"] == "one_pass"
    assert query(db, "SELECT stage, reason, count(*) FROM quarantine GROUP BY ALL ORDER BY 1") == [
        ("items", "malformed_literal", 1),
        ("reviews", "malformed_json", 1),
    ]
    # the local picture wins over the URL; the two items without a picture keep their URL
    refs = dict(query(db, "SELECT item_id, image_ref FROM items"))
    missing = set(marker["missing_images"])
    assert all(ref.startswith("http") == (item in missing) for item, ref in refs.items())
    assert all(Path(ref).is_file() for item, ref in refs.items() if item not in missing)
    cats = query(db, "SELECT categories FROM items WHERE len(categories) > 0 LIMIT 1")[0][0]
    assert cats[0] == "Beauty" and len(cats) == 3
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"reviews_have_ids": True, "items_unique": True, "interactions_ordered_histories": True}


def test_ingest_checks_fail_on_broken_tables():
    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE reviews AS SELECT * FROM (VALUES ('u', 'i', 1, 0), ('', 'i', 2, 1), "
        "('u', 'j', 3, 1)) t(user_id, item_id, line_no, seq_no)"
    )
    result = reviews_have_ids(conn)
    assert not result.passed and result.metadata["rows_without_ids"] == 1
    assert result.metadata["duplicate_seq_no"] == 1
    conn.execute("CREATE TABLE items AS SELECT * FROM (VALUES ('a'), ('a'), ('b')) t(item_id)")
    assert not items_unique(conn).passed
    conn.execute(
        "CREATE TABLE interactions AS SELECT * FROM (VALUES ('u', 'a', 0, 10), ('u', 'b', 1, 5), "
        "('v', 'a', 1, 1)) t(user_id, item_id, position, ts)"
    )
    result = interactions_ordered_histories(conn)
    assert not result.passed
    assert result.metadata["time_reversals"] == 1 and result.metadata["users_with_bad_positions"] == 1
    conn.execute("DELETE FROM interactions WHERE user_id = 'v'; UPDATE interactions SET ts = position")
    assert interactions_ordered_histories(conn).passed


def test_formats_are_told_by_content_not_by_name(make_resources, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    users = [f"U{u}" for u in range(6)]
    rev = [
        review14(u, f"I{(k + j) % 6}", 1_300_000_000 + 86_400 * j)
        for k, u in enumerate(users)
        for j in range(5)
    ]
    write(raw / "meta_Misleading.json", rev)  # reviews named like metadata
    meta = [
        str(
            {
                "asin": f"I{i}",
                "title": f"Item {i}",
                "brand": "B's",
                "price": 2.5 + i,
                "categories": [["Beauty", "Hair"], ["Beauty", "Skin"]],
                "imUrl": f"http://x/{i}.jpg",
            }
        )
        for i in range(6)
    ]
    write(raw / "reviews_Misleading.json.gz", meta, gz=True)  # literal metadata named like reviews
    assert rawdata.sniff(raw / "meta_Misleading.json").format == "amazon2014_reviews"
    ff = rawdata.sniff(raw / "reviews_Misleading.json.gz")
    assert (ff.kind, ff.format, ff.syntax, ff.compression) == ("meta", "amazon2014_meta", "literal", "gzip")
    result, db = materialize(make_resources, raw)
    assert meta_of(result, "reviews")["records_kept"] == 30
    assert query(
        db, "SELECT item_id, brand, categories, price, image_ref FROM items WHERE item_id = 'I1'"
    ) == [("I1", "B's", ["Beauty", "Hair", "Skin"], 3.5, "http://x/1.jpg")]


def test_2018_meta_duplicates_and_image_keys(make_resources, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write(
        raw / "Cat_5.json.gz",
        [
            json.dumps(
                {
                    "overall": 4.0,
                    "verified": True,
                    "reviewerID": f"U{u}",
                    "asin": f"I{i}",
                    "unixReviewTime": 1_400_000_000 + u * 10 + i,
                }
            )
            for u in range(5)
            for i in range(5)
        ],
        gz=True,
    )
    write(
        raw / "meta_Cat.json.gz",
        [
            json.dumps(
                {
                    "asin": "I0",
                    "title": "first",
                    "category": ["Mags", "Arts &amp; Music"],
                    "price": "$1,299.50",
                    "imageURLHighRes": ["http://hi/0.jpg"],
                    "imageURL": ["http://lo/0.jpg"],
                }
            ),
            json.dumps({"asin": "I0", "title": "second wins not", "category": [], "price": ""}),
            json.dumps(
                {
                    "asin": "I1",
                    "title": "t1",
                    "category": [],
                    "price": "",
                    "image": ["http://img/1.jpg"],
                    "main_cat": "Books",
                }
            ),
        ],
        gz=True,
    )
    result, db = materialize(make_resources, raw)
    assert meta_of(result, "reviews")["formats"] == {"Cat_5.json.gz": "amazon2018_reviews"}
    im = meta_of(result, "items")
    assert im["formats"] == {"meta_Cat.json.gz": "amazon2018_meta"} and im["duplicates"] == 1
    assert im["reviewed_items_without_metadata"] == 3
    assert query(db, "SELECT item_id, title, categories, price, image_ref FROM items ORDER BY 1") == [
        ("I0", "first", ["Mags", "Arts & Music"], 1299.5, "http://hi/0.jpg"),
        ("I1", "t1", [], None, "http://img/1.jpg"),
    ]


def test_2023_jsonl_format(make_resources, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write(
        raw / "Beauty.jsonl",
        [
            json.dumps(
                {
                    "rating": 5.0,
                    "title": "t",
                    "asin": f"V{i}",
                    "parent_asin": f"P{i}",
                    "user_id": f"U{u}",
                    "timestamp": 1_588_687_728_923 + 1000 * (u + i),
                    "verified_purchase": True,
                }
            )
            for u in range(5)
            for i in range(5)
        ],
    )
    write(
        raw / "meta_Beauty.jsonl.gz",
        [
            json.dumps(
                {
                    "main_category": "All Beauty",
                    "title": "Soap",
                    "price": 9.5,
                    "store": "Acme",
                    "images": [{"thumb": "http://t.jpg", "large": "http://l.jpg", "hi_res": None}],
                    "categories": ["Beauty", "Bath"],
                    "parent_asin": "P0",
                }
            )
        ],
        gz=True,
    )
    result, db = materialize(make_resources, raw)
    assert meta_of(result, "reviews")["formats"] == {"Beauty.jsonl": "amazon2023_reviews"}
    assert query(db, "SELECT min(ts), count(DISTINCT item_id), min(item_id) FROM reviews") == [
        (1_588_687_728, 5, "P0")
    ]
    assert query(db, "SELECT item_id, title, brand, categories, price, image_ref FROM items") == [
        ("P0", "Soap", "Acme", ["Beauty", "Bath"], 9.5, "http://l.jpg")
    ]


def test_sasrec_and_s3rec_formats_keep_order_and_every_user(make_resources, tmp_path):
    raw = tmp_path / "sasrec"
    raw.mkdir()
    # user 3 has only two interactions: a benchmark file is kept whole by default
    write(raw / "Games.txt", ["1 5", "1 3", "1 9", "2 3", "2 5", "2 7", "2 1", "3 9", "3 5"])
    result, db = materialize(make_resources, raw)
    rm, xm = meta_of(result, "reviews"), meta_of(result, "interactions")
    assert rm["timestamps_available"] is False and "unavailable" in rm["time_context"]
    assert xm["users"] == 3 and xm["records_kept"] == 9 and xm["filter_applied"].startswith("none")
    assert xm["one_pass"]["interactions"] == 0  # what the filter would have done
    assert query(db, "SELECT item_id FROM interactions WHERE user_id = '1' ORDER BY position") == [
        ("5",),
        ("3",),
        ("9",),
    ]
    assert query(db, "SELECT count(*) FROM interactions WHERE ts IS NULL") == [(9,)]

    raw2 = tmp_path / "s3rec"
    raw2.mkdir()
    write(raw2 / "Beauty.txt", ["1 4 2 3", "2 2 4", "3 3 1 2 4"])
    (raw2 / "Beauty_item2attributes.json").write_text(
        json.dumps({"1": [1, 2], "2": [2], "3": [3], "4": [1, 3]})
    )
    ff = rawdata.sniff(raw2 / "Beauty.txt")
    assert (ff.kind, ff.format) == ("reviews", "s3rec_sequences")
    result, db = materialize(make_resources, raw2)
    assert meta_of(result, "items")["attribute_rows"] == 6
    assert meta_of(result, "interactions")["items_without_metadata"] == 0
    assert query(db, "SELECT list(item_id ORDER BY position) FROM interactions WHERE user_id = '3'") == [
        (["3", "1", "2", "4"],)
    ]
    assert query(db, "SELECT count(*) FROM raw_item_attributes WHERE item_id = '4'") == [(2,)]


def test_kcore_one_pass_vs_iterative_dedup_and_stable_ties(make_resources, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    t = 1_300_000_000
    write(
        raw / "r.json",
        [
            review14("A", "x", t),
            review14("A", "y", t),  # same time: file order decides
            review14("B", "x", t + 5),
            review14("B", "y", t + 1),
            review14("C", "x", t + 1),
            review14("C", "z", t + 2),  # z has one interaction
            review14("A", "x", t + 9),  # a duplicate (user, item): the earliest stays
        ],
    )
    config = {"ops": {"interactions": {"config": {"min_interactions": 2, "kcore": "one_pass"}}}}
    result, db = materialize(make_resources, raw, run_config=config)
    xm = meta_of(result, "interactions")
    assert xm["duplicates"] == 1
    assert xm["one_pass"] == {"users": 3, "items": 2, "interactions": 5, "rounds": 1}
    assert xm["iterative"]["interactions"] == 4 and xm["iterative"]["users"] == 2
    assert xm["iterative"]["rounds"] >= 2
    assert query(db, "SELECT user_id, item_id, position FROM interactions ORDER BY 1, 3") == [
        ("A", "x", 0),
        ("A", "y", 1),
        ("B", "y", 0),
        ("B", "x", 1),
        ("C", "x", 0),
    ]
    assert query(db, "SELECT ts FROM interactions WHERE user_id = 'A' AND item_id = 'x'") == [(t,)]

    config["ops"]["interactions"]["config"]["kcore"] = "iterative"
    result, db = materialize(make_resources, raw, run_config=config)
    assert query(db, "SELECT DISTINCT user_id FROM interactions ORDER BY 1") == [("A",), ("B",)]


@pytest.mark.shared_data
def test_amazon2018_magazine(make_resources):
    result, db = materialize(make_resources, shared_data("amazon2018", "magazine"))
    im = meta_of(result, "items")
    assert query(db, "SELECT count(*) FROM reviews") == [(2375,)]
    assert query(db, "SELECT count(DISTINCT item_id), count(*) FROM items") == [(2320, 2320)]
    assert (
        im["reviewed_items_without_metadata"] == 6
        and len(im["reviewed_items_without_metadata_examples"]) == 6
    )
    assert im["duplicates"] == 3385 - 2320
    xm = meta_of(result, "interactions")
    assert xm["iterative"]["interactions"] <= xm["one_pass"]["interactions"] < 2375


@pytest.mark.shared_data
def test_amazon2014_head_and_all_beauty_reviews_only(make_resources):
    result, db = materialize(make_resources, shared_data("amazon2014"), assets=[reviews, items])
    assert meta_of(result, "reviews")["formats"] == {
        "Musical_Instruments_5.head50.json": "amazon2014_reviews"
    }
    assert query(db, "SELECT count(*), count(ts) FROM reviews") == [(50, 50)]
    result, db = materialize(make_resources, shared_data("amazon2018", "all_beauty"))
    assert query(db, "SELECT count(*) FROM reviews") == [(5269,)]
    assert meta_of(result, "items")["items"] == 0
    assert meta_of(result, "items")["reviewed_items_without_metadata"] == 85


@pytest.mark.shared_data
def test_sasrec_video_keeps_every_user(make_resources):
    raw = shared_data("benchmarks", "sasrec_video")
    result, db = materialize(make_resources, raw, assets=[reviews, interactions])
    assert query(
        db, "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(*) FROM interactions"
    ) == [(31013, 23715, 287107)]
    assert query(
        db, "SELECT count(*) FROM (SELECT user_id FROM interactions GROUP BY 1 HAVING count(*) < 3)"
    ) == [(112,)]


def test_ingest_writes_the_dataset_identity_that_later_stages_read(make_resources, tmp_path):
    from assets.training import TrainingConfig
    from convrec_dagster.data.training_setup import resolve_settings

    raw = tmp_path / "Beauty_s3rec"
    raw.mkdir()
    write(raw / "seqs.txt", ["1 4 2 3", "2 2 4", "3 3 1 2 4"])
    (raw / "attrs_item2attributes.json").write_text(json.dumps({"1": [1, 2], "2": [2], "3": [3]}))
    result, db = materialize(make_resources, raw)
    fingerprint = meta_of(result, "reviews")["dataset_fingerprint"]
    assert query(db, "SELECT * FROM dataset_info") == [
        ("Beauty_s3rec", "s3rec_sequences", False, True, False, fingerprint, False)
    ]
    # later stages read the row, not the folder: a store read through another configured folder
    renamed = raw.rename(tmp_path / "copy")
    paths = make_resources(renamed)["paths"]
    with duckdb.connect(db, read_only=True) as conn:
        info = paths.dataset(conn)
    assert (info.name, info.has_attributes, info.embedded_sample) == ("Beauty_s3rec", True, False)
    budget, preset, _ = resolve_settings(
        TrainingConfig(budget="paper").model_dump(), info, "convrec", cuda=False
    )
    assert (budget, preset) == ("paper", "beauty")
    assert paths.dataset().name == "copy"  # before ingest: the configured folder's name
