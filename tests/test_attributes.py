"""Attribute encodings: vocabulary/sparse consistency, rare -> other, missing meta, S3-Rec ids."""

from __future__ import annotations

import gzip
import json

import dagster as dg
import duckdb
import pandas as pd
import pytest

from assets.features import item_attributes, item_attributes_consistent
from convrec_dagster.data import settings
from convrec_dagster.data.attributes import AttributeConfig, build_item_attributes
from tests.conftest import shared_data

ITEMS = pd.DataFrame(
    {
        "item_id": ["A", "B", "C", "D", "E"],
        "title": ["a", "b", "c", "d", "e"],
        "brand": ["Acme", "Acme", "Solo", None, "  "],
        "categories": [
            ["Beauty", "Skin", "Face"],
            ["Beauty", "Skin &amp; Body"],  # HTML entity as found in Amazon category paths
            ["Beauty", "Skin"],
            ["Beauty", "Skin & Body", "Face"],
            [],
        ],
        "price": [5.0, 10.0, 20.0, None, 40.0],
        "image_ref": [None] * 5,
        "source_file": ["meta.json"] * 5,
        "line_no": [1, 2, 3, 4, 5],
    }
)
INTERACTION_ITEMS = ["A", "B", "C", "D", "E", "NOMETA"]


def write_inputs(home, items: pd.DataFrame, item_ids, raw: pd.DataFrame | None = None) -> None:
    """The ingest tables of the contract, written by hand."""
    inter = pd.DataFrame(
        {
            "user_id": [f"u{i % 2}" for i in range(len(item_ids))],
            "item_id": list(item_ids),
            "ts": range(len(item_ids)),
            "rating": 5.0,
            "position": [i // 2 for i in range(len(item_ids))],
        }
    )
    home.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.duckdb_path(home))) as conn:
        conn.execute(
            "CREATE OR REPLACE TABLE items (item_id VARCHAR, title VARCHAR, brand VARCHAR, "
            "categories VARCHAR[], price DOUBLE, image_ref VARCHAR, source_file VARCHAR, line_no BIGINT)"
        )
        conn.register("items_df", items)
        conn.execute("INSERT INTO items SELECT * FROM items_df")
        conn.register("inter_df", inter)
        conn.execute(
            "CREATE OR REPLACE TABLE interactions AS SELECT user_id::VARCHAR AS user_id, "
            "item_id::VARCHAR AS item_id, ts::BIGINT AS ts, rating::DOUBLE AS rating, "
            "position::INTEGER AS position FROM inter_df"
        )
        if raw is not None:
            conn.register("raw_df", raw)
            conn.execute(
                "CREATE OR REPLACE TABLE raw_item_attributes AS SELECT item_id::VARCHAR AS item_id, "
                "attribute::VARCHAR AS attribute, source_file::VARCHAR AS source_file FROM raw_df"
            )


def attrs_of(encoding, item_id: str) -> set[tuple[str, str]]:
    vocab = encoding.vocab.set_index("attribute_id")
    ids = encoding.pairs.loc[encoding.pairs["item_id"] == item_id, "attribute_id"]
    return {(vocab.at[i, "kind"], vocab.at[i, "name"]) for i in ids}


def test_vocab_and_pairs_consistent_with_items():
    enc = build_item_attributes(ITEMS, item_ids=INTERACTION_ITEMS, config=AttributeConfig(min_count=1))
    vocab, pairs = enc.vocab, enc.pairs
    assert list(vocab["attribute_id"]) == list(range(1, len(vocab) + 1))
    assert set(pairs["attribute_id"]) <= set(vocab["attribute_id"])
    assert set(pairs["item_id"]) == set(INTERACTION_ITEMS)
    counted = pairs.groupby("attribute_id").size()
    assert (vocab.set_index("attribute_id")["item_count"] == counted.reindex(vocab["attribute_id"])).all()
    # every level of the category path is a token; &amp; is unescaped so B and D share "Skin & Body"
    assert attrs_of(enc, "A") == {
        ("brand", "Acme"),
        ("category", "Beauty"),
        ("category", "Skin"),
        ("category", "Face"),
    }
    assert attrs_of(enc, "B") == {("brand", "Acme"), ("category", "Beauty"), ("category", "Skin & Body")}
    assert vocab.query("kind == 'category' and name == 'Skin & Body'")["item_count"].item() == 2
    # blank brand is no brand; one brand per item at most
    assert not any(k == "brand" for k, _ in attrs_of(enc, "E"))
    assert vocab.query("kind == 'brand'")["name"].tolist() == ["Acme", "Solo"]
    assert enc.matrix.shape == (len(INTERACTION_ITEMS), len(vocab))
    assert enc.matrix.nnz == len(pairs)


def test_rare_values_fold_into_other_bucket_per_kind():
    enc = build_item_attributes(ITEMS, item_ids=INTERACTION_ITEMS, config=AttributeConfig(min_count=2))
    vocab = enc.vocab
    assert vocab.query("kind == 'brand'")["name"].tolist() == ["Acme"]
    assert ("other", "brand") in attrs_of(enc, "C")  # "Solo" is on one item only
    # every category token is on >= 2 items ("Skin" on A and C) -> kept, no category bucket
    assert ("category", "Skin") in attrs_of(enc, "C")
    assert not ((vocab["kind"] == "other") & (vocab["name"] == "category")).any()
    enc3 = build_item_attributes(ITEMS, item_ids=INTERACTION_ITEMS, config=AttributeConfig(min_count=3))
    names3 = set(zip(enc3.vocab["kind"], enc3.vocab["name"]))
    assert ("category", "Beauty") in names3 and ("category", "Skin") not in names3
    assert attrs_of(enc3, "A") == {("other", "brand"), ("category", "Beauty"), ("other", "category")}
    other_cat = enc3.vocab.query("kind == 'other' and name == 'category'")["item_count"].item()
    assert other_cat == 4  # A, B, C, D each have a token seen on < 3 items
    # the other buckets come after the regular kinds
    kinds = enc3.vocab["kind"].tolist()
    assert kinds.index("other") > max(i for i, k in enumerate(kinds) if k == "category")


def test_missing_metadata_and_no_attributes_get_explicit_attribute():
    enc = build_item_attributes(ITEMS, item_ids=INTERACTION_ITEMS, config=AttributeConfig(min_count=1))
    assert attrs_of(enc, "NOMETA") == {("missing", "no_metadata")}
    assert attrs_of(enc, "E") == {("missing", "no_attributes")}  # meta row with blank brand, no categories
    assert enc.stats["items_missing_meta"] == 1
    assert enc.stats["items_no_attributes"] == 1
    # items outside interactions are not encoded
    enc2 = build_item_attributes(ITEMS, item_ids=["A"], config=AttributeConfig(min_count=1))
    assert set(enc2.pairs["item_id"]) == {"A"} and enc2.vocab["item_count"].min() >= 1


def test_price_buckets_optional():
    off = build_item_attributes(ITEMS, item_ids=INTERACTION_ITEMS, config=AttributeConfig(min_count=1))
    assert "price" not in set(off.vocab["kind"])
    on = build_item_attributes(
        ITEMS, item_ids=INTERACTION_ITEMS, config=AttributeConfig(min_count=1, price_buckets=2)
    )
    price = on.vocab.query("kind == 'price'")
    assert len(price) == 2 and price["item_count"].sum() == 4  # D has no price, NOMETA no meta
    assert not any(k == "price" for k, _ in attrs_of(on, "D"))


def test_s3rec_attributes_map_to_kind_attribute():
    raw = pd.DataFrame(
        {
            "item_id": ["A", "A", "S1", "S1", "S2"],
            "attribute": ["7", "12", "7", "12", "7"],
            "source_file": "x.json",
        }
    )
    no_meta = ITEMS.iloc[0:0]
    enc = build_item_attributes(
        no_meta, item_ids=["A", "S1", "S2", "S3"], raw_attributes=raw, config=AttributeConfig(min_count=1)
    )
    assert attrs_of(enc, "S1") == {("attribute", "7"), ("attribute", "12")}
    assert attrs_of(enc, "S3") == {("missing", "no_metadata")}
    assert enc.vocab.query("kind == 'attribute' and name == '7'")["item_count"].item() == 3
    assert enc.stats["items_missing_meta"] == 1


def test_asset_writes_tables_and_check_guards_them(convrec_home, make_resources, tmp_path):
    raw = pd.DataFrame({"item_id": ["NOMETA"], "attribute": ["42"], "source_file": "s3rec.json"})
    write_inputs(convrec_home, ITEMS, INTERACTION_ITEMS + ["A"], raw=raw)
    result = dg.materialize(
        [item_attributes],  # runs its check in its own step
        resources=make_resources(tmp_path / "dump"),
        run_config={"ops": {"item_attributes": {"config": {"min_count": 1}}}},
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and checks[0].passed
    meta = result.asset_materializations_for_node("item_attributes")[0].metadata
    assert meta["items"].value == 6
    assert meta["items_missing_meta"].value == 0  # NOMETA has an S3-Rec attribute
    assert meta["items_no_attributes"].value == 1  # E
    assert meta["vocab_size_by_kind"].value["attribute"] == 1
    assert meta["attributes_per_item_max"].value == 4
    db = str(settings.duckdb_path(convrec_home))
    with duckdb.connect(db) as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'attribute_vocab'"
            ).fetchall()
        )
        assert types == {
            "attribute_id": "INTEGER",
            "kind": "VARCHAR",
            "name": "VARCHAR",
            "item_count": "INTEGER",
        }
        got = conn.execute(
            "SELECT v.kind, v.name FROM item_attributes a JOIN attribute_vocab v "
            "USING (attribute_id) WHERE item_id = 'NOMETA'"
        ).fetchall()
        assert got == [("attribute", "42")]
        # break the table: an item of interactions loses its attributes -> the check fails
        conn.execute("DELETE FROM item_attributes WHERE item_id = 'C'")
        evaluation = item_attributes_consistent(conn)
    assert not evaluation.passed
    assert evaluation.metadata["items_without_attributes"] == 1
    assert evaluation.metadata["vocab_count_mismatches"] > 0


def test_asset_fails_clearly_without_inputs(make_resources, tmp_path):
    with pytest.raises(dg.Failure, match="interactions"):
        dg.materialize([item_attributes], resources=make_resources(tmp_path / "dump"))


def test_magazine_brand_and_category_vocabularies():
    """Real Amazon 2018 Magazine metadata, read here into an `items`-shaped frame (ingest is
    another stage): 502 meta lines have an empty category list (442 distinct items, the rest are
    duplicate lines of the same items)."""
    meta = shared_data("amazon2018", "magazine", "meta_Magazine_Subscriptions.json.gz")
    with gzip.open(meta, "rt") as fh:
        records = [json.loads(line) for line in fh]
    items = pd.DataFrame(
        {
            "item_id": [r["asin"] for r in records],
            "brand": [r.get("brand") for r in records],
            "categories": [r.get("category") or [] for r in records],
            "price": None,
            "line_no": range(1, len(records) + 1),
        }
    )
    enc = build_item_attributes(items, config=AttributeConfig(min_count=2))
    stats = enc.stats
    assert stats["meta_rows"] == 3385
    assert stats["meta_rows_without_category"] == 502
    assert stats["items"] == 2320 and stats["duplicate_meta_rows"] == 3385 - 2320
    assert stats["items_without_category"] == 442
    by_kind = stats["vocab_size_by_kind"]
    assert by_kind["brand"] > 100 and by_kind["category"] > 100
    vocab = enc.vocab.set_index(["kind", "name"])
    assert vocab.loc[("category", "Magazine Subscriptions"), "item_count"] > 1000
    assert not enc.vocab["name"].str.contains("&amp;").any()
    # every item has at least one attribute (no-category, no-brand items get missing/no_attributes)
    assert enc.pairs["item_id"].nunique() == 2320
    no_attr = vocab.loc[("missing", "no_attributes"), "item_count"]
    assert no_attr == stats["items_no_attributes"] > 0
