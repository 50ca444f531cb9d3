"""ResNet-50 image features: missing/corrupt/remote images, weights loading, the content-hash cache.

Runs on CPU with 32x32 images and a 32px network input, so a ResNet-50 pass takes milliseconds.
"""

from __future__ import annotations

import json

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from assets.features import item_image_features, item_image_features_cover_items
from convrec_dagster.data import settings
from convrec_dagster.data.images import (
    FEATURE_DIM,
    build_feature_model,
    compute_image_features,
    locate_images,
)

GOOD = ["G1", "G2", "G3"]


# two OpenMP threads made a 3-image 32px ResNet-50 pass take seconds instead of 0.1 s here
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ITEM_IDS = GOOD + ["PNG1", "BAD", "NOIMG", "REMOTE", "LOCALREF"]


def _image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8))


@pytest.fixture
def dump(tmp_path):
    """A dump folder: 3 JPEGs + 1 PNG in images/, 1 corrupt JPEG, 1 image outside images/ that
    items.image_ref points at, 1 item without image, 1 with a URL only."""
    raw = tmp_path / "dump"
    images = raw / "images"
    images.mkdir(parents=True)
    for k, item in enumerate(GOOD):
        _image(k).save(images / f"{item}.jpg", quality=90)
    _image(10).save(images / "PNG1.png")
    (images / "BAD.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"this is not a jpeg" * 20)
    (raw / "other").mkdir()
    _image(11).save(raw / "other" / "local.jpg")
    return raw


def write_inputs(home, item_ids=ITEM_IDS) -> str:
    refs = {"REMOTE": "https://images.example.com/x.jpg", "LOCALREF": "other/local.jpg"}
    # read by name from the SQL below (DuckDB's replacement scan)
    items = pd.DataFrame({"item_id": item_ids, "image_ref": [refs.get(i) for i in item_ids]})  # noqa: F841
    inter = pd.DataFrame({"user_id": "u1", "item_id": item_ids, "position": range(len(item_ids))})  # noqa: F841
    home.mkdir(parents=True, exist_ok=True)
    db = str(settings.duckdb_path(home))
    with duckdb.connect(db) as conn:
        conn.execute(
            "CREATE OR REPLACE TABLE items AS SELECT item_id::VARCHAR AS item_id, NULL::VARCHAR AS title, "
            "NULL::VARCHAR AS brand, []::VARCHAR[] AS categories, NULL::DOUBLE AS price, "
            "image_ref::VARCHAR AS image_ref, 'meta.json' AS source_file, 1::BIGINT AS line_no FROM items"
        )
        conn.execute(
            "CREATE OR REPLACE TABLE interactions AS SELECT user_id::VARCHAR AS user_id, "
            "item_id::VARCHAR AS item_id, 0::BIGINT AS ts, 5.0::DOUBLE AS rating, "
            "position::INTEGER AS position FROM inter"
        )
        conn.execute(
            "CREATE TABLE quarantine (stage VARCHAR, source_file VARCHAR, line_no BIGINT, "
            "reason VARCHAR, raw VARCHAR, quarantined_at TIMESTAMP)"
        )
        conn.execute(
            "INSERT INTO quarantine VALUES ('ingest', 'reviews.json', 3, 'bad json', '{', now()), "
            "('item_image_features', 'old.jpg', NULL, 'stale', '{}', now())"
        )
    return db


def run_asset(make_resources, raw, **config):
    config = {"image_size": 32, "batch_size": 3, "num_workers": 1, **config}
    result = dg.materialize(
        [item_image_features],  # runs its check in its own step
        resources=make_resources(raw),
        run_config={"ops": {"item_image_features": {"config": config}}},
    )
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    return result.asset_materializations_for_node("item_image_features")[0].metadata


def read_features(db) -> pd.DataFrame:
    with duckdb.connect(db, read_only=True) as conn:
        df = conn.execute("SELECT * FROM item_image_features ORDER BY item_id").df()
    df["feature"] = [np.asarray(v, dtype=np.float32) for v in df["feature"]]
    return df.set_index("item_id")


def test_locate_images(dump):
    refs = {"REMOTE": "http://x/y.jpg", "LOCALREF": "other/local.jpg", "GONE": "other/gone.jpg"}
    locs = {loc.item_id: loc for loc in locate_images(ITEM_IDS + ["GONE", "../dump/images/G1"], dump, refs)}
    assert locs["G1"].status == "found" and locs["G1"].path.endswith("images/G1.jpg")
    assert locs["PNG1"].path.endswith("PNG1.png")
    assert locs["LOCALREF"].status == "found" and locs["LOCALREF"].path == str(dump / "other" / "local.jpg")
    assert locs["REMOTE"].status == "remote" and locs["REMOTE"].path == "http://x/y.jpg"
    assert locs["NOIMG"].status == "missing" and locs["GONE"].status == "missing"
    assert locs["../dump/images/G1"].status == "missing"  # ids never build paths outside images/


def test_asset_handles_missing_corrupt_remote_on_cpu_random_weights(convrec_home, make_resources, dump):
    db = write_inputs(convrec_home)
    meta = run_asset(make_resources, dump)
    assert meta["pretrained"].value is False
    assert "RANDOMLY INITIALISED" in meta["warning"].value
    assert meta["images_found"].value == 5  # G1-3, PNG1, LOCALREF
    assert meta["images_missing"].value == 2  # NOIMG, and REMOTE whose URL is not fetched
    assert meta["images_corrupt_quarantined"].value == 1
    assert meta["images_remote_not_fetched"].value == 1
    assert meta["computed"].value == 5 and meta["cache_hits"].value == 0
    assert meta["device"].value.startswith("cpu")

    df = read_features(db)
    assert sorted(df.index) == sorted(ITEM_IDS)
    found = GOOD + ["PNG1", "LOCALREF"]
    assert df.loc[found, "has_image"].all()
    assert not df.loc[["BAD", "NOIMG", "REMOTE"], "has_image"].any()
    for item in ["BAD", "NOIMG", "REMOTE"]:
        assert df.at[item, "feature"].shape == (FEATURE_DIM,) and not df.at[item, "feature"].any()
    for item in found:
        assert np.abs(df.at[item, "feature"]).sum() > 0 and len(df.at[item, "content_hash"]) == 64
    assert not np.allclose(df.at["G1", "feature"], df.at["G2", "feature"])
    assert df.at["BAD", "image_status"] == "corrupt" and df.at["BAD", "image_path"].endswith("BAD.jpg")
    assert df.at["NOIMG", "image_path"] is None or pd.isna(df.at["NOIMG", "image_path"])

    with duckdb.connect(db, read_only=True) as conn:
        rows = conn.execute(
            "SELECT stage, source_file, reason, raw FROM quarantine ORDER BY stage"
        ).fetchall()
    assert rows[0][0] == "ingest"  # other stages' rows are left alone, our stale row replaced
    assert len(rows) == 2
    stage, source_file, reason, raw = rows[1]
    assert stage == "item_image_features" and source_file.endswith("BAD.jpg")
    assert "cannot decode image" in reason
    assert json.loads(raw)["item_id"] == "BAD"


def test_weights_file_is_loaded_and_vectors_are_reproducible(convrec_home, make_resources, dump, tmp_path):
    torch.manual_seed(123)
    model = torchvision.models.resnet50(weights=None)  # with fc: a real torchvision state_dict
    weights = tmp_path / "resnet50_random.pth"
    torch.save(model.state_dict(), weights)

    db = write_inputs(convrec_home)
    meta1 = run_asset(make_resources, dump, weights_path=str(weights), use_cache=False)
    first = read_features(db)
    meta2 = run_asset(make_resources, dump, weights_path=str(weights), use_cache=False)
    second = read_features(db)
    assert meta1["pretrained"].value is True and meta1["weights_path"].value == str(weights)
    assert meta1["warning"].value == ""
    assert meta2["computed"].value == 5 and meta2["cache_hits"].value == 0  # really recomputed
    for item in ITEM_IDS:
        np.testing.assert_array_equal(first.at[item, "feature"], second.at[item, "feature"])

    # the file's weights are used: vectors differ from the seed-0 random initialisation
    locs = locate_images(["G1"], dump)
    random_init = compute_image_features(locs, image_size=32)
    assert not random_init.pretrained
    assert not np.allclose(random_init.features[0], first.at["G1", "feature"])


def test_weights_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": pd.Timestamp("2020-01-01")}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        build_feature_model(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_feature_model(tmp_path / "absent.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="not a torchvision ResNet-50 state_dict"):
        build_feature_model(wrong)


def test_cache_skips_unchanged_and_recomputes_changed_images(convrec_home, make_resources, dump):
    db = write_inputs(convrec_home)
    meta1 = run_asset(make_resources, dump)
    before = read_features(db)
    cache_files = list((convrec_home / "artifacts" / "features" / "image_cache").glob("*.parquet"))
    assert len(cache_files) == 1

    meta2 = run_asset(make_resources, dump)
    assert meta2["cache_hits"].value == 5 and meta2["computed"].value == 0
    again = read_features(db)
    for item in ITEM_IDS:
        np.testing.assert_array_equal(before.at[item, "feature"], again.at[item, "feature"])

    _image(99).save(dump / "images" / "G2.jpg", quality=90)  # G2 changes, the rest do not
    meta3 = run_asset(make_resources, dump)
    assert meta3["cache_hits"].value == 4 and meta3["computed"].value == 1
    after = read_features(db)
    assert after.at["G2", "content_hash"] != before.at["G2", "content_hash"]
    assert not np.allclose(after.at["G2", "feature"], before.at["G2", "feature"])
    np.testing.assert_array_equal(after.at["G1", "feature"], before.at["G1", "feature"])

    # a different input size is a different cache key
    meta4 = run_asset(make_resources, dump, image_size=48)
    assert meta4["cache_hits"].value == 0 and meta4["computed"].value == 5
    assert meta1["images_per_s"].value > 0


def test_dump_without_images_materializes_with_all_flags_false(convrec_home, make_resources, tmp_path):
    raw = tmp_path / "text_only_dump"
    raw.mkdir()
    db = write_inputs(convrec_home, item_ids=["X1", "X2", "REMOTE"])
    meta = run_asset(make_resources, raw)
    assert meta["images_found"].value == 0 and meta["computed"].value == 0
    assert meta["images_missing"].value == 3 and meta["images_remote_not_fetched"].value == 1
    df = read_features(db)
    assert len(df) == 3 and not df["has_image"].any()
    assert not np.stack(df["feature"].to_list()).any()

    # the check fails when a row claims an image but holds the zero vector, or an item lacks a row
    with duckdb.connect(db) as conn:
        conn.execute("UPDATE item_image_features SET has_image = true WHERE item_id = 'X1'")
        conn.execute("DELETE FROM item_image_features WHERE item_id = 'X2'")
        evaluation = item_image_features_cover_items(conn)
    assert not evaluation.passed
    assert evaluation.metadata["rows_with_inconsistent_vector"] == 1
    assert evaluation.metadata["items_without_row"] == 1


def test_image_references_outside_the_dump_are_never_read(convrec_home, make_resources, dump, tmp_path):
    """Metadata naming /etc/passwd, ../../outside.png, file:///etc/hostname, ~ or a symlink out of
    the dump: none is opened, hashed or embedded; each is quarantined as image_path_outside_dump."""
    outside = tmp_path / "outside.png"
    _image(20).save(outside)
    (dump / "images" / "LINK.png").symlink_to(outside)  # a symlink in images/ pointing out
    (dump / "other" / "link.png").symlink_to(outside)
    refs = {
        "PASSWD": "/etc/passwd",
        "DOTDOT": "../../outside.png",
        "FILEURL": "file:///etc/hostname",
        "HOME": "~/.bashrc",
        "REFLINK": "other/link.png",
        "INSIDE": "other/local.jpg",
    }
    item_ids = ["G1", "LINK", *refs]
    locs = {loc.item_id: loc for loc in locate_images(item_ids, dump, refs)}
    assert {i for i, loc in locs.items() if loc.status == "outside"} == {
        "LINK",
        "PASSWD",
        "DOTDOT",
        "FILEURL",
        "HOME",
        "REFLINK",
    }
    assert locs["INSIDE"].status == "found" and locs["G1"].status == "found"

    db = write_inputs(convrec_home, item_ids)
    with duckdb.connect(db) as conn:  # the refs come from the metadata, as a hostile dump would give them
        for item, ref in refs.items():
            conn.execute("UPDATE items SET image_ref = ? WHERE item_id = ?", [ref, item])
    meta = run_asset(make_resources, dump)
    assert meta["images_outside_dump_quarantined"].value == 6 and meta["images_found"].value == 2
    df = read_features(db)
    for item in ("LINK", "PASSWD", "DOTDOT", "FILEURL", "HOME", "REFLINK"):
        assert not df.at[item, "has_image"] and not df.at[item, "feature"].any()
        assert df.at[item, "content_hash"] is None or pd.isna(df.at[item, "content_hash"])
        assert df.at[item, "image_path"] is None or pd.isna(df.at[item, "image_path"])
    with duckdb.connect(db, read_only=True) as conn:
        reasons = conn.execute(
            "SELECT json_extract_string(raw, '$.item_id'), reason FROM quarantine "
            "WHERE stage = 'item_image_features'"
        ).fetchall()
    assert {item for item, reason in reasons if reason == "image_path_outside_dump"} == set(df.index) - {
        "G1",
        "INSIDE",
    }


def test_an_image_over_the_size_limit_is_quarantined_unread_and_unhashed(convrec_home, make_resources, dump):
    db = write_inputs(convrec_home, ["G1", "G2"])
    meta = run_asset(make_resources, dump, max_image_bytes=100)  # every test JPEG is larger
    assert meta["images_corrupt_quarantined"].value == 2
    df = read_features(db)
    assert df["content_hash"].isna().all() and not df["has_image"].any()
    with duckdb.connect(db, read_only=True) as conn:
        reasons = [
            r[0]
            for r in conn.execute(
                "SELECT reason FROM quarantine WHERE stage = 'item_image_features'"
            ).fetchall()
        ]
    assert len(reasons) == 2 and all(r.startswith("image_too_large") for r in reasons)


def test_a_weights_path_that_does_not_exist_fails_at_once_with_advice(convrec_home, make_resources, dump):
    write_inputs(convrec_home)
    result = dg.materialize(
        [item_image_features],
        resources=make_resources(dump),
        raise_on_error=False,
        run_config={"ops": {"item_image_features": {"config": {"weights_path": "/nowhere/r50.pth"}}}},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "/nowhere/r50.pth" in message and "is not a file" in message and "remove the setting" in message
    assert not any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events)  # not retried


def test_a_weights_file_that_is_not_a_resnet50_fails_once_without_retries(
    convrec_home, make_resources, dump, tmp_path
):
    """The asset retries what can pass (a device error, a slow disk), never a file that fails the same way again."""
    write_inputs(convrec_home)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, wrong)
    result = dg.materialize(
        [item_image_features],
        resources=make_resources(dump),
        raise_on_error=False,
        run_config={"ops": {"item_image_features": {"config": {"weights_path": str(wrong)}}}},
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failures[0].event_specific_data.error)
    assert (
        len(failures) == 1 and str(wrong) in message and "not a torchvision ResNet-50 state_dict" in message
    )
    assert not any(e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED") for e in result.all_events)


def test_a_missing_upstream_table_fails_once_without_retries(convrec_home, make_resources, dump):
    """A data error (here: `interactions` not materialized) fails the same way on a retry, so it is not retried."""
    result = dg.materialize([item_image_features], resources=make_resources(dump), raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failures[0].event_specific_data.error)
    assert (
        len(failures) == 1 and "interactions" in message and "Materialize the ingest assets first" in message
    )
    assert not any(e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED") for e in result.all_events)
