"""DuckDB tables -> RecData: round trip on hand-made tables, and the splits on the real Video.txt."""

from __future__ import annotations

import time

import duckdb
import numpy as np
import pytest

from convrec_dagster.data import settings, splits
from convrec_dagster.data.dataset import load_rec_data
from tests.conftest import shared_data

# (user_id, item_id, ts, position): u1 and u3 are evaluated, u2 only trains.
ROWS = [
    ("u1", "i1", 1_400_000_000, 0), ("u1", "i2", 1_400_100_000, 1), ("u1", "i3", 1_400_200_000, 2),
    ("u1", "i4", 1_400_300_000, 3),
    ("u2", "i1", 1_300_000_000, 0), ("u2", "i5", 1_300_100_000, 1),
    ("u3", "i2", 1_350_000_000, 0), ("u3", "i1", 1_350_100_000, 1), ("u3", "i6", 1_350_200_000, 2),
]  # fmt: skip
# training counts: i1 2 (+1 valid), i2 2, i5 1, i3 0 (valid), i4 0 (test), i6 0 (test); ties by id
ITEM_ORDER = ["i1", "i2", "i5", "i3", "i4", "i6"]


@pytest.fixture
def conn(convrec_home):
    c = duckdb.connect(str(settings.duckdb_path(convrec_home)))
    yield c
    c.close()


def build(conn, rows=ROWS, with_ts: bool = True, n_negatives: int = 2, seed: int = 0) -> None:
    conn.execute(
        "CREATE OR REPLACE TABLE interactions (user_id VARCHAR, item_id VARCHAR, ts BIGINT, rating DOUBLE, position INTEGER)"
    )
    conn.executemany(
        "INSERT INTO interactions VALUES (?, ?, ?, 4.0, ?)",
        [(u, i, t if with_ts else None, p) for u, i, t, p in rows],
    )
    splits.build_sequences(conn)
    splits.build_eval_negatives(conn, n_negatives=n_negatives, seed=seed)
    splits.build_proxy_ids(conn, 2)


def write_features(conn, missing_only: bool = False) -> np.ndarray:
    conn.execute(
        "CREATE TABLE attribute_vocab (attribute_id INTEGER, kind VARCHAR, name VARCHAR, item_count INTEGER)"
    )
    conn.execute(
        "INSERT INTO attribute_vocab VALUES (1, 'brand', 'acme', 2), (2, 'category', 'Beauty', 3), "
        "(3, 'category', 'Skin', 1), (4, 'missing', 'no_metadata', 3)"
    )
    conn.execute("CREATE TABLE item_attributes (item_id VARCHAR, attribute_id INTEGER)")
    pairs = [("i1", 4), ("i2", 4), ("i3", 4)] if missing_only else [
        ("i1", 2), ("i1", 1), ("i2", 2), ("i3", 3), ("i3", 2), ("i3", 1), ("i4", 4), ("i5", 4), ("i6", 4)
    ]  # fmt: skip
    conn.executemany("INSERT INTO item_attributes VALUES (?, ?)", pairs)
    conn.execute(
        "CREATE TABLE item_image_features (item_id VARCHAR, has_image BOOLEAN, image_path VARCHAR, "
        "content_hash VARCHAR, feature FLOAT[2048])"
    )
    feats = np.random.default_rng(0).standard_normal((2, 2048)).astype(np.float32)
    conn.execute("INSERT INTO item_image_features VALUES ('i2', true, 'a.jpg', 'h1', ?)", [feats[0].tolist()])
    conn.execute("INSERT INTO item_image_features VALUES ('i6', true, 'b.jpg', 'h2', ?)", [feats[1].tolist()])
    conn.execute("INSERT INTO item_image_features VALUES ('i1', false, NULL, NULL, NULL)")
    return feats


def test_round_trip_with_attributes_and_images(conn):
    build(conn)
    feats = write_features(conn)
    data = load_rec_data(conn)  # auto: both feature kinds are present

    assert (data.n_users, data.n_items) == (3, 6)
    assert list(data.item_names) == ["", *ITEM_ORDER] and list(data.user_names) == ["", "u1", "u2", "u3"]
    idx = {name: k for k, name in enumerate(data.item_names)}
    np.testing.assert_array_equal(data.user_ptr, [0, 0, 4, 6, 9])
    np.testing.assert_array_equal(data.items, [idx[i] for _, i, _, _ in ROWS])
    np.testing.assert_array_equal(data.is_eval_user, [False, True, False, True])
    assert data.n_train(1) == 2 and data.n_train(2) == 2
    assert data.items[data.target_position(1, "test")] == idx["i4"]
    assert data.items[data.target_position(3, "valid")] == idx["i1"]
    np.testing.assert_array_equal(data.train_item_counts(), [0, 2, 2, 1, 0, 0, 0])

    # negatives: the stored table, zeros for the train-only user, never in the history
    assert data.eval_negatives.shape == (4, 2)
    assert (data.eval_negatives[2] == 0).all()
    stored = conn.execute("SELECT user_idx, neg_no, item_idx FROM eval_negatives").fetchall()
    assert all(data.eval_negatives[u, k] == i for u, k, i in stored)
    for u in (1, 3):
        assert not set(data.eval_negatives[u]) & set(data.items[data.user_slice(u)])

    # proxy ids: K = 2 most frequent training items, others share 3
    np.testing.assert_array_equal(data.proxy_ids, [0, 1, 2, 3, 3, 3, 3])
    assert data.n_proxy == 4

    # time context = the sequences columns, in CSR order
    assert data.has_context and data.context.shape == (9, 6) and data.ymd.shape == (9, 3)
    ctx = np.array(
        conn.execute(
            "SELECT t_year, t_month, t_day, t_dow, t_doy, t_week FROM sequences ORDER BY user_idx, position"
        ).fetchall(),
        dtype=np.float32,
    )
    np.testing.assert_array_equal(data.context, ctx)
    np.testing.assert_array_equal(data.ymd[0], [2014, 5, 13])  # 1_400_000_000 = 2014-05-13 UTC

    # attributes by item_idx (CSR, sorted ids)
    assert data.has_attributes and data.n_attrs == 4
    attrs = {
        data.item_names[k]: data.attr_ids[data.attr_ptr[k] : data.attr_ptr[k + 1]].tolist() for k in range(7)
    }
    assert attrs == {"": [], "i1": [1, 2], "i2": [2], "i5": [4], "i3": [1, 2, 3], "i4": [4], "i6": [4]}
    assert len(data.attr_ptr) == data.n_items + 2

    # image features by item_idx; zeros for padding and items without an image
    assert data.has_images and data.image_features.shape == (7, 2048)
    np.testing.assert_array_equal(data.image_features[idx["i2"]], feats[0])
    np.testing.assert_array_equal(data.image_features[idx["i6"]], feats[1])
    assert not data.image_features[[0, idx["i1"], idx["i3"]]].any()

    assert data.info["has_timestamps"] is True
    assert data.info["features"] == "attributes+image" and data.info["n_items_with_image"] == 2
    assert len(data.info["fingerprint"]) == 64


def test_feature_selection_and_fingerprint(conn):
    build(conn)
    write_features(conn)
    none = load_rec_data(conn, "none")
    assert not none.has_attributes and not none.has_images and none.info["features"] == "none"
    only_attrs = load_rec_data(conn, "attributes")
    assert only_attrs.has_attributes and not only_attrs.has_images
    only_img = load_rec_data(conn, "image")
    assert only_img.has_images and not only_img.has_attributes

    # same tables, same fingerprint; other negatives, other fingerprint
    assert load_rec_data(conn, "none").info["fingerprint"] == none.info["fingerprint"]
    assert only_attrs.info["fingerprint"] != none.info["fingerprint"]
    splits.build_eval_negatives(conn, n_negatives=2, seed=123)
    other = load_rec_data(conn, "none")
    assert not np.array_equal(other.eval_negatives, none.eval_negatives)
    assert other.info["fingerprint"] != none.info["fingerprint"]
    with pytest.raises(ValueError, match="features must be one of"):
        load_rec_data(conn, "text")


def test_auto_skips_trivial_or_absent_features(conn):
    build(conn, with_ts=False)
    data = load_rec_data(conn)
    assert not data.has_context and data.context is None and data.ymd is None
    assert data.info["has_timestamps"] is False and data.info["features"] == "none"
    with pytest.raises(ValueError, match="`item_attributes` is missing"):
        load_rec_data(conn, "attributes")
    write_features(conn, missing_only=True)
    conn.execute("UPDATE item_image_features SET has_image = false, feature = NULL")
    data = load_rec_data(conn)  # only 'missing' attributes and no images: nothing to use
    assert not data.has_attributes and not data.has_images


def test_missing_tables_are_a_clear_error(conn):
    build(conn)
    conn.execute("DROP TABLE proxy_ids")
    with pytest.raises(ValueError, match="materialize the `proxy_ids` asset"):
        load_rec_data(conn)


@pytest.mark.shared_data
def test_video_benchmark_splits(conn):
    path = shared_data("benchmarks", "sasrec_video", "Video.txt")
    start = time.perf_counter()
    conn.execute(
        f"""
        CREATE TABLE interactions AS
        SELECT user_id::VARCHAR AS user_id, item_id::VARCHAR AS item_id, NULL::BIGINT AS ts,
               NULL::DOUBLE AS rating,
               (row_number() OVER (PARTITION BY user_id ORDER BY line) - 1)::INTEGER AS position
        FROM (SELECT *, row_number() OVER () AS line
              FROM read_csv('{path}', delim = ' ', header = false,
                            columns = {{'user_id': 'BIGINT', 'item_id': 'BIGINT'}}))
        """
    )
    summary = splits.build_sequences(conn)
    assert summary["users"] == 31_013 and summary["items"] == 23_715 and summary["interactions"] == 287_107
    assert summary["train_only_users"] == 112 and summary["evaluated_users"] == 31_013 - 112
    assert summary["has_timestamps"] is False
    # the train-only users are exactly those with < 3 lines in the file
    short = conn.execute(
        "SELECT count(*) FROM (SELECT user_id FROM interactions GROUP BY user_id HAVING count(*) < 3)"
    ).fetchall()[0][0]
    assert short == 112
    assert splits.check_no_leakage(conn).passed and splits.check_split_sizes(conn).passed
    # numeric ids keep their order: user "1" is user_idx 1, and its test item is its last line
    first_user = conn.execute("SELECT user_id FROM user_index WHERE user_idx = 1").fetchall()[0][0]
    assert first_user == "1"

    splits.build_eval_negatives(conn, n_negatives=100, seed=42)
    splits.build_proxy_ids(conn, top_fraction=0.1)
    assert splits.check_negatives_disjoint(conn).passed and splits.check_negative_counts(conn, 100).passed
    data = load_rec_data(conn)
    assert data.n_users == 31_013 and len(data.items) == 287_107 and int(data.is_eval_user.sum()) == 30_901
    assert data.context is None and data.eval_negatives.shape == (31_014, 100)
    assert time.perf_counter() - start < 30  # generous: the shared 2-core machine is busy


def test_parquet_handoff_loads_the_same_dataset_without_the_duckdb_file(conn, tmp_path):
    """export_parquet writes every table load_rec_data reads; loading from the Parquet folder gives
    the same arrays (same fingerprint) as loading from DuckDB, with no DuckDB file involved."""
    from convrec_dagster.data.dataset import export_parquet, load_rec_data_from_parquet

    build(conn)
    write_features(conn)
    from_duckdb = load_rec_data(conn, features="both")
    written = export_parquet(conn, tmp_path / "export")
    assert {"sequences", "eval_negatives", "proxy_ids", "item_attributes", "item_image_features"} <= set(
        written
    )
    assert written["sequences"] == conn.execute("SELECT count(*) FROM sequences").fetchone()[0]
    conn.close()
    from_parquet = load_rec_data_from_parquet(tmp_path / "export", features="both")
    assert from_parquet.info["fingerprint"] == from_duckdb.info["fingerprint"]
    np.testing.assert_array_equal(from_parquet.eval_negatives, from_duckdb.eval_negatives)
    with pytest.raises(ValueError, match="training_data_parquet"):
        load_rec_data_from_parquet(tmp_path / "nothing_here")
