"""The dataset's identity: written once by ingest, read by every later stage (no Dagster).

`dataset_info(name, format, has_time, has_attributes, has_images, fingerprint, embedded_sample)`,
one row. `reviews` writes it in the transaction that writes `reviews` (``has_attributes`` and
``has_images`` NULL: not known yet); `items` fills those two in. Later stages (the image size of
`item_image_features`, the training budget and paper preset, the report's dataset name) read it
with :func:`read_dataset_info` instead of looking at the raw folder again. :func:`dataset_name` is
the one place where a raw folder becomes a dataset name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from convrec_dagster.data.tables import table_exists

EMBEDDED_SAMPLE_NAME = "embedded sample"
DATASET_INFO_DDL = """
CREATE OR REPLACE TABLE dataset_info (
    name VARCHAR, format VARCHAR, has_time BOOLEAN, has_attributes BOOLEAN, has_images BOOLEAN,
    fingerprint VARCHAR, embedded_sample BOOLEAN
)"""


@dataclass(frozen=True)
class DatasetInfo:
    """One row of `dataset_info`. ``format``: the review files' formats, comma-separated;
    ``has_time``: every review has a timestamp; ``has_attributes`` / ``has_images``: some item has
    metadata attributes / an image reference (None until `items` ran)."""

    name: str
    format: str = ""
    has_time: bool | None = None
    has_attributes: bool | None = None
    has_images: bool | None = None
    fingerprint: str = ""
    embedded_sample: bool = False


def dataset_name(raw_dir: Path | None, embedded_sample: bool) -> str:
    """The dataset's name: the raw folder's name, or ``embedded sample``."""
    return EMBEDDED_SAMPLE_NAME if embedded_sample or raw_dir is None else raw_dir.name


def configured_dataset(raw_dir: Path | None, embedded_sample: bool) -> DatasetInfo:
    """What is known before ingest (preflight) or in a store ingested before `dataset_info` existed:
    the name only."""
    return DatasetInfo(name=dataset_name(raw_dir, embedded_sample), embedded_sample=embedded_sample)


def write_dataset_info(conn: duckdb.DuckDBPyConnection, info: DatasetInfo) -> None:
    """Replace `dataset_info` with ``info`` (inside the caller's transaction, if any)."""
    conn.execute(DATASET_INFO_DDL)
    conn.execute(
        "INSERT INTO dataset_info VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            info.name,
            info.format,
            info.has_time,
            info.has_attributes,
            info.has_images,
            info.fingerprint,
            info.embedded_sample,
        ],
    )


def record_item_metadata(conn: duckdb.DuckDBPyConnection, has_attributes: bool, has_images: bool) -> None:
    """`items` says whether items have attributes / images (a store without the row is left as is)."""
    if table_exists(conn, "dataset_info"):
        conn.execute(
            "UPDATE dataset_info SET has_attributes = ?, has_images = ?", [has_attributes, has_images]
        )


def read_dataset_info(conn: duckdb.DuckDBPyConnection) -> DatasetInfo | None:
    """The stored identity, or None when the store has no `dataset_info` (ingested before it existed)."""
    if not table_exists(conn, "dataset_info"):
        return None
    rows = conn.execute(
        "SELECT name, format, has_time, has_attributes, has_images, fingerprint, embedded_sample "
        "FROM dataset_info LIMIT 1"
    ).fetchall()
    return DatasetInfo(*rows[0]) if rows else None
