"""DuckDB tables -> ``models.data.RecData`` (pure, no Dagster; vectorised NumPy / Arrow).

Reads ``user_index``, ``item_index``, ``sequences``, ``eval_negatives`` and ``proxy_ids`` (from
``convrec_dagster.data.splits``) and, when asked for and present, ``attribute_vocab`` /
``item_attributes`` and ``item_image_features``. Item features are indexed by ``item_idx`` (row 0 is
padding). ``features``:

- ``auto``: whatever the tables provide: attributes when ``item_attributes`` gives some item an
  attribute that is not of kind ``missing``; image features when any item ``has_image`` and the
  ``image_encoder`` table says they come from pretrained weights.
- ``attributes`` / ``image`` / ``both``: require those tables (clear error when absent).
- ``none``: ids and context only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np

from convrec_dagster.data.tables import require_tables, table_exists
from models.data import FEATURE_CHOICES, N_CONTEXT, FeatureChoice, RecData

Features = FeatureChoice
_CONTEXT_COLS = ("t_year", "t_month", "t_day", "t_dow", "t_doy", "t_week")


def _one(conn: duckdb.DuckDBPyConnection, sql: str):
    return conn.execute(sql).fetchall()[0]


def _require(conn: duckdb.DuckDBPyConnection, name: str, producer: str) -> None:
    require_tables(conn, name, hint=f"materialize the `{producer}` asset before loading the dataset.")


def fingerprint(arrays: dict[str, np.ndarray | None]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the arrays (None recorded as absent)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = arrays[name]
        h.update(name.encode())
        if arr is None:
            h.update(b"<none>")
            continue
        if arr.dtype == object:
            h.update("\x1f".join(map(str, arr.tolist())).encode())
            continue
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _attributes_available(conn: duckdb.DuckDBPyConnection) -> bool:
    if not table_exists(conn, "item_attributes"):
        return False
    if table_exists(conn, "attribute_vocab"):
        sql = (
            "SELECT count(*) FROM item_attributes a JOIN attribute_vocab v USING (attribute_id) "
            "WHERE v.kind <> 'missing' AND a.attribute_id > 0"
        )
    else:
        sql = "SELECT count(*) FROM item_attributes WHERE attribute_id > 0"
    return _one(conn, sql)[0] > 0


def images_available(conn: duckdb.DuckDBPyConnection) -> bool:
    """Image vectors exist and come from a pretrained ResNet-50: features of a randomly initialised
    network carry little visual meaning and cost ConvRec accuracy (measured: BENCHMARKS.md), so
    ``auto`` leaves them out; ``image`` / ``both`` still use them."""
    if not table_exists(conn, "item_image_features"):
        return False
    if (
        table_exists(conn, "image_encoder")
        and not _one(conn, "SELECT bool_and(pretrained) FROM image_encoder")[0]
    ):
        return False
    return (
        _one(conn, "SELECT count(*) FROM item_image_features WHERE has_image AND feature IS NOT NULL")[0] > 0
    )


def _load_attributes(conn: duckdb.DuckDBPyConnection, n_items: int) -> tuple[np.ndarray, np.ndarray, int]:
    """CSR (attr_ptr (n_items + 2,), attr_ids) by item_idx, and the attribute vocabulary size."""
    rows = conn.execute(
        "SELECT DISTINCT i.item_idx, a.attribute_id FROM item_attributes a JOIN item_index i USING (item_id) "
        "WHERE a.attribute_id IS NOT NULL AND a.attribute_id > 0 ORDER BY i.item_idx, a.attribute_id"
    ).fetchnumpy()
    item_idx = rows["item_idx"].astype(np.int64)
    attr_ids = rows["attribute_id"].astype(np.int64)
    counts = np.bincount(item_idx, minlength=n_items + 1)
    attr_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_vocab = 0
    if table_exists(conn, "attribute_vocab"):
        n_vocab = int(_one(conn, "SELECT coalesce(max(attribute_id), 0) FROM attribute_vocab")[0])
    n_attrs = max(n_vocab, int(attr_ids.max()) if len(attr_ids) else 0)
    return attr_ptr, attr_ids, n_attrs


def _load_images(conn: duckdb.DuckDBPyConnection, n_items: int) -> tuple[np.ndarray, int]:
    """float32 (n_items + 1, dim) by item_idx; zeros for padding and items without an image."""
    table = conn.sql(
        "SELECT i.item_idx, f.feature FROM item_image_features f JOIN item_index i USING (item_id) "
        "WHERE f.has_image AND f.feature IS NOT NULL ORDER BY i.item_idx"
    ).to_arrow_table()
    idx = table.column("item_idx").to_numpy().astype(np.int64)
    feats = table.column("feature").combine_chunks()
    dim = feats.type.list_size if hasattr(feats.type, "list_size") else None
    flat = feats.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if dim is None:  # variable-length lists: every row must have the same width
        dim = len(flat) // max(len(idx), 1)
        if dim * len(idx) != len(flat):
            raise ValueError("item_image_features.feature rows have different lengths; expected FLOAT[2048].")
    out = np.zeros((n_items + 1, dim), dtype=np.float32)
    out[idx] = flat.reshape(len(idx), dim)
    return out, len(idx)


def load_rec_data(conn: duckdb.DuckDBPyConnection, features: Features = "auto") -> RecData:
    """Build the in-memory dataset every model trains and is evaluated on."""
    if features not in FEATURE_CHOICES:
        raise ValueError(f"features must be one of {FEATURE_CHOICES}, got {features!r}")
    for name in ("user_index", "item_index", "sequences"):
        _require(conn, name, "sequences")
    _require(conn, "eval_negatives", "eval_negatives")
    _require(conn, "proxy_ids", "proxy_ids")

    users = conn.execute("SELECT user_idx, user_id, is_eval FROM user_index ORDER BY user_idx").fetchnumpy()
    n_users = len(users["user_idx"])
    if not np.array_equal(users["user_idx"], np.arange(1, n_users + 1)):
        raise ValueError("user_index.user_idx must be exactly 1..n_users; rebuild the `sequences` asset.")
    items_tab = conn.execute("SELECT item_idx, item_id FROM item_index ORDER BY item_idx").fetchnumpy()
    n_items = len(items_tab["item_idx"])
    if not np.array_equal(items_tab["item_idx"], np.arange(1, n_items + 1)):
        raise ValueError("item_index.item_idx must be exactly 1..n_items; rebuild the `sequences` asset.")

    n_rows, n_ts = _one(conn, "SELECT count(*), count(ts) FROM sequences")
    has_timestamps = n_rows > 0 and n_ts == n_rows
    cols = "user_idx, item_idx, split = 'train' AS is_train"
    if has_timestamps:
        cols += ", " + ", ".join(_CONTEXT_COLS) + ", year, month, day"
    seq = conn.execute(f"SELECT {cols} FROM sequences ORDER BY user_idx, position").fetchnumpy()
    seq_users = seq["user_idx"].astype(np.int64)
    items = seq["item_idx"].astype(np.int64)
    user_ptr = np.concatenate([[0], np.cumsum(np.bincount(seq_users, minlength=n_users + 1))]).astype(
        np.int64
    )

    is_eval_user = np.zeros(n_users + 1, dtype=bool)
    is_eval_user[1:] = users["is_eval"].astype(bool)

    context = ymd = None
    if has_timestamps:
        context = np.stack([seq[c] for c in _CONTEXT_COLS], axis=1).astype(np.float32)
        ymd = np.stack([seq["year"], seq["month"], seq["day"]], axis=1).astype(np.float32)
        assert context.shape[1] == N_CONTEXT

    negs = conn.execute("SELECT user_idx, neg_no, item_idx FROM eval_negatives").fetchnumpy()
    n_neg = int(negs["neg_no"].max()) + 1 if len(negs["neg_no"]) else 0
    eval_negatives = np.zeros((n_users + 1, n_neg), dtype=np.int64)
    eval_negatives[negs["user_idx"].astype(np.int64), negs["neg_no"].astype(np.int64)] = negs["item_idx"]

    proxy = conn.execute("SELECT item_idx, proxy_id FROM proxy_ids").fetchnumpy()
    proxy_ids = np.zeros(n_items + 1, dtype=np.int64)
    proxy_ids[proxy["item_idx"].astype(np.int64)] = proxy["proxy_id"]
    n_proxy = int(proxy_ids.max()) + 1 if n_items else 1

    use_attrs = features in ("attributes", "both") or (features == "auto" and _attributes_available(conn))
    use_images = features in ("image", "both") or (features == "auto" and images_available(conn))
    attr_ptr = attr_ids = image_features = None
    n_attrs = n_items_with_image = 0
    if use_attrs:
        _require(conn, "item_attributes", "item_attributes")
        attr_ptr, attr_ids, n_attrs = _load_attributes(conn, n_items)
    if use_images:
        _require(conn, "item_image_features", "item_image_features")
        image_features, n_items_with_image = _load_images(conn, n_items)

    item_names = np.empty(n_items + 1, dtype=object)
    item_names[0] = ""
    item_names[1:] = items_tab["item_id"]
    user_names = np.empty(n_users + 1, dtype=object)
    user_names[0] = ""
    user_names[1:] = users["user_id"]

    data = RecData(
        n_users=n_users,
        n_items=n_items,
        user_ptr=user_ptr,
        items=items,
        is_eval_user=is_eval_user,
        eval_negatives=eval_negatives,
        proxy_ids=proxy_ids,
        n_proxy=n_proxy,
        context=context,
        ymd=ymd,
        attr_ptr=attr_ptr,
        attr_ids=attr_ids,
        n_attrs=n_attrs,
        image_features=image_features,
        item_names=item_names,
        user_names=user_names,
    )
    # The split column and the CSR layout must agree, or training would see targets.
    if not np.array_equal(data.train_mask(), seq["is_train"].astype(bool)):
        raise ValueError(
            "sequences.split disagrees with user_index.is_eval (valid/test must be each evaluated "
            "user's last two rows); rebuild the `sequences` asset."
        )
    arrays = {
        "user_ptr": user_ptr,
        "items": items,
        "is_eval_user": is_eval_user,
        "eval_negatives": eval_negatives,
        "proxy_ids": proxy_ids,
        "context": context,
        "ymd": ymd,
        "attr_ptr": attr_ptr,
        "attr_ids": attr_ids,
        "image_features": image_features,
        "item_names": item_names,
        "user_names": user_names,
    }
    data.info = {
        "fingerprint": fingerprint(arrays),
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": int(len(items)),
        "n_train_interactions": int(seq["is_train"].sum()),
        "n_eval_users": int(is_eval_user.sum()),
        "n_negatives": n_neg,
        "n_proxy": n_proxy,
        "has_timestamps": bool(has_timestamps),
        "rows_with_timestamp": int(n_ts),
        "features_requested": features,
        "features": "+".join(f for f, on in (("attributes", use_attrs), ("image", use_images)) if on)
        or "none",
        "n_attrs": int(n_attrs),
        "n_items_with_image": int(n_items_with_image),
        "image_dim": int(image_features.shape[1]) if image_features is not None else 0,
    }
    return data


# ---------------------------------------------------------------------------- a checkpoint's data


def checkpoint_fingerprint(checkpoint: dict) -> str | None:
    extra = checkpoint.get("extra") or {}
    return extra.get("fingerprint") or checkpoint.get("fingerprint") or None


def data_for_checkpoint(load: Callable[[str], object], checkpoint: dict):
    """The dataset (``load(features)``) whose fingerprint the checkpoint was trained on, or None.

    The checkpoint names the features its data was loaded with (``extra["data_features"]``); only a
    checkpoint written before it did has its choice found by trying them (models without item
    features were trained on ``features="none"``; the fingerprint covers the features loaded)."""
    wanted = checkpoint_fingerprint(checkpoint)
    stored = (checkpoint.get("extra") or {}).get("data_features")
    if stored:
        choices = [stored]
    else:  # an older checkpoint
        first = str((checkpoint.get("hparams") or {}).get("features") or "none")
        choices = list(dict.fromkeys([first, *FEATURE_CHOICES]))
    for features in choices:
        try:
            data = load(features)
        except ValueError:  # e.g. image features asked for, none stored
            continue
        if wanted is None or data.info.get("fingerprint") == wanted:
            return data
    return None


# ---------------------------------------------------------------------------- Parquet handoff

# Everything load_rec_data reads: a training job elsewhere needs these files, not the DuckDB file.
EXPORT_TABLES = (
    "user_index",
    "item_index",
    "sequences",
    "eval_negatives",
    "proxy_ids",
    "attribute_vocab",
    "item_attributes",
    "item_image_features",
    "image_encoder",
)


def export_parquet(conn: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, int]:
    """Write each of ``EXPORT_TABLES`` that exists to ``folder/<table>.parquet`` (atomically: a
    temporary file, then a rename); return the rows written per table. Stale files of tables that
    no longer exist are removed, so the folder always mirrors the database."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in EXPORT_TABLES:
        path = folder / f"{name}.parquet"
        if not table_exists(conn, name):
            path.unlink(missing_ok=True)
            continue
        tmp = folder / f".{name}.parquet.tmp"
        conn.execute(f"COPY {name} TO '{_sql_path(tmp)}' (FORMAT PARQUET, COMPRESSION ZSTD)")
        os.replace(tmp, path)
        written[name] = int(_one(conn, f"SELECT count(*) FROM {name}")[0])
    return written


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def parquet_connection(folder: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose tables are views over ``folder/*.parquet``."""
    folder = Path(folder)
    if not (folder / "sequences.parquet").exists():
        raise ValueError(
            f"{folder} holds no sequences.parquet: materialize the `training_data_parquet` asset "
            "(or copy its folder here) first."
        )
    conn = duckdb.connect()
    for name in EXPORT_TABLES:
        path = folder / f"{name}.parquet"
        if path.exists():
            conn.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{_sql_path(path)}')")
    return conn


def load_rec_data_from_parquet(folder: Path, features: Features = "auto") -> RecData:
    """``load_rec_data`` over the Parquet files of ``export_parquet`` (no DuckDB file needed)."""
    with parquet_connection(folder) as conn:
        return load_rec_data(conn, features)


__all__ = [
    "EXPORT_TABLES",
    "FEATURE_CHOICES",
    "export_parquet",
    "fingerprint",
    "load_rec_data",
    "load_rec_data_from_parquet",
    "parquet_connection",
]
