"""Sparse item-attribute encodings: one-hot brand, multi-hot category tokens, price buckets.

Pure pandas / scikit-learn / scipy, no Dagster. The result is a vocabulary (``attribute_id`` from 1,
0 is padding) and sparse ``(item_id, attribute_id)`` pairs; a dense items x attributes matrix is never
built (Beauty has 6,507 attributes and 57k items). The model consumes the ids directly, e.g. with
``nn.EmbeddingBag``, which computes the same function as a linear layer on the multi-hot vector.

Vocabulary kinds (the order of ids): ``brand``, ``category``, ``price``, ``attribute`` (S3-Rec
``*_item2attributes.json`` ids), ``other`` (one bucket per kind, named after the kind, for values seen
on fewer than ``min_count`` items) and ``missing`` (``no_metadata``: the item is in ``interactions``
but not in ``items``; ``no_attributes``: the item has a metadata row but none of its fields gave an
attribute). Every item therefore ends up with at least one attribute.
"""

from __future__ import annotations

import html
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.preprocessing import KBinsDiscretizer, MultiLabelBinarizer, OneHotEncoder

from convrec_dagster.data.outcome import CheckOutcome
from convrec_dagster.data.tables import item_coverage

KIND_ORDER = ("brand", "category", "price", "attribute", "other", "missing")
NO_METADATA = "no_metadata"
NO_ATTRIBUTES = "no_attributes"
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class AttributeConfig:
    """How attributes are encoded.

    ``min_count``: a value seen on fewer items than this folds into its kind's ``other`` bucket
    (1 keeps every value). ``price_buckets``: number of quantile price buckets, 0 = no price
    attribute. ``use_brand`` / ``use_categories`` / ``use_raw_attributes`` switch kinds off.
    """

    min_count: int = 2
    price_buckets: int = 0
    use_brand: bool = True
    use_categories: bool = True
    use_raw_attributes: bool = True


@dataclass
class AttributeEncoding:
    """Vocabulary, sparse pairs and the CSR matrix (rows = ``item_ids``, columns = vocab order)."""

    vocab: pd.DataFrame  # attribute_id, kind, name, item_count
    pairs: pd.DataFrame  # item_id, attribute_id
    item_ids: list[str]
    matrix: sp.csr_matrix
    stats: dict = field(default_factory=dict)


def normalize_token(value: object) -> str | None:
    """Unescape HTML entities (``&amp;`` appears in Amazon category paths), collapse whitespace."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = _SPACES.sub(" ", html.unescape(str(value))).strip()
    return text or None


def _token_lists(values: Iterable[object]) -> list[list[str]]:
    out = []
    for value in values:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            out.append([])
            continue
        tokens = (normalize_token(v) for v in value)
        out.append(sorted({t for t in tokens if t}))
    return out


def _fold_rare(
    matrix: sp.csr_matrix, names: Sequence[str], kind: str, min_count: int
) -> tuple[sp.csr_matrix, list[tuple[str, str]]]:
    """Merge the columns seen on fewer than ``min_count`` items into one ``('other', kind)`` column."""
    counts = np.asarray(matrix.sum(axis=0)).ravel()
    keep = np.flatnonzero(counts >= min_count)
    rare = np.flatnonzero((counts < min_count) & (counts > 0))
    labels = [(kind, names[j]) for j in keep]
    blocks = [matrix[:, keep]]
    if rare.size:
        other = (matrix[:, rare].sum(axis=1) > 0).astype(np.int8)
        blocks.append(sp.csr_matrix(other))
        labels.append(("other", kind))
    return sp.hstack(blocks, format="csr").astype(np.int8), labels


def encode_brand(brands: Sequence[object], min_count: int) -> tuple[sp.csr_matrix, list[tuple[str, str]]]:
    """One-hot brand with scikit-learn's infrequent-category grouping; no brand -> empty row."""
    names = [normalize_token(b) for b in brands]
    rows = np.array([i for i, b in enumerate(names) if b], dtype=np.int64)
    n = len(names)
    if rows.size == 0:
        return sp.csr_matrix((n, 0), dtype=np.int8), []
    values = np.array([[names[i]] for i in rows], dtype=object)
    encoder = OneHotEncoder(
        handle_unknown="infrequent_if_exist",
        min_frequency=max(1, min_count),
        sparse_output=True,
        dtype=np.int8,
    )
    encoded = encoder.fit_transform(values).tocoo()
    infrequent = encoder.infrequent_categories_[0]
    frequent = [c for c in encoder.categories_[0] if infrequent is None or c not in set(infrequent)]
    labels = [("brand", c) for c in frequent]
    if infrequent is not None and len(infrequent):
        labels.append(("other", "brand"))  # sklearn puts the infrequent column last
    matrix = sp.csr_matrix((encoded.data, (rows[encoded.row], encoded.col)), shape=(n, len(labels)))
    return matrix, labels


def encode_multi_hot(
    token_lists: list[list[str]], kind: str, min_count: int
) -> tuple[sp.csr_matrix, list[tuple[str, str]]]:
    """Multi-hot encoding of token lists (MultiLabelBinarizer, sparse), rare tokens folded."""
    n = len(token_lists)
    if not any(token_lists):
        return sp.csr_matrix((n, 0), dtype=np.int8), []
    binarizer = MultiLabelBinarizer(sparse_output=True)
    matrix = binarizer.fit_transform(token_lists).tocsr().astype(np.int8)
    return _fold_rare(matrix, list(binarizer.classes_), kind, min_count)


def encode_price(prices: Sequence[object], n_buckets: int) -> tuple[sp.csr_matrix, list[tuple[str, str]]]:
    """Quantile price buckets (KBinsDiscretizer); items without a positive price get none."""
    values = pd.to_numeric(pd.Series(list(prices), dtype=object), errors="coerce").to_numpy(dtype=float)
    n = len(values)
    rows = np.flatnonzero(np.isfinite(values) & (values > 0))
    if n_buckets <= 0 or rows.size < 2 or np.unique(values[rows]).size < 2:
        return sp.csr_matrix((n, 0), dtype=np.int8), []
    bins = min(n_buckets, np.unique(values[rows]).size)
    discretizer = KBinsDiscretizer(
        n_bins=bins, encode="ordinal", strategy="quantile", quantile_method="averaged_inverted_cdf"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "bins whose width are too small" -> merged, fine here
        codes = discretizer.fit_transform(values[rows].reshape(-1, 1)).astype(np.int64).ravel()
    edges = discretizer.bin_edges_[0]
    labels = [("price", f"[{edges[k]:.2f}, {edges[k + 1]:.2f}]") for k in range(len(edges) - 1)]
    matrix = sp.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, codes)), shape=(n, len(labels)))
    return matrix, labels


def build_item_attributes(
    items: pd.DataFrame,
    item_ids: Sequence[str] | None = None,
    raw_attributes: pd.DataFrame | None = None,
    config: AttributeConfig = AttributeConfig(),
) -> AttributeEncoding:
    """Encode the attributes of ``item_ids`` (default: every item in ``items``).

    ``items`` follows the ``items`` table contract (``item_id``, ``brand``, ``categories`` list,
    ``price``; ``line_no`` optional). Duplicate ``item_id`` rows are tolerated: the first (lowest
    ``line_no``) wins and the duplicates are counted. ``raw_attributes`` follows
    ``raw_item_attributes`` (``item_id``, ``attribute``). Vocabulary counts and the rare-value
    threshold are computed over ``item_ids`` only, i.e. over the items the model will see.
    """
    stats: dict = {"meta_rows": int(len(items))}
    if "categories" in items:
        stats["meta_rows_without_category"] = int(
            sum(1 for toks in _token_lists(items["categories"]) if not toks)
        )
    meta = items.sort_values("line_no", kind="stable") if "line_no" in items else items
    meta = meta.drop_duplicates("item_id", keep="first")
    stats["duplicate_meta_rows"] = int(len(items) - len(meta))

    if item_ids is None:
        universe = list(meta["item_id"])
    else:
        universe = list(dict.fromkeys(item_ids))
    frame = pd.DataFrame({"item_id": universe}).merge(meta, on="item_id", how="left", indicator=True)
    has_meta = (frame.pop("_merge") == "both").to_numpy()
    n = len(frame)

    blocks: list[sp.csr_matrix] = []
    labels: list[tuple[str, str]] = []

    def add(block: tuple[sp.csr_matrix, list[tuple[str, str]]]) -> None:
        blocks.append(block[0].tocsr())
        labels.extend(block[1])

    if config.use_brand and "brand" in frame:
        add(encode_brand(list(frame["brand"]), config.min_count))
    if config.use_categories and "categories" in frame:
        tokens = _token_lists(frame["categories"])
        stats["items_without_category"] = int(sum(1 for t, m in zip(tokens, has_meta) if m and not t))
        add(encode_multi_hot(tokens, "category", config.min_count))
    if config.price_buckets > 0 and "price" in frame:
        add(encode_price(list(frame["price"]), config.price_buckets))
    if config.use_raw_attributes and raw_attributes is not None and len(raw_attributes):
        grouped = (
            raw_attributes.assign(attribute=raw_attributes["attribute"].map(normalize_token))
            .dropna(subset=["attribute"])
            .groupby("item_id")["attribute"]
            .agg(lambda s: sorted(set(s)))
        )
        raw_tokens = [grouped.get(i, []) for i in universe]
        has_meta = has_meta | np.array([bool(t) for t in raw_tokens], dtype=bool)
        add(encode_multi_hot(raw_tokens, "attribute", config.min_count))

    matrix = sp.hstack(blocks, format="csr") if blocks else sp.csr_matrix((n, 0), dtype=np.int8)
    matrix = matrix.astype(np.int8)
    # The "other" buckets of different kinds arrive in kind order already; put all of them after
    # the regular kinds so ids are grouped by kind.
    matrix, labels = _order_columns(matrix, labels)

    empty = np.asarray(matrix.getnnz(axis=1)).ravel() == 0
    stats["items"] = n
    stats["items_missing_meta"] = int((~has_meta).sum())
    stats["items_no_attributes"] = int((empty & has_meta).sum())
    for name, mask in ((NO_METADATA, ~has_meta), (NO_ATTRIBUTES, empty & has_meta)):
        if mask.any():
            column = sp.csr_matrix(mask.astype(np.int8).reshape(-1, 1))
            matrix = sp.hstack([matrix, column], format="csr")
            labels.append(("missing", name))

    counts = np.asarray(matrix.sum(axis=0)).ravel().astype(np.int64)
    vocab = pd.DataFrame(
        {
            "attribute_id": np.arange(1, len(labels) + 1, dtype=np.int32),
            "kind": [k for k, _ in labels],
            "name": [v for _, v in labels],
            "item_count": counts.astype(np.int32),
        }
    )
    coo = matrix.tocoo()
    order = np.lexsort((coo.col, coo.row))
    pairs = pd.DataFrame(
        {
            "item_id": np.asarray(universe, dtype=object)[coo.row[order]],
            "attribute_id": (coo.col[order] + 1).astype(np.int32),
        }
    )
    per_item = np.asarray(matrix.getnnz(axis=1)).ravel()
    stats["attributes_per_item_mean"] = float(per_item.mean()) if n else 0.0
    stats["attributes_per_item_max"] = int(per_item.max()) if n else 0
    stats["vocab_size"] = int(len(vocab))
    stats["vocab_size_by_kind"] = {k: int(v) for k, v in vocab["kind"].value_counts().items()}
    return AttributeEncoding(vocab=vocab, pairs=pairs, item_ids=universe, matrix=matrix, stats=stats)


def _order_columns(
    matrix: sp.csr_matrix, labels: list[tuple[str, str]]
) -> tuple[sp.csr_matrix, list[tuple[str, str]]]:
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    order = sorted(range(len(labels)), key=lambda j: (rank[labels[j][0]], j))
    return matrix[:, order], [labels[j] for j in order]


def item_attributes_consistent(conn: duckdb.DuckDBPyConnection) -> CheckOutcome:
    """Every item in `interactions` has at least one attribute row, only those items have rows,
    every attribute id exists in `attribute_vocab` (ids 1..V, unique) and vocab counts match."""
    uncovered, extra = item_coverage(conn, "item_attributes")
    unknown_ids = conn.execute(
        "SELECT count(*) FROM item_attributes a ANTI JOIN attribute_vocab v USING (attribute_id)"
    ).fetchone()[0]
    n_vocab, n_distinct, lo, hi = conn.execute(
        "SELECT count(*), count(DISTINCT attribute_id), min(attribute_id), max(attribute_id) "
        "FROM attribute_vocab"
    ).fetchone()
    count_mismatch = conn.execute(
        "SELECT count(*) FROM attribute_vocab v LEFT JOIN (SELECT attribute_id, count(*) AS n "
        "FROM item_attributes GROUP BY ALL) c USING (attribute_id) "
        "WHERE coalesce(c.n, 0) <> v.item_count"
    ).fetchone()[0]
    duplicates = conn.execute(
        "SELECT count(*) FROM (SELECT item_id, attribute_id FROM item_attributes GROUP BY ALL "
        "HAVING count(*) > 1)"
    ).fetchone()[0]
    ids_ok = n_vocab == n_distinct and (n_vocab == 0 or (lo == 1 and hi == n_vocab))
    passed = uncovered == 0 and extra == 0 and unknown_ids == 0 and ids_ok and count_mismatch == 0
    passed = passed and duplicates == 0
    return CheckOutcome(
        passed=bool(passed),
        metadata={
            "items_without_attributes": int(uncovered),
            "items_not_in_interactions": int(extra),
            "rows_with_unknown_attribute_id": int(unknown_ids),
            "vocab_ids_are_1_to_V": bool(ids_ok),
            "vocab_count_mismatches": int(count_mismatch),
            "duplicate_rows": int(duplicates),
        },
    )
