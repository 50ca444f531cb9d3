"""Item features: sparse attribute ids (brand, category, price, S3-Rec ids) and ResNet-50 image vectors.

Both tables are produced for every item in ``interactions``; which of them feeds the model is a
training config choice. The work happens in ``convrec_dagster.data.attributes`` and
``convrec_dagster.data.images``; the tables are read and written by ``convrec_dagster.data.feature_tables``.
"""

import time
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from convrec_dagster.checks import blocking_checks, failures, run_checks
from convrec_dagster.data.attributes import AttributeConfig, build_item_attributes, item_attributes_consistent
from convrec_dagster.data.feature_tables import (
    attribute_inputs,
    image_refs,
    interaction_items,
    write_image_features,
    write_item_attributes,
)
from convrec_dagster.data.images import compute_image_features, item_image_features_cover_items, locate_images
from convrec_dagster.data.tables import require_tables
from convrec_dagster.resources import DUCKDB_POOL, DUCKDB_TAGS, ConvRecPaths, TorchDevice
from convrec_dagster.retry import TRANSIENT_RETRY_POLICY

SAMPLE_IMAGE_SIZE = 64  # the embedded sample ships 64x64 images and must run in about a minute
REAL_IMAGE_SIZE = 224


def _require_tables(conn, *names: str) -> None:
    with failures():
        require_tables(
            conn,
            *names,
            hint="Materialize the ingest assets first "
            "(e.g. `dagster asset materialize --select +item_attributes`).",
        )


class ItemAttributesConfig(dg.Config):
    """Attribute encoding. ``min_count``: values on fewer items fold into the kind's ``other``
    bucket (1 keeps all). ``price_buckets``: quantile price buckets, 0 = none."""

    min_count: int = 2
    price_buckets: int = 0
    use_brand: bool = True
    use_categories: bool = True
    use_raw_attributes: bool = True


@dg.asset(
    group_name="features",
    kinds={"duckdb", "python"},
    deps=["interactions", "items"],
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    check_specs=blocking_checks("item_attributes", item_attributes_consistent),
)
def item_attributes(
    context: dg.AssetExecutionContext, config: ItemAttributesConfig, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    """Sparse item attributes: one-hot brand, multi-hot category tokens (every level of the category
    paths), optional price buckets and S3-Rec attribute ids. Writes `attribute_vocab(attribute_id,
    kind, name, item_count)` (ids from 1, 0 = padding) and `item_attributes(item_id, attribute_id)`
    for every item in `interactions`; rare values fold into an `other` bucket per kind, items without
    metadata get the `missing/no_metadata` attribute."""
    with duckdb.get_connection() as conn:
        _require_tables(conn, "interactions", "items")
        item_ids = interaction_items(conn)
        items, raw = attribute_inputs(conn)
    context.log.info(
        f"encoding attributes of {len(item_ids):,} interaction items from {len(items):,} metadata "
        f"rows{'' if raw is None else f' and {len(raw):,} raw attribute rows'}"
    )
    encoding = build_item_attributes(
        items,
        item_ids=item_ids,
        raw_attributes=raw,
        config=AttributeConfig(
            min_count=config.min_count,
            price_buckets=config.price_buckets,
            use_brand=config.use_brand,
            use_categories=config.use_categories,
            use_raw_attributes=config.use_raw_attributes,
        ),
    )
    vocab, pairs = encoding.vocab, encoding.pairs
    with duckdb.get_connection() as conn:
        write_item_attributes(conn, encoding)
        check_results = run_checks([item_attributes_consistent], conn)
    stats = encoding.stats
    if stats["items_missing_meta"]:
        context.log.warning(
            f"{stats['items_missing_meta']:,} items in interactions have no metadata row; they "
            "carry the missing/no_metadata attribute"
        )
    top = vocab.sort_values("item_count", ascending=False).head(15)
    return dg.MaterializeResult(
        metadata={
            "items": stats["items"],
            "attribute_rows": len(pairs),
            "vocab_size": stats["vocab_size"],
            "vocab_size_by_kind": dg.MetadataValue.json(stats["vocab_size_by_kind"]),
            "attributes_per_item_mean": round(stats["attributes_per_item_mean"], 3),
            "attributes_per_item_max": stats["attributes_per_item_max"],
            "items_no_attributes": stats["items_no_attributes"],
            "items_missing_meta": stats["items_missing_meta"],
            "items_without_category": stats.get("items_without_category", 0),
            "min_count": config.min_count,
            "top_attributes": dg.MetadataValue.md(top.to_markdown(index=False)),
        },
        check_results=check_results,
    )


class ItemImageFeaturesConfig(dg.Config):
    """ResNet-50 image features. ``weights_path``: local torchvision ResNet-50 state_dict ('' =
    random init, with a warning). ``image_size``: network input size, 0 = auto (224 for real
    dumps, 64 for the embedded sample). ``num_workers``: image decoding threads.
    ``max_image_bytes``: a larger file is quarantined as ``image_too_large`` without being read
    whole. Image references are only followed inside the dump folder: one that resolves outside it
    (absolute path, ``~``, ``file://``, ``..``, a symlink) is quarantined as
    ``image_path_outside_dump``, never opened or hashed."""

    weights_path: str = ""
    image_size: int = 0
    batch_size: int = 64
    num_workers: int = 2
    use_cache: bool = True
    max_image_bytes: int = 20 * 2**20


@dg.asset(
    group_name="features",
    kinds={"duckdb", "pytorch"},
    deps=["interactions", "items"],
    pool=DUCKDB_POOL,
    op_tags=DUCKDB_TAGS,
    retry_policy=TRANSIENT_RETRY_POLICY,  # device errors; done images come from the cache on retry
    check_specs=blocking_checks("item_image_features", item_image_features_cover_items),
)
def item_image_features(
    context: dg.AssetExecutionContext,
    config: ItemImageFeaturesConfig,
    duckdb: DuckDBResource,
    paths: ConvRecPaths,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    """2,048-d ResNet-50 (penultimate layer) vectors of each item's image, for every item in
    `interactions`: `item_image_features(item_id, has_image, image_path, content_hash,
    feature FLOAT[2048], image_status)`. Images come from `<dump>/images/<item_id>.jpg|jpeg|png` or a
    local `items.image_ref`; URLs are not fetched. No image or a corrupt one: zero vector and
    has_image = false (corrupt files are quarantined). Vectors are cached by (content sha256,
    weights, input size) as Parquet under `artifacts/features/image_cache/`."""
    weights = Path(config.weights_path).expanduser() if config.weights_path else None
    if weights is not None and not weights.is_file():  # before any work, and never retried
        raise dg.Failure(
            f"item_image_features: weights_path {str(weights)!r} is not a file. Point it at a local torchvision "
            "ResNet-50 state_dict (e.g. resnet50-11ad3fa6.pth), or remove the setting to use a randomly initialised "
            "network (a loud warning, recorded in metadata; `features: auto` then leaves image vectors out of "
            "training).",
            allow_retries=False,
        )
    with duckdb.get_connection() as conn:
        _require_tables(conn, "interactions")
        item_ids = interaction_items(conn)
        refs = image_refs(conn)
        embedded = paths.dataset(conn).embedded_sample
    raw_dir = paths.raw_path()
    image_size = config.image_size or (SAMPLE_IMAGE_SIZE if embedded else REAL_IMAGE_SIZE)
    locations = locate_images(item_ids, raw_dir, refs)
    n_found = sum(loc.status == "found" for loc in locations)
    device = torch_device.torch_device
    context.log.info(
        f"{len(item_ids):,} items, {n_found:,} local images under {raw_dir}; ResNet-50 at "
        f"{image_size}px on {torch_device.describe()}, batch {config.batch_size}"
    )
    if not config.weights_path:
        context.log.warning(
            "!!! item_image_features: no weights_path configured -> RANDOMLY INITIALISED ResNet-50 "
            "(fixed seed). Image features will carry little visual meaning; metadata records "
            "pretrained: false. Set weights_path to a local torchvision ResNet-50 state_dict. !!!"
        )

    last_log = [0.0]

    def progress(done: int, total: int, per_s: float) -> None:
        now = time.monotonic()
        if done == total or now - last_log[0] >= 10.0:
            last_log[0] = now
            context.log.info(f"images {done:,}/{total:,} ({per_s:.1f} images/s)")

    cache_dir = paths.artifacts_path("features", "image_cache") if config.use_cache else None
    # a setting or file the code cannot take (e.g. weights that are not a ResNet-50 state_dict): no retries
    with failures(ValueError, TypeError):
        result = compute_image_features(
            locations,
            weights_path=config.weights_path or None,
            image_size=image_size,
            batch_size=config.batch_size,
            device=device,
            precision=torch_device.effective_precision(),
            cache_dir=cache_dir,
            num_workers=config.num_workers,
            progress=progress,
            max_image_bytes=config.max_image_bytes,
        )
    counts = result.counts()
    if n_found == 0:
        context.log.info(
            "the dump has no local images for any item: every row gets has_image = false and a "
            f"zero vector ({counts['remote']:,} remote image URLs were not fetched)"
        )
    for item_id, path, reason in result.corrupt:
        context.log.warning(f"quarantined image of item {item_id}: {path}: {reason}")

    with duckdb.get_connection() as conn:
        write_image_features(conn, result)
        check_results = run_checks([item_image_features_cover_items], conn)

    context.log.info(
        f"image features: {counts['found']:,} found, {counts['corrupt']:,} corrupt, "
        f"{counts['missing'] + counts['remote']:,} without a local image (of which "
        f"{counts['remote']:,} have a URL, not fetched); "
        f"{result.cache_hits:,} cache hits, {result.computed:,} computed"
    )
    return dg.MaterializeResult(
        metadata={
            "items": len(item_ids),
            "pretrained": result.pretrained,
            "weights_path": result.weights_path or "(none: random init)",
            "warning": result.warning or "",
            "images_found": counts["found"],
            "images_missing": counts["missing"] + counts["remote"],  # no local image file
            "images_corrupt_quarantined": counts["corrupt"],
            "images_outside_dump_quarantined": counts["outside"],
            "images_remote_not_fetched": counts["remote"],
            "cache_hits": result.cache_hits,
            "computed": result.computed,
            "images_per_s": round(result.images_per_s, 2),
            "model_images_per_s": round(result.model_images_per_s, 2),
            "image_size": image_size,
            "device": torch_device.describe(),
            "precision": result.precision,
            "cache_file": str(cache_dir) if cache_dir else "(cache disabled)",
        },
        check_results=check_results,
    )
