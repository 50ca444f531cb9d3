"""The features stage's DuckDB reads and writes (no Dagster): `attribute_vocab`, `item_attributes`,
`item_image_features`, `image_encoder`. The encodings themselves are ``attributes.py`` and
``images.py``; ``assets/features.py`` calls these around them.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from convrec_dagster.data.attributes import AttributeEncoding
from convrec_dagster.data.images import FEATURE_DIM, ImageFeatures
from convrec_dagster.data.tables import replace_quarantine, table_exists, transaction

IMAGE_STAGE = "item_image_features"
_WRITE_CHUNK = 20_000


def interaction_items(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Every item id of `interactions`, sorted."""
    rows = conn.execute("SELECT DISTINCT item_id FROM interactions ORDER BY item_id").fetchall()
    return [r[0] for r in rows]


def attribute_inputs(conn: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(`items` metadata columns, `raw_item_attributes` or None when there is no such table)."""
    items = conn.execute("SELECT item_id, brand, categories, price, line_no FROM items").df()
    raw = None
    if table_exists(conn, "raw_item_attributes"):
        raw = conn.execute("SELECT item_id, attribute FROM raw_item_attributes").df()
    return items, raw


def write_item_attributes(conn: duckdb.DuckDBPyConnection, encoding: AttributeEncoding) -> None:
    """Replace `attribute_vocab` and `item_attributes`, in one transaction."""
    vocab, pairs = encoding.vocab, encoding.pairs  # noqa: F841 (read by DuckDB below)
    with transaction(conn):
        conn.execute(
            "CREATE OR REPLACE TABLE attribute_vocab AS SELECT attribute_id::INTEGER AS attribute_id, "
            "kind::VARCHAR AS kind, name::VARCHAR AS name, item_count::INTEGER AS item_count "
            "FROM vocab ORDER BY attribute_id"
        )
        conn.execute(
            "CREATE OR REPLACE TABLE item_attributes AS SELECT item_id::VARCHAR AS item_id, "
            "attribute_id::INTEGER AS attribute_id FROM pairs ORDER BY item_id, attribute_id"
        )


def image_refs(conn: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    """item id -> `items.image_ref`, for the items that have one (empty without `items`)."""
    if not table_exists(conn, "items"):
        return {}
    return dict(conn.execute("SELECT item_id, image_ref FROM items WHERE image_ref IS NOT NULL").fetchall())


def image_quarantine(result: ImageFeatures) -> pd.DataFrame:
    """The corrupt, too large or outside-the-dump images as `quarantine` rows."""
    return pd.DataFrame(
        {
            "source_file": [path for _, path, _ in result.corrupt],
            "line_no": pd.array([None] * len(result.corrupt), dtype="Int64"),
            "reason": [reason for _, _, reason in result.corrupt],
            "raw": [
                json.dumps({"item_id": item_id, "image_path": path}) for item_id, path, _ in result.corrupt
            ],
        }
    )


def write_image_features(conn: duckdb.DuckDBPyConnection, result: ImageFeatures) -> None:
    """Replace `item_image_features`, `image_encoder` and the stage's quarantine rows, in one
    transaction (the vectors in chunks of ``_WRITE_CHUNK`` rows)."""
    with transaction(conn):
        conn.execute(
            "CREATE OR REPLACE TABLE item_image_features (item_id VARCHAR, has_image BOOLEAN, "
            f"image_path VARCHAR, content_hash VARCHAR, feature FLOAT[{FEATURE_DIM}], "
            "image_status VARCHAR)"
        )
        # whether the vectors mean anything: features: auto trains on them only when pretrained
        conn.execute("CREATE OR REPLACE TABLE image_encoder (pretrained BOOLEAN, weights_path VARCHAR)")
        conn.execute(
            "INSERT INTO image_encoder VALUES (?, ?)", [bool(result.pretrained), result.weights_path or ""]
        )
        for start in range(0, len(result.item_ids), _WRITE_CHUNK):
            stop = start + _WRITE_CHUNK
            chunk = pa.table(  # noqa: F841 (read by DuckDB below)
                {
                    "item_id": pa.array(result.item_ids[start:stop], pa.string()),
                    "has_image": pa.array(result.has_image[start:stop]),
                    "image_path": pa.array(result.image_path[start:stop], pa.string()),
                    "content_hash": pa.array(result.content_hash[start:stop], pa.string()),
                    "feature": pa.FixedSizeListArray.from_arrays(
                        pa.array(np.ascontiguousarray(result.features[start:stop]).ravel()),
                        FEATURE_DIM,
                    ),
                    "image_status": pa.array(result.status[start:stop], pa.string()),
                }
            )
            conn.execute("INSERT INTO item_image_features SELECT * FROM chunk")
        replace_quarantine(conn, IMAGE_STAGE, frame=image_quarantine(result), order_by="")
